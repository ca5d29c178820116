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

pub use coalesce::{Coalescer, Flushed, Push, COALESCE_BUF_LEN, MAX_SEGMENTS};
pub use partial::complete_checksum;
pub use segment::{SegmentChecksum, TcpSegments};
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
