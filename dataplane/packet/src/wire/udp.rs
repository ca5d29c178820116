//! UDP headers (RFC 768) and their checksum over the IPv4 or IPv6 pseudo header.

use std::net::IpAddr;

use super::{checksum, Error, Field, Result};

/// Source port, destination port, length, checksum.
pub const HEADER_LEN: usize = 8;

/// The IP protocol number of UDP.
const PROTOCOL: u8 = 17;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A view of a UDP datagram.
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

    /// Wraps a buffer holding the header and the `len` bytes the header announces.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer ends before the header; `Malformed(Length)` if `len` is
    /// shorter than the header or longer than the buffer. Bytes after `len` are allowed (and
    /// ignored).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN || len > buf_len {
            Err(Error::Malformed(Field::Length))
        } else {
            Ok(())
        }
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

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Header plus payload length.
    #[inline]
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// Whether the payload is empty (`len` is the bare header).
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field; 0 means "not computed" (IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Ones'-complement sum of the pseudo header and the `len` bytes of the datagram; 0xffff
    /// when the stored checksum is right.
    #[inline]
    fn sum(&self, src: &IpAddr, dst: &IpAddr) -> u16 {
        let len = self.len();
        let data = &self.buffer.as_ref()[..usize::from(len)];
        checksum::combine(&[pseudo_header(src, dst, len), checksum::data(data)])
    }

    /// Whether the checksum is right. A zero checksum means "none" and passes over IPv4 but not
    /// over IPv6, where UDP checksums are mandatory (RFC 8200 section 8.1).
    #[inline]
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        if self.checksum() == 0 {
            return src.is_ipv4() && dst.is_ipv4();
        }
        self.sum(src, dst) == 0xffff
    }
}

/// The pseudo header sum for a UDP datagram of `len` bytes. Mixed families, which no real packet
/// has, are summed as IPv6 with the IPv4 address mapped (`::ffff:a.b.c.d`) instead of panicking.
#[inline]
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, len: u16) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_header_v4(s, d, PROTOCOL, len),
        _ => {
            let s = to_v6(src);
            let d = to_v6(dst);
            checksum::pseudo_header_v6(&s, &d, PROTOCOL, u32::from(len))
        }
    }
}

#[inline]
fn to_v6(addr: &IpAddr) -> std::net::Ipv6Addr {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => *a,
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, up to `len` (trailing bytes excluded).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        self.set_u16_at(field::SRC_PORT, value);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        self.set_u16_at(field::DST_PORT, value);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }

    /// Sets the checksum field as is.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    /// Computes and writes the checksum over the pseudo header and `len` bytes. A computed 0 is
    /// sent as 0xffff, since 0 on the wire means "no checksum" (RFC 768).
    #[inline]
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let c = !self.sum(src, dst);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// The payload, up to `len`, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The UDP header fields that are not derived from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Repr {
    /// Reads the ports of a checked datagram; the checksum is left to
    /// [`Packet::verify_checksum`], which needs the IP addresses.
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    /// [`HEADER_LEN`].
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header for a payload of `payload_len` bytes (at most 65527) with checksum 0;
    /// call [`Packet::fill_checksum`] once the payload is in place.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, payload_len: usize) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(super::len16(HEADER_LEN + payload_len));
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::captured;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn parses_real_datagram_and_verifies_kernel_checksum() {
        let p = Packet::new_checked(&captured::V4_CSUM_ICMP[34..]).unwrap();
        assert_eq!(p.src_port(), 40021);
        assert_eq!(p.dst_port(), 8472);
        assert_eq!(p.len(), 114);
        assert_eq!(p.checksum(), 0x0f57);
        assert_eq!(p.payload().len(), 106);
        assert!(p.verify_checksum(&A4, &B4));

        for frame in [&captured::V4_CSUM_TCP_SYN[..], &captured::V4_CSUM_UDP[..]] {
            let p = Packet::new_checked(&frame[34..]).unwrap();
            assert!(p.verify_checksum(&A4, &B4));
        }
    }

    #[test]
    fn verifies_real_ipv6_checksum() {
        let (a, b) = (v6("fd00::1"), v6("fd00::2"));
        for frame in [&captured::V6_ICMP[..], &captured::V6_UDP[..]] {
            let p = Packet::new_checked(&frame[54..]).unwrap();
            assert!(p.verify_checksum(&a, &b));
        }
    }

    #[test]
    fn zero_checksum_means_none_on_ipv4_only() {
        let p = Packet::new_checked(&captured::V4_NOCSUM_ICMP[34..]).unwrap();
        assert_eq!(p.checksum(), 0);
        assert!(p.verify_checksum(&A4, &B4));
        assert!(!p.verify_checksum(&v6("fd00::1"), &v6("fd00::2")));
    }

    #[test]
    fn partial_checksum_from_offloading_kernel_does_not_verify() {
        // What decapsulation must tolerate: see tunnel's note on UDP checksums.
        let p = Packet::new_checked(&captured::V4_PARTIAL_ICMP[34..]).unwrap();
        assert_ne!(p.checksum(), 0);
        assert!(!p.verify_checksum(&A4, &B4));
        // The field holds the folded pseudo header sum, which the NIC would have completed.
        assert_eq!(p.checksum(), pseudo_header(&A4, &B4, p.len()));
    }

    #[test]
    fn fill_checksum_reproduces_kernel() {
        let mut buf = captured::V4_CSUM_ICMP[34..].to_vec();
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(&A4, &B4);
        assert_eq!(p.checksum(), 0x0f57);
        let mut buf = captured::V6_ICMP[54..].to_vec();
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(&v6("fd00::1"), &v6("fd00::2"));
        assert_eq!(&buf[..], &captured::V6_ICMP[54..]);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // A datagram whose checksum comes out as 0: pick a payload word that makes the sum 0xffff.
        let mut buf = [0u8; 10];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        Repr {
            src_port: 1,
            dst_port: 2,
        }
        .emit(&mut p, 2);
        let partial = checksum::combine(&[
            pseudo_header(&A4, &B4, 10),
            checksum::data(&p.as_ref()[..8]),
        ]);
        p.payload_mut().copy_from_slice(&(!partial).to_be_bytes());
        p.fill_checksum(&A4, &B4);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(&A4, &B4));
    }

    #[test]
    fn lengths() {
        let d = &captured::V4_CSUM_ICMP[34..];
        for len in 0..d.len() {
            let want = if len < HEADER_LEN {
                Error::Truncated
            } else {
                Error::Malformed(Field::Length)
            };
            assert_eq!(Packet::new_checked(&d[..len]), Err(want), "{len}");
        }
        let mut buf = d.to_vec();
        buf[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&buf[..]),
            Err(Error::Malformed(Field::Length))
        );
        buf[4..6].copy_from_slice(&8u16.to_be_bytes());
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.is_empty() && p.payload().is_empty());
        let repr = Repr::parse(&p).unwrap();
        assert_eq!((repr.src_port, repr.dst_port), (40021, 8472));
    }
}
