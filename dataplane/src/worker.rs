//! A worker: one pinned thread that owns one NIC queue's AF_XDP socket and one TAP queue, and
//! moves frames both ways.
//!
//! Per loop it reaps TX completions, drains the RX ring (decapsulate, write the inner frame to
//! the TAP), then reads frames from the TAP straight into free UMEM frames (answer ARP,
//! encapsulate in place, put on the TX ring) and kicks the TX ring once if the kernel asks for
//! it. Nothing on this path allocates or locks; the peer tables are read from an RCU snapshot
//! loaded once per loop. When a few rounds in a row find nothing to do, the worker blocks in
//! `poll` on the socket, the TAP and the stop signal, so an idle node costs no CPU.
//!
//! Frame ownership: the UMEM is split in two. The first half is lent to the kernel through the
//! fill ring; an RX frame goes straight back to the fill ring once its inner frame is written
//! to the TAP. The second half is the TX pool: a frame leaves the pool when read from the TAP,
//! goes to the TX ring, and returns through the completion ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xdpilone::xdp::XdpDesc;

use crate::arp_responder::{answer_arp_request, ArpAnswer};
use crate::inner_checksum::{complete_partial_checksum, InnerChecksum};
use crate::stats::{TxDrop, WorkerStats};
use crate::tables::PeerReader;
use crate::tap::TapQueue;
use crate::tunnel::{decapsulate, encapsulate, Decap, DecapPolicy};
use crate::wire::ethernet;
use crate::wire::MacAddr;
use crate::xsk::{fill_all, transmit_all, XskSocket};

/// Room left in front of a frame read from the TAP for the outer headers (70 bytes for an IPv6
/// underlay) and, later, a virtio-net header.
pub const TX_HEADROOM: usize = 128;
/// Frames handled per ring operation.
pub const BATCH: u32 = 64;
/// Empty rounds before blocking in poll: long enough to ride out gaps inside a burst, short
/// enough that an idle worker sleeps within microseconds.
const IDLE_ROUNDS_BEFORE_SLEEP: u32 = 32;
/// Poll timeout while transmitted frames are still out (completions come without an event).
const POLL_MS_WITH_TX_OUTSTANDING: i32 = 1;
/// Poll timeout when fully idle; the stop signal wakes the worker earlier.
const POLL_MS_IDLE: i32 = 1000;

/// Tells workers to stop and wakes them from poll.
#[derive(Debug)]
pub struct StopSignal {
    stop: AtomicBool,
    event: OwnedFd,
}

impl StopSignal {
    /// A fresh signal.
    pub fn new() -> io::Result<StopSignal> {
        // SAFETY: eventfd with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StopSignal {
            stop: AtomicBool::new(false),
            // SAFETY: eventfd just returned this descriptor.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Asks every worker to stop. The eventfd stays readable (nobody reads it), so every
    /// worker's poll returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Whether stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// Everything a worker needs.
pub struct Worker {
    /// Index (for logs and status).
    pub index: usize,
    /// The AF_XDP socket of this worker's NIC queue.
    pub xsk: XskSocket,
    /// This worker's TAP queue.
    pub tap: TapQueue,
    /// The peer tables.
    pub peers: PeerReader,
    /// What decapsulation accepts.
    pub policy: DecapPolicy,
    /// This node's VtepMAC (answers ARP only for peers; kept for clarity of intent in logs).
    pub local_mac: MacAddr,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Stop signal shared by all workers.
    pub stop: Arc<StopSignal>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("xsk", &self.xsk)
            .finish()
    }
}

/// A batch of TX descriptors, kept on the stack.
struct TxBatch {
    descs: [XdpDesc; BATCH as usize],
    len: usize,
}

impl Worker {
    /// Runs until the stop signal is raised.
    pub fn run(mut self) -> io::Result<()> {
        let frames = self.xsk.frames.frame_count();
        let rx_frames = frames / 2;
        // The TX pool: every frame of the second half, as a stack of UMEM addresses. Allocated
        // once; the hot loop only pushes and pops within its capacity.
        let mut tx_free: Vec<u64> = (rx_frames..frames)
            .map(|i| self.xsk.frames.frame_addr(i))
            .collect();
        let tx_total = tx_free.len();
        self.lend_rx_frames(rx_frames)?;

        let mut ip_ident: u16 = (self.index as u16).wrapping_mul(0x3b9d);
        let mut idle_rounds = 0u32;
        while !self.stop.is_stopped() {
            let reaped = self.reap_completions(&mut tx_free);
            let received = self.receive_from_nic();
            let sent = self.send_from_tap(&mut tx_free, &mut ip_ident);
            if reaped + received + sent > 0 {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds < IDLE_ROUNDS_BEFORE_SLEEP {
                continue;
            }
            let timeout = if tx_free.len() < tx_total {
                POLL_MS_WITH_TX_OUTSTANDING
            } else {
                POLL_MS_IDLE
            };
            self.sleep(!tx_free.is_empty(), timeout);
        }
        Ok(())
    }

    /// Lends the RX half of the UMEM to the kernel.
    fn lend_rx_frames(&mut self, count: u32) -> io::Result<()> {
        let addrs: Vec<u64> = (0..count).map(|i| self.xsk.frames.frame_addr(i)).collect();
        let n = fill_all(&mut self.xsk.fill, &addrs) as u32;
        if n != count {
            return Err(io::Error::other(format!(
                "the fill ring took {n} of {count} receive frames: size the UMEM as twice the ring"
            )));
        }
        Ok(())
    }

    fn reap_completions(&mut self, tx_free: &mut Vec<u64>) -> u32 {
        let frames = &self.xsk.frames;
        let mut c = self.xsk.completion.complete(BATCH * 2);
        let mut n = 0;
        while let Some(addr) = c.read() {
            tx_free.push(frames.frame_base(addr));
            n += 1;
        }
        c.release();
        n
    }

    /// Drains the RX ring: decapsulate, deliver to the TAP, give the frame back to the fill ring.
    fn receive_from_nic(&mut self) -> u32 {
        let snapshot = self.peers.load();
        let frames = &self.xsk.frames;
        let stats = &*self.stats;
        let policy = &self.policy;
        let tap = &self.tap;
        let mut refill = [0u64; BATCH as usize];
        let mut count = 0usize;
        let mut rx_bytes = 0u64;
        let mut tap_frames = 0u64;
        let mut tap_bytes = 0u64;
        let mut csum_completed = 0u64;
        {
            let mut r = self.xsk.rx.receive(BATCH);
            while let Some(desc) = r.read() {
                refill[count] = frames.frame_base(desc.addr);
                count += 1;
                rx_bytes += u64::from(desc.len);
                // SAFETY: the descriptor came from the RX ring: the frame is ours until it is
                // put back on the fill ring below.
                let Some(buf) = (unsafe { frames.frame_from(desc.addr) }) else {
                    continue;
                };
                let Some(frame) = buf.get_mut(..desc.len as usize) else {
                    continue;
                };
                match decapsulate(frame, policy, |ip| snapshot.is_known_vtep(ip)) {
                    Decap::Deliver { inner, .. } => {
                        let inner_frame = &mut frame[inner.clone()];
                        if complete_partial_checksum(inner_frame) == InnerChecksum::Completed {
                            csum_completed += 1;
                        }
                        match tap.write(inner_frame) {
                            Ok(_) => {
                                tap_frames += 1;
                                tap_bytes += inner.len() as u64;
                            }
                            Err(_) => stats.tap_write_errors.add(1),
                        }
                    }
                    Decap::Drop(reason) => stats.rx_drop(reason),
                }
            }
            r.release();
        }
        if count > 0 {
            // The fill ring is as large as the RX half of the UMEM, so every frame fits: none
            // is ever lost here.
            let refilled = fill_all(&mut self.xsk.fill, &refill[..count]);
            debug_assert_eq!(refilled, count, "fill ring smaller than the RX frames");
            stats.nic_rx_frames.add(count as u64);
            stats.nic_rx_bytes.add(rx_bytes);
            stats.tap_tx_frames.add(tap_frames);
            stats.tap_tx_bytes.add(tap_bytes);
            stats.rx_csum_completed.add(csum_completed);
        }
        count as u32
    }

    /// Reads frames from the TAP into free UMEM frames, encapsulates them in place and puts
    /// them on the TX ring.
    fn send_from_tap(&mut self, tx_free: &mut Vec<u64>, ip_ident: &mut u16) -> u32 {
        let snapshot = self.peers.load();
        let frames = &self.xsk.frames;
        let stats = &*self.stats;
        let tap = &self.tap;
        let mut batch = TxBatch {
            descs: [XdpDesc::default(); BATCH as usize],
            len: 0,
        };
        let mut read = 0u32;
        while batch.len < BATCH as usize {
            let Some(addr) = tx_free.pop() else { break };
            // SAFETY: `addr` is in the TX pool: no ring holds it.
            let Some(buf) = (unsafe { frames.frame_from(addr) }) else {
                continue;
            };
            let n = match tap.read(&mut buf[TX_HEADROOM..]) {
                Ok(n) => n,
                Err(e) => {
                    tx_free.push(addr);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        stats.tx_drop(TxDrop::TapReadError);
                    }
                    break;
                }
            };
            read += 1;
            let verdict = self::classify(&buf[TX_HEADROOM..TX_HEADROOM + n]);
            match verdict {
                Outbound::Arp => {
                    match answer_arp_request(&mut buf[TX_HEADROOM..], n, |ip| snapshot.arp(ip)) {
                        ArpAnswer::Reply { len } => {
                            match tap.write(&buf[TX_HEADROOM..TX_HEADROOM + len]) {
                                Ok(_) => stats.arp_replies.add(1),
                                Err(_) => stats.tap_write_errors.add(1),
                            }
                        }
                        ArpAnswer::Unknown => stats.tx_drop(TxDrop::ArpUnknown),
                        _ => stats.tx_drop(TxDrop::ArpOther),
                    }
                    tx_free.push(addr);
                }
                Outbound::NotUnicast => {
                    stats.tx_drop(TxDrop::NotUnicast);
                    tx_free.push(addr);
                }
                Outbound::Unicast(dst) => {
                    let Some(vtep) = snapshot.fdb(&dst) else {
                        stats.tx_drop(TxDrop::NoFdbEntry);
                        tx_free.push(addr);
                        continue;
                    };
                    let Some(outer) = vtep.outer.as_ref() else {
                        stats.tx_drop(TxDrop::NextHopUnresolved);
                        tx_free.push(addr);
                        continue;
                    };
                    *ip_ident = ip_ident.wrapping_add(1);
                    match encapsulate(buf, TX_HEADROOM, n, outer, *ip_ident) {
                        Ok(start) => {
                            let len = outer.len() + n;
                            batch.descs[batch.len] = XdpDesc {
                                addr: addr + start as u64,
                                len: len as u32,
                                options: 0,
                            };
                            batch.len += 1;
                        }
                        Err(_) => {
                            stats.tx_drop(TxDrop::EncapFailed);
                            tx_free.push(addr);
                        }
                    }
                }
            }
        }
        stats.tap_rx_frames.add(u64::from(read));
        if batch.len > 0 {
            let queued = self.transmit(&batch, tx_free);
            let queued_bytes: u64 = batch.descs[..queued].iter().map(|d| u64::from(d.len)).sum();
            self.stats.nic_tx_frames.add(queued as u64);
            self.stats.nic_tx_bytes.add(queued_bytes);
        }
        read
    }

    /// Puts a batch on the TX ring and kicks the kernel if it asks for it; returns how many
    /// descriptors were queued (a prefix of the batch). Descriptors that do not fit (the ring
    /// stayed full) go back to the pool: the frame is dropped, as a NIC would.
    fn transmit(&mut self, batch: &TxBatch, tx_free: &mut Vec<u64>) -> usize {
        let descs = &batch.descs[..batch.len];
        let mut queued = 0usize;
        for _attempt in 0..2 {
            queued += transmit_all(&mut self.xsk.tx, &descs[queued..]);
            if self.xsk.tx.needs_wakeup() {
                self.kick();
            }
            if queued == descs.len() {
                return queued;
            }
            // Full ring: completions free slots as the kernel sends.
            self.reap_completions(tx_free);
        }
        for d in &descs[queued..] {
            tx_free.push(self.xsk.frames.frame_base(d.addr));
            self.stats.tx_drop(TxDrop::TxRingFull);
        }
        queued
    }

    /// Asks the kernel to send what is on the TX ring. In copy mode one `sendto` sends a bounded
    /// number of frames and answers EAGAIN when more remain.
    fn kick(&mut self) {
        let fd = self.xsk.fd();
        for _ in 0..16 {
            self.stats.tx_kicks.add(1);
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
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                    if self.xsk.tx.pending() > 0 => {}
                _ => return,
            }
        }
    }

    /// Blocks until the socket or the TAP has work, the stop signal fires, or `timeout_ms`.
    fn sleep(&mut self, want_tap: bool, timeout_ms: i32) {
        self.stats.sleeps.add(1);
        let mut fds = [
            libc::pollfd {
                fd: self.xsk.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative fd is ignored by poll: without free TX frames there is no point
                // waking for the TAP.
                fd: if want_tap { self.tap.fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    }
}

/// What to do with a frame read from the TAP.
#[derive(Debug, PartialEq, Eq)]
enum Outbound {
    /// ARP: answer requests for peer gateways locally.
    Arp,
    /// Broadcast or multicast that is not ARP: dropped.
    NotUnicast,
    /// Unicast to this MAC: look it up in the FDB.
    Unicast(MacAddr),
}

#[inline]
fn classify(frame: &[u8]) -> Outbound {
    let Ok(eth) = ethernet::Frame::new_checked(frame) else {
        return Outbound::NotUnicast;
    };
    if eth.ethertype() == ethernet::EtherType::Arp {
        return Outbound::Arp;
    }
    let dst = eth.dst_addr();
    if dst.is_multicast() {
        Outbound::NotUnicast
    } else {
        Outbound::Unicast(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tap_frames() {
        let mut f = [0u8; 60];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(
            classify(&f),
            Outbound::Unicast(MacAddr([0x02, 0, 0, 0, 0, 2]))
        );
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&f), Outbound::Arp);
        f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(classify(&f), Outbound::NotUnicast);
        assert_eq!(classify(&f[..10]), Outbound::NotUnicast);
    }

    #[test]
    fn stop_signal_wakes_poll() {
        let s = StopSignal::new().unwrap();
        s.stop();
        assert!(s.is_stopped());
        let mut fds = [libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1);
    }
}
