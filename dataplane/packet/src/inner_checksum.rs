//! Inner TCP/UDP checksums a kernel peer left unfinished.
//!
//! A Linux sender with checksum offload (CHECKSUM_PARTIAL) writes only the pseudo-header sum
//! into the transport checksum field and leaves the rest to the NIC. A physical NIC completes
//! it before the frame reaches the wire; a veth or other virtual NIC never does, and the
//! receiving kernel trusts the skb's checksum state instead of the bytes. AF_XDP hands vxdp the
//! bytes alone, so a kernel vxlan peer on the same machine (or behind a virtual switch) would
//! have every TCP segment dropped by our kernel's checksum check.
//!
//! The residue is recognisable: the field equals the pseudo-header sum exactly. Only then is the
//! full sum computed: if it is already right nothing changes, otherwise the checksum is
//! completed as the NIC would have. A frame damaged in flight still fails, because its field is
//! a finished checksum, not the residue (a coincidence has odds of 1 in 65536 per damaged frame,
//! the same as the checksum's own blind spot). Frames without the residue cost one pseudo-header
//! sum and are left for the kernel to verify.

use crate::wire::{checksum, ethernet, ipv4, ipv6, EtherType, IpProtocol};

/// What [`complete_partial_checksum`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerChecksum {
    /// Not an unfragmented IPv4/IPv6 TCP or UDP frame with a checksum: left alone.
    NotApplicable,
    /// The field was not the partial residue (or already right): left for the kernel to check.
    Untouched,
    /// The field held the partial residue and was completed in place.
    Completed,
}

/// Completes a partial TCP/UDP checksum in the inner Ethernet `frame`, if it has one.
#[inline]
pub fn complete_partial_checksum(frame: &mut [u8]) -> InnerChecksum {
    let Some((l4_start, l4_len, proto, pseudo)) = locate(frame) else {
        return InnerChecksum::NotApplicable;
    };
    let field_at = l4_start
        + match proto {
            IpProtocol::Tcp => 16,
            _ => 6,
        };
    let Some(end) = l4_start.checked_add(l4_len) else {
        return InnerChecksum::NotApplicable;
    };
    if end > frame.len() || field_at + 2 > end {
        return InnerChecksum::NotApplicable;
    }
    let field = u16::from_be_bytes([frame[field_at], frame[field_at + 1]]);
    if proto == IpProtocol::Udp && field == 0 && !is_v6(frame) {
        return InnerChecksum::NotApplicable; // IPv4 UDP without a checksum
    }
    if !same_ones_complement(field, pseudo) {
        return InnerChecksum::Untouched;
    }
    let segment = &mut frame[l4_start..end];
    if checksum::combine(&[pseudo, checksum::data(segment)]) == 0xffff {
        return InnerChecksum::Untouched; // a finished checksum that happens to equal the residue
    }
    let off = field_at - l4_start;
    segment[off..off + 2].copy_from_slice(&[0, 0]);
    let mut sum = !checksum::combine(&[pseudo, checksum::data(segment)]);
    if proto == IpProtocol::Udp && sum == 0 {
        sum = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    segment[off..off + 2].copy_from_slice(&sum.to_be_bytes());
    InnerChecksum::Completed
}

/// 0x0000 and 0xffff are both zero in ones' complement arithmetic.
fn same_ones_complement(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

fn is_v6(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x86, 0xdd])
}

/// Transport offset, length, protocol and pseudo-header sum of an unfragmented TCP/UDP frame.
fn locate(frame: &[u8]) -> Option<(usize, usize, IpProtocol, u16)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let l3 = ethernet::HEADER_LEN;
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = ipv4::Packet::new_checked(&frame[l3..]).ok()?;
            if ip.is_fragment() {
                return None;
            }
            let proto = ip.next_header();
            if proto != IpProtocol::Tcp && proto != IpProtocol::Udp {
                return None;
            }
            let hl = ip.header_len();
            let ip_payload_len = usize::from(ip.total_len()).checked_sub(hl)?;
            let l4_len = covered_len(frame, l3 + hl, ip_payload_len, proto)?;
            let pseudo = checksum::pseudo_header_v4(
                &ip.src_addr(),
                &ip.dst_addr(),
                proto.into(),
                u16::try_from(l4_len).ok()?,
            );
            Some((l3 + hl, l4_len, proto, pseudo))
        }
        EtherType::Ipv6 => {
            let ip = ipv6::Packet::new_checked(&frame[l3..]).ok()?;
            let proto = ip.next_header();
            if proto != IpProtocol::Tcp && proto != IpProtocol::Udp {
                return None;
            }
            let l4_len = covered_len(
                frame,
                l3 + ipv6::HEADER_LEN,
                usize::from(ip.payload_len()),
                proto,
            )?;
            let pseudo = checksum::pseudo_header_v6(
                &ip.src_addr(),
                &ip.dst_addr(),
                proto.into(),
                u32::try_from(l4_len).ok()?,
            );
            Some((l3 + ipv6::HEADER_LEN, l4_len, proto, pseudo))
        }
        _ => None,
    }
}

/// The bytes the transport checksum covers, also the pseudo header's length: the IP payload for
/// TCP; for UDP its own length field (RFC 768), which is what a sender puts in the residue and
/// what a receiver checks (Linux `udp_rcv` drops a datagram longer than the IP payload and trims
/// the payload to a shorter one).
fn covered_len(
    frame: &[u8],
    l4_start: usize,
    ip_payload_len: usize,
    proto: IpProtocol,
) -> Option<usize> {
    if proto != IpProtocol::Udp {
        return Some(ip_payload_len);
    }
    let at = l4_start.checked_add(4)?;
    let len = frame.get(at..at + 2)?;
    let udp_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    (8..=ip_payload_len).contains(&udp_len).then_some(udp_len)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use testkit::checksum::{ones_complement_sum, pseudo_header_v4, tcp_sum};
    use testkit::packet::{fix_ipv4_checksum, Tcp};

    use super::*;

    /// The TCP frame of these tests: 10.244.2.0:5201 to 10.244.1.0:40000, 100 bytes of payload.
    fn tcp() -> Tcp {
        Tcp {
            src_ip: Ipv4Addr::new(10, 244, 2, 0).into(),
            dst_ip: Ipv4Addr::new(10, 244, 1, 0).into(),
            src_port: 5201,
            dst_port: 40000,
            flags: 0x18,
            ..Tcp::default()
        }
    }

    fn payload() -> Vec<u8> {
        (0..100u8).collect()
    }

    /// An Ethernet/IPv4/TCP frame with a correct TCP checksum.
    fn tcp_frame() -> Vec<u8> {
        tcp().frame(&payload())
    }

    fn tcp_valid(f: &[u8]) -> bool {
        tcp_sum(f, 34, f.len()) == 0xffff
    }

    #[test]
    fn a_partial_residue_is_completed() {
        let good = tcp_frame();
        // What Linux leaves with CHECKSUM_PARTIAL: the folded pseudo-header sum.
        let mut partial = tcp().partial_frame(&payload());
        assert!(!tcp_valid(&partial));
        assert_eq!(
            complete_partial_checksum(&mut partial),
            InnerChecksum::Completed
        );
        assert_eq!(partial, good);
        assert!(tcp_valid(&partial));
    }

    #[test]
    fn finished_and_damaged_checksums_are_left_alone() {
        let mut good = tcp_frame();
        let copy = good.clone();
        assert_eq!(
            complete_partial_checksum(&mut good),
            InnerChecksum::Untouched
        );
        assert_eq!(good, copy);
        let mut damaged = tcp_frame();
        damaged[100] ^= 0x40; // a bit flipped in flight
        let before = damaged.clone();
        assert_eq!(
            complete_partial_checksum(&mut damaged),
            InnerChecksum::Untouched
        );
        assert_eq!(
            damaged, before,
            "a damaged frame must still fail the kernel's check"
        );
        assert!(!tcp_valid(&damaged));
    }

    #[test]
    fn non_transport_frames_and_garbage_are_not_applicable() {
        let mut f = tcp_frame();
        f[23] = 1; // ICMP
        assert_eq!(
            complete_partial_checksum(&mut f),
            InnerChecksum::NotApplicable
        );
        let mut frag = tcp_frame();
        frag[20] = 0x20; // MF
        assert_eq!(
            complete_partial_checksum(&mut frag),
            InnerChecksum::NotApplicable
        );
        let full = tcp_frame();
        for len in 0..full.len() {
            let mut t = full[..len].to_vec();
            let _ = complete_partial_checksum(&mut t);
        }
    }

    #[test]
    fn ipv4_udp_without_checksum_is_not_touched() {
        let mut f = tcp_frame();
        f[23] = 17;
        f[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(
            complete_partial_checksum(&mut f),
            InnerChecksum::NotApplicable
        );
    }

    fn pseudo_udp(len: u16) -> u16 {
        let pseudo = pseudo_header_v4(
            Ipv4Addr::new(10, 244, 2, 0),
            Ipv4Addr::new(10, 244, 1, 0),
            17,
            len,
        );
        ones_complement_sum(&[&pseudo])
    }

    /// `tcp_frame` turned into UDP with `udp_len` in the UDP header (the IP payload stays 120
    /// bytes) and a checksum right over those `udp_len` bytes.
    fn udp_frame(udp_len: u16) -> Vec<u8> {
        let mut f = tcp_frame();
        f[23] = 17;
        fix_ipv4_checksum(&mut f);
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f[40..42].copy_from_slice(&[0, 0]);
        let end = 34 + usize::from(udp_len).min(120);
        let sum = !ones_complement_sum(&[&pseudo_udp(udp_len).to_be_bytes(), &f[34..end]]);
        f[40..42].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn udp_valid(f: &[u8], udp_len: u16) -> bool {
        let end = 34 + usize::from(udp_len);
        ones_complement_sum(&[&pseudo_udp(udp_len).to_be_bytes(), &f[34..end]]) == 0xffff
    }

    #[test]
    fn udp_checksums_cover_the_udp_length() {
        // A whole datagram: the residue is completed.
        let good = udp_frame(120);
        let mut partial = good.clone();
        partial[40..42].copy_from_slice(&pseudo_udp(120).to_be_bytes());
        assert_eq!(
            complete_partial_checksum(&mut partial),
            InnerChecksum::Completed
        );
        assert_eq!(partial, good);

        // Bytes after the datagram in the IP payload: the residue and the sum are over the UDP
        // length, as the sender computed and the receiver checks them; the rest is not covered.
        let good = udp_frame(100);
        assert!(udp_valid(&good, 100));
        let mut partial = good.clone();
        partial[40..42].copy_from_slice(&pseudo_udp(100).to_be_bytes());
        assert_eq!(
            complete_partial_checksum(&mut partial),
            InnerChecksum::Completed
        );
        assert_eq!(partial, good);
        let mut ip_len_residue = good.clone();
        ip_len_residue[40..42].copy_from_slice(&pseudo_udp(120).to_be_bytes());
        let before = ip_len_residue.clone();
        assert_ne!(
            complete_partial_checksum(&mut ip_len_residue),
            InnerChecksum::Completed
        );
        assert_eq!(ip_len_residue, before);

        // A UDP length beyond the IP payload, or shorter than the UDP header: the receiver drops
        // the datagram, so there is nothing to complete.
        for udp_len in [121, 0xffff, 7, 0] {
            let mut f = udp_frame(udp_len);
            f[40..42].copy_from_slice(&pseudo_udp(120).to_be_bytes());
            let before = f.clone();
            assert_eq!(
                complete_partial_checksum(&mut f),
                InnerChecksum::NotApplicable,
                "UDP length {udp_len}"
            );
            assert_eq!(f, before);
        }
    }

    /// Found by the `inner_checksum` fuzz target (minimized): UDP length 0xff0a in a 22-byte IP
    /// payload, with the checksum field equal to the residue over the IP payload length. It used
    /// to be "completed" over the IP payload, a sum no receiver checks.
    #[test]
    fn fuzz_udp_length_beyond_the_ip_payload() {
        let mut frame = [
            0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x08, 0x00,
            0x45, 0x00, 0x00, 0x2a, 0x20, 0xd5, 0x40, 0x00, 0x40, 0x11, 0x02, 0xed, 0x0a, 0x01,
            0x01, 0x00, 0x0a, 0x01, 0x02, 0x00, 0xd6, 0x52, 0x9d, 0xff, 0xff, 0x0a, 0x17, 0x29,
            0xb7, 0x70, 0x69, 0x6e, 0x67, 0x20, 0x6f, 0x76, 0x65, 0x72, 0x75, 0x64, 0x70, 0x0a,
        ];
        let before = frame;
        assert_eq!(
            complete_partial_checksum(&mut frame),
            InnerChecksum::NotApplicable
        );
        assert_eq!(frame, before);
    }
}
