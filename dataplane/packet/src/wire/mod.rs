//! Header views and representations for the frames vxdp handles, in the style of smoltcp:
//! a `Packet<T: AsRef<[u8]>>` view over a buffer with checked accessors, and a `Repr` with
//! `parse`, `emit` and `buffer_len`. Nothing here does I/O, allocates or panics on any input.
//!
//! A view made with `new_checked` has had its length checked against every field its getters
//! read, so getters never panic. `new_unchecked` skips that check for buffers the caller sized
//! itself (emit paths); getters on a too short unchecked view panic, like slice indexing.

pub mod arp;
#[cfg(test)]
pub(crate) mod captured;
pub mod checksum;
pub mod ethernet;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
mod mac;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use ethernet::{EtherType, Frame as EthernetFrame, Repr as EthernetRepr};
pub use ip::Protocol as IpProtocol;
pub use ipv4::{Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr};
pub use mac::{MacAddr, ParseMacError};
pub use tcp::{Flags as TcpFlags, Packet as TcpPacket, Repr as TcpRepr};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr};
pub use vxlan::{Packet as VxlanPacket, Repr as VxlanRepr, Vni};

/// A length for a 16-bit length field (IPv4 total length, IPv6 payload length, UDP length, TCP
/// pseudo-header length). Callers pass lengths of buffers they sized for such a header, so the
/// value fits; a debug build checks it, since a wrapped length field corrupts the packet
/// silently.
#[inline]
pub fn len16(len: usize) -> u16 {
    debug_assert!(
        len <= usize::from(u16::MAX),
        "length {len} overflows a 16-bit field"
    );
    #[expect(
        clippy::cast_possible_truncation,
        reason = "callers size buffers for 16-bit length fields (checked in debug builds)"
    )]
    let short = len as u16;
    short
}

/// Why a buffer could not be read as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (with its options) does.
    #[error("truncated packet")]
    Truncated,
    /// This field holds a value the protocol does not allow, or announces more bytes than the
    /// buffer holds. Callers that count drops by reason (decapsulation) read the field.
    #[error("malformed packet: bad {0}")]
    Malformed(Field),
    /// Well formed, but a variant vxdp does not handle (non-Ethernet/IPv4 ARP, fragments).
    #[error("unsupported packet")]
    Unsupported,
}

/// The header field a [`Error::Malformed`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The IP version.
    Version,
    /// A header length: IPv4 IHL, TCP data offset.
    HeaderLen,
    /// The IPv4 total length.
    TotalLen,
    /// The IPv6 payload length.
    PayloadLen,
    /// The UDP length.
    Length,
    /// A header checksum.
    Checksum,
    /// A flags field (the VXLAN I flag).
    Flags,
}

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Field::Version => "version",
            Field::HeaderLen => "header length",
            Field::TotalLen => "total length",
            Field::PayloadLen => "payload length",
            Field::Length => "length",
            Field::Checksum => "checksum",
            Field::Flags => "flags",
        })
    }
}

/// The result of reading a header.
pub type Result<T> = core::result::Result<T, Error>;
