//! VXLAN headers (RFC 7348 section 5).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use core::fmt;

use super::{Error, Field, Result};

/// Flags, reserved, VNI, reserved.
pub const HEADER_LEN: usize = 8;

/// The I flag: "the VNI is valid"; the only flag RFC 7348 defines, and it must be set.
pub const FLAG_I: u8 = 0x08;

/// The IANA port (RFC 7348 section 5); flannel and the Linux default use 8472 instead.
pub const IANA_PORT: u16 = 4789;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: core::ops::RangeFrom<usize> = 8..;
}

/// A 24-bit VXLAN Network Identifier; the type guarantees it fits the header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// `None` if `value` does not fit 24 bits.
    #[inline]
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The VNI as a number.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The three header bytes, big-endian.
    #[inline]
    pub const fn to_be_bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// From three header bytes.
    #[inline]
    pub const fn from_be_bytes(b: [u8; 3]) -> Vni {
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A view of a VXLAN header and the inner frame after it.
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

    /// Wraps a buffer holding at least the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set.
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24 reserved bits after the flags (ignored on receipt, RFC 7348).
    #[inline]
    pub fn reserved1(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::RESERVED1];
        u32::from_be_bytes([0, d[0], d[1], d[2]])
    }

    /// The VNI.
    #[inline]
    pub fn vni(&self) -> Vni {
        let d = &self.buffer.as_ref()[field::VNI];
        Vni::from_be_bytes([d[0], d[1], d[2]])
    }

    /// The reserved byte after the VNI (ignored on receipt).
    #[inline]
    pub fn reserved2(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED2]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the first reserved field (low 24 bits of `value`).
    #[inline]
    pub fn set_reserved1(&mut self, value: u32) {
        let b = value.to_be_bytes();
        self.buffer.as_mut()[field::RESERVED1].copy_from_slice(&b[1..]);
    }

    /// Sets the VNI.
    #[inline]
    pub fn set_vni(&mut self, value: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the reserved byte after the VNI.
    #[inline]
    pub fn set_reserved2(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED2] = value;
    }

    /// The inner frame, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The network identifier.
    pub vni: Vni,
}

impl Repr {
    /// Reads a header; `Malformed` without the I flag. Other flags and the reserved fields are
    /// ignored, as RFC 7348 asks of receivers.
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(Error::Malformed(Field::Flags));
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// [`HEADER_LEN`].
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes flags 0x08, the VNI and zero reserved fields.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.set_reserved1(0);
        packet.set_vni(self.vni);
        packet.set_reserved2(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::captured;

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(0).map(Vni::get), Some(0));
        assert_eq!(Vni::new(Vni::MAX).map(Vni::get), Some(0xff_ffff));
        assert_eq!(Vni::new(1 << 24), None);
        assert_eq!(Vni::new(u32::MAX), None);
        let v = Vni::new(0x12_3456).unwrap();
        assert_eq!(Vni::from_be_bytes(v.to_be_bytes()), v);
        assert_eq!(v.to_string(), "1193046");
    }

    #[test]
    fn parses_real_headers() {
        let p = Packet::new_checked(&captured::V4_CSUM_ICMP[42..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!((p.reserved1(), p.reserved2()), (0, 0));
        assert_eq!(p.vni().get(), 1);
        assert_eq!(p.payload().len(), 98);
        let p = Packet::new_checked(&captured::V4_VNI42_ICMP[42..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap().vni.get(), 42);
    }

    #[test]
    fn emit_round_trips() {
        let repr = Repr {
            vni: Vni::new(42).unwrap(),
        };
        let mut buf = [0xffu8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &captured::V4_VNI42_ICMP[42..50]);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Ok(repr)
        );
    }

    #[test]
    fn reserved_bits_ignored_i_flag_required() {
        let mut buf = [0xffu8; HEADER_LEN];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap())
                .unwrap()
                .vni,
            Vni::new(0xff_ffff).unwrap()
        );
        buf[0] = 0xf7;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Malformed(Field::Flags))
        );
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&buf[..len]), Err(Error::Truncated));
        }
    }
}
