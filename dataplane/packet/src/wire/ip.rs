//! IP protocol numbers, shared by the IPv4 `protocol` and the IPv6 `next header` fields.

/// An IANA "Assigned Internet Protocol Number"; only the ones vxdp looks at are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// IPv6 hop-by-hop options (0).
    HopByHop,
    /// ICMP (1).
    Icmp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// IPv6 routing header (43).
    Ipv6Route,
    /// IPv6 fragment header (44).
    Ipv6Frag,
    /// ICMPv6 (58).
    Icmpv6,
    /// IPv6 destination options (60).
    Ipv6Opts,
    /// SCTP (132).
    Sctp,
    /// Any other number.
    Unknown(u8),
}

impl From<u8> for Protocol {
    #[inline]
    fn from(value: u8) -> Self {
        match value {
            0 => Protocol::HopByHop,
            1 => Protocol::Icmp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            43 => Protocol::Ipv6Route,
            44 => Protocol::Ipv6Frag,
            58 => Protocol::Icmpv6,
            60 => Protocol::Ipv6Opts,
            132 => Protocol::Sctp,
            other => Protocol::Unknown(other),
        }
    }
}

impl From<Protocol> for u8 {
    #[inline]
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::HopByHop => 0,
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Ipv6Route => 43,
            Protocol::Ipv6Frag => 44,
            Protocol::Icmpv6 => 58,
            Protocol::Ipv6Opts => 60,
            Protocol::Sctp => 132,
            Protocol::Unknown(other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_round_trips() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(Protocol::from(n)), n);
        }
        assert_eq!(Protocol::from(17), Protocol::Udp);
        // A named number never comes back as Unknown.
        assert_eq!(Protocol::from(6), Protocol::Tcp);
    }
}
