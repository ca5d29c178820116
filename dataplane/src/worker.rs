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

use crate::stats::{TxDrop, WorkerStats};
use crate::tables::{PeerReader, PeerSnapshot};
use crate::tap::{TapOffloads, TapQueue};
use crate::xsk::{fill_all, transmit_all, XskSocket};
use packet::arp_responder::{answer_arp_request, ArpAnswer};
use packet::inner_checksum::{complete_partial_checksum, InnerChecksum};
use packet::offload::{complete_checksum, Coalescer, Push, TcpSegments, VnetHdr, VNET_HDR_LEN};
use packet::tunnel::{decapsulate, encapsulate, Decap, DecapPolicy, OuterHeader};
use packet::wire::ethernet;
use packet::wire::MacAddr;

/// Room left in front of a frame read from the TAP for the outer headers (70 bytes for an IPv6
/// underlay) and, later, a virtio-net header.
pub const TX_HEADROOM: usize = 128;
/// Frames handled per ring operation.
pub const BATCH: u32 = 64;
/// Empty rounds before blocking in poll: long enough to ride out gaps inside a burst, short
/// enough that an idle worker sleeps within microseconds. Spinning longer (15 to 200 us)
/// made round trips slower on a 2-core host, not faster: the spinning workers took the CPU
/// the applications and the peer's worker needed.
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
    /// What the TAP hands over and accepts (vnet headers, TSO).
    pub offloads: TapOffloads,
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

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            descs: [XdpDesc::default(); BATCH as usize],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.descs.len()
    }

    fn push(&mut self, addr: u64, len: usize) {
        self.descs[self.len] = XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        };
        self.len += 1;
    }
}

/// Bytes a TAP read may return with a vnet header: the header and a 64 KB super-frame.
const STAGING_LEN: usize = VNET_HDR_LEN + ethernet::HEADER_LEN + 65_535;

/// The TX half of the UMEM not currently on a ring, and the IPv4 ident counter.
struct TxPool {
    /// UMEM addresses of free TX frames (a stack; never grows past its initial capacity).
    free: Vec<u64>,
    total: usize,
    ip_ident: u16,
}

impl TxPool {
    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }
}

/// The worker's working state, apart from what it owns for I/O: the TX frame pool and, with
/// a vnet-header TAP, the buffers of the offloads. Allocated once in `run`.
struct Loop {
    tx: TxPool,
    /// With offloads: where TAP reads land (a super-frame does not fit a UMEM frame).
    staging: Option<Box<[u8]>>,
    /// With offloads: the receive coalescer.
    gro: Option<Coalescer>,
    /// Received frames the fill ring had no room for yet (see
    /// [`crate::xsk::XskConfig::fill_ring_size`]);
    /// they go back first on the next round, so none is ever lost. Never grows past the
    /// receive half of the UMEM, its initial capacity.
    rx_unreturned: Vec<u64>,
}

impl Worker {
    /// Runs until the stop signal is raised.
    pub fn run(mut self) -> io::Result<()> {
        let frames = self.xsk.frames.frame_count();
        let rx_frames = frames / 2;
        // The TX pool: every frame of the second half, as a stack of UMEM addresses. Allocated
        // once; the hot loop only pushes and pops within its capacity.
        let tx_free: Vec<u64> = (rx_frames..frames)
            .map(|i| self.xsk.frames.frame_addr(i))
            .collect();
        let vnet = self.offloads.vnet_hdr;
        let mut state = Loop {
            tx: TxPool {
                total: tx_free.len(),
                free: tx_free,
                ip_ident: (self.index as u16).wrapping_mul(0x3b9d),
            },
            staging: vnet.then(|| vec![0u8; STAGING_LEN].into_boxed_slice()),
            gro: vnet.then(Coalescer::new),
            rx_unreturned: Vec::with_capacity(rx_frames as usize),
        };
        self.lend_rx_frames(rx_frames)?;

        let mut idle_rounds = 0u32;
        while !self.stop.is_stopped() {
            let reaped = reap_completions(&mut self.xsk, &mut state.tx.free);
            let received = self.receive_from_nic(&mut state);
            let sent = self.send_from_tap(&mut state);
            if reaped + received + sent > 0 {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds < IDLE_ROUNDS_BEFORE_SLEEP {
                continue;
            }
            let timeout = if state.tx.free.len() < state.tx.total || !state.rx_unreturned.is_empty()
            {
                POLL_MS_WITH_TX_OUTSTANDING
            } else {
                POLL_MS_IDLE
            };
            self.sleep(!state.tx.free.is_empty(), timeout);
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

    /// Drains the RX ring: decapsulate, deliver to the TAP (coalescing TCP segments into
    /// super-frames when the TAP takes them), give the frame back to the fill ring.
    fn receive_from_nic(&mut self, state: &mut Loop) -> u32 {
        let Worker {
            xsk,
            tap,
            peers,
            policy,
            stats,
            ..
        } = self;
        if !state.rx_unreturned.is_empty() {
            let returned = fill_all(&mut xsk.fill, &state.rx_unreturned);
            state.rx_unreturned.drain(..returned);
        }
        let snapshot = peers.load();
        let frames = &xsk.frames;
        let mut gro = state.gro.as_mut();
        let mut refill = [0u64; BATCH as usize];
        let mut count = 0usize;
        let mut rx_bytes = 0u64;
        let mut out = Delivered::default();
        {
            let mut r = xsk.rx.receive(BATCH);
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
                        if complete_partial_checksum(&mut frame[inner.clone()])
                            == InnerChecksum::Completed
                        {
                            out.csum_completed += 1;
                        }
                        match gro.as_deref_mut() {
                            None => out.write(tap, stats, &frame[inner.clone()], 1),
                            Some(gro) => {
                                let inner_frame = &frame[inner.clone()];
                                if gro.is_pending() && !gro.can_append(inner_frame) {
                                    let n = gro.pending_segments();
                                    out.write(tap, stats, gro.flush(), n);
                                }
                                if gro.push(inner_frame) == Push::NotEligible {
                                    // Alone, behind a zero vnet header written over the
                                    // tail of the outer headers (no copy).
                                    let start = inner.start - VNET_HDR_LEN;
                                    frame[start..inner.start].fill(0);
                                    out.write(tap, stats, &frame[start..inner.end], 1);
                                }
                            }
                        }
                    }
                    Decap::Drop(reason) => stats.rx_drop(reason),
                }
            }
            r.release();
        }
        if let Some(gro) = gro {
            if gro.is_pending() {
                let n = gro.pending_segments();
                out.write(tap, stats, gro.flush(), n);
            }
        }
        if count > 0 {
            let refilled = fill_all(&mut xsk.fill, &refill[..count]);
            if refilled < count {
                stats.fill_ring_deferred.add((count - refilled) as u64);
                state
                    .rx_unreturned
                    .extend_from_slice(&refill[refilled..count]);
            }
            stats.nic_rx_frames.add(count as u64);
            stats.nic_rx_bytes.add(rx_bytes);
            stats.tap_tx_frames.add(out.frames);
            stats.tap_tx_bytes.add(out.bytes);
            stats.gro_super_frames.add(out.super_frames);
            stats.rx_csum_completed.add(out.csum_completed);
        }
        count as u32
    }

    /// Reads frames from the TAP and sends them out encapsulated. Without offloads a frame is
    /// read straight into a free UMEM frame and encapsulated in place; with them, into the
    /// staging buffer, and a TCP super-frame is cut into segments written to UMEM frames.
    fn send_from_tap(&mut self, state: &mut Loop) -> u32 {
        let Worker {
            xsk,
            tap,
            peers,
            stats,
            ..
        } = self;
        let snapshot = peers.load();
        let mut batch = TxBatch::new();
        let mut read = 0u32;
        let tx = &mut state.tx;
        loop {
            if batch.is_full() {
                flush_batch(xsk, stats, &mut batch, &mut tx.free);
            }
            if tx.free.is_empty() && reap_completions(xsk, &mut tx.free) == 0 {
                break;
            }
            let more = match state.staging.as_deref_mut() {
                None => read_plain(xsk, tap, stats, snapshot, tx, &mut batch),
                Some(staging) => read_vnet(xsk, tap, stats, snapshot, staging, tx, &mut batch),
            };
            if !more {
                break;
            }
            read += 1;
            if read >= BATCH {
                break; // let the RX side have its turn
            }
        }
        stats.tap_rx_frames.add(u64::from(read));
        flush_batch(xsk, stats, &mut batch, &mut tx.free);
        read
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

/// What the RX path wrote to the TAP in one batch.
#[derive(Default)]
struct Delivered {
    frames: u64,
    bytes: u64,
    super_frames: u64,
    csum_completed: u64,
}

impl Delivered {
    /// Writes `bytes` (`segments` frames' worth) to the TAP.
    #[inline]
    fn write(&mut self, tap: &TapQueue, stats: &WorkerStats, bytes: &[u8], segments: usize) {
        match tap.write(bytes) {
            Ok(_) => {
                self.frames += segments as u64;
                self.bytes += bytes.len() as u64;
                if segments > 1 {
                    self.super_frames += 1;
                }
            }
            Err(_) => stats.tap_write_errors.add(1),
        }
    }
}

fn reap_completions(xsk: &mut XskSocket, tx_free: &mut Vec<u64>) -> u32 {
    let frames = &xsk.frames;
    let mut c = xsk.completion.complete(BATCH * 2);
    let mut n = 0;
    while let Some(addr) = c.read() {
        tx_free.push(frames.frame_base(addr));
        n += 1;
    }
    c.release();
    n
}

/// Where a frame read from the TAP goes, or why nowhere.
enum Route<'s> {
    /// Encapsulate with these outer headers.
    Tunnel(&'s OuterHeader),
    /// ARP, handled locally.
    Arp,
    /// Dropped, for this reason.
    Drop(TxDrop),
}

#[inline]
fn route<'s>(snapshot: &'s PeerSnapshot, frame: &[u8]) -> Route<'s> {
    match classify(frame) {
        Outbound::Arp => Route::Arp,
        Outbound::NotUnicast => Route::Drop(TxDrop::NotUnicast),
        Outbound::Unicast(dst) => match snapshot.fdb(&dst) {
            None => Route::Drop(TxDrop::NoFdbEntry),
            Some(vtep) => match vtep.outer.as_ref() {
                None => Route::Drop(TxDrop::NextHopUnresolved),
                Some(outer) => Route::Tunnel(outer),
            },
        },
    }
}

/// Answers an ARP request in `frame[..n]` (rewritten in place) through the TAP; `prefix` bytes
/// in front of the frame (a zeroed vnet header) go out with it.
fn answer_arp(
    tap: &TapQueue,
    stats: &WorkerStats,
    snapshot: &PeerSnapshot,
    buf: &mut [u8],
    prefix: usize,
    n: usize,
) {
    match answer_arp_request(&mut buf[prefix..], n, |ip| snapshot.arp(ip)) {
        ArpAnswer::Reply { len } => {
            buf[..prefix].fill(0);
            match tap.write(&buf[..prefix + len]) {
                Ok(_) => stats.arp_replies.add(1),
                Err(_) => stats.tap_write_errors.add(1),
            }
        }
        ArpAnswer::Unknown => stats.tx_drop(TxDrop::ArpUnknown),
        _ => stats.tx_drop(TxDrop::ArpOther),
    }
}

/// Plain TAP: reads one frame straight into a free UMEM frame and encapsulates it in place.
/// Returns false when the TAP is empty.
fn read_plain(
    xsk: &mut XskSocket,
    tap: &TapQueue,
    stats: &WorkerStats,
    snapshot: &PeerSnapshot,
    tx: &mut TxPool,
    batch: &mut TxBatch,
) -> bool {
    let Some(addr) = tx.free.pop() else {
        return false;
    };
    // SAFETY: `addr` is in the TX pool: no ring holds it.
    let Some(buf) = (unsafe { xsk.frames.frame_from(addr) }) else {
        return true;
    };
    let n = match tap.read(&mut buf[TX_HEADROOM..]) {
        Ok(n) => n,
        Err(e) => {
            tx.free.push(addr);
            if e.kind() != io::ErrorKind::WouldBlock {
                stats.tx_drop(TxDrop::TapReadError);
            }
            return false;
        }
    };
    match route(snapshot, &buf[TX_HEADROOM..TX_HEADROOM + n]) {
        Route::Tunnel(outer) => match encapsulate(buf, TX_HEADROOM, n, outer, tx.next_ident()) {
            Ok(start) => {
                batch.push(addr + start as u64, outer.len() + n);
                return true;
            }
            Err(_) => stats.tx_drop(TxDrop::EncapFailed),
        },
        Route::Arp => answer_arp(tap, stats, snapshot, &mut buf[TX_HEADROOM..], 0, n),
        Route::Drop(reason) => stats.tx_drop(reason),
    }
    tx.free.push(addr);
    true
}

/// vnet-header TAP: reads one frame (possibly a TCP super-frame) into `staging`, finishes a
/// partial checksum or cuts the super-frame into segments, and encapsulates each into its own
/// UMEM frame. Returns false when the TAP is empty.
fn read_vnet(
    xsk: &mut XskSocket,
    tap: &TapQueue,
    stats: &WorkerStats,
    snapshot: &PeerSnapshot,
    staging: &mut [u8],
    tx: &mut TxPool,
    batch: &mut TxBatch,
) -> bool {
    let n = match tap.read(staging) {
        Ok(n) => n,
        Err(e) => {
            if e.kind() != io::ErrorKind::WouldBlock {
                stats.tx_drop(TxDrop::TapReadError);
            }
            return false;
        }
    };
    let Ok(hdr) = VnetHdr::parse(&staging[..n]) else {
        stats.tx_drop(TxDrop::EncapFailed);
        return true;
    };
    let frame = &mut staging[VNET_HDR_LEN..n];
    let outer = match route(snapshot, frame) {
        Route::Tunnel(outer) => outer,
        Route::Arp => {
            answer_arp(
                tap,
                stats,
                snapshot,
                staging,
                VNET_HDR_LEN,
                n - VNET_HDR_LEN,
            );
            return true;
        }
        Route::Drop(reason) => {
            stats.tx_drop(reason);
            return true;
        }
    };
    if hdr.gso_type & !VnetHdr::GSO_ECN == VnetHdr::GSO_NONE {
        if hdr.flags & VnetHdr::F_NEEDS_CSUM != 0
            && complete_checksum(frame, hdr.csum_start.into(), hdr.csum_offset.into()).is_err()
        {
            stats.tx_drop(TxDrop::EncapFailed);
            return true;
        }
        put_segment(xsk, stats, tx, batch, outer, |out| {
            let len = frame.len();
            out.get_mut(..len).map(|o| {
                o.copy_from_slice(frame);
                len
            })
        });
        return true;
    }
    let Ok(segments) = TcpSegments::new(frame, &hdr) else {
        stats.tx_drop(TxDrop::EncapFailed);
        return true;
    };
    stats.tso_super_frames.add(1);
    for i in 0..segments.len() {
        if batch.is_full() {
            flush_batch(xsk, stats, batch, &mut tx.free);
        }
        if tx.free.is_empty() {
            reap_completions(xsk, &mut tx.free);
        }
        put_segment(xsk, stats, tx, batch, outer, |out| {
            segments.write(i, out).ok()
        });
    }
    stats.tso_segments.add(segments.len() as u64);
    true
}

/// Takes a free UMEM frame, lets `fill` write an inner frame at `TX_HEADROOM`, encapsulates it
/// and adds it to the batch. Without a free frame the segment is dropped (and counted).
#[inline]
fn put_segment(
    xsk: &mut XskSocket,
    stats: &WorkerStats,
    tx: &mut TxPool,
    batch: &mut TxBatch,
    outer: &OuterHeader,
    fill: impl FnOnce(&mut [u8]) -> Option<usize>,
) {
    let Some(addr) = tx.free.pop() else {
        stats.tx_drop(TxDrop::TxRingFull);
        return;
    };
    // SAFETY: `addr` is in the TX pool: no ring holds it.
    let Some(buf) = (unsafe { xsk.frames.frame_from(addr) }) else {
        return;
    };
    let Some(n) = fill(&mut buf[TX_HEADROOM..]) else {
        stats.tx_drop(TxDrop::EncapFailed);
        tx.free.push(addr);
        return;
    };
    match encapsulate(buf, TX_HEADROOM, n, outer, tx.next_ident()) {
        Ok(start) => batch.push(addr + start as u64, outer.len() + n),
        Err(_) => {
            stats.tx_drop(TxDrop::EncapFailed);
            tx.free.push(addr);
        }
    }
}

/// Puts the batch on the TX ring, kicks the kernel if it asks, counts what went out, and
/// empties the batch. Descriptors that do not fit (the ring stayed full) go back to the pool:
/// the frame is dropped, as a NIC would.
fn flush_batch(
    xsk: &mut XskSocket,
    stats: &WorkerStats,
    batch: &mut TxBatch,
    tx_free: &mut Vec<u64>,
) {
    if batch.len == 0 {
        return;
    }
    let descs = &batch.descs[..batch.len];
    let mut queued = 0usize;
    for _attempt in 0..2 {
        queued += transmit_all(&mut xsk.tx, &descs[queued..]);
        if xsk.tx.needs_wakeup() {
            kick(xsk, stats);
        }
        if queued == descs.len() {
            break;
        }
        // Full ring: completions free slots as the kernel sends.
        reap_completions(xsk, tx_free);
    }
    for d in &descs[queued..] {
        tx_free.push(xsk.frames.frame_base(d.addr));
        stats.tx_drop(TxDrop::TxRingFull);
    }
    stats.nic_tx_frames.add(queued as u64);
    stats
        .nic_tx_bytes
        .add(descs[..queued].iter().map(|d| u64::from(d.len)).sum());
    batch.len = 0;
}

/// Asks the kernel to send what is on the TX ring. In copy mode one `sendto` sends a bounded
/// number of frames and answers EAGAIN when more remain.
fn kick(xsk: &mut XskSocket, stats: &WorkerStats) {
    let fd = xsk.fd();
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
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                if xsk.tx.pending() > 0 => {}
            _ => return,
        }
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
