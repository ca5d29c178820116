//! Decapsulation: the checks a frame from the underlay passes before its inner frame reaches the
//! TAP, each failure counted under its own [`DropReason`].
//!
//! The outer UDP checksum is deliberately not verified, zero or not. A kernel peer sending over a
//! veth or another virtual NIC with TX checksum offload leaves the checksum CHECKSUM_PARTIAL:
//! the field holds only the pseudo header sum, and the receiving kernel trusts the skb's
//! checksum state instead of the bytes (testdata/v4-partial.pcap is such a frame). AF_XDP hands
//! us the bytes without that state, so verifying would drop valid traffic. The inner packet
//! keeps its own end-to-end checksums, and the outer IPv4 header checksum is verified.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::wire::{
    ethernet, ipv4, ipv6, udp, vxlan, Error, EtherType, EthernetFrame, Field, IpProtocol,
    Ipv4Packet, Ipv6Packet, MacAddr, UdpPacket, Vni, VxlanPacket,
};

/// What this node accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecapPolicy {
    /// This node's IPv4 underlay address; IPv4 frames are dropped when `None`.
    pub local_ip4: Option<Ipv4Addr>,
    /// This node's IPv6 underlay address; IPv6 frames are dropped when `None`.
    pub local_ip6: Option<Ipv6Addr>,
    /// The VXLAN UDP port (flannel: 8472).
    pub port: u16,
    /// The network identifier (flannel: 1).
    pub vni: Vni,
    /// This node's VtepMAC: the only unicast inner destination delivered.
    pub local_mac: MacAddr,
    /// Accept outer sources that are not known peers. Off by default: without it anyone who can
    /// reach the port can inject frames into the overlay.
    pub allow_unknown_peers: bool,
}

/// What to do with a frame from the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decap {
    /// Write `frame[inner]` to the TAP.
    Deliver {
        /// The inner Ethernet frame within the input.
        inner: Range<usize>,
        /// The outer source address (the sending VTEP).
        source: IpAddr,
    },
    /// Drop it, and count why.
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// Why [`decapsulate`] dropped a frame, in the order the checks run.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in `index()` order.
            pub const ALL: [DropReason; [$(DropReason::$name),*].len()] = [$(DropReason::$name),*];
            /// The number of reasons, for counter arrays.
            pub const COUNT: usize = Self::ALL.len();

            /// A dense index in `0..COUNT`, for counter arrays.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// A stable snake_case name, used as the Prometheus label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header.
    EthernetTruncated = "ethernet_truncated",
    /// EtherType neither IPv4 nor IPv6.
    NotIp = "not_ip",
    /// Shorter than an IPv4 header, or than the header length IHL gives.
    Ipv4Truncated = "ipv4_truncated",
    /// EtherType IPv4 but version not 4.
    Ipv4BadVersion = "ipv4_bad_version",
    /// IHL below 5.
    Ipv4BadHeaderLen = "ipv4_bad_header_len",
    /// Header checksum wrong.
    Ipv4BadChecksum = "ipv4_bad_checksum",
    /// Total length shorter than the header or longer than the frame.
    Ipv4BadTotalLen = "ipv4_bad_total_len",
    /// A fragment (MF set or non-zero offset); vxdp does not reassemble.
    Ipv4Fragment = "ipv4_fragment",
    /// Shorter than an IPv6 header.
    Ipv6Truncated = "ipv6_truncated",
    /// EtherType IPv6 but version not 6.
    Ipv6BadVersion = "ipv6_bad_version",
    /// Payload length longer than the frame.
    Ipv6BadPayloadLen = "ipv6_bad_payload_len",
    /// The IP payload is not UDP (IPv6: UDP not directly after the fixed header).
    NotUdp = "not_udp",
    /// The destination address is not this node's.
    NotLocalDestination = "not_local_destination",
    /// IP payload shorter than a UDP header.
    UdpTruncated = "udp_truncated",
    /// UDP length below 8 or beyond the IP payload.
    UdpBadLength = "udp_bad_length",
    /// UDP destination port is not the VXLAN port.
    WrongPort = "wrong_port",
    /// UDP payload shorter than a VXLAN header.
    VxlanTruncated = "vxlan_truncated",
    /// VXLAN I flag clear.
    VxlanNoIFlag = "vxlan_no_i_flag",
    /// VNI is not ours.
    WrongVni = "wrong_vni",
    /// The outer source is not a known peer VTEP (anti-spoofing).
    UnknownPeer = "unknown_peer",
    /// Inner frame shorter than an Ethernet header.
    InnerTruncated = "inner_truncated",
    /// Inner destination MAC neither this node's VtepMAC nor broadcast.
    InnerNotForUs = "inner_not_for_us",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a frame from the underlay and finds the inner frame to deliver, or the reason to drop
/// it. `is_known_peer` is asked about the outer source unless `allow_unknown_peers` is set.
///
/// The same as [`decapsulate_outer`] followed by [`decapsulate_vxlan`].
#[inline]
pub fn decapsulate(
    frame: &[u8],
    policy: &DecapPolicy,
    is_known_peer: impl Fn(IpAddr) -> bool,
) -> Decap {
    let checked = decapsulate_outer(frame, policy).and_then(|(source, vxlan)| {
        let inner = decapsulate_vxlan(&frame[vxlan.clone()], source, policy, is_known_peer)?;
        Ok((source, vxlan.start + inner.start..vxlan.start + inner.end))
    });
    match checked {
        Ok((source, inner)) => Decap::Deliver { inner, source },
        Err(reason) => Decap::Drop(reason),
    }
}

/// The outer half of decapsulation, what a UDP socket would do for us: checks the outer
/// Ethernet, IPv4/IPv6 and UDP headers of a frame from the underlay (the destination must be
/// this node and the port the VXLAN port) and returns the outer source address and where the
/// UDP payload (the VXLAN header and the inner frame) lies in `frame`.
#[inline]
pub fn decapsulate_outer(
    frame: &[u8],
    policy: &DecapPolicy,
) -> Result<(IpAddr, Range<usize>), DropReason> {
    use DropReason::*;

    let eth = EthernetFrame::new_checked(frame).map_err(|_| EthernetTruncated)?;
    let l3 = &frame[ethernet::HEADER_LEN..];
    // (outer source, the IP payload within l3)
    let (source, ip_payload) = match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_unchecked(l3);
            // The version first, where there is a byte to read: a frame of another protocol
            // behind the IPv4 EtherType is named as such, not by the length its bytes imply.
            if l3.len() >= ipv4::HEADER_LEN && ip.version() != 4 {
                return Err(Ipv4BadVersion);
            }
            ip.check_len().map_err(|e| match e {
                Error::Malformed(Field::HeaderLen) => Ipv4BadHeaderLen,
                Error::Malformed(_) => Ipv4BadTotalLen,
                _ => Ipv4Truncated,
            })?;
            if !ip.verify_checksum() {
                return Err(Ipv4BadChecksum);
            }
            if ip.is_fragment() {
                return Err(Ipv4Fragment);
            }
            if ip.next_header() != IpProtocol::Udp {
                return Err(NotUdp);
            }
            if policy.local_ip4 != Some(ip.dst_addr()) {
                return Err(NotLocalDestination);
            }
            // After check_len the header lies within total_len, which lies within l3; bytes
            // past total_len are Ethernet padding.
            let start = ip.header_len();
            let end = usize::from(ip.total_len());
            (IpAddr::V4(ip.src_addr()), start..end)
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_unchecked(l3);
            if l3.len() >= ipv6::HEADER_LEN && ip.version() != 6 {
                return Err(Ipv6BadVersion);
            }
            ip.check_len().map_err(|e| match e {
                Error::Malformed(_) => Ipv6BadPayloadLen,
                _ => Ipv6Truncated,
            })?;
            if ip.next_header() != IpProtocol::Udp {
                return Err(NotUdp);
            }
            if policy.local_ip6 != Some(ip.dst_addr()) {
                return Err(NotLocalDestination);
            }
            let end = ipv6::HEADER_LEN + usize::from(ip.payload_len());
            (IpAddr::V6(ip.src_addr()), ipv6::HEADER_LEN..end)
        }
        _ => return Err(NotIp),
    };

    let udp = UdpPacket::new_checked(&l3[ip_payload.clone()]).map_err(|e| match e {
        Error::Truncated => UdpTruncated,
        _ => UdpBadLength,
    })?;
    if udp.dst_port() != policy.port {
        return Err(WrongPort);
    }
    // No UDP checksum check: see the module documentation.
    let start = ethernet::HEADER_LEN + ip_payload.start + udp::HEADER_LEN;
    Ok((source, start..start + udp.payload().len()))
}

/// The VXLAN half of decapsulation, for a UDP payload that arrived on the VXLAN port from
/// `source` (from [`decapsulate_outer`], or from a UDP socket): checks the VXLAN header, that
/// `source` is a known peer (anti-spoofing), and the inner frame's destination, and returns
/// where the inner Ethernet frame lies in `datagram`.
#[inline]
pub fn decapsulate_vxlan(
    datagram: &[u8],
    source: IpAddr,
    policy: &DecapPolicy,
    is_known_peer: impl Fn(IpAddr) -> bool,
) -> Result<Range<usize>, DropReason> {
    use DropReason::*;

    let vx = VxlanPacket::new_checked(datagram).map_err(|_| VxlanTruncated)?;
    if !vx.has_vni() {
        return Err(VxlanNoIFlag);
    }
    if vx.vni() != policy.vni {
        return Err(WrongVni);
    }
    if !policy.allow_unknown_peers && !is_known_peer(source) {
        return Err(UnknownPeer);
    }
    let inner = EthernetFrame::new_checked(vx.payload()).map_err(|_| InnerTruncated)?;
    let dst = inner.dst_addr();
    if dst != policy.local_mac && !dst.is_broadcast() {
        return Err(InnerNotForUs);
    }
    Ok(vxlan::HEADER_LEN..datagram.len())
}
