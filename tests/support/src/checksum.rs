//! The Internet checksum (RFC 1071) written out a byte at a time: the reference that tests and
//! fuzzers check vxdp's checksums against. It shares no code with `packet::wire::checksum`, the
//! code under test, and is meant to be obviously right rather than fast.
//!
//! The frame-level helpers read an Ethernet frame at fixed offsets: IPv4 (EtherType 0x0800) or
//! IPv6 (0x86dd) right after a 14-byte Ethernet header, TCP wherever the caller says.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement sum of the concatenation of `parts`: big-endian 16-bit words, an odd
/// last byte padded with zero, carries added back in (end-around carry). Not complemented: over
/// a region whose checksum field is right it comes to 0xffff, and over a pseudo header alone it
/// is what a sender with checksum offload leaves in the field (a partial checksum).
pub fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    // Whether the next byte is the high half of a word; parts need not be of even length.
    let mut high = true;
    for &byte in parts.iter().flat_map(|p| p.iter()) {
        sum += if high {
            u32::from(byte) << 8
        } else {
            u32::from(byte)
        };
        high = !high;
        if sum > 0xffff {
            sum -= 0xffff;
        }
    }
    sum as u16
}

/// The Internet checksum of the concatenation of `parts`: the complement of
/// [`ones_complement_sum`], what goes into a checksum field that was zero while summing. Over a
/// region whose checksum field is right it is 0.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    !ones_complement_sum(parts)
}

/// The IPv4 pseudo header that TCP and UDP checksums cover (RFC 9293 section 3.1, RFC 768):
/// source, destination, zero, protocol, transport length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = protocol;
    p[10..12].copy_from_slice(&len.to_be_bytes());
    p
}

/// The IPv6 pseudo header (RFC 8200 section 8.1): source, destination, 32-bit upper-layer
/// length, three zero bytes, next header.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&len.to_be_bytes());
    p[39] = next_header;
    p
}

/// The TCP pseudo header for a segment of `tcp_len` bytes in an Ethernet frame, the addresses
/// read from the frame's IPv4 or IPv6 header (by EtherType).
pub fn tcp_pseudo_header(frame: &[u8], tcp_len: usize) -> Vec<u8> {
    const TCP: u8 = 6;
    if frame[12..14] == [0x86, 0xdd] {
        let addr = |at: usize| {
            let octets: [u8; 16] = frame[at..at + 16].try_into().expect("16 bytes");
            Ipv6Addr::from(octets)
        };
        pseudo_header_v6(addr(22), addr(38), TCP, tcp_len as u32).to_vec()
    } else {
        let addr =
            |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        pseudo_header_v4(addr(26), addr(30), TCP, tcp_len as u16).to_vec()
    }
}

/// The ones'-complement sum of the TCP pseudo header and the segment `frame[tcp_at..end]`:
/// 0xffff when the segment's checksum is right.
pub fn tcp_sum(frame: &[u8], tcp_at: usize, end: usize) -> u16 {
    let segment = &frame[tcp_at..end];
    ones_complement_sum(&[&tcp_pseudo_header(frame, segment.len()), segment])
}

/// Writes the TCP checksum of the segment `frame[tcp_at..end]` (see [`tcp_sum`]).
pub fn fix_tcp_checksum(frame: &mut [u8], tcp_at: usize, end: usize) {
    let field = tcp_at + 16..tcp_at + 18;
    frame[field.clone()].fill(0);
    let c = !tcp_sum(frame, tcp_at, end);
    frame[field].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn sums_the_rfc_1071_example_in_any_split() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&[&bytes]), 0xddf2);
        assert_eq!(ones_complement_sum(&[&bytes[..3], &bytes[3..]]), 0xddf2);
        assert_eq!(internet_checksum(&[&bytes]), !0xddf2);
        // An odd last byte is the high half of a word.
        assert_eq!(ones_complement_sum(&[&[0x12]]), 0x1200);
        assert_eq!(ones_complement_sum(&[]), 0);
    }

    /// An IPv4 header with its checksum (b861) in place sums to 0xffff.
    #[test]
    fn an_ipv4_header_with_its_checksum_in_place_verifies() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ones_complement_sum(&[&header]), 0xffff);
        assert_eq!(internet_checksum(&[&header]), 0);
    }
}
