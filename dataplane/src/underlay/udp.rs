//! The UDP underlay: VXLAN over ordinary UDP sockets, with the kernel's segmentation (GSO,
//! `UDP_SEGMENT`) on send and its receive coalescing (GRO, `UDP_GRO`) on receive.
//!
//! Why, when AF_XDP exists: where the NIC has no zero-copy AF_XDP (veth, virtio and most VM
//! NICs), AF_XDP copies every frame and builds one skb per frame on transmit, and on veth an
//! XDP program even strips GSO from the peer, so 64 KB TCP bursts reach vxdp cut into 1.5 KB
//! frames. A UDP socket instead takes a whole TCP super-frame's segments in one `sendmsg`
//! (`UDP_SEGMENT`: the kernel cuts the payload into datagrams, or hands the whole to a NIC or
//! veth that segments later) and returns up to 64 KB of a flow's datagrams per `recvmsg`
//! (`UDP_GRO`, `gso_size` in a control message). wireguard-go (`conn/gso_linux.go`) and
//! quinn-udp do the same; the kernel side is `net/ipv4/udp_offload.c`.
//!
//! Per worker: one receive socket on the VXLAN port in an `SO_REUSEPORT` group (the kernel
//! spreads flows over the workers by their 4-tuple), and a small pool of transmit sockets
//! bound to ephemeral ports (Linux's `ip_local_port_range`, the range its vxlan driver draws
//! source ports from): a flow's socket, and so its outer source port, is chosen by the inner
//! flow hash, as RFC 7348 asks, so that ECMP, RSS and the receiver's `SO_REUSEPORT` group
//! spread flows. Outer UDP checksums are on (GSO needs them; kernel peers accept them), DF is
//! clear and the TTL is the system default, as the kernel's vxlan link sends.
//!
//! Dual stack (`local_ip6` set): a second receive socket on `[local_ip6]:port` (IPv6 only, in
//! its own `SO_REUSEPORT` group) and a second pool of transmit sockets on `[local_ip6]`, for
//! peers whose VTEP is an IPv6 address (the IPv6 half of a dual-stack lease). The worker polls
//! one descriptor: an epoll set holding both receive sockets. Over IPv6 the kernel always
//! computes the outer UDP checksum (RFC 8200 section 8.1; vxlan links do not accept zero from
//! it either unless told `udp6zerocsumrx`).
//!
//! IPv6-only (`local_ip` none, `local_ip6` set): only the IPv6 receive socket and transmit
//! sockets; no IPv4 socket is opened, and the host needs no IPv4 address.
//!
//! A kernel that refuses GSO at run time (`EIO`: the route's device lost checksum offload, on
//! kernels before 2024; `EINVAL`; `EMSGSIZE`: a datagram longer than the path MTU, which GSO
//! never fragments) gets each datagram sent on its own (fragmented where needed, DF being
//! clear), and GSO is tried again every
//! [`GSO_RETRY`]; a kernel without `UDP_GRO` gets one datagram per buffer. [`OffloadState`]
//! tells the status which is the case.

use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::{batch_u32, socklen_of};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use packet::offload::{SegmentChecksum, TcpSegments};
use packet::tunnel::flow_hash;
use packet::wire::{vxlan, Vni, VxlanPacket, VxlanRepr};

use super::{RxBatch, RxDatagram, Underlay};
use crate::stats::{TxDrop, WorkerStats};
use crate::tables::PeerVtep;

/// `SOL_UDP` options from <linux/udp.h> (not in the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Datagrams one GSO send may carry: the kernel's `UDP_MAX_SEGMENTS` was 64 before 6.x raised
/// it to 128; 64 works everywhere.
const MAX_GSO_SEGMENTS: usize = 64;
/// The most UDP payload one IPv4 datagram, and so one GSO send, carries: 65535 - 20 - 8.
const MAX_UDP_PAYLOAD_V4: usize = 65_507;
/// Receive buffers per `recvmmsg`.
const RX_MSGS: usize = 32;
/// One receive buffer: a whole GRO buffer (at most 64 KB of datagrams) or the largest datagram.
const RX_BUF_LEN: usize = 65_536;
/// Single datagrams queued for one `sendmmsg`, at most.
const SEND_SLOTS: usize = 64;
/// Header space per segment of a GSO send: VXLAN header, Ethernet, IPv6 and TCP with options.
const SEGMENT_HEADER_ROOM: usize = 160;
/// How long after a run-time refusal GSO is tried again.
pub const GSO_RETRY: Duration = Duration::from_secs(10);
/// How long a send waits for room in a full socket buffer before the datagram is dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(5);

/// How the UDP underlay is set up.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// This node's IPv4 underlay address: the IPv4 sockets bind to it, and it is every IPv4
    /// outer source address; `None` in an IPv6-only network.
    pub local_ip: Option<Ipv4Addr>,
    /// This node's IPv6 underlay address, in a dual-stack or IPv6-only network: IPv6 sockets
    /// bind to it.
    pub local_ip6: Option<Ipv6Addr>,
    /// The VXLAN port (flannel: 8472): where receive sockets listen and peers are sent to.
    pub port: u16,
    /// The network identifier put in every VXLAN header.
    pub vni: Vni,
    /// Transmit sockets (outer source ports) per worker.
    pub tx_sockets: usize,
    /// The longest inner frame that is not a super-frame: Ethernet header plus overlay MTU.
    pub max_frame: usize,
    /// Try `UDP_SEGMENT` on send.
    pub gso: bool,
    /// Try `UDP_GRO` on receive.
    pub gro: bool,
    /// Busy-poll the NIC queue from receive calls (`SO_BUSY_POLL`), for workers spinning on
    /// dedicated cores.
    pub busy_poll: bool,
}

/// What the kernel granted, as the status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GsoStatus {
    /// Super-frames leave in one `sendmsg` each.
    On,
    /// Turned off by configuration.
    Off,
    /// This kernel has no `UDP_SEGMENT`.
    Unsupported,
    /// The kernel refused it at run time (`EIO`/`EINVAL`/`EMSGSIZE`: e.g. the route's device
    /// has no checksum offload, or the path MTU is below one datagram); retried every
    /// [`GSO_RETRY`].
    Refused,
}

/// The offload state of one worker's sockets, shared with the status.
#[derive(Debug, Default)]
pub struct OffloadState {
    gso: AtomicU8,
    gro: AtomicBool,
}

impl OffloadState {
    /// Whether segments leave with `UDP_SEGMENT`.
    pub fn gso(&self) -> GsoStatus {
        match self.gso.load(Ordering::Relaxed) {
            0 => GsoStatus::On,
            1 => GsoStatus::Off,
            2 => GsoStatus::Unsupported,
            _ => GsoStatus::Refused,
        }
    }

    /// Whether the receive socket coalesces with `UDP_GRO`.
    pub fn gro(&self) -> bool {
        self.gro.load(Ordering::Relaxed)
    }

    fn set_gso(&self, s: GsoStatus) {
        let v = match s {
            GsoStatus::On => 0,
            GsoStatus::Off => 1,
            GsoStatus::Unsupported => 2,
            GsoStatus::Refused => 3,
        };
        self.gso.store(v, Ordering::Relaxed);
    }
}

/// Why the sockets could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("UDP underlay: {step} failed: {cause}{hint}")]
pub struct UdpError {
    step: String,
    // Printed in the message, not chained as a source: the chain would print it twice.
    cause: io::Error,
    hint: String,
}

impl UdpError {
    fn new(step: impl Into<String>, cause: io::Error) -> UdpError {
        UdpError {
            step: step.into(),
            cause,
            hint: String::new(),
        }
    }

    /// The errno behind the failure.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.cause.raw_os_error()
    }

    /// Whether the VXLAN port is held by someone else.
    pub fn is_port_in_use(&self) -> bool {
        self.raw_os_error() == Some(libc::EADDRINUSE)
    }
}

/// The most transmit sockets (source ports) one worker holds: the send queue records the
/// socket of each datagram in a byte, and 64 spread flows well enough.
pub const MAX_TX_SOCKETS: usize = 64;

/// One worker's sockets, opened before its thread starts (so a taken port fails the start).
#[derive(Debug)]
pub struct UdpSockets {
    /// The first family's receive socket and transmit sockets: IPv4, or IPv6 in an IPv6-only
    /// network (`first_is_v6`).
    rx: OwnedFd,
    tx: Vec<OwnedFd>,
    first_is_v6: bool,
    /// The IPv6 receive socket and transmit sockets, in a dual-stack network.
    v6: Option<(OwnedFd, Vec<OwnedFd>)>,
    tx_ports: Vec<u16>,
    gso: GsoStatus,
    gro: bool,
}

impl UdpSockets {
    /// Opens the receive socket on `local_ip:port` (in the `SO_REUSEPORT` group every worker
    /// joins) and `config.tx_sockets` transmit sockets on ephemeral ports; the same on
    /// `[local_ip6]` when the config has an IPv6 address.
    pub fn open(config: &UdpConfig) -> Result<UdpSockets, UdpError> {
        let Some(ip4) = config.local_ip else {
            // IPv6-only: the IPv6 sockets are the only ones.
            let ip6 = config.local_ip6.ok_or_else(no_address)?;
            let (rx, tx, gro) = open_family(config, IpAddr::V6(ip6))?;
            return UdpSockets::finish(config, rx, tx, gro, true, None);
        };
        let (rx, tx, gro) = open_family(config, IpAddr::V4(ip4))?;
        let v6 = UdpSockets::open_v6(config)?;
        UdpSockets::finish(config, rx, tx, gro, false, v6)
    }

    /// The IPv6 sockets, when the config has an IPv6 address.
    fn open_v6(config: &UdpConfig) -> Result<Option<(OwnedFd, Vec<OwnedFd>)>, UdpError> {
        config
            .local_ip6
            .map(|ip6| open_family(config, IpAddr::V6(ip6)).map(|(rx, tx, _)| (rx, tx)))
            .transpose()
    }

    /// Takes over sockets another vxdp process opened with the same config (see `handover`):
    /// the IPv4 receive socket must be bound to `local_ip:port` and each IPv4 transmit socket
    /// to `local_ip`, else they are refused (the config changed: open afresh instead). The
    /// options are set again, so a changed `--udp-gro` or `--busy-poll` applies. The IPv6
    /// sockets of a dual-stack node are taken the same way when they came and fit
    /// `local_ip6`; else they are opened afresh (the predecessor ran IPv4 only), and IPv6
    /// sockets the config has no use for are closed.
    pub fn adopt(
        config: &UdpConfig,
        rx: Vec<OwnedFd>,
        tx_in: Vec<OwnedFd>,
    ) -> Result<UdpSockets, UdpError> {
        let is_v6 = |s: &OwnedFd| {
            local_sockaddr(s)
                .map(|a| a.is_ipv6())
                .map_err(|e| UdpError::new("getsockname", e))
        };
        let (mut rx4, mut rx6) = (Vec::new(), Vec::new());
        for s in rx {
            if is_v6(&s)? {
                rx6.push(s);
            } else {
                rx4.push(s);
            }
        }
        let (mut tx, mut tx6) = (Vec::new(), Vec::new());
        for s in tx_in {
            if is_v6(&s)? {
                tx6.push(s);
            } else {
                tx.push(s);
            }
        }
        let Some(ip4) = config.local_ip else {
            // IPv6-only: exactly the IPv6 sockets; IPv4 ones that came are closed.
            let ip6 = config.local_ip6.ok_or_else(no_address)?;
            let (Some(rx), true) = (rx6.pop(), rx6.is_empty()) else {
                return Err(UdpError::new(
                    "taking over the receive socket",
                    io::Error::other("not exactly one IPv6 receive socket came"),
                ));
            };
            let (rx, tx, gro) = adopt_family(config, IpAddr::V6(ip6), rx, tx6)?;
            return UdpSockets::finish(config, rx, tx, gro, true, None);
        };
        let (Some(rx), true) = (rx4.pop(), rx4.is_empty()) else {
            return Err(UdpError::new(
                "taking over the receive socket",
                io::Error::other("not exactly one IPv4 receive socket came"),
            ));
        };
        let v6 = match (config.local_ip6, rx6.pop(), rx6.is_empty()) {
            (Some(ip6), Some(rx6), true) if !tx6.is_empty() => {
                let (rx6, tx6, _) = adopt_family(config, IpAddr::V6(ip6), rx6, tx6)?;
                Some((rx6, tx6))
            }
            (Some(_), _, _) => UdpSockets::open_v6(config)?,
            (None, _, _) => None,
        };
        let (rx, tx, gro) = adopt_family(config, IpAddr::V4(ip4), rx, tx)?;
        UdpSockets::finish(config, rx, tx, gro, false, v6)
    }

    fn finish(
        config: &UdpConfig,
        rx: OwnedFd,
        tx: Vec<OwnedFd>,
        gro: bool,
        first_is_v6: bool,
        v6: Option<(OwnedFd, Vec<OwnedFd>)>,
    ) -> Result<UdpSockets, UdpError> {
        let mut gso = if config.gso {
            GsoStatus::On
        } else {
            GsoStatus::Off
        };
        let mut tx_ports = Vec::with_capacity(tx.len());
        for s in &tx {
            if gso == GsoStatus::On && get_opt(s, libc::SOL_UDP, UDP_SEGMENT).is_err() {
                gso = GsoStatus::Unsupported;
            }
            // Either family: an IPv6-only node's first sockets are IPv6.
            tx_ports.push(
                local_sockaddr(s)
                    .map_err(|e| UdpError::new("getsockname", e))?
                    .port(),
            );
        }
        Ok(UdpSockets {
            rx,
            tx,
            first_is_v6,
            v6,
            tx_ports,
            gso,
            gro,
        })
    }

    /// The descriptors for a handover: the receive sockets (IPv4, then IPv6 in a dual-stack
    /// network; IPv6 alone in an IPv6-only one) and the transmit sockets (IPv4's, then IPv6's).
    pub fn fds(&self) -> (Vec<BorrowedFd<'_>>, Vec<BorrowedFd<'_>>) {
        let mut rx = vec![self.rx.as_fd()];
        let mut tx: Vec<BorrowedFd<'_>> = self.tx.iter().map(AsFd::as_fd).collect();
        if let Some((rx6, tx6)) = &self.v6 {
            rx.push(rx6.as_fd());
            tx.extend(tx6.iter().map(AsFd::as_fd));
        }
        (rx, tx)
    }

    /// The source ports flows are spread over.
    pub fn tx_ports(&self) -> &[u16] {
        &self.tx_ports
    }
}

/// Single datagrams waiting for one `sendmmsg` per socket.
struct SendQueue {
    /// `SEND_SLOTS` buffers of `slot_len` bytes: VXLAN header and inner frame each.
    bufs: Box<[u8]>,
    slot_len: usize,
    len: [usize; SEND_SLOTS],
    socket: [u8; SEND_SLOTS],
    dst: [Dest; SEND_SLOTS],
    count: usize,
}

/// A peer's VXLAN address as `sendmsg` takes it: IPv4 or IPv6.
#[derive(Clone, Copy)]
#[repr(C)]
union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// A destination and the length of its address.
#[derive(Clone, Copy)]
struct Dest {
    addr: SockAddr,
    len: libc::socklen_t,
    v6: bool,
}

impl Dest {
    fn v4(addr: SocketAddrV4) -> Dest {
        Dest {
            addr: SockAddr {
                v4: sockaddr_v4(addr),
            },
            len: socklen_of::<libc::sockaddr_in>(),
            v6: false,
        }
    }

    fn v6(addr: SocketAddrV6) -> Dest {
        Dest {
            addr: SockAddr {
                v6: sockaddr_v6(addr),
            },
            len: socklen_of::<libc::sockaddr_in6>(),
            v6: true,
        }
    }

    /// For `msg_name`: the kernel reads `len` bytes of it and does not write.
    fn as_ptr(&self) -> *mut libc::c_void {
        &self.addr as *const SockAddr as *mut libc::c_void
    }
}

/// What `recvmmsg` fills per call: message headers, iovecs, source addresses and control
/// buffers, made once and pointing into themselves and into the receive buffers. Both live on
/// the heap, so the pointers stay valid however the underlay moves.
struct RxHeaders {
    msgs: [libc::mmsghdr; RX_MSGS],
    iov: [libc::iovec; RX_MSGS],
    /// Room for either family's source address.
    names: [libc::sockaddr_in6; RX_MSGS],
    control: [[u64; 8]; RX_MSGS],
}

// SAFETY: the raw pointers inside point into this value's own heap allocation and into the
// receive buffers the same UdpUnderlay owns; the underlay moves to its worker thread once and
// is used there alone.
unsafe impl Send for RxHeaders {}

impl RxHeaders {
    /// Headers for `RX_MSGS` buffers of `RX_BUF_LEN` bytes in `bufs`.
    fn new(bufs: &mut [u8]) -> Box<RxHeaders> {
        // SAFETY: plain old data; every pointer is set below.
        let mut h: Box<RxHeaders> = Box::new(unsafe { zeroed() });
        for (i, chunk) in bufs.chunks_mut(RX_BUF_LEN).take(RX_MSGS).enumerate() {
            h.iov[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let iov: *mut libc::iovec = &mut h.iov[i];
            let name: *mut libc::sockaddr_in6 = &mut h.names[i];
            let control: *mut u64 = h.control[i].as_mut_ptr();
            let m = &mut h.msgs[i].msg_hdr;
            m.msg_name = name.cast();
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            m.msg_control = control.cast();
        }
        h
    }

    /// Resets what the kernel overwrote in the previous call.
    #[inline]
    fn rearm(&mut self) {
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_in6>();
            m.msg_hdr.msg_controllen = size_of::<[u64; 8]>();
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
    }
}

/// The UDP half of a worker.
pub struct UdpUnderlay {
    /// The IPv4 receive socket (none in an IPv6-only network).
    rx: Option<OwnedFd>,
    /// The IPv6 receive socket (dual stack, IPv6-only).
    rx6: Option<OwnedFd>,
    /// Both receive sockets, for the worker's poll (dual stack).
    epoll: Option<OwnedFd>,
    /// The IPv4 transmit sockets, then the IPv6 ones from `tx6_start` on.
    tx: Vec<OwnedFd>,
    tx6_start: usize,
    port: u16,
    vxlan_header: [u8; vxlan::HEADER_LEN],
    max_frame: usize,
    state: Arc<OffloadState>,
    gso: GsoStatus,
    gso_refused_at: Option<Instant>,
    /// `RX_MSGS` buffers of `RX_BUF_LEN` bytes.
    rx_bufs: Box<[u8]>,
    rx_headers: Box<RxHeaders>,
    queue: SendQueue,
    /// Headers of the segments of one GSO send.
    arena: Box<[u8]>,
}

impl std::fmt::Debug for UdpUnderlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpUnderlay")
            .field("rx", &self.rx)
            .field("tx_sockets", &self.tx.len())
            .field("gso", &self.gso)
            .finish()
    }
}

impl UdpUnderlay {
    /// A worker's underlay over `sockets`. Fails only when the epoll set joining the two
    /// receive sockets of a dual-stack network cannot be made.
    pub fn new(sockets: UdpSockets, config: &UdpConfig) -> Result<UdpUnderlay, UdpError> {
        let state = Arc::new(OffloadState::default());
        state.set_gso(sockets.gso);
        state.gro.store(sockets.gro, Ordering::Relaxed);
        let mut vxlan_header = [0u8; vxlan::HEADER_LEN];
        VxlanRepr { vni: config.vni }.emit(&mut VxlanPacket::new_unchecked(&mut vxlan_header[..]));
        let slot_len = vxlan::HEADER_LEN + config.max_frame;
        let mut rx_bufs = vec![0u8; RX_MSGS * RX_BUF_LEN].into_boxed_slice();
        let rx_headers = RxHeaders::new(&mut rx_bufs);
        let mut tx = sockets.tx;
        let (rx, rx6, epoll, tx6_start) = match (sockets.first_is_v6, sockets.v6) {
            // IPv6-only: every socket is IPv6.
            (true, _) => (None, Some(sockets.rx), None, 0),
            (false, None) => (Some(sockets.rx), None, None, tx.len()),
            (false, Some((rx6, tx6))) => {
                let tx6_start = tx.len();
                tx.extend(tx6);
                let ep = epoll_of(&[&sockets.rx, &rx6])
                    .map_err(|e| UdpError::new("an epoll set for the two receive sockets", e))?;
                (Some(sockets.rx), Some(rx6), Some(ep), tx6_start)
            }
        };
        Ok(UdpUnderlay {
            rx,
            rx6,
            epoll,
            tx,
            tx6_start,
            port: config.port,
            vxlan_header,
            max_frame: config.max_frame,
            state,
            gso: sockets.gso,
            gso_refused_at: None,
            rx_bufs,
            rx_headers,
            queue: SendQueue {
                bufs: vec![0u8; SEND_SLOTS * slot_len].into_boxed_slice(),
                slot_len,
                len: [0; SEND_SLOTS],
                socket: [0; SEND_SLOTS],
                dst: [Dest::v4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); SEND_SLOTS],
                count: 0,
            },
            arena: vec![0u8; MAX_GSO_SEGMENTS * SEGMENT_HEADER_ROOM].into_boxed_slice(),
        })
    }

    /// The offload state, for the status.
    pub fn state(&self) -> Arc<OffloadState> {
        Arc::clone(&self.state)
    }

    /// The peer's VXLAN address, or `None` for a family these sockets cannot reach (an IPv6
    /// VTEP without IPv6 sockets, an IPv4 one in an IPv6-only network).
    #[inline]
    fn destination(&self, peer: &PeerVtep) -> Option<Dest> {
        match peer.vtep_ip {
            IpAddr::V4(ip) if self.rx.is_some() => Some(Dest::v4(SocketAddrV4::new(ip, self.port))),
            IpAddr::V6(ip) if self.rx6.is_some() => {
                Some(Dest::v6(SocketAddrV6::new(ip, self.port, 0, 0)))
            }
            IpAddr::V4(_) | IpAddr::V6(_) => None,
        }
    }

    /// The transmit socket of the flow `frame` belongs to, among those of `dst`'s family.
    #[inline]
    fn socket_for(&self, frame: &[u8], dst: &Dest) -> usize {
        let (first, count) = if dst.v6 {
            (self.tx6_start, self.tx.len() - self.tx6_start)
        } else {
            (0, self.tx6_start)
        };
        first + flow_hash(frame) as usize % count.max(1)
    }

    /// Queues `[VXLAN header][inner frame]`, written by `fill`, for `sendmmsg`.
    #[inline]
    fn enqueue(
        &mut self,
        socket: usize,
        dst: Dest,
        stats: &WorkerStats,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        if self.queue.count == SEND_SLOTS {
            self.flush(stats);
        }
        let q = &mut self.queue;
        let i = q.count;
        let slot = &mut q.bufs[i * q.slot_len..(i + 1) * q.slot_len];
        slot[..vxlan::HEADER_LEN].copy_from_slice(&self.vxlan_header);
        let Some(n) = fill(&mut slot[vxlan::HEADER_LEN..]) else {
            stats.tx_drop(TxDrop::EncapFailed);
            return;
        };
        q.len[i] = vxlan::HEADER_LEN + n;
        // At most MAX_TX_SOCKETS per family (tx_sockets is capped when configured): fits a u8.
        q.socket[i] = u8::try_from(socket).expect("at most 2 * MAX_TX_SOCKETS transmit sockets");
        q.dst[i] = dst;
        q.count += 1;
    }

    /// Sends the queued datagrams of socket `s` with `sendmmsg`, in order.
    fn flush_socket(&mut self, s: usize, stats: &WorkerStats) {
        let q = &self.queue;
        // SAFETY: plain old data; every field used is set below.
        let mut iov: [libc::iovec; SEND_SLOTS] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; SEND_SLOTS] = unsafe { zeroed() };
        let mut n = 0;
        for i in 0..q.count {
            if usize::from(q.socket[i]) != s {
                continue;
            }
            let slot = &q.bufs[i * q.slot_len..i * q.slot_len + q.len[i]];
            iov[n] = libc::iovec {
                iov_base: slot.as_ptr() as *mut libc::c_void,
                iov_len: slot.len(),
            };
            let h = &mut msgs[n].msg_hdr;
            h.msg_name = q.dst[i].as_ptr();
            h.msg_namelen = q.dst[i].len;
            h.msg_iov = &mut iov[n];
            h.msg_iovlen = 1;
            n += 1;
        }
        let fd = self.tx[s].as_raw_fd();
        let mut sent = 0;
        while sent < n {
            stats.sendmmsg_calls.add(1);
            // SAFETY: `msgs[sent..n]` point at iovecs, addresses and buffers that live until
            // the call returns.
            let rc =
                unsafe { libc::sendmmsg(fd, msgs[sent..n].as_mut_ptr(), batch_u32(n - sent), 0) };
            if rc > 0 {
                let done = rc as usize;
                let bytes: usize = msgs[sent..sent + done]
                    .iter()
                    .map(|m| m.msg_len as usize)
                    .sum();
                stats.underlay_tx_frames.add(done as u64);
                stats.underlay_tx_bytes.add(bytes as u64);
                sent += done;
                continue;
            }
            // The first message failed: drop it (or, with a full buffer, the rest).
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    stats.tx_drops(TxDrop::SendBufferFull, (n - sent) as u64);
                    break;
                }
                Some(libc::EINTR) => {}
                _ => {
                    stats.tx_drop(TxDrop::SendFailed);
                    sent += 1;
                }
            }
        }
    }

    /// Sends a super-frame's segments with `UDP_SEGMENT`, [`MAX_GSO_SEGMENTS`] (and at most
    /// 64 KB of datagrams) per `sendmsg`. Returns the index of the first segment not sent when
    /// the kernel refused GSO, so the caller sends the rest one by one.
    fn send_gso(
        &mut self,
        socket: usize,
        dst: &Dest,
        segments: &TcpSegments<'_>,
        stats: &WorkerStats,
    ) -> Option<usize> {
        let first_len = vxlan::HEADER_LEN + segments.max_segment_len();
        let per_send = (MAX_UDP_PAYLOAD_V4 / first_len).clamp(1, MAX_GSO_SEGMENTS);
        let fd = self.tx[socket].as_raw_fd();
        let mut start = 0;
        while start < segments.len() {
            let end = (start + per_send).min(segments.len());
            let mut iov = arrayvec::ArrayVec::<IoSlice<'_>, { 2 * MAX_GSO_SEGMENTS }>::new();
            let mut bytes = 0;
            let mut arena: &mut [u8] = &mut self.arena;
            for i in start..end {
                let (head, rest) = arena.split_at_mut(SEGMENT_HEADER_ROOM);
                arena = rest;
                head[..vxlan::HEADER_LEN].copy_from_slice(&self.vxlan_header);
                let Ok((hl, payload)) = segments.write_headers(
                    i,
                    &mut head[vxlan::HEADER_LEN..],
                    SegmentChecksum::Full,
                ) else {
                    // The headers always fit SEGMENT_HEADER_ROOM: TcpSegments checked them.
                    stats.tx_drops(TxDrop::BadSuperFrame, (segments.len() - start) as u64);
                    return None;
                };
                let head: &[u8] = head;
                iov.push(IoSlice::new(&head[..vxlan::HEADER_LEN + hl]));
                iov.push(IoSlice::new(payload));
                bytes += vxlan::HEADER_LEN + hl + payload.len();
            }
            let count = end - start;
            // UDP_SEGMENT takes the size of every datagram but the last as a u16.
            let gso_size = u16::try_from(first_len).expect("a datagram fits 64 KiB");
            let rc = send_gather(fd, dst, &iov, (count > 1).then_some(gso_size));
            drop(iov);
            match rc {
                Ok(_) => {
                    stats.gso_sends.add(1);
                    stats.underlay_tx_frames.add(count as u64);
                    stats.underlay_tx_bytes.add(bytes as u64);
                }
                Err(e) => match e.raw_os_error() {
                    // EMSGSIZE: a segment exceeds the path MTU (udp_send_skb); single
                    // datagrams, DF clear, are fragmented instead, as the kernel's vxlan link
                    // does.
                    Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE) if count > 1 => {
                        self.refuse_gso(&e);
                        return Some(start);
                    }
                    Some(libc::EAGAIN | libc::ENOBUFS) => {
                        stats.tx_drops(TxDrop::SendBufferFull, count as u64);
                    }
                    _ => stats.tx_drops(TxDrop::SendFailed, count as u64),
                },
            }
            start = end;
        }
        None
    }

    fn refuse_gso(&mut self, e: &io::Error) {
        if self.gso == GsoStatus::On {
            tracing::warn!(
                "the kernel refused UDP segmentation offload ({e}); sending each datagram on \
                 its own, retrying in {GSO_RETRY:?} (a path MTU below one VXLAN datagram \
                 refuses it, and before 2024 kernels also an underlay device without TX \
                 checksum offload: `ethtool -k` shows tx-checksumming)"
            );
        }
        self.gso = GsoStatus::Refused;
        self.gso_refused_at = Some(Instant::now());
        self.state.set_gso(GsoStatus::Refused);
    }

    /// Whether to try GSO for this super-frame.
    #[inline]
    fn gso_usable(&mut self) -> bool {
        match self.gso {
            GsoStatus::On => true,
            GsoStatus::Refused
                if self
                    .gso_refused_at
                    .is_some_and(|t| t.elapsed() >= GSO_RETRY) =>
            {
                // Try again; a refusal brings it back here for another GSO_RETRY.
                self.gso = GsoStatus::On;
                self.state.set_gso(GsoStatus::On);
                true
            }
            _ => false,
        }
    }
}

impl UdpUnderlay {
    /// One `recvmmsg` on the IPv4 (or, with `v6`, the IPv6) receive socket.
    fn receive_from<F>(&mut self, v6: bool, stats: &WorkerStats, deliver: &mut F) -> usize
    where
        F: FnMut(&mut [RxDatagram<'_>]),
    {
        let fd = match (v6, &self.rx, &self.rx6) {
            (false, Some(rx), _) => rx.as_raw_fd(),
            (true, _, Some(rx6)) => rx6.as_raw_fd(),
            (false, None, _) | (true, _, None) => return 0,
        };
        let headers = &mut *self.rx_headers;
        headers.rearm();
        // SAFETY: every message points at its own iovec, address and control buffer in
        // `headers` and at its receive buffer in `rx_bufs`, all owned by self and not
        // otherwise borrowed during the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                headers.msgs.as_mut_ptr(),
                batch_u32(RX_MSGS),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            return 0;
        }
        stats.recvmmsg_calls.add(1);
        let received = rc as usize;
        let mut batch = RxBatch::new();
        let mut frames = 0usize;
        let mut bytes = 0usize;
        for (i, chunk) in self
            .rx_bufs
            .chunks_mut(RX_BUF_LEN)
            .take(received)
            .enumerate()
        {
            let h = &headers.msgs[i].msg_hdr;
            let len = (headers.msgs[i].msg_len as usize).min(chunk.len());
            if h.msg_flags & libc::MSG_TRUNC != 0 {
                stats.underlay_rx_truncated.add(1);
                frames += 1;
                continue;
            }
            let source = source_of(&headers.names[i]);
            let stride = gro_size(h).filter(|&s| s > 0 && s < len);
            if stride.is_some() {
                stats.gro_buffers.add(1);
            }
            bytes += len;
            // A GRO buffer is one flow's run of segments: deliver it in one batch where it
            // fits, so that it becomes one super-frame again, not two.
            let step = stride.unwrap_or(len).max(1);
            if batch.len() + len.div_ceil(step) > batch.capacity() && !batch.is_empty() {
                deliver(&mut batch);
                batch.clear();
            }
            for data in chunk[..len].chunks_mut(step) {
                frames += 1;
                if batch.is_full() {
                    deliver(&mut batch);
                    batch.clear();
                }
                batch.push(RxDatagram { source, data });
            }
        }
        if !batch.is_empty() {
            deliver(&mut batch);
        }
        stats.underlay_rx_frames.add(frames as u64);
        stats.underlay_rx_bytes.add(bytes as u64);
        frames
    }
}

impl Underlay for UdpUnderlay {
    fn receive<F>(&mut self, stats: &WorkerStats, mut deliver: F) -> usize
    where
        F: FnMut(&mut [RxDatagram<'_>]),
    {
        let mut frames = 0;
        if self.rx.is_some() {
            frames += self.receive_from(false, stats, &mut deliver);
        }
        if self.rx6.is_some() {
            frames += self.receive_from(true, stats, &mut deliver);
        }
        frames
    }

    fn can_send(&mut self, _stats: &WorkerStats) -> bool {
        true
    }

    fn send(&mut self, peer: &PeerVtep, frame: &[u8], stats: &WorkerStats) {
        let Some(dst) = self.destination(peer) else {
            stats.tx_drop(TxDrop::SendFailed);
            return;
        };
        if frame.len() > self.max_frame {
            stats.tx_drop(TxDrop::EncapFailed);
            return;
        }
        let socket = self.socket_for(frame, &dst);
        self.enqueue(socket, dst, stats, |out| {
            out.get_mut(..frame.len())?.copy_from_slice(frame);
            Some(frame.len())
        });
    }

    fn send_segments(&mut self, peer: &PeerVtep, segments: &TcpSegments<'_>, stats: &WorkerStats) {
        let Some(dst) = self.destination(peer) else {
            stats.tx_drops(TxDrop::SendFailed, segments.len() as u64);
            return;
        };
        let socket = self.socket_for(segments.super_frame(), &dst);
        // Datagrams queued earlier on this socket leave first: a flow's order is kept.
        self.flush(stats);
        let mut first_unsent = 0;
        if segments.len() > 1 && self.gso_usable() {
            match self.send_gso(socket, &dst, segments, stats) {
                None => return,
                Some(i) => first_unsent = i,
            }
        }
        for i in first_unsent..segments.len() {
            self.enqueue(socket, dst, stats, |out| segments.write(i, out).ok());
        }
    }

    fn flush(&mut self, stats: &WorkerStats) {
        if self.queue.count == 0 {
            return;
        }
        // Each socket's datagrams in one sendmmsg; a bit per socket that has any.
        let mut pending: u128 = 0;
        for &s in &self.queue.socket[..self.queue.count] {
            pending |= 1 << s;
        }
        while pending != 0 {
            let s = pending.trailing_zeros() as usize;
            pending &= pending - 1;
            self.flush_socket(s, stats);
        }
        self.queue.count = 0;
    }

    fn reclaim(&mut self, _stats: &WorkerStats) -> usize {
        0
    }

    fn poll_fd(&self) -> RawFd {
        // Exactly one receive socket when there is no epoll set.
        match (&self.epoll, &self.rx, &self.rx6) {
            (Some(ep), _, _) => ep.as_raw_fd(),
            (None, Some(rx), _) | (None, None, Some(rx)) => rx.as_raw_fd(),
            (None, None, None) => -1,
        }
    }

    fn has_outstanding(&self) -> bool {
        false
    }
}

/// The `UDP_GRO` control message's segment size, if the kernel coalesced this buffer.
fn gro_size(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled msg_control up to msg_controllen with well-formed cmsgs; the
    // CMSG macros stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                return usize::try_from(data.read_unaligned()).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// `sendmsg` of `parts` to `dst`, with `UDP_SEGMENT` when `gso_size` is given.
fn send_gather(
    fd: RawFd,
    dst: &Dest,
    parts: &[IoSlice<'_>],
    gso_size: Option<u16>,
) -> io::Result<usize> {
    let mut control = [0u64; 4];
    // SAFETY: plain old data; the fields used are set below.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_name = dst.as_ptr();
    h.msg_namelen = dst.len;
    // IoSlice is ABI-compatible with iovec on Unix; sendmsg does not write through it.
    h.msg_iov = parts.as_ptr() as *mut libc::iovec;
    h.msg_iovlen = parts.len();
    if let Some(size) = gso_size {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(2) } as usize;
        h.msg_control = control.as_mut_ptr().cast();
        h.msg_controllen = space;
        // SAFETY: msg_control points at `control`, which holds `space` bytes, enough for one
        // cmsg with a u16.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            libc::CMSG_DATA(c).cast::<u16>().write_unaligned(size);
        }
    }
    loop {
        // SAFETY: `h` points at the address, iovecs and control buffer above, all alive.
        let rc = unsafe { libc::sendmsg(fd, &h, 0) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The source address `recvmmsg` wrote: an IPv4 or IPv6 socket address.
fn source_of(name: &libc::sockaddr_in6) -> IpAddr {
    if i32::from(name.sin6_family) == libc::AF_INET6 {
        return IpAddr::V6(Ipv6Addr::from(name.sin6_addr.s6_addr));
    }
    // SAFETY: an AF_INET address: the kernel wrote a sockaddr_in, which is shorter than the
    // sockaddr_in6 it sits in and needs no stricter alignment.
    let v4 = unsafe { &*(name as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
    IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
}

/// An epoll set that is readable when any of `fds` is (level-triggered).
fn epoll_of(fds: &[&OwnedFd]) -> io::Result<OwnedFd> {
    // SAFETY: plain epoll_create1; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: epoll_create1 just returned this descriptor.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for fd in fds {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: epoll_ctl with a valid epoll descriptor, socket and event.
        let rc = unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(ep)
}

fn socket_v6(nonblocking: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM
                | libc::SOCK_CLOEXEC
                | if nonblocking { libc::SOCK_NONBLOCK } else { 0 },
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // IPv6 only: IPv4 VXLAN stays on the IPv4 sockets (bound to the IPv4 VTEP address).
    set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    Ok(fd)
}

fn sockaddr_v6(addr: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).expect("AF_INET6 is 10"),
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.ip().octets(),
        },
        sin6_scope_id: 0,
    }
}

fn bind_v6(fd: &OwnedFd, addr: SocketAddrV6) -> io::Result<()> {
    let sa = sockaddr_v6(addr);
    // SAFETY: bind with a sockaddr_in6 and its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            socklen_of::<libc::sockaddr_in6>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socket_v4(nonblocking: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM
                | libc::SOCK_CLOEXEC
                | if nonblocking { libc::SOCK_NONBLOCK } else { 0 },
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to an int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_opt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// A socket buffer size: the forced variant (CAP_NET_ADMIN, beyond `rmem_max`/`wmem_max`) when
/// allowed, else the plain one, which the kernel caps.
fn set_buffer(fd: &OwnedFd, force: libc::c_int, plain: libc::c_int, bytes: libc::c_int) {
    if set_opt(fd, libc::SOL_SOCKET, force, bytes).is_err() {
        let _ = set_opt(fd, libc::SOL_SOCKET, plain, bytes);
    }
}

fn set_timeout(fd: &OwnedFd, name: libc::c_int, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    // SAFETY: setsockopt with a pointer to a timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&tv as *const libc::timeval).cast(),
            socklen_of::<libc::timeval>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET is 2"),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn bind_v4(fd: &OwnedFd, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_v4(addr);
    // SAFETY: bind with a sockaddr_in and its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            socklen_of::<libc::sockaddr_in>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A config with neither an IPv4 nor an IPv6 address.
fn no_address() -> UdpError {
    UdpError::new(
        "choosing the underlay address",
        io::Error::other("the config has neither an IPv4 nor an IPv6 address to bind"),
    )
}

/// One family's receive socket on `ip:port` and `config.tx_sockets` transmit sockets on
/// `ip`; whether GRO is on.
fn open_family(config: &UdpConfig, ip: IpAddr) -> Result<(OwnedFd, Vec<OwnedFd>, bool), UdpError> {
    let v6 = ip.is_ipv6();
    let family = if v6 { "IPv6 " } else { "" };
    let rx = new_socket(v6, true)
        .map_err(|e| UdpError::new(format!("creating the {family}receive socket"), e))?;
    let gro = configure_rx(&rx, config)?;
    let at = SocketAddr::new(ip, config.port);
    if let Err(e) = bind_to(&rx, at) {
        let mut err = UdpError::new(format!("binding UDP {at}"), e);
        if err.is_port_in_use() {
            err.hint = format!(". {}", describe_port_holder(config.port));
        } else if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            let tentative = if v6 { " (or still tentative)" } else { "" };
            err.hint = format!(". {ip} is not an address of this host{tentative}");
        }
        return Err(err);
    }
    let mut tx = Vec::with_capacity(config.tx_sockets);
    for _ in 0..config.tx_sockets.max(1) {
        // Blocking, with SO_SNDTIMEO: a full send buffer waits a moment, then drops.
        let s = new_socket(v6, false)
            .map_err(|e| UdpError::new(format!("creating an {family}transmit socket"), e))?;
        configure_tx(&s, v6)?;
        let at = SocketAddr::new(ip, 0);
        bind_to(&s, at).map_err(|e| UdpError::new(format!("binding UDP {at}"), e))?;
        tx.push(s);
    }
    Ok((rx, tx, gro))
}

/// Takes over one family's sockets from a predecessor: datagram sockets, the receive socket
/// bound to `ip:port`, 1 to [`MAX_TX_SOCKETS`] transmit sockets bound to `ip`, else refused
/// (the config changed: open afresh instead). Options are set again (a changed `--udp-gro` or
/// `--busy-poll` applies); whether GRO is on.
fn adopt_family(
    config: &UdpConfig,
    ip: IpAddr,
    rx: OwnedFd,
    tx: Vec<OwnedFd>,
) -> Result<(OwnedFd, Vec<OwnedFd>, bool), UdpError> {
    let v6 = ip.is_ipv6();
    let family = if v6 { "IPv6 " } else { "" };
    if tx.is_empty() || tx.len() > MAX_TX_SOCKETS {
        return Err(UdpError::new(
            format!("taking over the {family}transmit sockets"),
            io::Error::other(format!(
                "{} came, 1 to {MAX_TX_SOCKETS} are taken",
                tx.len()
            )),
        ));
    }
    for s in std::iter::once(&rx).chain(&tx) {
        let kind =
            get_opt(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| UdpError::new("SO_TYPE", e))?;
        if kind != libc::SOCK_DGRAM {
            return Err(UdpError::new(
                "taking over a socket",
                io::Error::other("it is not a datagram socket"),
            ));
        }
    }
    let want = SocketAddr::new(ip, config.port);
    let bound = local_sockaddr(&rx).map_err(|e| UdpError::new("getsockname", e))?;
    if bound != want {
        return Err(UdpError::new(
            format!("taking over the {family}receive socket"),
            io::Error::other(format!("it is bound to {bound}, not {want}")),
        ));
    }
    let gro = configure_rx(&rx, config)?;
    for s in &tx {
        let at = local_sockaddr(s).map_err(|e| UdpError::new("getsockname", e))?;
        if at.ip() != ip || at.port() == 0 {
            return Err(UdpError::new(
                format!("taking over an {family}transmit socket"),
                io::Error::other(format!("it is bound to {at}, not {ip} with a port")),
            ));
        }
        configure_tx(s, v6)?;
    }
    Ok((rx, tx, gro))
}

fn new_socket(v6: bool, nonblocking: bool) -> io::Result<OwnedFd> {
    if v6 {
        socket_v6(nonblocking)
    } else {
        socket_v4(nonblocking)
    }
}

fn bind_to(fd: &OwnedFd, at: SocketAddr) -> io::Result<()> {
    match at {
        SocketAddr::V4(a) => bind_v4(fd, a),
        SocketAddr::V6(a) => bind_v6(fd, a),
    }
}

/// Options of a receive socket (before `bind`, or again on a socket taken over): joins the
/// `SO_REUSEPORT` group, a large buffer, GRO and busy polling as configured. Whether GRO is on.
fn configure_rx(rx: &OwnedFd, config: &UdpConfig) -> Result<bool, UdpError> {
    set_opt(rx, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| UdpError::new("SO_REUSEPORT", e))?;
    set_buffer(rx, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 8 << 20);
    let gro = set_opt(rx, libc::SOL_UDP, UDP_GRO, i32::from(config.gro)).is_ok() && config.gro;
    // <asm-generic/socket.h> SO_BUSY_POLL: microseconds a receive call may busy-poll the NIC
    // queue the last packet came from before it returns empty.
    const SO_BUSY_POLL: libc::c_int = 46;
    let busy_us = if config.busy_poll { 50 } else { 0 };
    if let Err(e) = set_opt(rx, libc::SOL_SOCKET, SO_BUSY_POLL, busy_us) {
        if config.busy_poll {
            tracing::warn!("busy polling of the receive socket refused ({e}); spinning without it");
        }
    }
    Ok(gro)
}

/// Options of a transmit socket of either family (before `bind`, or again on a socket taken
/// over).
fn configure_tx(s: &OwnedFd, v6: bool) -> Result<(), UdpError> {
    set_buffer(s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, 4 << 20);
    // No path MTU discovery, as the kernel's vxlan link sends: over IPv4 DF stays clear (RFC
    // 7348 leaves it to the VTEP; with DF the inner MTU would have to leave room on every
    // path), over IPv6 the kernel fragments at the source (routers never do).
    let (level, name, value, what) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
            "IPV6_MTU_DISCOVER",
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
            "IP_MTU_DISCOVER",
        )
    };
    set_opt(s, level, name, value).map_err(|e| UdpError::new(what, e))?;
    set_timeout(s, libc::SO_SNDTIMEO, SEND_TIMEOUT).map_err(|e| UdpError::new("SO_SNDTIMEO", e))
}

/// The address a socket of either family is bound to.
fn local_sockaddr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: getsockname writes at most `len` bytes into `ss`.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (its family says so); sockaddr_storage
            // is large and aligned enough for it.
            let sa =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                0,
                0,
            )))
        }
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so); sockaddr_storage is
            // large and aligned enough for it.
            let sa =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )))
        }
        _ => Err(io::Error::other("not an IP socket")),
    }
}

/// Who holds UDP `port` in this network namespace, in words an operator can act on: a
/// process (name and PID, from `/proc/net/udp` and the sockets under `/proc/*/fd`), or the
/// kernel itself, which is what a vxlan link's socket looks like (no owning process).
pub fn describe_port_holder(port: u16) -> String {
    let holders = port_inodes(port);
    if holders.is_empty() {
        return format!(
            "UDP port {port} is taken (by a socket this process cannot see): `ss -ulpn sport = :{port}` shows it"
        );
    }
    let owners = socket_owners(&holders);
    if !owners.is_empty() {
        return format!(
            "UDP port {port} is held by {}: stop it, or give vxdp another VXLAN port",
            owners.join(", ")
        );
    }
    // No process holds the socket. A kernel socket (a vxlan link's) has none: older kernels
    // list it with inode 0, newer ones with an inode that no descriptor refers to.
    let links = vxlan_links_up();
    if holders.contains(&0) || !links.is_empty() {
        let named = if links.is_empty() {
            String::new()
        } else {
            format!("; vxlan links up here: {}", links.join(", "))
        };
        return format!(
            "UDP port {port} is held by the kernel: a vxlan link listens on it (flanneld's \
             flannel.<VNI>, or one left by `vxdp --backend kernel`{named}); see `ip -d link show \
             type vxlan`, delete it with `ip link del NAME`, or run this node with --backend kernel"
        );
    }
    format!(
        "UDP port {port} is held by a socket no process here owns (the kernel's, or a process \
         in another PID namespace): `ss -ulpn sport = :{port}` on the host names it"
    )
}

/// Names of the vxlan links that are up in this network namespace (from `/sys/class/net`):
/// each holds a kernel UDP socket on its port.
fn vxlan_links_up() -> Vec<String> {
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut names: Vec<String> = links
        .flatten()
        .filter(|l| {
            let read = |f: &str| std::fs::read_to_string(l.path().join(f)).unwrap_or_default();
            is_vxlan_up(&read("uevent"), &read("flags"))
        })
        .map(|l| l.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether a link's sysfs `uevent` and `flags` describe a vxlan link that is up (`IFF_UP`).
fn is_vxlan_up(uevent: &str, flags: &str) -> bool {
    let up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .is_ok_and(|f| f & libc::IFF_UP as u32 != 0);
    up && uevent.lines().any(|l| l == "DEVTYPE=vxlan")
}

/// Socket inodes bound to local UDP `port` (0 for kernel sockets), from `/proc/net/udp{,6}`.
fn port_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let Some(p) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if p == port {
                if let Ok(inode) = inode.parse() {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes
}

/// `name[pid]` of every process holding one of the socket `inodes`.
fn socket_owners(inodes: &[u64]) -> Vec<String> {
    let mut owners = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).ok().is_some_and(|target| {
                let t = target.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| inodes.contains(&n))
            })
        });
        if holds {
            let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            owners.push(format!("{}[{pid}]", name.trim()));
        }
    }
    owners
}

/// The address a UDP underlay sends to and receives from, for logs.
pub fn vxlan_endpoint(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config on 127.0.0.1 with GSO on.
    fn loopback(port: u16, tx_sockets: usize, gro: bool) -> UdpConfig {
        UdpConfig {
            local_ip: Some(Ipv4Addr::LOCALHOST),
            local_ip6: None,
            port,
            vni: Vni::new(1).unwrap(),
            tx_sockets,
            max_frame: 1514,
            gso: true,
            gro,
            busy_poll: false,
        }
    }

    #[test]
    fn gso_state_round_trips() {
        let s = OffloadState::default();
        for g in [
            GsoStatus::On,
            GsoStatus::Off,
            GsoStatus::Unsupported,
            GsoStatus::Refused,
        ] {
            s.set_gso(g);
            assert_eq!(s.gso(), g);
        }
    }

    #[test]
    fn a_vxlan_link_is_recognised_from_sysfs() {
        // /sys/class/net/<link>/{uevent,flags} of a vxlan link, up and down, and of a veth
        // that is up.
        let vxlan = "DEVTYPE=vxlan\nINTERFACE=flannel.1\nIFINDEX=2\n";
        assert!(is_vxlan_up(vxlan, "0x1003\n"));
        assert!(!is_vxlan_up(vxlan, "0x1002\n"));
        assert!(!is_vxlan_up("INTERFACE=eth0\nIFINDEX=4\n", "0x1003\n"));
        assert!(!is_vxlan_up(vxlan, ""));
    }

    #[test]
    fn a_port_held_by_this_process_is_named() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let text = describe_port_holder(port);
        let me = std::process::id().to_string();
        assert!(text.contains(&me), "{text}");
        assert!(text.contains(&format!("UDP port {port}")), "{text}");
    }

    #[test]
    fn sockets_bind_and_a_second_group_member_shares_the_port() {
        let config = loopback(0, 3, true);
        let first = UdpSockets::open(&config).unwrap();
        let port = local_sockaddr(&first.rx).unwrap().port();
        assert_eq!(first.tx_ports().len(), 3);
        assert!(first.tx_ports().iter().all(|&p| p != 0 && p != port));
        // Another worker joins the SO_REUSEPORT group on the same port.
        let config = UdpConfig { port, ..config };
        let second = UdpSockets::open(&config).unwrap();
        assert_eq!(local_sockaddr(&second.rx).unwrap().port(), port);
        // A socket outside the group cannot take it, and the error names who holds it.
        let squatter = std::net::UdpSocket::bind(("127.0.0.1", port));
        assert!(squatter.is_err());
    }

    #[test]
    fn dual_stack_sockets_carry_each_family_to_its_peers() {
        let v4_only = loopback(0, 2, false);
        let first = UdpSockets::open(&v4_only).unwrap();
        let port = local_sockaddr(&first.rx).unwrap().port();
        let config = UdpConfig {
            port,
            local_ip6: Some(Ipv6Addr::LOCALHOST),
            ..v4_only
        };
        let mut underlay = UdpUnderlay::new(UdpSockets::open(&config).unwrap(), &config).unwrap();
        assert_eq!(underlay.tx.len(), 4, "two transmit sockets per family");
        let stats = WorkerStats::default();
        let frame = [0x5au8; 60];
        for ip in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ] {
            let peer = PeerVtep {
                vtep_ip: ip,
                outer: None,
            };
            underlay.send(&peer, &frame, &stats);
        }
        underlay.flush(&stats);
        // The IPv6 datagram reaches the IPv6 socket (only this underlay is bound there); the
        // IPv4 one lands on either member of the IPv4 group.
        let mut sources = Vec::new();
        for _ in 0..50 {
            underlay.receive(&stats, |batch| {
                for d in batch.iter() {
                    assert_eq!(&d.data[vxlan::HEADER_LEN..], &frame[..]);
                    sources.push(d.source);
                }
            });
            if sources.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            sources.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)),
            "{sources:?}"
        );
        assert_eq!(stats.snapshot().underlay_tx_frames, 2);
        // One descriptor to poll: the epoll set of both receive sockets.
        assert_ne!(
            underlay.poll_fd(),
            underlay.rx.as_ref().unwrap().as_raw_fd()
        );
        drop(first);
    }

    /// IPv6-only: no IPv4 address in the config, only IPv6 sockets (the host needs no IPv4
    /// address); IPv6 peers are reached, IPv4 ones are dropped and counted; the sockets are
    /// handed over and taken whole.
    #[test]
    fn ipv6_only_sockets_need_no_ipv4() {
        let config = UdpConfig {
            local_ip: None,
            local_ip6: Some(Ipv6Addr::LOCALHOST),
            ..loopback(0, 2, false)
        };
        let sockets = UdpSockets::open(&config).unwrap();
        assert!(sockets.first_is_v6 && sockets.v6.is_none());
        let all_v6 = |fds: &[BorrowedFd<'_>]| {
            fds.iter().all(|fd| {
                local_sockaddr(&fd.try_clone_to_owned().unwrap())
                    .unwrap()
                    .is_ipv6()
            })
        };
        let (rx, tx) = sockets.fds();
        assert_eq!((rx.len(), tx.len()), (1, 2));
        assert!(all_v6(&rx) && all_v6(&tx), "no IPv4 socket");
        let port = local_sockaddr(&sockets.rx).unwrap().port();
        let config = UdpConfig { port, ..config };
        // A successor takes them over.
        let dup = |fds: Vec<BorrowedFd<'_>>| -> Vec<OwnedFd> {
            fds.into_iter()
                .map(|fd| fd.try_clone_to_owned().unwrap())
                .collect()
        };
        let (rx, tx) = sockets.fds();
        let taken = UdpSockets::adopt(&config, dup(rx), dup(tx)).unwrap();
        assert!(taken.first_is_v6);
        drop(sockets);

        let mut underlay = UdpUnderlay::new(taken, &config).unwrap();
        assert!(underlay.rx.is_none() && underlay.rx6.is_some());
        let stats = WorkerStats::default();
        let frame = [0x6bu8; 60];
        for ip in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ] {
            let peer = PeerVtep {
                vtep_ip: ip,
                outer: None,
            };
            underlay.send(&peer, &frame, &stats);
        }
        underlay.flush(&stats);
        let mut sources = Vec::new();
        for _ in 0..50 {
            underlay.receive(&stats, |batch| {
                for d in batch.iter() {
                    assert_eq!(&d.data[vxlan::HEADER_LEN..], &frame[..]);
                    sources.push(d.source);
                }
            });
            if !sources.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sources, vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        let snap = stats.snapshot();
        assert_eq!(snap.underlay_tx_frames, 1, "only the IPv6 peer is sent to");
        assert_eq!(
            underlay.poll_fd(),
            underlay.rx6.as_ref().unwrap().as_raw_fd()
        );
    }

    #[test]
    fn dual_stack_sockets_are_handed_over_whole() {
        let v4_only = loopback(0, 2, false);
        let probe = UdpSockets::open(&v4_only).unwrap();
        let port = local_sockaddr(&probe.rx).unwrap().port();
        let config = UdpConfig {
            port,
            local_ip6: Some(Ipv6Addr::LOCALHOST),
            ..v4_only.clone()
        };
        let old = UdpSockets::open(&config).unwrap();
        let dup = |fds: Vec<BorrowedFd<'_>>| -> Vec<OwnedFd> {
            fds.into_iter()
                .map(|fd| fd.try_clone_to_owned().unwrap())
                .collect()
        };
        let (rx, tx) = old.fds();
        assert_eq!((rx.len(), tx.len()), (2, 4), "both families travel");
        // The order they travel in does not matter: families are told apart by address.
        let (mut rx, mut tx) = (dup(rx), dup(tx));
        rx.reverse();
        tx.reverse();
        let new = UdpSockets::adopt(&config, rx, tx).unwrap();
        let (_, v6_tx) = new.v6.as_ref().expect("the IPv6 sockets were taken");
        assert_eq!(v6_tx.len(), 2);
        assert_eq!(
            local_sockaddr(&new.v6.as_ref().unwrap().0).unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0))
        );
        // A successor configured IPv4 only closes the IPv6 sockets; one configured for IPv6
        // whose predecessor had none opens them.
        let (rx, tx) = old.fds();
        let v4_new = UdpSockets::adopt(
            &UdpConfig {
                port,
                ..v4_only.clone()
            },
            dup(rx),
            dup(tx),
        )
        .unwrap();
        assert!(v4_new.v6.is_none());
        let (rx, tx) = probe.fds();
        let grown = UdpSockets::adopt(&config, dup(rx), dup(tx)).unwrap();
        assert!(grown.v6.is_some());
    }

    #[test]
    fn port_in_use_error_names_the_holder() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = UdpSockets::open(&loopback(port, 1, true)).unwrap_err();
        assert!(err.is_port_in_use());
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
    }
}
