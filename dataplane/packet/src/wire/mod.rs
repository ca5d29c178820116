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
pub mod udp;
pub mod vxlan;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use ethernet::{EtherType, Frame as EthernetFrame, Repr as EthernetRepr};
pub use ip::Protocol as IpProtocol;
pub use ipv4::{Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr};
pub use mac::{MacAddr, ParseMacError};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr};
pub use vxlan::{Packet as VxlanPacket, Repr as VxlanRepr, Vni};

/// Why a buffer could not be read as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or the length a header field claims) does.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the protocol does not allow (bad version, length or checksum).
    #[error("malformed packet")]
    Malformed,
    /// Well formed, but a variant vxdp does not handle (non-Ethernet/IPv4 ARP, fragments).
    #[error("unsupported packet")]
    Unsupported,
}

/// The result of reading a header.
pub type Result<T> = core::result::Result<T, Error>;
