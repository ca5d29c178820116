//! One AF_XDP socket bound to one NIC queue, with its own UMEM (`xdpilone`).
//!
//! Each worker owns one of these outright: its UMEM, fill/completion rings and RX/TX rings are
//! touched by that worker's thread only, so nothing here is shared or locked. Zero-copy is tried
//! first when asked for `Auto`; drivers that cannot (veth, most virtual NICs) answer EOPNOTSUPP
//! and the socket is rebuilt in copy mode.

use std::ffi::CString;
use std::fmt;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use xdpilone::{
    CompletionQueue, FillQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig,
    User,
};

/// How to bind the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver offers it, else copy.
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode (works on every driver that runs XDP).
    Copy,
}

/// The mode a socket ended up bound in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketMode {
    /// The NIC DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies each frame between its buffers and the UMEM.
    Copy,
}

impl SocketMode {
    /// Name as shown in logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketMode::ZeroCopy => "zero-copy",
            SocketMode::Copy => "copy",
        }
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size and placement of one socket's UMEM and rings.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// Underlay interface name.
    pub ifname: String,
    /// NIC queue to bind to.
    pub queue_id: u32,
    /// Bytes per UMEM frame: a power of two between 2048 and the page size.
    pub frame_size: u32,
    /// Number of UMEM frames (half receive, half transmit).
    pub frame_count: u32,
    /// Entries in the RX, TX and completion rings (power of two); the fill ring gets
    /// [`XskConfig::fill_ring_size`].
    pub ring_size: u32,
    /// Zero-copy, copy, or auto-detect.
    pub bind_mode: BindMode,
}

impl XskConfig {
    /// Bytes of UMEM this socket locks.
    pub fn umem_bytes(&self) -> usize {
        self.frame_size as usize * self.frame_count as usize
    }

    /// Entries in the fill ring: twice the receive half of the UMEM (see [`XskSocket::open`]).
    pub fn fill_ring_size(&self) -> u32 {
        (self.frame_count / 2 * 2).next_power_of_two()
    }
}

/// Errors of creating a socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// Bad configuration.
    #[error("AF_XDP configuration for {ifname} queue {queue}: {reason}")]
    Config {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// What is wrong.
        reason: String,
    },
    /// The UMEM could not be registered: almost always RLIMIT_MEMLOCK.
    #[error(
        "registering {mib} MiB of AF_XDP UMEM for {ifname} queue {queue} failed: {errno}. \
         UMEM counts against RLIMIT_MEMLOCK unless vxdp has CAP_IPC_LOCK: grant CAP_IPC_LOCK, \
         raise the limit (systemd LimitMEMLOCK=infinity, or `ulimit -l`), or lower --umem-frames"
    )]
    Umem {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// Size asked for.
        mib: usize,
        /// The kernel's answer.
        errno: String,
    },
    /// A socket operation failed.
    #[error("AF_XDP {step} on {ifname} queue {queue} failed: {errno}{hint}")]
    Socket {
        /// Which step.
        step: &'static str,
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// The kernel's answer.
        errno: String,
        /// Raw errno value.
        raw: i32,
        /// What the operator can do.
        hint: &'static str,
    },
}

impl XskError {
    /// The raw errno behind a socket error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            XskError::Socket { raw, .. } => Some(*raw),
            _ => None,
        }
    }
}

/// Anonymous, page-aligned memory for a UMEM, unmapped on drop.
struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

impl UmemArea {
    fn new(len: usize) -> std::io::Result<UmemArea> {
        // SAFETY: anonymous private mapping; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(UmemArea { ptr, len })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range and every user of it (rings, sockets) is dropped
        // before us by field order in `XskSocket`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Tells UMEMs apart, so a frame token is never used on another socket's UMEM.
static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

/// A UMEM frame that userspace owns at this moment: taken from the RX or completion ring, or
/// one of the frames never lent to the kernel ([`XskSocket::take_free_frames`]). It is not
/// `Copy` or `Clone`, and putting it on the fill or TX ring consumes it, so no code can touch a
/// frame while the kernel owns it, and its bytes are reached only through
/// [`XskSocket::frame_mut`].
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's first byte in the UMEM.
    addr: u64,
    umem: u32,
}

/// A frame that came from the RX ring: the packet is `len` bytes at `offset` in it.
#[derive(Debug)]
pub struct RxFrame {
    /// The frame.
    pub frame: Frame,
    /// Where the packet starts in it.
    pub offset: usize,
    /// The packet's length.
    pub len: usize,
}

/// A frame to transmit: `len` bytes at `offset` in it.
#[derive(Debug)]
pub struct TxFrame {
    /// The frame.
    pub frame: Frame,
    /// Where the packet starts in it.
    pub offset: usize,
    /// The packet's length.
    pub len: usize,
}

/// The UMEM's geometry and base address.
#[derive(Debug)]
struct UmemFrames {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    frame_count: u32,
    id: u32,
}

impl UmemFrames {
    /// The token of the frame that contains UMEM address `addr` (from a ring). `None` if
    /// `addr` lies outside the UMEM, which a correct kernel never hands out.
    #[inline]
    fn token(&self, addr: u64) -> Option<Frame> {
        (addr < self.len as u64).then(|| Frame {
            addr: addr - addr % u64::from(self.frame_size),
            umem: self.id,
        })
    }
}

/// An AF_XDP socket bound to one NIC queue, owned by one worker thread.
pub struct XskSocket {
    // Field order is drop order: rings and sockets first, the memory they point into last.
    /// Receive ring: frames the XDP program redirected to us.
    rx: RingRx,
    /// Transmit ring: frames we hand to the NIC.
    tx: RingTx,
    /// Fill ring: empty frames we lend the kernel for receiving.
    fill: FillQueue,
    /// Completion ring: transmitted frames the kernel gives back.
    completion: CompletionQueue,
    frames: UmemFrames,
    /// Whether the frames were handed out yet (once).
    frames_taken: bool,
    user: User,
    _umem: Umem,
    _area: UmemArea,
    mode: SocketMode,
    queue_id: u32,
}

// SAFETY: the raw pointers inside refer to this socket's private UMEM mapping and rings; the
// socket moves to its worker thread once and is used there alone.
unsafe impl Send for XskSocket {}

impl fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskSocket")
            .field("queue_id", &self.queue_id)
            .field("mode", &self.mode)
            .field("frames", &self.frames.frame_count)
            .finish()
    }
}

/// Socket statistics kept by the kernel (`XDP_STATISTICS`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XskKernelStats {
    /// Dropped for reasons other than ring space (e.g. frame too large for a UMEM chunk).
    pub rx_dropped: u64,
    /// Dropped because the RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when the kernel needed a frame.
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors we put on the TX ring (a bug if non-zero).
    pub tx_invalid_descs: u64,
}

impl XskSocket {
    /// Creates the UMEM and socket and binds it to `config.queue_id` of `config.ifname`.
    pub fn open(config: &XskConfig) -> Result<XskSocket, XskError> {
        let cfg_err = |reason: String| XskError::Config {
            ifname: config.ifname.clone(),
            queue: config.queue_id,
            reason,
        };
        if !config.frame_size.is_power_of_two() || !(2048..=4096).contains(&config.frame_size) {
            return Err(cfg_err(format!(
                "frame size {} must be a power of two between 2048 and 4096",
                config.frame_size
            )));
        }
        if !config.ring_size.is_power_of_two() || config.ring_size < 64 {
            return Err(cfg_err(format!(
                "ring size {} must be a power of two >= 64",
                config.ring_size
            )));
        }
        if config.frame_count < 2 * config.ring_size {
            return Err(cfg_err(format!(
                "{} UMEM frames cannot back a fill ring and a TX ring of {} entries each; \
                 raise --umem-frames to at least {}",
                config.frame_count,
                config.ring_size,
                2 * config.ring_size
            )));
        }
        Self::open_with(config)
    }

    fn open_with(config: &XskConfig) -> Result<XskSocket, XskError> {
        let sock_err_raw = |step: &'static str, raw: i32| XskError::Socket {
            step,
            ifname: config.ifname.clone(),
            queue: config.queue_id,
            errno: std::io::Error::from_raw_os_error(raw).to_string(),
            raw,
            hint: match raw {
                libc::EPERM => {
                    ". AF_XDP needs CAP_NET_RAW and CAP_NET_ADMIN (or root); \
                         use --backend kernel otherwise"
                }
                libc::EBUSY => ". Another AF_XDP socket is bound to this queue",
                libc::EINVAL if step == "bind" => {
                    ". The queue may not exist: check `ethtool -l IFACE`"
                }
                _ => "",
            },
        };
        let sock_err =
            |step: &'static str, errno: xdpilone::Errno| sock_err_raw(step, errno.get_raw().abs());
        let area = UmemArea::new(config.umem_bytes()).map_err(|e| XskError::Umem {
            ifname: config.ifname.clone(),
            queue: config.queue_id,
            mib: config.umem_bytes() >> 20,
            errno: e.to_string(),
        })?;
        let umem_config = UmemConfig {
            // Twice the receive half of the UMEM: the kernel publishes how far it has consumed
            // the fill ring only when it flushes, after it has published the RX descriptors, so
            // for a moment user space holds frames the ring still counts as queued. A ring of
            // exactly the receive frames would then refuse them.
            fill_size: config.fill_ring_size(),
            complete_size: config.ring_size,
            frame_size: config.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is page aligned, `frame_count * frame_size` long, and outlives the Umem
        // (field order of XskSocket).
        let umem =
            unsafe { Umem::new(umem_config, area.as_slice_ptr()) }.map_err(|e| XskError::Umem {
                ifname: config.ifname.clone(),
                queue: config.queue_id,
                mib: config.umem_bytes() >> 20,
                errno: std::io::Error::from_raw_os_error(e.get_raw().abs()).to_string(),
            })?;

        let name = CString::new(config.ifname.as_str())
            .map_err(|_| sock_err("interface name", xdpilone::Errno::last_os_error()))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| sock_err("interface lookup", e))?;
        info.set_queue(config.queue_id);

        let sock = Socket::with_shared(&info, &umem).map_err(|e| sock_err("socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| sock_err("fill/completion ring setup", e))?;
        let ring = NonZeroU32::new(config.ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    // Unused: the bind below is ours, to retry it with other flags.
                    bind_flags: 0,
                },
            )
            .map_err(|e| sock_err("rx/tx ring setup", e))?;
        let rx = user.map_rx().map_err(|e| sock_err("rx ring mmap", e))?;
        let tx = user.map_tx().map_err(|e| sock_err("tx ring mmap", e))?;
        let ifindex = info.ifindex();
        let bind = |mode: SocketMode| bind_xsk(user.as_raw_fd(), ifindex, config.queue_id, mode);
        // The UMEM is registered once: a failed bind leaves the socket ready to bind again
        // (the kernel drops the pool it tried to attach), so the copy-mode fallback needs no
        // second registration; a second one would be charged to RLIMIT_MEMLOCK before the
        // first is released (asynchronously) and could exhaust it.
        let mode = match config.bind_mode {
            BindMode::Copy => bind(SocketMode::Copy).map(|()| SocketMode::Copy),
            BindMode::ZeroCopy => bind(SocketMode::ZeroCopy).map(|()| SocketMode::ZeroCopy),
            BindMode::Auto => match bind(SocketMode::ZeroCopy) {
                Ok(()) => Ok(SocketMode::ZeroCopy),
                // Drivers without zero-copy support refuse the bind; anything else is real.
                Err(raw)
                    if matches!(raw, libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT) =>
                {
                    tracing::debug!(
                        queue = config.queue_id,
                        "zero-copy bind refused ({}); binding in copy mode",
                        std::io::Error::from_raw_os_error(raw)
                    );
                    bind(SocketMode::Copy).map(|()| SocketMode::Copy)
                }
                Err(raw) => Err(raw),
            },
        }
        .map_err(|raw| sock_err_raw("bind", raw))?;
        let (fill, completion) = device.into_parts();

        Ok(XskSocket {
            rx,
            tx,
            fill,
            completion,
            frames: UmemFrames {
                base: area.ptr,
                len: area.len,
                frame_size: config.frame_size,
                frame_count: config.frame_count,
                id: NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed),
            },
            frames_taken: false,
            user,
            _umem: umem,
            _area: area,
            mode,
            queue_id: config.queue_id,
        })
    }

    /// Every frame of the UMEM, the first time it is asked; none after that. Frames come back
    /// only through the rings.
    pub fn take_free_frames(&mut self) -> Vec<Frame> {
        if std::mem::replace(&mut self.frames_taken, true) {
            return Vec::new();
        }
        let size = u64::from(self.frames.frame_size);
        (0..u64::from(self.frames.frame_count))
            .map(|i| Frame {
                addr: i * size,
                umem: self.frames.id,
            })
            .collect()
    }

    /// Bytes per UMEM frame.
    pub fn frame_size(&self) -> u32 {
        self.frames.frame_size
    }

    /// Number of UMEM frames.
    pub fn frame_count(&self) -> u32 {
        self.frames.frame_count
    }

    /// The bytes of a frame userspace owns. Several frames can be borrowed at once: each
    /// token is unique.
    ///
    /// Panics if `frame` belongs to another socket's UMEM (a bug in the caller).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn frame_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        assert_eq!(frame.umem, self.frames.id, "a frame of another UMEM");
        let size = self.frames.frame_size as usize;
        // SAFETY: the token proves the frame is owned by userspace and lent nowhere (tokens are
        // made only for frames taken from a ring or never lent, and consumed when given back),
        // and `&'a mut Frame` makes this the only live slice of it. `addr` is frame aligned and
        // below the mapping's length, which is a multiple of the frame size, and the mapping
        // outlives `&'a self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.frames.base.as_ptr().add(umem_offset(frame.addr)),
                size,
            )
        }
    }

    /// Lends frames to the kernel for receiving; returns how many the fill ring took (from the
    /// front of `frames`, which are removed). All of them unless the ring is really full.
    ///
    /// A single reservation can come back short: the ring's producer answers from its cached
    /// view of the consumer whenever that view shows any room at all, and refreshes it only
    /// when it shows none. Asking again after a short answer forces the refresh.
    pub fn fill(&mut self, frames: &mut Vec<Frame>) -> usize {
        let mut done = 0;
        while done < frames.len() {
            let mut w = self.fill.fill(crate::sys::batch_u32(frames.len() - done));
            let n = w.insert(frames[done..].iter().map(|f| f.addr)) as usize;
            w.commit();
            if n == 0 {
                break;
            }
            done += n;
        }
        frames.drain(..done);
        done
    }

    /// Takes up to `max` received frames off the RX ring into `out`; returns how many.
    pub fn receive(&mut self, max: u32, out: &mut Vec<RxFrame>) -> usize {
        let mut r = self.rx.receive(max);
        let mut n = 0;
        while let Some(desc) = r.read() {
            // A descriptor outside the UMEM never comes from a correct kernel; skipping it
            // loses nothing of ours.
            if let Some(frame) = self.frames.token(desc.addr) {
                let offset = umem_offset(desc.addr - frame.addr);
                let len = (desc.len as usize).min(self.frames.frame_size as usize - offset);
                out.push(RxFrame { frame, offset, len });
                n += 1;
            }
        }
        r.release();
        n
    }

    /// Puts frames on the TX ring (from the front of `frames`, which are removed); returns
    /// how many fit (see [`XskSocket::fill`] for why one reservation is not enough).
    pub fn transmit(&mut self, frames: &mut Vec<TxFrame>) -> usize {
        let mut done = 0;
        while done < frames.len() {
            let mut w = self.tx.transmit(crate::sys::batch_u32(frames.len() - done));
            let n = w.insert(frames[done..].iter().map(|f| xdpilone::xdp::XdpDesc {
                addr: f.frame.addr + f.offset as u64,
                len: u32::try_from(f.len).expect("a frame fits its UMEM frame"),
                options: 0,
            })) as usize;
            w.commit();
            if n == 0 {
                break;
            }
            done += n;
        }
        frames.drain(..done);
        done
    }

    /// Takes up to `max` transmitted frames off the completion ring into `out`; returns how
    /// many.
    pub fn complete(&mut self, max: u32, out: &mut Vec<Frame>) -> usize {
        let mut c = self.completion.complete(max);
        let mut n = 0;
        while let Some(addr) = c.read() {
            if let Some(frame) = self.frames.token(addr) {
                out.push(frame);
                n += 1;
            }
        }
        c.release();
        n
    }

    /// Whether the kernel must be kicked (`sendto`) to transmit what is on the TX ring.
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Descriptors on the TX ring the kernel has not consumed yet.
    pub fn tx_pending(&self) -> u32 {
        self.tx.pending()
    }

    /// Whether the driver of `ifname` binds AF_XDP sockets in zero-copy mode: `Ok(false)` when
    /// it refuses (it would only copy), an error when AF_XDP cannot be used at all (no
    /// CAP_NET_RAW, no such queue). Binds a small throwaway socket to `queue`; no XDP program
    /// is needed for that.
    pub fn probe_zero_copy(ifname: &str, queue: u32) -> Result<bool, XskError> {
        let config = XskConfig {
            ifname: ifname.to_string(),
            queue_id: queue,
            frame_size: 4096,
            frame_count: 128,
            ring_size: 64,
            bind_mode: BindMode::ZeroCopy,
        };
        match Self::open(&config) {
            Ok(_) => Ok(true),
            Err(XskError::Socket {
                step: "bind",
                raw: libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks the kernel to busy-poll this socket's NIC queue from the application's system calls
    /// instead of waiting for interrupts (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` of `usecs`,
    /// `SO_BUSY_POLL_BUDGET` of `budget` frames; Linux 5.11): with a worker spinning on a
    /// dedicated core, frames are handled without an interrupt and a softirq in between.
    pub fn set_busy_poll(&self, usecs: i32, budget: i32) -> std::io::Result<()> {
        // <asm-generic/socket.h>; not in the libc crate for every target.
        const SO_BUSY_POLL: libc::c_int = 46;
        const SO_PREFER_BUSY_POLL: libc::c_int = 69;
        const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
        for (name, value) in [
            (SO_PREFER_BUSY_POLL, 1),
            (SO_BUSY_POLL, usecs),
            (SO_BUSY_POLL_BUDGET, budget),
        ] {
            // SAFETY: setsockopt with a pointer to an int and its size.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    name,
                    (&value as *const libc::c_int).cast(),
                    crate::sys::socklen_of::<libc::c_int>(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Drives the kernel's busy polling (and copy-mode receive) with a non-blocking `recvfrom`:
    /// with `SO_PREFER_BUSY_POLL` the NIC queue is polled in this call.
    pub fn poke_rx(&self) {
        // SAFETY: a zero-length recvfrom on our own socket; nothing is written.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The socket's file descriptor (for the XSKMAP and for poll).
    pub fn fd(&self) -> i32 {
        self.user.as_raw_fd()
    }

    /// Copy or zero-copy.
    pub fn mode(&self) -> SocketMode {
        self.mode
    }

    /// The NIC queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// A reader of this socket's kernel statistics, usable from any thread. It holds a
    /// duplicate of the descriptor, so it stays valid after the worker drops the socket.
    pub fn stats_reader(&self) -> std::io::Result<XskStatsReader> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is checked.
        let fd = unsafe { libc::fcntl(self.fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fcntl just returned this new descriptor.
        Ok(XskStatsReader(Arc::new(std::sync::Mutex::new(Some(
            unsafe { OwnedFd::from_raw_fd(fd) },
        )))))
    }
}

/// Binds an AF_XDP socket with its own UMEM to (`ifindex`, `queue`) in `mode`, with
/// need-wakeup; the raw errno on failure.
fn bind_xsk(fd: i32, ifindex: u32, queue: u32, mode: SocketMode) -> Result<(), i32> {
    const XDP_COPY: u16 = 1 << 1;
    const XDP_ZEROCOPY: u16 = 1 << 2;
    const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
    #[repr(C)]
    struct SockaddrXdp {
        family: u16,
        flags: u16,
        ifindex: u32,
        queue_id: u32,
        shared_umem_fd: u32,
    }
    let addr = SockaddrXdp {
        family: u16::try_from(libc::AF_XDP).expect("AF_XDP is 44"),
        flags: XDP_USE_NEED_WAKEUP
            | match mode {
                SocketMode::ZeroCopy => XDP_ZEROCOPY,
                SocketMode::Copy => XDP_COPY,
            },
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    // SAFETY: bind with a sockaddr_xdp of the size the kernel expects.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const SockaddrXdp).cast(),
            crate::sys::socklen_of::<SockaddrXdp>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// Reads an AF_XDP socket's `XDP_STATISTICS` through a duplicate of its descriptor, which
/// [`XskStatsReader::close`] lets go of for every clone: a handover must close the socket
/// everywhere before the successor can bind the same queue.
#[derive(Debug, Clone)]
pub struct XskStatsReader(Arc<std::sync::Mutex<Option<OwnedFd>>>);

impl XskStatsReader {
    /// Closes the duplicate (for every clone); reads return zeros from then on.
    pub fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The kernel's counters for the socket (zeros if the query fails or it was closed).
    pub fn read(&self) -> XskKernelStats {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = guard.as_ref() else {
            return XskKernelStats::default();
        };
        let mut raw = xdpilone::xdp::XdpStatisticsV2::default();
        let mut len = crate::sys::socklen_of::<xdpilone::xdp::XdpStatisticsV2>();
        // SAFETY: getsockopt writes at most `len` bytes into `raw`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut raw as *mut xdpilone::xdp::XdpStatisticsV2).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return XskKernelStats::default();
        }
        XskKernelStats {
            rx_dropped: raw.rx_dropped,
            rx_ring_full: raw.rx_ring_full,
            rx_fill_ring_empty: raw.rx_fill_ring_empty_descs,
            tx_invalid_descs: raw.tx_invalid_descs,
        }
    }
}

/// A UMEM address as an offset into the mapping: the UMEM is mapped in this process, so every
/// address in it fits `usize`.
#[inline]
fn umem_offset(addr: u64) -> usize {
    usize::try_from(addr).expect("UMEM addresses lie within the mapping")
}

/// `SOL_XDP` and `XDP_STATISTICS` from <linux/if_xdp.h>.
const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> XskConfig {
        XskConfig {
            ifname: "lo".into(),
            queue_id: 0,
            frame_size: 4096,
            frame_count: 256,
            ring_size: 64,
            bind_mode: BindMode::Copy,
        }
    }

    #[test]
    fn rejects_bad_geometry_with_the_fix() {
        let mut c = config();
        c.frame_size = 3000;
        assert!(matches!(XskSocket::open(&c), Err(XskError::Config { .. })));
        let mut c = config();
        c.frame_count = 100;
        let err = XskSocket::open(&c).unwrap_err().to_string();
        assert!(err.contains("--umem-frames"), "{err}");
    }

    #[test]
    fn fill_ring_holds_twice_the_receive_frames() {
        let mut c = config();
        assert_eq!(c.fill_ring_size(), 256); // 128 receive frames
        c.frame_count = 4096;
        assert_eq!(c.fill_ring_size(), 4096);
        c.frame_count = 3000; // 1500 receive frames: rounded up to a power of two
        assert_eq!(c.fill_ring_size(), 4096);
    }

    #[test]
    fn umem_area_is_page_aligned_and_writable() {
        let area = UmemArea::new(1 << 16).unwrap();
        assert_eq!(area.ptr.as_ptr() as usize % 4096, 0);
        // SAFETY: freshly mapped, exclusively ours.
        unsafe { area.ptr.as_ptr().add((1 << 16) - 1).write(0xab) };
    }
}
