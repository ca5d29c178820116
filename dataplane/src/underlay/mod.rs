//! The underlay side of a worker: where encapsulated frames go out and VXLAN datagrams come
//! in. Two implementations sit behind [`Underlay`]: AF_XDP rings ([`af_xdp`], for NICs with
//! zero-copy) and UDP sockets with GSO and GRO ([`udp`], where AF_XDP could only copy). The
//! per-frame work on both sides of them ([`crate::pipeline`]) does not know which one runs.
//!
//! The interface is cut where the two differ least: a received datagram is the UDP payload
//! (VXLAN header and inner frame) with its outer source address, which is what a UDP socket
//! yields and what AF_XDP yields once the outer headers are checked; a frame to send is an
//! inner frame or a TCP super-frame to cut, plus the peer, and each underlay builds what its
//! I/O takes (whole outer headers in a UMEM frame, or a VXLAN header in front of a gather
//! list).

pub mod af_xdp;
pub mod udp;

use std::net::IpAddr;
use std::os::fd::RawFd;

use packet::offload::TcpSegments;

use crate::stats::WorkerStats;
use crate::tables::PeerVtep;

/// Datagrams handed to the pipeline at once, at most.
pub const RX_BATCH: usize = 64;

/// A VXLAN datagram from the underlay: the UDP payload and where it came from. Decapsulation
/// works on it in place (the inner frame's checksum may be completed), so it is mutable.
#[derive(Debug)]
pub struct RxDatagram<'b> {
    /// The outer source address: the sending VTEP, checked against the known peers.
    pub source: IpAddr,
    /// The VXLAN header and the inner frame.
    pub data: &'b mut [u8],
}

/// A batch of received datagrams whose buffers stay valid while the batch lives.
pub type RxBatch<'b> = arrayvec::ArrayVec<RxDatagram<'b>, RX_BATCH>;

/// One worker's share of the underlay. Every method runs on the worker's thread; none blocks
/// for long, allocates or takes a lock.
pub trait Underlay {
    /// Receives what is waiting (one batch's worth of system calls), hands the datagrams to
    /// `deliver` in batches whose buffers are valid for the call, and returns how many frames
    /// came in (dropped ones included). Drops of the outer headers are counted here.
    fn receive<F>(&mut self, stats: &WorkerStats, deliver: F) -> usize
    where
        F: FnMut(&mut [RxDatagram<'_>]);

    /// Whether a frame could be sent now; reclaims transmitted buffers first if needed. The
    /// pipeline reads the TAP only while this holds, so that frames wait in the TAP's queue
    /// instead of being read and dropped.
    fn can_send(&mut self, stats: &WorkerStats) -> bool;

    /// Queues one complete inner frame (checksums done) to `peer`.
    fn send(&mut self, peer: &PeerVtep, frame: &[u8], stats: &WorkerStats);

    /// Sends a TCP super-frame to `peer`, cut into segments.
    fn send_segments(&mut self, peer: &PeerVtep, segments: &TcpSegments<'_>, stats: &WorkerStats);

    /// Sends what is queued.
    fn flush(&mut self, stats: &WorkerStats);

    /// Upkeep between rounds (transmitted buffers back to the pool, received ones back to the
    /// kernel); returns how much it did, so that the worker does not sleep on pending work.
    fn reclaim(&mut self, stats: &WorkerStats) -> usize;

    /// The descriptor that becomes readable when datagrams arrive.
    fn poll_fd(&self) -> RawFd;

    /// Whether work is outstanding that finishes without an event on [`Underlay::poll_fd`]
    /// (transmit completions): the worker then sleeps briefly instead of until the next event.
    fn has_outstanding(&self) -> bool;
}
