//! The AF_XDP underlay: one socket bound to one NIC queue, its UMEM split into frames lent to
//! the kernel for receiving and a pool of frames to transmit from.
//!
//! Frame ownership: the UMEM is split in two. The first half is lent to the kernel through the
//! fill ring; a received frame goes straight back to the fill ring once its datagram has been
//! delivered. The second half is the transmit pool: a frame leaves the pool when a packet is
//! built in it, goes to the TX ring, and returns through the completion ring. Frames are
//! [`Frame`] tokens throughout, so a frame the kernel owns cannot be touched.

use std::io;
use std::os::fd::RawFd;

use packet::offload::TcpSegments;
use packet::tunnel::{decapsulate_outer, encapsulate, DecapPolicy, OuterHeader};

use super::{RxBatch, RxDatagram, Underlay, RX_BATCH};
use crate::stats::{TxDrop, WorkerStats};
use crate::tables::PeerVtep;
use crate::xsk::{Frame, RxFrame, TxFrame, XskSocket};

/// Room left in front of an inner frame for the outer headers (70 bytes for an IPv6 underlay).
pub const TX_HEADROOM: usize = 128;
/// Descriptors put on the TX ring per kick, at most.
const TX_BATCH: usize = 64;

/// The AF_XDP half of a worker.
pub struct AfXdpUnderlay {
    xsk: XskSocket,
    /// This node's address and port, for the outer checks.
    policy: DecapPolicy,
    /// Frames free to transmit from (a stack; never grows past its initial capacity).
    tx_free: Vec<Frame>,
    tx_total: usize,
    /// Built packets not yet on the TX ring.
    tx_queue: Vec<TxFrame>,
    /// The last receive's frames, until they go back to the fill ring.
    rx: Vec<RxFrame>,
    /// Received frames the fill ring had no room for yet (see
    /// [`crate::xsk::XskConfig::fill_ring_size`]); they go back first on the next round, so
    /// none is ever lost.
    rx_unreturned: Vec<Frame>,
    /// The outer IPv4 identification: with DF clear it must vary per packet (RFC 6864).
    ip_ident: u16,
    /// The kernel busy-polls the NIC queue from our system calls.
    busy_poll: bool,
}

impl std::fmt::Debug for AfXdpUnderlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpUnderlay")
            .field("xsk", &self.xsk)
            .field("tx_free", &self.tx_free.len())
            .finish()
    }
}

impl AfXdpUnderlay {
    /// Takes over `xsk`: lends the first half of its UMEM to the kernel for receiving and keeps
    /// the second half to transmit from. `seed` varies the IPv4 identification per worker.
    pub fn new(mut xsk: XskSocket, policy: DecapPolicy, seed: u16) -> io::Result<AfXdpUnderlay> {
        let mut frames = xsk.take_free_frames();
        if frames.is_empty() {
            return Err(io::Error::other(
                "the AF_XDP socket's frames were taken already",
            ));
        }
        let tx_free = frames.split_off(frames.len() / 2);
        let lent = frames.len();
        let taken = xsk.fill(&mut frames);
        if taken != lent {
            return Err(io::Error::other(format!(
                "the fill ring took {taken} of {lent} receive frames: size the UMEM as twice the ring"
            )));
        }
        Ok(AfXdpUnderlay {
            tx_total: tx_free.len(),
            tx_free,
            tx_queue: Vec::with_capacity(TX_BATCH),
            rx: Vec::with_capacity(RX_BATCH),
            rx_unreturned: Vec::with_capacity(lent),
            xsk,
            policy,
            ip_ident: seed.wrapping_mul(0x3b9d),
            busy_poll: false,
        })
    }

    /// Lets the kernel busy-poll the NIC queue from this worker's system calls (for a worker
    /// spinning on a dedicated core): every receive attempt then polls the driver directly.
    pub fn enable_busy_poll(&mut self) -> io::Result<()> {
        self.xsk.set_busy_poll(20, 64)?;
        self.busy_poll = true;
        Ok(())
    }

    /// The socket.
    pub fn socket(&self) -> &XskSocket {
        &self.xsk
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Builds one packet in a free frame: `fill` writes the inner frame at [`TX_HEADROOM`] and
    /// returns its length, the outer headers go in front, and the packet joins the TX queue.
    #[inline]
    fn build(
        &mut self,
        outer: &OuterHeader,
        stats: &WorkerStats,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        if self.tx_queue.len() == TX_BATCH {
            self.flush(stats);
        }
        if self.tx_free.is_empty() {
            self.reclaim(stats);
        }
        let Some(mut frame) = self.tx_free.pop() else {
            stats.tx_drop(TxDrop::TxPoolEmpty);
            return;
        };
        let ident = self.next_ident();
        let buf = self.xsk.frame_mut(&mut frame);
        let built = match buf.get_mut(TX_HEADROOM..).and_then(fill) {
            None => Err(TxDrop::EncapFailed),
            Some(n) => encapsulate(buf, TX_HEADROOM, n, outer, ident)
                .map(|start| (start, outer.len() + n))
                .map_err(|_| TxDrop::EncapFailed),
        };
        match built {
            Ok((offset, len)) => self.tx_queue.push(TxFrame { frame, offset, len }),
            Err(reason) => {
                stats.tx_drop(reason);
                self.tx_free.push(frame);
            }
        }
    }

    /// Asks the kernel to send what is on the TX ring. In copy mode one `sendto` sends a
    /// bounded number of frames and answers EAGAIN when more remain.
    fn kick(&mut self, stats: &WorkerStats) {
        let fd = self.xsk.fd();
        for _ in 0..16 {
            stats.tx_kicks.add(1);
            // SAFETY: a zero-length sendto on our own socket.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                return;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) if self.xsk.tx_pending() > 0 => {}
                _ => return,
            }
        }
    }
}

impl Underlay for AfXdpUnderlay {
    fn receive<F>(&mut self, stats: &WorkerStats, mut deliver: F) -> usize
    where
        F: FnMut(&mut [RxDatagram<'_>]),
    {
        self.rx.clear();
        let mut n = self
            .xsk
            .receive(crate::sys::batch_u32(RX_BATCH), &mut self.rx);
        if n == 0 && self.busy_poll {
            // Nothing on the ring: let the kernel poll the NIC queue now, then look again.
            self.xsk.poke_rx();
            n = self
                .xsk
                .receive(crate::sys::batch_u32(RX_BATCH), &mut self.rx);
        }
        if n == 0 {
            return 0;
        }
        {
            let xsk = &self.xsk;
            let policy = &self.policy;
            let mut batch = RxBatch::new();
            let mut bytes = 0u64;
            for rx in self.rx.iter_mut() {
                bytes += rx.len as u64;
                let buf = xsk.frame_mut(&mut rx.frame);
                let Some(frame) = buf.get_mut(rx.offset..rx.offset + rx.len) else {
                    continue;
                };
                match decapsulate_outer(frame, policy) {
                    Ok((source, vxlan)) => batch.push(RxDatagram {
                        source,
                        data: &mut frame[vxlan],
                    }),
                    Err(reason) => stats.rx_drop(reason),
                }
            }
            stats.underlay_rx_frames.add(n as u64);
            stats.underlay_rx_bytes.add(bytes);
            if !batch.is_empty() {
                deliver(&mut batch);
            }
        }
        // Delivered: the frames go back to the kernel.
        self.rx_unreturned
            .extend(self.rx.drain(..).map(|rx| rx.frame));
        let before = self.rx_unreturned.len();
        let returned = self.xsk.fill(&mut self.rx_unreturned);
        if returned < before {
            stats.fill_ring_deferred.add((before - returned) as u64);
        }
        n
    }

    fn can_send(&mut self, stats: &WorkerStats) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim(stats);
        }
        !self.tx_free.is_empty()
    }

    fn send(&mut self, peer: &PeerVtep, frame: &[u8], stats: &WorkerStats) {
        let Some(outer) = peer.outer.as_ref() else {
            stats.tx_drop(TxDrop::NextHopUnresolved);
            return;
        };
        self.build(outer, stats, |out| {
            let out = out.get_mut(..frame.len())?;
            out.copy_from_slice(frame);
            Some(frame.len())
        });
    }

    fn send_segments(&mut self, peer: &PeerVtep, segments: &TcpSegments<'_>, stats: &WorkerStats) {
        let Some(outer) = peer.outer.as_ref() else {
            stats.tx_drops(TxDrop::NextHopUnresolved, segments.len() as u64);
            return;
        };
        for i in 0..segments.len() {
            self.build(outer, stats, |out| segments.write(i, out).ok());
        }
    }

    fn flush(&mut self, stats: &WorkerStats) {
        if self.tx_queue.is_empty() {
            return;
        }
        let total = self.tx_queue.len();
        let bytes: u64 = self.tx_queue.iter().map(|f| f.len as u64).sum();
        for _attempt in 0..2 {
            self.xsk.transmit(&mut self.tx_queue);
            if self.xsk.tx_needs_wakeup() {
                self.kick(stats);
            }
            if self.tx_queue.is_empty() {
                break;
            }
            // A full ring: completions free slots as the kernel sends.
            self.reclaim(stats);
        }
        // What still does not fit is dropped, as a NIC would.
        let unsent = self.tx_queue.len();
        let unsent_bytes: u64 = self.tx_queue.iter().map(|f| f.len as u64).sum();
        self.tx_free
            .extend(self.tx_queue.drain(..).map(|f| f.frame));
        stats.tx_drops(TxDrop::TxRingFull, unsent as u64);
        stats.underlay_tx_frames.add((total - unsent) as u64);
        stats.underlay_tx_bytes.add(bytes - unsent_bytes);
    }

    fn reclaim(&mut self, _stats: &WorkerStats) -> usize {
        let mut n = self
            .xsk
            .complete(crate::sys::batch_u32(2 * TX_BATCH), &mut self.tx_free);
        if !self.rx_unreturned.is_empty() {
            n += self.xsk.fill(&mut self.rx_unreturned);
        }
        n
    }

    fn poll_fd(&self) -> RawFd {
        self.xsk.fd()
    }

    fn has_outstanding(&self) -> bool {
        self.tx_free.len() + self.tx_queue.len() < self.tx_total || !self.rx_unreturned.is_empty()
    }
}
