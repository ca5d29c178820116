//! Encapsulation: outer Ethernet/IP/UDP/VXLAN headers written in front of an inner frame.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::flow::{flow_hash, source_port};
use crate::wire::{
    self, checksum, ethernet, ipv4, ipv6, udp, vxlan, EtherType, EthernetFrame, EthernetRepr,
    IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr, MacAddr, UdpPacket, Vni, VxlanPacket, VxlanRepr,
};

/// Outer header length over IPv4: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const OUTER_LEN_V4: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + UDP_VXLAN_LEN;
/// Outer header length over IPv6: Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8.
pub const OUTER_LEN_V6: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + UDP_VXLAN_LEN;
/// The headroom a buffer needs in front of the inner frame for either family.
pub const MAX_OUTER_LEN: usize = OUTER_LEN_V6;

const UDP_VXLAN_LEN: usize = udp::HEADER_LEN + vxlan::HEADER_LEN;

/// What the outer headers towards one peer VTEP hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OuterParams {
    /// This node's underlay NIC MAC.
    pub src_mac: MacAddr,
    /// The underlay next hop's MAC (the peer itself or a router).
    pub dst_mac: MacAddr,
    /// This node's underlay address (flannel's PublicIP).
    pub src_ip: IpAddr,
    /// The peer VTEP; same family as `src_ip`.
    pub dst_ip: IpAddr,
    /// The peer's VXLAN port (flannel: 8472).
    pub dst_port: u16,
    /// The network identifier (flannel: 1).
    pub vni: Vni,
    /// Whether to compute the UDP checksum over IPv4 (flannel's `udpcsum`; off by default, as
    /// RFC 7348 allows). Ignored over IPv6, which always computes it: Linux peers drop zero UDP
    /// checksums over IPv6 unless configured with `udp6zerocsumrx`.
    pub udp_checksum: bool,
    /// Source ports to spread flows over.
    pub src_port_range: RangeInclusive<u16>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

impl OuterParams {
    /// Linux's default `ip_local_port_range`, which its vxlan driver uses for source ports.
    pub const DEFAULT_SRC_PORT_RANGE: RangeInclusive<u16> = 32768..=60999;
    /// The TTL Linux's vxlan driver uses when none is configured.
    pub const DEFAULT_TTL: u8 = 64;
}

/// Why a frame could not be encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Fewer than `OuterHeader::len()` bytes in front of the inner frame.
    #[error("not enough headroom in front of the inner frame for the outer headers")]
    NoHeadroom,
    /// The inner frame is shorter than an Ethernet header.
    #[error("inner frame shorter than an Ethernet header")]
    InnerTooShort,
    /// The encapsulated packet would exceed the 65535-byte IPv4 total length or IPv6 payload.
    #[error("encapsulated packet would exceed the IP length limit")]
    TooLong,
    /// `inner_start + inner_len` runs past the end of the buffer.
    #[error("inner frame runs past the end of the buffer")]
    InnerOutOfBounds,
    /// Source and destination IP are not of the same family.
    #[error("outer source and destination addresses are of different IP families")]
    MixedFamilies,
    /// The source port range is empty.
    #[error("empty UDP source port range")]
    EmptyPortRange,
}

/// Prebuilt outer headers towards one peer, so that per frame only a 50- or 70-byte copy and a
/// few field writes remain.
///
/// The template holds every constant field; length, IPv4 ident, source port and the checksums
/// are filled per frame. The checksums start from sums precomputed over the template (with those
/// fields zero), to which the per-frame fields are added.
#[derive(Debug, Clone)]
pub struct OuterHeader {
    template: [u8; MAX_OUTER_LEN],
    len: usize,
    ipv6: bool,
    udp_checksum: bool,
    /// Sum of the IPv4 header template (total length, ident and checksum zero).
    ip_sum: u16,
    /// Sum of the pseudo header without its length and of the UDP and VXLAN header template
    /// (source port, length and checksum zero).
    udp_sum: u16,
    params: OuterParams,
}

impl OuterHeader {
    /// Builds the template; fails on mixed address families or an empty port range.
    pub fn new(p: &OuterParams) -> Result<Self, EncapError> {
        if p.src_port_range.is_empty() {
            return Err(EncapError::EmptyPortRange);
        }
        let mut t = [0u8; MAX_OUTER_LEN];
        let (len, ipv6, ethertype) = match (p.src_ip, p.dst_ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (OUTER_LEN_V4, false, EtherType::Ipv4),
            (IpAddr::V6(_), IpAddr::V6(_)) => (OUTER_LEN_V6, true, EtherType::Ipv6),
            _ => return Err(EncapError::MixedFamilies),
        };
        EthernetRepr {
            src_addr: p.src_mac,
            dst_addr: p.dst_mac,
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut t[..]));

        let ip_start = ethernet::HEADER_LEN;
        let udp_start = len - UDP_VXLAN_LEN;
        let (ip_sum, pseudo_sum) = match (p.src_ip, p.dst_ip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut t[ip_start..udp_start]);
                ip.set_version(4);
                ip.set_header_len(ipv4::HEADER_LEN);
                ip.set_dscp_ecn(0);
                ip.set_total_len(0);
                ip.set_ident(0);
                // DF clear, like Linux vxlan without `df set`: the inner packet may be up to the
                // underlay MTU minus 50, and routers in between may still fragment.
                ip.clear_flags();
                ip.set_hop_limit(p.ttl);
                ip.set_next_header(IpProtocol::Udp);
                ip.set_checksum(0);
                ip.set_src_addr(src);
                ip.set_dst_addr(dst);
                let ip_sum = checksum::data(&t[ip_start..udp_start]);
                (ip_sum, checksum::pseudo_header_v4(&src, &dst, 17, 0))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                Ipv6Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Udp,
                    payload_len: 0,
                    hop_limit: p.ttl,
                }
                .emit(&mut Ipv6Packet::new_unchecked(&mut t[ip_start..udp_start]));
                (0, checksum::pseudo_header_v6(&src, &dst, 17, 0))
            }
            _ => return Err(EncapError::MixedFamilies),
        };

        let mut udp = UdpPacket::new_unchecked(&mut t[udp_start..len]);
        udp.set_src_port(0);
        udp.set_dst_port(p.dst_port);
        udp.set_len(0);
        udp.set_checksum(0);
        VxlanRepr { vni: p.vni }.emit(&mut VxlanPacket::new_unchecked(
            &mut t[udp_start + udp::HEADER_LEN..len],
        ));
        let udp_sum = checksum::combine(&[pseudo_sum, checksum::data(&t[udp_start..len])]);

        Ok(OuterHeader {
            template: t,
            len,
            ipv6,
            udp_checksum: ipv6 || p.udp_checksum,
            ip_sum,
            udp_sum,
            params: p.clone(),
        })
    }

    /// The outer header length: [`OUTER_LEN_V4`] or [`OUTER_LEN_V6`]. Never zero.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The peer VTEP the headers address.
    #[inline]
    pub fn dst_ip(&self) -> IpAddr {
        self.params.dst_ip
    }

    /// This node's underlay address.
    #[inline]
    pub fn src_ip(&self) -> IpAddr {
        self.params.src_ip
    }

    /// Whether the UDP checksum is computed (always over IPv6).
    #[inline]
    pub fn udp_checksum(&self) -> bool {
        self.udp_checksum
    }

    /// What the headers were built from.
    #[inline]
    pub fn params(&self) -> &OuterParams {
        &self.params
    }

    /// The template bytes (per-frame fields zero).
    #[inline]
    pub fn template(&self) -> &[u8] {
        &self.template[..self.len]
    }
}

/// Writes the outer Ethernet/IP/UDP/VXLAN headers into `buf[inner_start - outer.len() ..
/// inner_start]`, in front of the inner Ethernet frame already at `buf[inner_start ..
/// inner_start + inner_len]` (the inner frame is not copied). Returns the offset where the
/// finished packet starts; its length is `outer.len() + inner_len`.
///
/// `ip_ident` is the outer IPv4 identification (ignored over IPv6); with DF clear it must vary
/// per packet (RFC 6864), so the caller keeps a counter.
#[inline]
pub fn encapsulate(
    buf: &mut [u8],
    inner_start: usize,
    inner_len: usize,
    outer: &OuterHeader,
    ip_ident: u16,
) -> Result<usize, EncapError> {
    let inner_end = inner_start
        .checked_add(inner_len)
        .ok_or(EncapError::InnerOutOfBounds)?;
    if inner_end > buf.len() {
        return Err(EncapError::InnerOutOfBounds);
    }
    if inner_len < ethernet::HEADER_LEN {
        return Err(EncapError::InnerTooShort);
    }
    let udp_len = UDP_VXLAN_LEN + inner_len;
    let ip_header_len = if outer.ipv6 { 0 } else { ipv4::HEADER_LEN };
    if ip_header_len + udp_len > usize::from(u16::MAX) {
        return Err(EncapError::TooLong);
    }
    let udp_len = wire::len16(udp_len);
    let start = inner_start
        .checked_sub(outer.len)
        .ok_or(EncapError::NoHeadroom)?;

    let (head, rest) = buf.split_at_mut(inner_start);
    let inner = &rest[..inner_len];
    let hdr = &mut head[start..];
    hdr.copy_from_slice(&outer.template[..outer.len]);

    let ip_start = ethernet::HEADER_LEN;
    let udp_start = outer.len - UDP_VXLAN_LEN;
    if outer.ipv6 {
        Ipv6Packet::new_unchecked(&mut hdr[ip_start..udp_start]).set_payload_len(udp_len);
    } else {
        let total_len = wire::len16(ipv4::HEADER_LEN) + udp_len;
        let mut ip = Ipv4Packet::new_unchecked(&mut hdr[ip_start..udp_start]);
        ip.set_total_len(total_len);
        ip.set_ident(ip_ident);
        ip.set_checksum(!checksum::combine(&[outer.ip_sum, total_len, ip_ident]));
    }

    let src_port = source_port(flow_hash(inner), &outer.params.src_port_range);
    let mut udp = UdpPacket::new_unchecked(&mut hdr[udp_start..udp_start + udp::HEADER_LEN]);
    udp.set_src_port(src_port);
    udp.set_len(udp_len);
    if outer.udp_checksum {
        // The length appears twice: in the pseudo header and in the UDP header.
        let sum = checksum::combine(&[
            outer.udp_sum,
            src_port,
            udp_len,
            udp_len,
            checksum::data(inner),
        ]);
        let c = !sum;
        udp.set_checksum(if c == 0 { 0xffff } else { c });
    }
    Ok(start)
}
