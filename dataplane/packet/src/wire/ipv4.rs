//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{checksum, Error, Field, IpProtocol, Result};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// `ident` advanced by `n` packets: the identification field counts modulo 2^16, as Linux's
/// segmentation numbers the segments of one super-frame.
#[inline]
pub fn ident_add(ident: u16, n: usize) -> u16 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the identification field is modulo 2^16, so is the advance"
    )]
    let advance = n as u16;
    ident.wrapping_add(advance)
}

/// The "don't fragment" flag in the flags/fragment offset word.
const FLAG_DF: u16 = 0x4000;
/// The "more fragments" flag.
const FLAG_MF: u16 = 0x2000;
/// The fragment offset, in 8-byte units.
const FRAG_OFFSET_MASK: u16 = 0x1fff;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer whose header, options and `total_len` bytes are all present.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the lengths the getters rely on: `Truncated` if the buffer ends before the fixed
    /// header or the options; `Malformed(HeaderLen)` if IHL < 5; `Malformed(TotalLen)` if
    /// `total_len` is shorter than the header or longer than the buffer. Bytes after
    /// `total_len` (Ethernet padding) are allowed.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed(Field::HeaderLen));
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len || total_len > len {
            return Err(Error::Malformed(Field::TotalLen));
        }
        Ok(())
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let d = &self.buffer.as_ref()[r];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// The version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP and ECN byte (the old TOS).
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Differentiated services code point.
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.dscp_ecn() >> 2
    }

    /// Explicit congestion notification bits.
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.dscp_ecn() & 0x03
    }

    /// Header plus payload length in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// The identification field.
    #[inline]
    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }

    /// The "don't fragment" flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DF != 0
    }

    /// The "more fragments" flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this is a fragment (more to come, or not the first).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.u16_at(field::FLG_OFF) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The payload protocol.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Whether the header (with options) sums to 0xffff.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The options between the fixed header and the payload.
    #[inline]
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload, up to `total_len` (trailing padding excluded).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the version field.
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (value << 4);
    }

    /// Sets the header length in bytes (a multiple of 4, at most 60).
    #[inline]
    pub fn set_header_len(&mut self, value: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((value / 4).to_le_bytes()[0] & 0x0f);
    }

    /// Sets the DSCP and ECN byte.
    #[inline]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }

    /// Sets the identification field.
    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        self.set_u16_at(field::IDENT, value);
    }

    /// Clears DF, MF and the fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        self.set_u16_at(field::FLG_OFF, 0);
    }

    /// Sets or clears "don't fragment".
    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        let raw = self.u16_at(field::FLG_OFF);
        self.set_u16_at(
            field::FLG_OFF,
            if value { raw | FLAG_DF } else { raw & !FLAG_DF },
        );
    }

    /// Sets or clears "more fragments".
    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        let raw = self.u16_at(field::FLG_OFF);
        self.set_u16_at(
            field::FLG_OFF,
            if value { raw | FLAG_MF } else { raw & !FLAG_MF },
        );
    }

    /// Sets the fragment offset in bytes (a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, value: u16) {
        let raw = self.u16_at(field::FLG_OFF);
        self.set_u16_at(field::FLG_OFF, (raw & !FRAG_OFFSET_MASK) | (value >> 3));
    }

    /// Sets the time to live.
    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Sets the payload protocol.
    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.into();
    }

    /// Sets the checksum field as is.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Computes and writes the header checksum (over `header_len` bytes).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(!sum);
    }

    /// The payload, up to `total_len`, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The IPv4 header fields vxdp reads and writes (no options, never fragmented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub next_header: IpProtocol,
    /// Payload length in bytes (total length minus header and options).
    pub payload_len: usize,
    /// Time to live.
    pub hop_limit: u8,
}

impl Repr {
    /// Reads a packet: `Malformed` on a version other than 4 or a bad header checksum,
    /// `Unsupported` for fragments. Options are skipped.
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed(Field::Version));
        }
        if !packet.verify_checksum() {
            return Err(Error::Malformed(Field::Checksum));
        }
        if packet.is_fragment() {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            hop_limit: packet.hop_limit(),
        })
    }

    /// The header length ([`HEADER_LEN`]: emit writes no options).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a header without options, DSCP/ECN 0, ident 0, no flags, and its checksum.
    /// `payload_len` must fit the 16-bit total length (at most 65515).
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len(super::len16(HEADER_LEN + self.payload_len));
        packet.set_ident(0);
        packet.clear_flags();
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::captured;

    fn outer() -> &'static [u8] {
        &captured::V4_CSUM_ICMP[14..]
    }

    #[test]
    fn parses_real_outer_header() {
        let p = Packet::new_checked(outer()).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 134);
        assert_eq!(p.ident(), 0x3814);
        assert!(!p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0xbe4f);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 0, 2, 2));
        assert!(p.verify_checksum());
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 114);
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(repr.payload_len, 114);
        assert_eq!(repr.next_header, IpProtocol::Udp);
    }

    #[test]
    fn parses_real_inner_header_with_df() {
        // The inner ICMP packet: the kernel sets DF on pings.
        let p = Packet::new_checked(&captured::V4_CSUM_ICMP[64..]).unwrap();
        assert!(p.dont_frag());
        assert_eq!(p.next_header(), IpProtocol::Icmp);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 1, 1, 0));
    }

    #[test]
    fn emit_matches_kernel_header_except_ident() {
        let repr = Repr::parse(&Packet::new_checked(outer()).unwrap()).unwrap();
        let mut buf = [0u8; HEADER_LEN];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        p.set_ident(0x3814);
        p.fill_checksum();
        assert_eq!(&buf[..], &outer()[..HEADER_LEN]);
    }

    #[test]
    fn payload_excludes_ethernet_padding() {
        let mut buf = outer().to_vec();
        buf.extend_from_slice(&[0; 10]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload().len(), 114);
    }

    #[test]
    fn rejects_bad_lengths() {
        for len in 0..outer().len() {
            let want = if len < HEADER_LEN {
                Error::Truncated
            } else {
                Error::Malformed(Field::TotalLen)
            };
            assert_eq!(Packet::new_checked(&outer()[..len]), Err(want), "{len}");
        }
        let mut buf = outer().to_vec();
        buf[0] = 0x44; // IHL 4
        assert_eq!(
            Packet::new_checked(&buf[..]),
            Err(Error::Malformed(Field::HeaderLen))
        );
        let mut buf = outer().to_vec();
        buf[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&buf[..]),
            Err(Error::Malformed(Field::TotalLen))
        );
        let mut buf = outer().to_vec();
        buf[0] = 0x4f; // 60-byte header: fits the buffer, total_len 134 still fits
        assert!(Packet::new_checked(&buf[..]).is_ok());
        assert_eq!(Packet::new_checked(&buf[..50]), Err(Error::Truncated));
    }

    #[test]
    fn repr_rejects_version_checksum_and_fragments() {
        let mut buf = outer().to_vec();
        buf[0] = 0x65;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Malformed(Field::Version))
        );
        let mut buf = outer().to_vec();
        buf[8] = 63; // TTL changed, checksum not
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Malformed(Field::Checksum))
        );
        let mut buf = outer().to_vec();
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_more_frags(true);
        p.fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Unsupported)
        );
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_more_frags(false);
        p.set_frag_offset(1480);
        p.fill_checksum();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(Repr::parse(&p), Err(Error::Unsupported));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_dscp_ecn(0xb9);
        p.set_total_len(24);
        p.set_dont_frag(true);
        p.set_frag_offset(8 * 0x1fff);
        p.set_more_frags(true);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.dscp(), p.ecn()), (0x2e, 1));
        assert!(p.dont_frag() && p.more_frags());
        assert_eq!(p.frag_offset(), 8 * 0x1fff);
        assert_eq!(p.options().len(), 4);
        assert!(p.payload().is_empty());
    }
}
