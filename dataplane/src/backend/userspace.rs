//! The userspace dataplane: a multi-queue TAP device, one pinned worker per queue, and the
//! underlay each worker owns a share of: AF_XDP sockets (with the XDP program that steers
//! VXLAN into them) or UDP sockets with GSO/GRO. Peers become a route on the TAP
//! (`subnet via base onlink`, as flanneld programs on its vxlan device) plus one atomic update
//! of the peer tables the workers read; with AF_XDP, whose transmits bypass the kernel's
//! routing and ARP, the underlay next hops are resolved over netlink and refreshed every tick.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use control::backend::{Backend, BackendError, Peer, PeerV4, Teardown};
use control::interface::ExternalInterface;
use control::lease::SubnetKey;
use control::netlink::Netlink;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use packet::tunnel::{DecapPolicy, OuterHeader, OuterParams};
use packet::wire::{MacAddr, Vni};
use serde::{Deserialize, Serialize};

use super::{directly_reachable, BackendStartError, DropAlarm};
use crate::handover::{duplicate, FdRole, Inherited, Manifest, FORMAT_VERSION};
use crate::next_hop::{NextHop, PathStatus, PathTracker};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::stats::{WorkerCounters, WorkerStats};
use crate::steering::{SteeringConfig, SteeringProgram, XdpCounters, XdpCountersReader, XdpMode};
use crate::tables::{PeerEntry, PeerEntryV6, PeerTables};
use crate::tap::{TapConfig, TapDevice, TapOffloads, TapQueue};
use crate::underlay::af_xdp::AfXdpUnderlay;
use crate::underlay::udp::{
    GsoStatus, OffloadState, UdpConfig, UdpSockets, UdpUnderlay, MAX_TX_SOCKETS,
};
use crate::worker::{Worker, WorkerSet};
use crate::xsk::{
    BindMode, SocketMode, XskConfig, XskError, XskKernelStats, XskSocket, XskStatsReader,
};

/// Bytes per UMEM frame (one page).
pub const FRAME_SIZE: u32 = 4096;
/// Default UMEM frames per queue (16 MiB).
pub const DEFAULT_UMEM_FRAMES: u32 = 4096;
/// Fewest UMEM frames per queue that still make sense (two rings of 64).
const MIN_UMEM_FRAMES: u32 = 128;
/// Outer source ports (transmit sockets) per worker with the UDP underlay: enough for ECMP,
/// RSS and the receiver's SO_REUSEPORT group to spread flows, few enough to stay cheap.
pub const DEFAULT_UDP_SOURCE_PORTS: usize = 16;

/// Which underlay the workers use, and its options.
#[derive(Debug, Clone)]
pub enum UnderlayKind {
    /// AF_XDP sockets and the XDP steering program.
    AfXdp(AfXdpOptions),
    /// UDP sockets with GSO and GRO.
    Udp(UdpOptions),
}

/// AF_XDP settings.
#[derive(Debug, Clone)]
pub struct AfXdpOptions {
    /// XDP attach modes to try, in order.
    pub xdp_modes: Vec<XdpMode>,
    /// AF_XDP bind mode.
    pub bind_mode: BindMode,
    /// UMEM frames per queue; `None` = default, fitted to RLIMIT_MEMLOCK.
    pub umem_frames: Option<u32>,
    /// Outer UDP checksums over IPv4 (flannel's `udpcsum`).
    pub udp_checksum: bool,
}

/// UDP underlay settings.
#[derive(Debug, Clone)]
pub struct UdpOptions {
    /// Outer source ports per worker.
    pub source_ports: usize,
    /// Try UDP segmentation offload on send.
    pub gso: bool,
    /// Try UDP receive coalescing.
    pub gro: bool,
}

/// How to set the userspace dataplane up.
#[derive(Debug, Clone)]
pub struct UserspaceConfig {
    /// The underlay interface.
    pub external: ExternalInterface,
    /// TAP device name.
    pub device: String,
    /// This node's VtepMAC.
    pub vtep_mac: MacAddr,
    /// Overlay MTU.
    pub mtu: u32,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// This node's IPv4 lease subnet (its base address goes on the TAP as a /32); `None` in an
    /// IPv6-only network, where the TAP gets only its IPv6 address and routes.
    pub subnet: Option<Ipv4Net>,
    /// Worker count; `None` = AF_XDP: the NIC's RX queues, at most one per CPU; UDP: one per
    /// CPU, at most 16.
    pub queues: Option<usize>,
    /// CPUs to pin workers to, in order; empty = no pinning.
    pub worker_cpus: Vec<usize>,
    /// Accept VXLAN from unknown sources.
    pub allow_unknown_peers: bool,
    /// DirectRouting: peers on the same L2 get a plain route to their PublicIP.
    pub direct_routing: bool,
    /// Ask the TAP for vnet headers and TCP offloads (TSO in, GRO out).
    pub tap_offloads: bool,
    /// Workers spin instead of sleeping while traffic flows.
    pub busy_poll: bool,
    /// The underlay.
    pub underlay: UnderlayKind,
    /// The IPv6 overlay of a dual-stack or IPv6-only network.
    pub ipv6: Option<UserspaceV6Config>,
}

/// The IPv6 half of a dual-stack or IPv6-only node: inner IPv6 through the same TAP, outer IPv6
/// to peers' PublicIPv6. The TAP's one MAC is this node's VtepMAC for both families.
#[derive(Debug, Clone)]
pub struct UserspaceV6Config {
    /// This node's IPv6 lease; its base address goes on the TAP as a /128.
    pub subnet: Ipv6Net,
    /// The IPv6 underlay address the IPv6 sockets bind to.
    pub local_ip: Ipv6Addr,
}

/// State of one peer's underlay path (AF_XDP resolves next hops itself).
#[derive(Debug, Clone, Serialize)]
pub struct PeerPath {
    /// Underlay next hop MAC, once resolved.
    pub next_hop_mac: Option<MacAddr>,
    /// The address the next hop MAC belongs to.
    pub via: Option<IpAddr>,
    /// `resolved`, `resolving`, `direct-routing`, `kernel-routed` or an error.
    pub state: String,
}

/// What the status shows of one worker's underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UnderlayStatus {
    /// An AF_XDP socket.
    AfXdp {
        /// Copy or zero-copy.
        socket_mode: SocketMode,
        /// The kernel's counters for the socket.
        socket: XskKernelStats,
    },
    /// UDP sockets.
    Udp {
        /// Segmentation offload on send.
        gso: GsoStatus,
        /// Receive coalescing.
        gro: bool,
        /// The outer source ports flows are spread over.
        source_ports: Vec<u16>,
    },
}

/// One worker in `vxdp status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// TAP queue (and NIC queue with AF_XDP).
    pub queue: u32,
    /// CPU it is pinned to.
    pub core: Option<usize>,
    /// Its underlay.
    pub underlay: UnderlayStatus,
    /// Counters.
    pub counters: WorkerCounters,
}

/// What the status keeps of one worker's underlay, to read it from any thread.
#[derive(Clone)]
enum UnderlayView {
    AfXdp {
        mode: SocketMode,
        socket: XskStatsReader,
    },
    Udp {
        state: Arc<OffloadState>,
        source_ports: Vec<u16>,
    },
}

#[derive(Clone)]
struct WorkerView {
    queue: u32,
    core: Option<usize>,
    stats: Arc<WorkerStats>,
    underlay: UnderlayView,
}

/// A thread-safe view for `vxdp status`.
#[derive(Clone)]
pub struct UserspaceStatusProbe {
    workers: Vec<WorkerView>,
    xdp_mode: Option<XdpMode>,
    paths: Arc<Mutex<BTreeMap<IpAddr, PeerPath>>>,
    xdp_counters: Option<XdpCountersReader>,
}

impl UserspaceStatusProbe {
    /// Workers and their counters.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|w| WorkerStatus {
                queue: w.queue,
                core: w.core,
                underlay: match &w.underlay {
                    UnderlayView::AfXdp { mode, socket } => UnderlayStatus::AfXdp {
                        socket_mode: *mode,
                        socket: socket.read(),
                    },
                    UnderlayView::Udp {
                        state,
                        source_ports,
                    } => UnderlayStatus::Udp {
                        gso: state.gso(),
                        gro: state.gro(),
                        source_ports: source_ports.clone(),
                    },
                },
                counters: w.stats.snapshot(),
            })
            .collect()
    }

    /// The XDP attach mode, with AF_XDP.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.xdp_mode
    }

    /// Underlay path per peer PublicIP (and PublicIPv6).
    pub fn paths(&self) -> BTreeMap<IpAddr, PeerPath> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The XDP program's counters, with AF_XDP.
    pub fn xdp_counters(&self) -> Option<XdpCounters> {
        self.xdp_counters.as_ref().map(XdpCountersReader::read)
    }
}

/// The AF_XDP-only parts: next-hop tracking and the outer header parameters.
struct AfXdpPaths {
    tracker: PathTracker,
    udp_checksum: bool,
}

/// The running userspace dataplane.
pub struct UserspaceBackend {
    // Field order is drop order: the workers stop before the XDP program is detached and
    // before the TAP's last queue goes.
    workers: WorkerSet,
    views: Vec<WorkerView>,
    steering: Option<SteeringProgram>,
    nl: Netlink,
    config: UserspaceConfig,
    tap_index: u32,
    tables: Arc<PeerTables>,
    peers: BTreeMap<SubnetKey, Peer>,
    direct: BTreeMap<SubnetKey, Ipv4Addr>,
    paths: Arc<Mutex<BTreeMap<IpAddr, PeerPath>>>,
    af_xdp: Option<AfXdpPaths>,
    summary: String,
    drop_alarm: DropAlarm,
    /// Duplicates of every TAP queue and underlay socket the workers use, with their roles:
    /// what a successor process gets (see `handover`). They also keep the queues attached and
    /// the sockets bound while the workers are stopped for a handover.
    handover: Vec<(FdRole, OwnedFd)>,
    tap_offloads: TapOffloads,
}

/// What a predecessor process left this start, split by what takes it.
struct Adopted {
    /// The TAP queues and the offloads their device was given; empty when none came.
    tap: Vec<OwnedFd>,
    tap_offloads: Option<TapOffloads>,
    /// Per worker, its receive sockets (one per family) and transmit sockets.
    udp: Vec<Option<(Vec<OwnedFd>, Vec<OwnedFd>)>>,
}

impl Adopted {
    /// Takes what fits `config` out of `inherited`: nothing when the device differs.
    fn take(inherited: &Mutex<Option<Inherited>>, config: &UserspaceConfig) -> Adopted {
        // Taken whole: whatever this attempt does not use is closed when it returns, before a
        // fallback opens sockets of its own (an unread socket left in the SO_REUSEPORT group
        // would take a share of the traffic).
        let taken = inherited.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut adopted = Adopted {
            tap: Vec::new(),
            tap_offloads: None,
            udp: Vec::new(),
        };
        let Some(mut inh) = taken else {
            return adopted;
        };
        if inh.manifest.device != config.device {
            tracing::warn!(
                "the descriptors handed over are for {}, this node's device is {}: not taken",
                inh.manifest.device,
                config.device
            );
            return adopted;
        }
        adopted.tap = inh.take_tap_queues();
        adopted.tap_offloads = inh.manifest.tap_offloads;
        if matches!(config.underlay, UnderlayKind::Udp(_)) {
            for queue in 0..inh.manifest.fds.len() {
                adopted.udp.push(inh.take_udp(queue));
            }
        }
        if inh.left_over() > 0 {
            tracing::info!(
                descriptors = inh.left_over(),
                "descriptors handed over that this start does not use are closed"
            );
        }
        adopted
    }

    /// The TAP device from the queues taken over, if any came and they fit.
    fn tap_device(&mut self, name: &str) -> Option<TapDevice> {
        if self.tap.is_empty() {
            return None;
        }
        let offloads = self.tap_offloads?;
        let queues: std::io::Result<Vec<TapQueue>> = std::mem::take(&mut self.tap)
            .into_iter()
            .map(TapQueue::from_fd)
            .collect();
        match queues.and_then(|q| TapDevice::from_queues(name, q, offloads)) {
            Ok(dev) => Some(dev),
            Err(e) => {
                tracing::warn!("the TAP queues handed over cannot be used ({e}): opening new ones");
                None
            }
        }
    }
}

fn nic_rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Workers when `--queues` is not given. AF_XDP binds one socket per NIC queue, so it uses the
/// NIC's RX queues (at most one per CPU). The UDP sockets are not tied to NIC queues: the
/// kernel spreads flows over the TAP's queues and the receiving SO_REUSEPORT group, so one
/// worker per CPU (up to 16) lets flows run in parallel even on single-queue NICs (measured on
/// 2 CPUs over veth: 64-byte UDP +35%, four TCP streams +48% with two workers instead of one).
fn default_queues(underlay: &UnderlayKind, ifname: &str, pinned: usize, online: usize) -> usize {
    let cpus = if pinned > 0 { pinned } else { online }.max(1);
    match underlay {
        UnderlayKind::AfXdp(_) => nic_rx_queues(ifname).min(cpus),
        UnderlayKind::Udp(_) => cpus.min(16),
    }
}

/// Whether this process may lock memory without limit (CAP_IPC_LOCK in its effective set).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return None;
    }
    (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// UMEM frames per queue: the request or the default, fitted to RLIMIT_MEMLOCK when the
/// process cannot lock memory freely.
fn umem_frames_per_queue(requested: Option<u32>, queues: usize) -> Result<u32, BackendStartError> {
    let wanted = requested.unwrap_or(DEFAULT_UMEM_FRAMES);
    if !wanted.is_power_of_two() || wanted < MIN_UMEM_FRAMES {
        return Err(BackendStartError::Config(format!(
            "--umem-frames {wanted} must be a power of two of at least {MIN_UMEM_FRAMES}"
        )));
    }
    if has_cap_ipc_lock() {
        return Ok(wanted);
    }
    let Some(limit) = memlock_limit() else {
        return Ok(wanted);
    };
    let per_queue = limit / queues as u64 / u64::from(FRAME_SIZE);
    let fitted = if per_queue >= u64::from(wanted) {
        wanted
    } else {
        // Largest power of two that fits.
        1u32 << (63 - per_queue.max(1).leading_zeros()).min(31)
    };
    if fitted < MIN_UMEM_FRAMES {
        return Err(BackendStartError::Config(format!(
            "RLIMIT_MEMLOCK is {} KiB, too small for {queues} AF_XDP queue(s) of at least \
             {MIN_UMEM_FRAMES} frames: grant vxdp CAP_IPC_LOCK, raise the limit (systemd \
             LimitMEMLOCK=infinity or `ulimit -l`), use fewer --queues, or --backend udp",
            limit / 1024
        )));
    }
    if fitted < wanted {
        tracing::warn!(
            frames = fitted,
            "RLIMIT_MEMLOCK ({} KiB) without CAP_IPC_LOCK: AF_XDP UMEM reduced to {fitted} \
             frames per queue; grant CAP_IPC_LOCK for full-size rings",
            limit / 1024
        );
    }
    Ok(fitted)
}

fn open_xsk_sockets(
    ifname: &str,
    queues: usize,
    frames: u32,
    bind_mode: BindMode,
) -> Result<Vec<XskSocket>, XskError> {
    (0..u32::try_from(queues).unwrap_or(u32::MAX))
        .map(|queue| {
            let config = XskConfig {
                ifname: ifname.to_string(),
                queue_id: queue,
                frame_size: FRAME_SIZE,
                frame_count: frames,
                ring_size: frames / 2,
                bind_mode,
            };
            // A predecessor that just handed over closed its socket on this queue, but the
            // kernel releases a zero-copy pool from the queue in deferred work: EBUSY for a
            // moment. Half a second of retries, then the error stands.
            let mut tries = 0;
            loop {
                match XskSocket::open(&config) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 25 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => return other,
                }
            }
        })
        .collect()
}

/// The kernel's `GSO_MAX_SEGS`, the default (and largest) `gso_max_segs` of a device.
const KERNEL_GSO_MAX_SEGS: u32 = 65_535;

impl UserspaceBackend {
    /// Creates the TAP, sets the underlay up (AF_XDP: the XDP program and the sockets; UDP:
    /// each worker's sockets) and starts the workers. On failure everything already created is
    /// undone: the workers stop and are joined, XDP is detached, and the TAP goes with its
    /// last queue.
    pub async fn start(
        nl: Netlink,
        config: UserspaceConfig,
        inherited: &Mutex<Option<Inherited>>,
    ) -> Result<UserspaceBackend, BackendStartError> {
        let mut adopted = Adopted::take(inherited, &config);
        let ifname = config.external.link.name.clone();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = config.worker_cpus.clone();
        let queues = config
            .queues
            .unwrap_or_else(|| default_queues(&config.underlay, &ifname, cpus.len(), online))
            .max(1);
        let mtu = u16::try_from(config.mtu)
            .map_err(|_| BackendStartError::Config("overlay MTU above 65535".into()))?;
        let vni = Vni::new(config.vni).ok_or_else(|| {
            BackendStartError::Config(format!("VNI {} does not fit 24 bits", config.vni))
        })?;

        let tap = match adopted.tap_device(&config.device) {
            Some(tap) => {
                if tap.queue_count() != queues {
                    tracing::info!(
                        "running {} worker(s), as many as the TAP queues taken over ({queues} \
                         configured; a restart without a predecessor applies it)",
                        tap.queue_count()
                    );
                }
                tap
            }
            None => {
                // A vxlan link of this name is what a kernel-backend run left (a stop keeps
                // it): the TAP replaces it, as the kernel backend replaces a leftover TAP.
                if let Some(old) = nl.link_details_by_name(&config.device).await? {
                    if old.link.kind.as_deref() == Some("vxlan") {
                        tracing::info!(
                            device = %config.device,
                            "replacing the vxlan link an earlier kernel-backend run left with the TAP"
                        );
                        nl.delete_link(old.link.index).await?;
                    }
                }
                TapDevice::create(&TapConfig {
                    name: config.device.clone(),
                    mac: config.vtep_mac,
                    mtu,
                    queues,
                    offload: config.tap_offloads,
                })?
            }
        };
        let queues = tap.queue_count();
        let mut handover: Vec<(FdRole, OwnedFd)> = Vec::new();
        let keep = |fd: BorrowedFd<'_>| {
            duplicate(fd).map_err(|e| {
                BackendStartError::Config(format!("keeping a descriptor for a handover: {e}"))
            })
        };
        let offloads = tap.offloads();
        let tap_link = nl.link_by_name(&config.device).await?.ok_or_else(|| {
            BackendStartError::Config(format!("the TAP device {} vanished", config.device))
        })?;
        // The lease's base address as a /32: no subnet route, no broadcast route (flanneld).
        if let Some(subnet) = config.subnet {
            nl.ensure_address(tap_link.index, IpAddr::V4(subnet.network()), 32)
                .await?;
        }
        // Dual stack and IPv6-only: the IPv6 lease's base address as a /128, likewise.
        if let Some(v6) = &config.ipv6 {
            nl.ensure_address(tap_link.index, IpAddr::V6(v6.subnet.network()), 128)
                .await?;
        }

        let policy = DecapPolicy {
            local_ip4: config.subnet.and(config.external.public_ip),
            local_ip6: config.ipv6.as_ref().map(|v6| v6.local_ip),
            port: config.port,
            vni,
            local_mac: config.vtep_mac,
            allow_unknown_peers: config.allow_unknown_peers,
        };
        let pipeline_config = PipelineConfig {
            policy: policy.clone(),
            offloads,
            mtu: usize::from(mtu),
        };
        let tables = Arc::new(PeerTables::new());
        let mut workers = WorkerSet::new()
            .map_err(|e| BackendStartError::Config(format!("creating the stop signal: {e}")))?;
        let mut views = Vec::with_capacity(queues);
        let core_of = |queue: usize| (!cpus.is_empty()).then(|| cpus[queue % cpus.len()]);
        // The sockets and TAP queue are open by then: a worker needs no privilege at all.
        let drop_privileges = || {
            if let Err(e) = crate::privileges::drop_all() {
                tracing::debug!("worker could not drop its capabilities: {e}");
            }
        };
        let tap_queues = tap.into_queues();
        for (queue, q) in tap_queues.iter().enumerate() {
            handover.push((FdRole::TapQueue { queue }, keep(q.as_fd())?));
        }
        let stop = workers.stop_signal();
        let busy_poll = config.busy_poll;
        let pipeline_for = || Pipeline::new(tables.reader(), pipeline_config.clone());

        let (steering, underlay_note, af_xdp) = match &config.underlay {
            UnderlayKind::AfXdp(o) => {
                let frames = umem_frames_per_queue(o.umem_frames, queues)?;
                let steering = SteeringConfig {
                    ifindex: config.external.link.index,
                    ifname: ifname.clone(),
                    local_ip4: config.subnet.and(config.external.public_ip),
                    // Dual stack: IPv6 VXLAN to the IPv6 VTEP address is steered too.
                    local_ip6: config.ipv6.as_ref().map(|v6| v6.local_ip),
                    port: config.port,
                    vni: config.vni,
                };
                let (program, failures) =
                    SteeringProgram::load_and_attach(&steering, &o.xdp_modes)?;
                // Without CAP_IPC_LOCK the kernel charges UMEM to this user's locked memory,
                // which other processes of the same user may already use: when it refuses,
                // halve and retry.
                let mut frames = frames;
                let sockets = loop {
                    match open_xsk_sockets(&ifname, queues, frames, o.bind_mode) {
                        Ok(s) => break s,
                        Err(XskError::Umem { errno, .. })
                            if frames / 2 >= MIN_UMEM_FRAMES && !has_cap_ipc_lock() =>
                        {
                            tracing::warn!(
                                "the kernel refused {frames} UMEM frames per queue ({errno}): \
                                 this user's locked memory is partly in use elsewhere; \
                                 retrying with {}",
                                frames / 2
                            );
                            frames /= 2;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                let socket_mode = sockets[0].mode();
                let mut workers_to_spawn = Vec::with_capacity(queues);
                for ((queue, xsk), tap_queue) in sockets.into_iter().enumerate().zip(tap_queues) {
                    // NIC queue indexes are what the kernel numbered: u32 (and u16 for the
                    // worker's own id), far above any NIC's queue count.
                    let nic_queue = u32::try_from(queue).expect("NIC queue indexes fit u32");
                    let socket = xsk.stats_reader().map_err(|e| {
                        BackendStartError::Config(format!("AF_XDP statistics: {e}"))
                    })?;
                    let mode = xsk.mode();
                    let fd = xsk.fd();
                    let underlay = AfXdpUnderlay::new(
                        xsk,
                        policy.clone(),
                        u16::try_from(queue).unwrap_or(u16::MAX),
                    )
                    .map_err(|e| BackendStartError::Config(format!("AF_XDP queue {queue}: {e}")))?;
                    let stats = Arc::new(WorkerStats::default());
                    views.push(WorkerView {
                        queue: nic_queue,
                        core: core_of(queue),
                        stats: Arc::clone(&stats),
                        underlay: UnderlayView::AfXdp { mode, socket },
                    });
                    let worker = Worker {
                        index: queue,
                        underlay,
                        tap: tap_queue,
                        pipeline: pipeline_for(),
                        stats,
                        stop: Arc::clone(&stop),
                        busy_poll,
                    };
                    workers_to_spawn.push((worker, fd));
                }
                for (worker, fd) in workers_to_spawn {
                    let queue = worker.index;
                    workers
                        .spawn(worker, core_of(queue), drop_privileges)
                        .map_err(|e| {
                            BackendStartError::Config(format!("spawning worker {queue}: {e}"))
                        })?;
                    // The worker's RX frames are on the fill ring: now steer VXLAN to it.
                    program.register_socket(
                        u32::try_from(queue).expect("NIC queue indexes fit u32"),
                        fd,
                    )?;
                }
                let why = failures
                    .iter()
                    .map(|f| format!("{} refused: {}", f.mode, f.error))
                    .collect::<Vec<_>>()
                    .join("; ");
                let attach_note = if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                };
                let zero_copy_note =
                    if socket_mode == SocketMode::Copy && o.bind_mode == BindMode::Auto {
                        " (the driver offers no zero-copy)"
                    } else {
                        ""
                    };
                let note = format!(
                    "XDP {} on {ifname}{attach_note}, AF_XDP {socket_mode} mode{zero_copy_note}, \
                     {queues} queue(s), {frames} UMEM frames each",
                    program.mode()
                );
                let paths = AfXdpPaths {
                    tracker: PathTracker::new(nl.clone(), config.external.link.index, &ifname),
                    udp_checksum: o.udp_checksum,
                };
                (Some(program), note, Some(paths))
            }
            UnderlayKind::Udp(o) => {
                let udp_config = UdpConfig {
                    local_ip: config.subnet.and(config.external.public_ip),
                    local_ip6: config.ipv6.as_ref().map(|v6| v6.local_ip),
                    port: config.port,
                    vni,
                    tx_sockets: o.source_ports.clamp(1, MAX_TX_SOCKETS),
                    max_frame: 14 + usize::from(mtu),
                    gso: o.gso,
                    gro: o.gro,
                    busy_poll,
                };
                // No cap on the TAP's super-frames (the kernel's maximum, also over a cap an
                // earlier build set on this persistent device): traffic the host forwards (pods
                // behind cni0) comes as GSO packets built for the pod's veth, and a cap below
                // their size made the kernel cut each into single frames before the TAP, one
                // read per frame (pod to pod 1.3 Gbit/s instead of 6.3 here). The worker splits
                // a super-frame over as many GSO sends as it needs.
                if offloads.tso {
                    if let Err(e) = nl
                        .set_gso_max_segs(tap_link.index, KERNEL_GSO_MAX_SEGS)
                        .await
                    {
                        tracing::warn!("lifting the TAP's super-frame size cap: {e}");
                    }
                }
                let mut first: Option<(GsoStatus, bool)> = None;
                for (queue, tap_queue) in tap_queues.into_iter().enumerate() {
                    let taken = adopted.udp.get_mut(queue).and_then(Option::take);
                    let sockets = match taken {
                        Some((rx, tx)) => match UdpSockets::adopt(&udp_config, rx, tx) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(queue, "the sockets handed over cannot be used ({e}): opening new ones");
                                UdpSockets::open(&udp_config)?
                            }
                        },
                        None => UdpSockets::open(&udp_config)?,
                    };
                    let (rx, tx) = sockets.fds();
                    for fd in rx {
                        handover.push((FdRole::UdpRx { queue }, keep(fd)?));
                    }
                    for (index, fd) in tx.into_iter().enumerate() {
                        handover.push((FdRole::UdpTx { queue, index }, keep(fd)?));
                    }
                    let source_ports = sockets.tx_ports().to_vec();
                    let underlay = UdpUnderlay::new(sockets, &udp_config)?;
                    let state = underlay.state();
                    first.get_or_insert((state.gso(), state.gro()));
                    let stats = Arc::new(WorkerStats::default());
                    views.push(WorkerView {
                        queue: u32::try_from(queue).unwrap_or(u32::MAX),
                        core: core_of(queue),
                        stats: Arc::clone(&stats),
                        underlay: UnderlayView::Udp {
                            state,
                            source_ports,
                        },
                    });
                    let worker = Worker {
                        index: queue,
                        underlay,
                        tap: tap_queue,
                        pipeline: pipeline_for(),
                        stats,
                        stop: Arc::clone(&stop),
                        busy_poll,
                    };
                    workers
                        .spawn(worker, core_of(queue), drop_privileges)
                        .map_err(|e| {
                            BackendStartError::Config(format!("spawning worker {queue}: {e}"))
                        })?;
                }
                let (gso, gro) = first.unwrap_or((GsoStatus::Off, false));
                let gso_note = match gso {
                    GsoStatus::On => "GSO on",
                    GsoStatus::Off => "GSO off (--udp-gso off)",
                    GsoStatus::Unsupported => "GSO unsupported by this kernel",
                    GsoStatus::Refused => "GSO refused by the kernel",
                };
                let gro_note = if gro {
                    "GRO on"
                } else if o.gro {
                    "GRO unsupported by this kernel"
                } else {
                    "GRO off (--udp-gro off)"
                };
                let addrs: Vec<String> = udp_config
                    .local_ip
                    .map(|a| format!("{a}:{}", config.port))
                    .into_iter()
                    .chain(
                        udp_config
                            .local_ip6
                            .map(|a| format!("[{a}]:{}", config.port)),
                    )
                    .collect();
                let note = format!(
                    "UDP sockets on {ifname} ({}), {queues} queue(s), {} source ports each, \
                     {gso_note}, {gro_note}",
                    addrs.join(", "),
                    udp_config.tx_sockets,
                );
                (None, note, None)
            }
        };

        let offload_note = match (offloads.tso, offloads.vnet_hdr, config.tap_offloads) {
            (true, _, _) => "with TSO/GRO",
            (false, true, _) => "with checksum offload only (TSO refused)",
            (false, false, true) => "without offloads (the kernel refused them)",
            (false, false, false) => "without offloads (--tap-offloads off)",
        };
        let busy_note = if config.busy_poll {
            ", busy polling"
        } else {
            ""
        };
        let kind = match &config.underlay {
            UnderlayKind::AfXdp(_) => "xdp",
            UnderlayKind::Udp(_) => "udp",
        };
        let summary = format!(
            "backend {kind}: {underlay_note}, TAP {} mtu {} {offload_note}{busy_note}",
            config.device, config.mtu,
        );
        Ok(UserspaceBackend {
            workers,
            views,
            steering,
            nl,
            tap_index: tap_link.index,
            tables,
            peers: BTreeMap::new(),
            direct: BTreeMap::new(),
            paths: Arc::default(),
            af_xdp,
            summary,
            drop_alarm: DropAlarm::default(),
            config,
            handover,
            tap_offloads: offloads,
        })
    }

    /// Lets the workers forward. Called once the peers known at start are in the tables, so
    /// that frames waiting in queues taken over from a predecessor find their peer.
    pub fn begin_forwarding(&self) {
        self.workers.release();
    }

    /// Stops forwarding so that another process can take over: the workers stop reading
    /// (frames wait in the TAP queues and socket buffers, held open by the handover set) and
    /// the XDP program is detached (AF_XDP: the successor attaches its own). Returns the
    /// manifest and descriptors to send.
    pub fn stop_for_handover(&mut self) -> (Manifest, Vec<BorrowedFd<'_>>) {
        self.workers.stop_and_join();
        self.steering.take();
        // The AF_XDP sockets went with their workers but for the status view's duplicates:
        // closed too, or the successor could not bind the same NIC queues.
        for view in &self.views {
            if let UnderlayView::AfXdp { socket, .. } = &view.underlay {
                socket.close();
            }
        }
        self.fd_store_set()
    }

    /// The manifest and descriptors to park in systemd's fd store while running.
    pub fn fd_store_set(&self) -> (Manifest, Vec<BorrowedFd<'_>>) {
        let manifest = Manifest {
            format: FORMAT_VERSION,
            vxdp_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            backend: self.kind().to_string(),
            device: self.config.device.clone(),
            tap_offloads: Some(self.tap_offloads),
            fds: self.handover.iter().map(|(r, _)| *r).collect(),
        };
        (
            manifest,
            self.handover.iter().map(|(_, fd)| fd.as_fd()).collect(),
        )
    }

    /// The one-line description of the modes chosen and why.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// `xdp` or `udp`.
    pub fn kind(&self) -> &'static str {
        match self.config.underlay {
            UnderlayKind::AfXdp(_) => "xdp",
            UnderlayKind::Udp(_) => "udp",
        }
    }

    /// A thread-safe status view.
    pub fn status_probe(&self) -> UserspaceStatusProbe {
        UserspaceStatusProbe {
            workers: self.views.clone(),
            xdp_mode: self.steering.as_ref().map(SteeringProgram::mode),
            paths: Arc::clone(&self.paths),
            xdp_counters: self.steering.as_ref().map(SteeringProgram::counters_reader),
        }
    }

    /// The outer headers towards `peer_ip` (either family: IPv6 from the IPv6 VTEP address,
    /// with the UDP checksum RFC 8200 makes mandatory, which `OuterHeader` always sets).
    fn outer_for(&self, peer_ip: IpAddr, hop: &NextHop) -> Option<OuterHeader> {
        let src_ip = match peer_ip {
            IpAddr::V4(_) => IpAddr::V4(self.config.external.public_ip?),
            IpAddr::V6(_) => IpAddr::V6(self.config.ipv6.as_ref()?.local_ip),
        };
        let params = OuterParams {
            src_mac: hop.src_mac,
            dst_mac: hop.dst_mac,
            src_ip,
            dst_ip: peer_ip,
            dst_port: self.config.port,
            vni: Vni::new(self.config.vni)?,
            udp_checksum: self.af_xdp.as_ref().is_some_and(|a| a.udp_checksum),
            src_port_range: OuterParams::DEFAULT_SRC_PORT_RANGE,
            ttl: OuterParams::DEFAULT_TTL,
        };
        OuterHeader::new(&params).ok()
    }

    fn set_path(&self, ip: IpAddr, path: PeerPath) {
        if let Ok(mut p) = self.paths.lock() {
            p.insert(ip, path);
        }
    }

    /// AF_XDP: refreshes the underlay paths to `peers` and puts every changed next hop into the
    /// tables (one snapshot for all of them). UDP: the kernel routes; nothing to resolve.
    async fn refresh_paths(&mut self, peers: Vec<IpAddr>) {
        let Some(af_xdp) = self.af_xdp.as_mut() else {
            for ip in peers {
                self.set_path(
                    ip,
                    PeerPath {
                        next_hop_mac: None,
                        via: None,
                        state: "kernel-routed".into(),
                    },
                );
            }
            return;
        };
        let changed = af_xdp
            .tracker
            .refresh(peers.iter().copied(), std::time::Instant::now())
            .await;
        if !changed.is_empty() {
            let outers: Vec<(IpAddr, Option<OuterHeader>)> = changed
                .iter()
                .map(|(ip, hop)| (*ip, hop.and_then(|h| self.outer_for(*ip, &h))))
                .collect();
            self.tables.update(|w| {
                for (ip, outer) in outers {
                    w.set_outer(ip, outer);
                }
            });
        }
        for ip in peers {
            let status = match self.af_xdp.as_ref() {
                Some(a) => a.tracker.status(ip),
                None => continue,
            };
            let path = match status {
                PathStatus::Resolved { via, mac } => PeerPath {
                    next_hop_mac: Some(mac),
                    via: Some(via),
                    state: "resolved".into(),
                },
                PathStatus::Resolving { via } => PeerPath {
                    next_hop_mac: None,
                    via: Some(via),
                    state: "resolving".into(),
                },
                PathStatus::Unreachable(why) => PeerPath {
                    next_hop_mac: None,
                    via: None,
                    state: why,
                },
            };
            self.set_path(ip, path);
        }
    }

    fn err(what: String, e: impl std::fmt::Display) -> BackendError {
        BackendError(format!("{what}: {e}"))
    }

    /// The underlay addresses `peer` is reached at: its PublicIP (with IPv4 on) and, dual stack
    /// or IPv6-only, its PublicIPv6.
    fn vtep_ips(&self, peer: &Peer) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        if let Some(v4) = self.v4_half(peer) {
            ips.push(IpAddr::V4(v4.public_ip));
        }
        if self.config.ipv6.is_some() {
            if let Some(v6) = peer.ipv6.as_ref().and_then(|v6| v6.public_ip) {
                ips.push(IpAddr::V6(v6));
            }
        }
        ips
    }

    /// The IPv4 half of `peer`, when this node runs IPv4 and the peer's lease has one.
    fn v4_half<'p>(&self, peer: &'p Peer) -> Option<&'p PeerV4> {
        self.config.subnet.and(peer.ipv4.as_ref())
    }

    /// The IPv6 half of `peer` for the tables, in a dual-stack network (none when the lease
    /// has no IPv6 subnet or no PublicIPv6: the peer is reachable over IPv4 only).
    fn entry_v6(&self, peer: &Peer) -> Option<PeerEntryV6> {
        self.config.ipv6.as_ref()?;
        let v6 = peer.ipv6.as_ref()?;
        let vtep_ip = v6.public_ip?;
        // AF_XDP: the outer headers, once the IPv6 next hop is resolved (NDP, by the kernel).
        let outer = self.af_xdp.as_ref().and_then(|a| {
            a.tracker
                .next_hop(IpAddr::V6(vtep_ip))
                .and_then(|hop| self.outer_for(IpAddr::V6(vtep_ip), &hop))
        });
        Some(PeerEntryV6 {
            vtep_mac: v6.vtep_mac,
            vtep_ip,
            outer,
        })
    }

    /// The IPv6 overlay's route to `peer`'s IPv6 subnet through the TAP and the permanent
    /// neighbour entry of its gateway (flanneld's `AddV6ARP` on flannel-v6: the kernel then
    /// never solicits it); what a previous lease of the peer had is replaced or removed.
    async fn program_v6(&self, previous: Option<&Peer>, peer: &Peer) -> Result<(), BackendError> {
        if self.config.ipv6.is_none() {
            return Ok(());
        }
        let new = peer
            .ipv6
            .as_ref()
            .filter(|v6| v6.public_ip.is_some())
            .map(|v6| (v6.subnet, v6.vtep_mac));
        if let Some(old) = previous.and_then(|p| p.ipv6.as_ref()) {
            if new.is_none_or(|(subnet, _)| subnet != old.subnet) {
                let _ = self.unprogram_v6(previous.unwrap_or(peer)).await;
            }
        }
        let Some((subnet, mac)) = new else {
            if peer.ipv6.is_some() {
                tracing::warn!(subnet = %peer.key, "peer's lease has an IPv6 subnet but no PublicIPv6: its pods are not reachable over IPv6");
            }
            return Ok(());
        };
        let gw = IpAddr::V6(subnet.network());
        let what = || format!("peer {} (IPv6 {subnet})", peer.key);
        self.nl
            .replace_permanent_neighbour(self.tap_index, gw, mac)
            .await
            .map_err(|e| Self::err(what(), e))?;
        self.nl
            .replace_onlink_route(IpNet::V6(subnet), gw, self.tap_index)
            .await
            .map_err(|e| Self::err(what(), e))
    }

    /// Removes what [`Self::program_v6`] put in for `peer`; missing entries are fine.
    async fn unprogram_v6(&self, peer: &Peer) -> Result<(), control::netlink::NetlinkError> {
        let Some(v6) = peer.ipv6.as_ref().filter(|_| self.config.ipv6.is_some()) else {
            return Ok(());
        };
        let gw = IpAddr::V6(v6.subnet.network());
        let r = self
            .nl
            .delete_route(IpNet::V6(v6.subnet), gw, Some(self.tap_index))
            .await;
        let _ = self.nl.delete_neighbour(self.tap_index, gw).await;
        r
    }
}

impl UserspaceBackend {
    /// Adds or replaces a peer reached only over IPv6 (an IPv6-only network): the table entry
    /// is its IPv6 VTEP, with no ARP gateway; the route and neighbour are `program_v6`'s.
    async fn add_peer_v6_only(
        &mut self,
        previous: Option<&Peer>,
        peer: &Peer,
    ) -> Result<(), BackendError> {
        let entry = self.entry_v6(peer);
        self.tables.update(|w| match entry {
            Some(v6) => w.upsert(
                peer.key,
                PeerEntry {
                    vtep_mac: v6.vtep_mac,
                    vtep_ip: IpAddr::V6(v6.vtep_ip),
                    gateway_v4: None,
                    outer: v6.outer,
                    v6: None,
                },
            ),
            None => {
                w.remove(&peer.key);
            }
        });
        self.direct.remove(&peer.key);
        self.program_v6(previous, peer).await?;
        self.peers.insert(peer.key, peer.clone());
        self.resolve_paths(peer).await;
        Ok(())
    }

    /// Resolves the underlay paths to `peer`'s VTEPs when some are not known yet (AF_XDP), or
    /// refreshes the status's view of them (UDP).
    async fn resolve_paths(&mut self, peer: &Peer) {
        let vteps = self.vtep_ips(peer);
        let unresolved = self
            .af_xdp
            .as_ref()
            .is_some_and(|a| vteps.iter().any(|ip| a.tracker.next_hop(*ip).is_none()));
        if unresolved || self.af_xdp.is_none() {
            self.refresh_paths(vteps).await;
        }
    }

    /// Removes the IPv4 route (overlay or DirectRouting) and neighbour programmed for
    /// `previous`; missing entries are fine.
    async fn unprogram_v4(
        &mut self,
        previous: &Peer,
    ) -> Result<(), control::netlink::NetlinkError> {
        let direct = self.direct.remove(&previous.key);
        let Some(v4) = previous
            .ipv4
            .as_ref()
            .filter(|_| self.config.subnet.is_some())
        else {
            return Ok(());
        };
        let dst = IpNet::V4(v4.subnet);
        if let Some(public_ip) = direct {
            return self.nl.delete_route(dst, IpAddr::V4(public_ip), None).await;
        }
        let r = self
            .nl
            .delete_route(dst, IpAddr::V4(v4.gateway()), Some(self.tap_index))
            .await;
        let _ = self
            .nl
            .delete_neighbour(self.tap_index, IpAddr::V4(v4.gateway()))
            .await;
        r
    }
}

impl Backend for UserspaceBackend {
    fn name(&self) -> &'static str {
        self.kind()
    }

    async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
        let previous = self.peers.get(&peer.key).cloned();
        let Some(v4) = self.v4_half(peer).cloned() else {
            // An IPv6-only network (or a peer that runs IPv6 only): its IPv6 VTEP is its entry.
            if let Some(prev) = previous.as_ref().filter(|p| self.v4_half(p).is_some()) {
                let _ = self.unprogram_v4(prev).await;
            }
            return self.add_peer_v6_only(previous.as_ref(), peer).await;
        };
        let key = peer.key;
        let dst = IpNet::V4(v4.subnet);
        if self.config.direct_routing
            && directly_reachable(
                &self.nl,
                std::net::IpAddr::V4(v4.public_ip),
                self.config.external.link.index,
            )
            .await
        {
            self.nl
                .replace_gateway_route(dst, IpAddr::V4(v4.public_ip))
                .await
                .map_err(|e| Self::err(format!("peer {key}"), e))?;
            // The IPv6 half, if any, still goes through the overlay: keep its entry.
            let v6 = self.entry_v6(peer);
            self.tables.update(|w| match v6 {
                Some(v6) => w.upsert(
                    key,
                    PeerEntry {
                        vtep_mac: v4.vtep_mac,
                        vtep_ip: IpAddr::V4(v4.public_ip),
                        gateway_v4: None,
                        outer: None,
                        v6: Some(v6),
                    },
                ),
                None => {
                    w.remove(&key);
                }
            });
            self.program_v6(previous.as_ref(), peer).await?;
            self.direct.insert(key, v4.public_ip);
            self.set_path(
                IpAddr::V4(v4.public_ip),
                PeerPath {
                    next_hop_mac: None,
                    via: Some(IpAddr::V4(v4.public_ip)),
                    state: "direct-routing".into(),
                },
            );
            self.peers.insert(key, peer.clone());
            return Ok(());
        }
        self.direct.remove(&key);
        let outer = self.af_xdp.as_ref().and_then(|a| {
            a.tracker
                .next_hop(IpAddr::V4(v4.public_ip))
                .and_then(|hop| self.outer_for(IpAddr::V4(v4.public_ip), &hop))
        });
        self.tables.update(|w| {
            w.upsert(
                key,
                PeerEntry {
                    vtep_mac: v4.vtep_mac,
                    vtep_ip: IpAddr::V4(v4.public_ip),
                    gateway_v4: Some(v4.gateway()),
                    outer,
                    v6: self.entry_v6(peer),
                },
            )
        });
        self.program_v6(previous.as_ref(), peer).await?;
        self.nl
            .replace_onlink_route(dst, IpAddr::V4(v4.gateway()), self.tap_index)
            .await
            .map_err(|e| Self::err(format!("peer {key}"), e))?;
        let old_mac = previous
            .as_ref()
            .and_then(|p| p.ipv4.as_ref())
            .map(|p| p.vtep_mac);
        if old_mac.is_some_and(|m| m != v4.vtep_mac) {
            // The kernel cached the old MAC for this gateway: drop it so the next packet
            // re-ARPs and gets the new one from the ARP table at once.
            let _ = self
                .nl
                .delete_neighbour(self.tap_index, IpAddr::V4(v4.gateway()))
                .await;
        }
        self.peers.insert(key, peer.clone());
        self.resolve_paths(peer).await;
        Ok(())
    }

    async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
        self.peers.remove(&previous.key);
        let r6 = self.unprogram_v6(previous).await;
        self.tables.update(|w| w.remove(&previous.key));
        let result = self.unprogram_v4(previous).await;
        let still_used: std::collections::BTreeSet<IpAddr> =
            self.peers.values().flat_map(|p| self.vtep_ips(p)).collect();
        for ip in self.vtep_ips(previous) {
            if still_used.contains(&ip) {
                continue;
            }
            if let Some(a) = self.af_xdp.as_mut() {
                a.tracker.forget(ip);
            }
            if let Ok(mut p) = self.paths.lock() {
                p.remove(&ip);
            }
        }
        result.map_err(|e| Self::err(format!("peer {}", previous.key), e))?;
        r6.map_err(|e| Self::err(format!("peer {} (IPv6)", previous.key), e))
    }

    async fn tick(&mut self) -> Result<(), BackendError> {
        let mut totals = WorkerCounters::default();
        for w in &self.views {
            totals.accumulate(&w.stats.snapshot());
        }
        let drops = totals.rx_drops.into_iter().chain(totals.tx_drops).collect();
        if let Some(warning) = self.drop_alarm.check(drops) {
            tracing::warn!("{warning}");
        }
        // A dead worker leaves its TAP queue unread (and on AF_XDP its socket in the XSKMAP,
        // where the XDP program keeps steering VXLAN into a ring nobody reads). Nothing here
        // can restart it (the TAP queue went with it), so the whole daemon stops.
        self.workers.check_alive().map_err(BackendError)?;
        if self.af_xdp.is_some() {
            let ips: std::collections::BTreeSet<IpAddr> = self
                .peers
                .iter()
                .filter(|(s, _)| !self.direct.contains_key(s))
                .flat_map(|(_, p)| self.vtep_ips(p))
                .collect();
            self.refresh_paths(ips.into_iter().collect()).await;
        }
        Ok(())
    }

    async fn shutdown(mut self, teardown: Teardown) {
        self.workers.stop_and_join();
        // Detach XDP: from here VXLAN goes to the kernel, nothing is redirected into closed
        // sockets.
        self.steering.take();
        if teardown == Teardown::Keep {
            // The TAP is persistent: its address and the pod routes through it stay, frames
            // for peers wait for the next start, and peers keep their routes to this node.
            tracing::info!(
                "{} backend stopped: {} and its routes stay for the next start",
                self.kind(),
                self.config.device
            );
            return;
        }
        for (key, public_ip) in std::mem::take(&mut self.direct) {
            if let Some(subnet) = key.ipv4 {
                let _ = self
                    .nl
                    .delete_route(IpNet::V4(subnet), IpAddr::V4(public_ip), None)
                    .await;
            }
        }
        // Deleting the device removes its address and every route through it.
        match self.nl.delete_link(self.tap_index).await {
            Ok(()) => tracing::info!(
                "{} backend stopped: {} removed",
                self.kind(),
                self.config.device
            ),
            Err(e) => tracing::warn!(
                "{} backend stopped, but removing {} failed: {e}",
                self.kind(),
                self.config.device
            ),
        }
    }
}
