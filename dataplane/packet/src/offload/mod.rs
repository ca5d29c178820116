//! TCP segmentation and receive coalescing in userspace, for a TAP opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`.
//!
//! With those flags the kernel prefixes every frame it hands the reader with a
//! `struct virtio_net_hdr` ([`VnetHdr`]) and may hand over 64 KB TCP super-frames with a partial
//! checksum; AF_XDP has no TSO, so [`TcpSegments`] cuts them into MTU-sized segments before
//! encapsulation, and [`complete_checksum`] finishes the partial checksum of a frame that needs
//! no cutting. In the other direction the kernel accepts super-frames on write, so [`Coalescer`]
//! merges consecutive decapsulated segments of a flow the way Linux GRO would
//! (`net/ipv4/tcp_offload.c`), which saves the kernel one trip through its stack per segment.
//!
//! Frames here carry an Ethernet header in front (TAP, not TUN): every offset in a vnet header is
//! counted from the start of the Ethernet frame, as tun does for TAP devices.
//!
//! Like `wire` and `tunnel`, nothing here does I/O, allocates per frame or panics on any input:
//! [`TcpSegments`] borrows the super-frame and writes into the caller's buffers, [`Coalescer`]
//! owns one buffer allocated in [`Coalescer::new`]. Checksums are summed while copying
//! ([`checksum::copy_data`](crate::wire::checksum::copy_data)), so each payload byte is read once.

mod coalesce;
mod partial;
mod segment;
mod vnet;

#[cfg(test)]
mod testutil;

pub use coalesce::{Coalescer, Push, COALESCE_BUF_LEN};
pub use partial::complete_checksum;
pub use segment::TcpSegments;
pub use vnet::{VnetHdr, VNET_HDR_LEN};

/// Why a frame could not be segmented, or its checksum completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The buffer ends before a header, or before the length a header or the vnet header claims.
    #[error("truncated frame")]
    Truncated,
    /// Fields contradict each other or the frame (the reason names which).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// Well formed, but a variant vxdp does not segment (the reason names which).
    #[error("unsupported frame: {0}")]
    Unsupported(&'static str),
    /// The output buffer is shorter than the segment.
    #[error("output buffer too small for the segment")]
    BufferTooSmall,
    /// A segment index at or past [`TcpSegments::len`].
    #[error("no such segment")]
    NoSuchSegment,
}

/// TCP header flag bits (RFC 9293 section 3.1, RFC 3168 for CWR and ECE), in byte 13.
mod tcp {
    pub const FIN: u8 = 0x01;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const CWR: u8 = 0x80;
    /// Offset of the sequence number.
    pub const SEQ: usize = 4;
    /// Offset of the acknowledgment number.
    pub const ACK_NUM: usize = 8;
    /// Offset of the data offset byte.
    pub const DATA_OFF: usize = 12;
    /// Offset of the flags byte.
    pub const FLAGS: usize = 13;
    /// Offset of the checksum: the `csum_offset` of every TCP vnet header.
    pub const CHECKSUM: usize = 16;
    /// Header length without options.
    pub const HEADER_LEN: usize = 20;
    /// IP protocol number.
    pub const PROTOCOL: u8 = 6;
}

/// Big-endian u16 at `at`; callers have checked the length.
#[inline]
fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

/// Big-endian u32 at `at`; callers have checked the length.
#[inline]
fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

#[inline]
fn put16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn put32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
