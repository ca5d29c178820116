//! TCP headers (RFC 9293 section 3.1; CWR and ECE from RFC 3168), as far as segmentation and
//! receive coalescing read and write them: ports, sequence and acknowledgment numbers, data
//! offset, flags, window, checksum, urgent pointer and the option bytes as a whole.

use super::{checksum, Error, Field, Result};

/// Header length without options.
pub const HEADER_LEN: usize = 20;
/// Largest header: data offset 15 words.
pub const MAX_HEADER_LEN: usize = 60;

/// The IP protocol number of TCP.
pub const PROTOCOL: u8 = 6;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Offset of the checksum field: the `csum_offset` a vnet header gives for TCP.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// `seq` advanced by `bytes`: sequence numbers count modulo 2^32 (RFC 9293 section 3.4), and
/// so does the advance.
#[inline]
pub fn seq_add(seq: u32, bytes: usize) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "sequence space is modulo 2^32, so is the advance"
    )]
    let advance = bytes as u32;
    seq.wrapping_add(advance)
}

/// The flag bits of byte 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is significant.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;

    /// Whether every bit of `bits` is set.
    #[inline]
    pub const fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// A view of a TCP segment: the header (options included) and what follows.
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

    /// Wraps a buffer that holds the whole header its data offset announces.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer ends before the fixed header or before the data offset;
    /// `Malformed(HeaderLen)` if the data offset is below 5 words.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            Err(Error::Malformed(Field::HeaderLen))
        } else if header_len > len {
            Err(Error::Truncated)
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

    #[inline]
    fn u32_at(&self, r: core::ops::Range<usize>) -> u32 {
        let d = &self.buffer.as_ref()[r];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK)
    }

    /// Header length in bytes, options included (data offset times 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Window.
    #[inline]
    pub fn window(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }

    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// Whether the checksum over `pseudo` (the pseudo header sum without the length, see
    /// [`checksum::pseudo_header_v4`] with length 0) and the whole buffer is right.
    #[inline]
    pub fn verify_checksum(&self, pseudo: u16) -> bool {
        let segment = self.buffer.as_ref();
        // A segment is never longer than its IP packet's 16-bit length field.
        let len = super::len16(segment.len());
        checksum::combine(&[pseudo, len, checksum::data(segment)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The option bytes (between the fixed header and the payload).
    #[inline]
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: everything after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4 between 20 and 60); the reserved bits
    /// are cleared.
    #[inline]
    pub fn set_header_len(&mut self, value: usize) {
        // At most 60 / 4 = 15: fits the four bits.
        self.buffer.as_mut()[field::DATA_OFF] = (value / 4).to_le_bytes()[0] << 4;
    }

    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, value: Flags) {
        self.buffer.as_mut()[field::FLAGS] = value.0;
    }

    /// Sets the window.
    #[inline]
    pub fn set_window(&mut self, value: u16) {
        self.set_u16_at(field::WINDOW, value);
    }

    /// Sets the checksum field as is.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent(&mut self, value: u16) {
        self.set_u16_at(field::URGENT, value);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The TCP header fields vxdp reads and writes; options are carried as opaque bytes by the
/// callers that need them (segmentation copies them, coalescing compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Flags.
    pub flags: Flags,
    /// Window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
}

impl Repr {
    /// Reads a checked segment's fixed header; the checksum is left to
    /// [`Packet::verify_checksum`], which needs the pseudo header.
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent: packet.urgent(),
        })
    }

    /// [`HEADER_LEN`]: emit writes no options.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a header without options and with checksum 0.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_window(self.window);
        packet.set_checksum(0);
        packet.set_urgent(self.urgent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A SYN from 10.5.1.2:41234 to 10.5.2.3:5201 with the options Linux puts on one (MSS 1460,
    /// SACK-permitted, timestamps, NOP, window scale 7); its checksum bytes are arbitrary.
    const SYN: [u8; 40] = [
        0xa1, 0x12, 0x14, 0x51, 0x5a, 0x1c, 0x3b, 0x7e, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x2b, 0x8c, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x8b, 0x1d,
        0x77, 0x3a, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    fn pseudo() -> u16 {
        checksum::pseudo_header_v4(
            &Ipv4Addr::new(10, 5, 1, 2),
            &Ipv4Addr::new(10, 5, 2, 3),
            PROTOCOL,
            0,
        )
    }

    #[test]
    fn reads_every_field_of_a_syn() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 41234);
        assert_eq!(p.dst_port(), 5201);
        assert_eq!(p.seq_number(), 0x5a1c_3b7e);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), Flags(Flags::SYN));
        assert!(p.flags().contains(Flags::SYN) && !p.flags().contains(Flags::ACK));
        assert_eq!(p.window(), 64240);
        assert_eq!(p.urgent(), 0);
        assert_eq!(p.options().len(), 20);
        assert_eq!(&p.options()[..4], &[0x02, 0x04, 0x05, 0xb4]); // MSS 1460
        assert!(p.payload().is_empty());
    }

    #[test]
    fn checksum_set_by_emit_and_fill_verifies_and_detects_damage() {
        let mut seg = SYN;
        let mut p = Packet::new_unchecked(&mut seg[..]);
        p.set_checksum(0);
        let sum = checksum::combine(&[pseudo(), 40, checksum::data(p.as_ref())]);
        p.set_checksum(!sum);
        assert!(Packet::new_unchecked(&seg[..]).verify_checksum(pseudo()));
        seg[30] ^= 1;
        assert!(!Packet::new_unchecked(&seg[..]).verify_checksum(pseudo()));
    }

    #[test]
    fn check_len_refuses_short_buffers_and_bad_offsets() {
        assert_eq!(
            Packet::new_checked(&SYN[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&SYN[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = SYN;
        bad[12] = 0x40; // 16 bytes
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed(Field::HeaderLen)
        );
        // Every prefix either parses or is refused; none panics.
        for n in 0..=SYN.len() {
            if let Ok(p) = Packet::new_checked(&SYN[..n]) {
                let _ = (p.options(), p.payload(), p.flags());
            }
        }
    }

    #[test]
    fn repr_round_trips_through_emit() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        let mut out = [0u8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        let q = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(Repr::parse(&q).unwrap(), repr);
        assert_eq!(q.header_len(), HEADER_LEN);
        assert_eq!(&out[..12], &SYN[..12]);
    }
}
