//! The AF_XDP backend: the TAP device, the XDP steering program, one AF_XDP socket and one
//! pinned worker per queue, and the peer tables they read. Peers become a route on the TAP
//! (`subnet via base onlink`, as flanneld programs on its vxlan device) plus one atomic update
//! of the tables; underlay next hops are resolved over netlink and refreshed every tick.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use control::backend::{Backend, BackendError, Peer};
use control::netlink::Netlink;
use control::underlay::{ExternalInterface, NextHop, PathStatus, PathTracker};
use dataplane::stats::{WorkerCounters, WorkerStats};
use dataplane::tables::{PeerEntry, PeerTables};
use dataplane::tap::{TapConfig, TapDevice};
use dataplane::worker::{StopSignal, Worker};
use dataplane::xdp::{SteeringConfig, SteeringProgram, XdpCounters, XdpMode};
use dataplane::xsk::{
    BindMode, SocketMode, XskConfig, XskError, XskKernelStats, XskSocket, XskStatsReader,
};
use ipnet::{IpNet, Ipv4Net};
use packet::tunnel::{DecapPolicy, OuterHeader, OuterParams};
use packet::wire::{MacAddr, Vni};
use serde::Serialize;

/// Bytes per UMEM frame (one page).
pub const FRAME_SIZE: u32 = 4096;
/// Default UMEM frames per queue (16 MiB).
pub const DEFAULT_UMEM_FRAMES: u32 = 4096;
/// Fewest UMEM frames per queue that still make sense (two rings of 64).
const MIN_UMEM_FRAMES: u32 = 128;

/// How to set the backend up.
#[derive(Debug, Clone)]
pub struct XdpBackendConfig {
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
    /// This node's lease subnet (its base address goes on the TAP as a /32).
    pub subnet: Ipv4Net,
    /// Worker count; `None` = NIC RX queues, at most one per CPU.
    pub queues: Option<usize>,
    /// CPUs to pin workers to, in order; empty = no pinning.
    pub worker_cpus: Vec<usize>,
    /// UMEM frames per queue; `None` = default, fitted to RLIMIT_MEMLOCK.
    pub umem_frames: Option<u32>,
    /// XDP modes to try, in order.
    pub xdp_modes: Vec<XdpMode>,
    /// AF_XDP bind mode.
    pub bind_mode: BindMode,
    /// Outer UDP checksums over IPv4.
    pub udp_checksum: bool,
    /// Accept VXLAN from unknown sources.
    pub allow_unknown_peers: bool,
    /// DirectRouting: peers on the same L2 get a plain route to their PublicIP.
    pub direct_routing: bool,
    /// Ask the TAP for vnet headers and TCP offloads (TSO in, GRO out).
    pub tap_offloads: bool,
}

struct WorkerHandle {
    queue: u32,
    core: Option<usize>,
    mode: SocketMode,
    stats: Arc<WorkerStats>,
    socket_stats: XskStatsReader,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// State of one peer's underlay path.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPath {
    /// Underlay next hop MAC, once resolved.
    pub next_hop_mac: Option<MacAddr>,
    /// The address the next hop MAC belongs to.
    pub via: Option<IpAddr>,
    /// `resolved`, `resolving`, `direct-routing` or an error.
    pub state: String,
}

/// The running AF_XDP dataplane.
pub struct XdpBackend {
    nl: Netlink,
    config: XdpBackendConfig,
    tap_index: u32,
    tables: Arc<PeerTables>,
    program: Option<SteeringProgram>,
    stop: Arc<StopSignal>,
    workers: Vec<WorkerHandle>,
    peers: BTreeMap<Ipv4Net, Peer>,
    direct: BTreeMap<Ipv4Net, Ipv4Addr>,
    paths: Arc<std::sync::Mutex<BTreeMap<Ipv4Addr, PeerPath>>>,
    tracker: PathTracker,
    summary: String,
    drop_alarm: DropAlarm,
}

/// Turns drop counters into at most one warning a minute when frames are being dropped at a
/// rate worth an operator's attention (a blast of garbage, a misconfigured peer), naming the
/// reasons. Per-frame logging would itself be the storm.
#[derive(Debug, Default)]
struct DropAlarm {
    last: BTreeMap<String, u64>,
    last_warning: Option<std::time::Instant>,
}

impl DropAlarm {
    /// Drops per second above which the alarm speaks.
    const RATE: u64 = 100;
    const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

    /// `totals` are the current cumulative drops by reason, sampled once a second.
    fn check(&mut self, totals: BTreeMap<String, u64>) -> Option<String> {
        let mut delta: Vec<(u64, String)> = totals
            .iter()
            .map(|(k, v)| (v.saturating_sub(*self.last.get(k).unwrap_or(&0)), k.clone()))
            .filter(|(d, _)| *d > 0)
            .collect();
        self.last = totals;
        let sum: u64 = delta.iter().map(|(d, _)| d).sum();
        if sum < Self::RATE || self.last_warning.is_some_and(|t| t.elapsed() < Self::QUIET) {
            return None;
        }
        self.last_warning = Some(std::time::Instant::now());
        delta.sort_by(|a, b| b.cmp(a));
        let top: Vec<String> = delta
            .iter()
            .take(4)
            .map(|(d, k)| format!("{k} {d}/s"))
            .collect();
        Some(format!(
            "dropping {sum} frames/s ({}); see `vxdp status` (further warnings held back for a minute)",
            top.join(", ")
        ))
    }
}

/// A thread-safe view for `vxdp status`.
#[derive(Clone)]
pub struct XdpStatusProbe {
    workers: Vec<WorkerView>,
    xdp_mode: XdpMode,
    paths: Arc<std::sync::Mutex<BTreeMap<Ipv4Addr, PeerPath>>>,
    xdp_counters: Arc<dyn Fn() -> XdpCounters + Send + Sync>,
}

/// What the status probe keeps of each worker.
#[derive(Clone)]
struct WorkerView {
    queue: u32,
    core: Option<usize>,
    mode: SocketMode,
    stats: Arc<WorkerStats>,
    socket: XskStatsReader,
}

/// One worker in `vxdp status`.
#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    /// NIC (and TAP) queue.
    pub queue: u32,
    /// CPU it is pinned to.
    pub core: Option<usize>,
    /// AF_XDP socket mode.
    pub socket_mode: SocketMode,
    /// Counters.
    pub counters: WorkerCounters,
    /// The kernel's counters for the AF_XDP socket.
    pub socket: XskKernelStats,
}

impl XdpStatusProbe {
    /// Workers and their counters.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|w| WorkerStatus {
                queue: w.queue,
                core: w.core,
                socket_mode: w.mode,
                counters: w.stats.snapshot(),
                socket: w.socket.read(),
            })
            .collect()
    }

    /// The XDP attach mode.
    pub fn xdp_mode(&self) -> XdpMode {
        self.xdp_mode
    }

    /// Underlay path per peer PublicIP.
    pub fn paths(&self) -> BTreeMap<Ipv4Addr, PeerPath> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The XDP program's counters.
    pub fn xdp_counters(&self) -> XdpCounters {
        (self.xdp_counters)()
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
fn umem_frames_per_queue(requested: Option<u32>, queues: usize) -> anyhow::Result<u32> {
    let wanted = requested.unwrap_or(DEFAULT_UMEM_FRAMES);
    if !wanted.is_power_of_two() || wanted < MIN_UMEM_FRAMES {
        bail!("--umem-frames {wanted} must be a power of two of at least {MIN_UMEM_FRAMES}");
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
        bail!(
            "RLIMIT_MEMLOCK is {} KiB, too small for {queues} AF_XDP queue(s) of at least \
             {MIN_UMEM_FRAMES} frames: grant vxdp CAP_IPC_LOCK, raise the limit (systemd \
             LimitMEMLOCK=infinity or `ulimit -l`), use fewer --queues, or --backend kernel",
            limit / 1024
        );
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

fn open_sockets(
    ifname: &str,
    queues: usize,
    frames: u32,
    bind_mode: BindMode,
) -> Result<Vec<XskSocket>, XskError> {
    (0..queues as u32)
        .map(|queue| {
            XskSocket::open(&XskConfig {
                ifname: ifname.to_string(),
                queue_id: queue,
                frame_size: FRAME_SIZE,
                frame_count: frames,
                ring_size: frames / 2,
                bind_mode,
            })
        })
        .collect()
}

impl XdpBackend {
    /// Creates the TAP, loads and attaches the XDP program, binds the sockets and starts the
    /// workers. On failure everything already created is undone (by drop).
    pub async fn start(nl: Netlink, config: XdpBackendConfig) -> anyhow::Result<XdpBackend> {
        let ifname = config.external.link.name.clone();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = &config.worker_cpus;
        let queues = config
            .queues
            .unwrap_or_else(|| nic_rx_queues(&ifname).min(cpus.len().max(online).max(1)))
            .max(1);
        let frames = umem_frames_per_queue(config.umem_frames, queues)?;
        let mtu = u16::try_from(config.mtu).context("overlay MTU above 65535")?;

        let tap = TapDevice::create(&TapConfig {
            name: config.device.clone(),
            mac: config.vtep_mac,
            mtu,
            queues,
            offload: config.tap_offloads,
        })?;
        let offloads = tap.offloads();
        let tap_link = nl
            .link_by_name(&config.device)
            .await?
            .with_context(|| format!("the TAP device {} vanished", config.device))?;
        // The lease's base address as a /32: no subnet route, no broadcast route (flanneld).
        nl.ensure_address(tap_link.index, IpAddr::V4(config.subnet.network()), 32)
            .await?;

        let modes = config.xdp_modes.clone();
        let steering = SteeringConfig {
            ifindex: config.external.link.index,
            ifname: ifname.clone(),
            local_ip4: Some(config.external.public_ip),
            local_ip6: None,
            port: config.port,
            vni: config.vni,
        };
        let (program, failures) = SteeringProgram::load_and_attach(&steering, &modes)?;

        // Without CAP_IPC_LOCK the kernel charges UMEM to this user's locked memory, which
        // other processes of the same user may already use: when it refuses, halve and retry.
        let mut frames = frames;
        let sockets = loop {
            match open_sockets(&ifname, queues, frames, config.bind_mode) {
                Ok(s) => break s,
                Err(XskError::Umem { errno, .. })
                    if frames / 2 >= MIN_UMEM_FRAMES && !has_cap_ipc_lock() =>
                {
                    tracing::warn!(
                        "the kernel refused {frames} UMEM frames per queue ({errno}): this user's \
                         locked memory is partly in use elsewhere; retrying with {}",
                        frames / 2
                    );
                    frames /= 2;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let socket_mode = sockets[0].mode();
        let vni = Vni::new(config.vni).context("VNI does not fit 24 bits")?;
        let policy = DecapPolicy {
            local_ip4: Some(config.external.public_ip),
            local_ip6: None,
            port: config.port,
            vni,
            local_mac: config.vtep_mac,
            allow_unknown_peers: config.allow_unknown_peers,
        };
        let tables = Arc::new(PeerTables::new());
        let stop = Arc::new(StopSignal::new()?);
        let mut workers = Vec::with_capacity(queues);
        for ((queue, xsk), tap_queue) in sockets.into_iter().enumerate().zip(tap.into_queues()) {
            let xsk_fd = xsk.fd();
            let mode = xsk.mode();
            let socket_stats = xsk.stats_reader()?;
            let core = (!cpus.is_empty()).then(|| core_affinity::CoreId {
                id: cpus[queue % cpus.len()],
            });
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                index: queue,
                xsk,
                tap: tap_queue,
                peers: tables.reader(),
                policy: policy.clone(),
                local_mac: config.vtep_mac,
                stats: Arc::clone(&stats),
                stop: Arc::clone(&stop),
                offloads,
            };
            let thread = std::thread::Builder::new()
                .name(format!("vxdp-worker-{queue}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    // The socket and TAP queue are open: the worker needs no privilege at all.
                    if let Err(e) = crate::privileges::drop_all() {
                        tracing::debug!(queue, "worker could not drop its capabilities: {e}");
                    }
                    worker.run()
                })
                .context("spawning a worker thread")?;
            // The worker lends its RX frames before anything is steered to it.
            program.register_socket(queue as u32, xsk_fd)?;
            workers.push(WorkerHandle {
                queue: queue as u32,
                core: core.map(|c| c.id),
                mode,
                stats,
                socket_stats,
                thread: Some(thread),
            });
        }

        let why = failures
            .iter()
            .map(|f| format!("{} refused: {}", f.mode, f.error))
            .collect::<Vec<_>>()
            .join("; ");
        let offload_note = match (offloads.tso, offloads.vnet_hdr, config.tap_offloads) {
            (true, _, _) => "with TSO/GRO",
            (false, true, _) => "with checksum offload only (TSO refused)",
            (false, false, true) => "without offloads (the kernel refused them)",
            (false, false, false) => "without offloads (--tap-offloads off)",
        };
        let zero_copy_note =
            if socket_mode == SocketMode::Copy && config.bind_mode == BindMode::Auto {
                " (the driver offers no zero-copy)"
            } else {
                ""
            };
        let attach_note = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        let summary = format!(
            "backend xdp: XDP {} on {ifname}{attach_note}, AF_XDP {socket_mode} mode{zero_copy_note}, \
             {queues} queue(s), {frames} UMEM frames each, TAP {} mtu {} {offload_note}",
            program.mode(),
            config.device,
            config.mtu,
        );
        let tracker_nl = nl.clone();
        Ok(XdpBackend {
            nl,
            tap_index: tap_link.index,
            tables,
            program: Some(program),
            stop,
            workers,
            peers: BTreeMap::new(),
            direct: BTreeMap::new(),
            paths: Arc::default(),
            tracker: PathTracker::new(
                tracker_nl,
                config.external.link.index,
                &config.external.link.name,
            ),
            summary,
            drop_alarm: DropAlarm::default(),
            config,
        })
    }

    /// The one-line description of the modes chosen and why.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// A thread-safe status view.
    pub fn status_probe(&self) -> XdpStatusProbe {
        let program_counters: Arc<dyn Fn() -> XdpCounters + Send + Sync> = {
            let counters = self.program.as_ref().map(SteeringProgram::counters_reader);
            Arc::new(move || counters.as_ref().map(|c| c.read()).unwrap_or_default())
        };
        XdpStatusProbe {
            workers: self
                .workers
                .iter()
                .map(|w| WorkerView {
                    queue: w.queue,
                    core: w.core,
                    mode: w.mode,
                    stats: Arc::clone(&w.stats),
                    socket: w.socket_stats.clone(),
                })
                .collect(),
            xdp_mode: self
                .program
                .as_ref()
                .map(SteeringProgram::mode)
                .unwrap_or(XdpMode::Generic),
            paths: Arc::clone(&self.paths),
            xdp_counters: program_counters,
        }
    }

    fn outer_for(&self, peer_ip: Ipv4Addr, hop: &NextHop) -> Option<OuterHeader> {
        let params = OuterParams {
            src_mac: hop.src_mac,
            dst_mac: hop.dst_mac,
            src_ip: IpAddr::V4(self.config.external.public_ip),
            dst_ip: IpAddr::V4(peer_ip),
            dst_port: self.config.port,
            vni: Vni::new(self.config.vni)?,
            udp_checksum: self.config.udp_checksum,
            src_port_range: OuterParams::DEFAULT_SRC_PORT_RANGE,
            ttl: OuterParams::DEFAULT_TTL,
        };
        OuterHeader::new(&params).ok()
    }

    fn set_path(&self, ip: Ipv4Addr, path: PeerPath) {
        if let Ok(mut p) = self.paths.lock() {
            p.insert(ip, path);
        }
    }

    /// Refreshes the underlay paths to `peers` and puts every changed next hop into the tables
    /// (one snapshot for all of them).
    async fn refresh_paths(&mut self, peers: Vec<Ipv4Addr>) {
        let changed = self
            .tracker
            .refresh(peers.iter().copied(), std::time::Instant::now())
            .await;
        if !changed.is_empty() {
            let outers: Vec<(Ipv4Addr, Option<OuterHeader>)> = changed
                .iter()
                .map(|(ip, hop)| (*ip, hop.and_then(|h| self.outer_for(*ip, &h))))
                .collect();
            self.tables.update(|w| {
                for (ip, outer) in outers {
                    w.set_outer(IpAddr::V4(ip), outer);
                }
            });
        }
        for ip in peers {
            let path = match self.tracker.status(ip) {
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

    /// flannel's DirectRouting test: the peer is on-link (no gateway) via our interface.
    async fn directly_reachable(&self, peer_ip: Ipv4Addr) -> bool {
        match self.nl.route_to(IpAddr::V4(peer_ip)).await {
            Ok(r) => r.gateway.is_none() && r.oif == self.config.external.link.index,
            Err(_) => false,
        }
    }

    fn err(what: String, e: impl std::fmt::Display) -> BackendError {
        BackendError(format!("{what}: {e}"))
    }
}

impl Backend for XdpBackend {
    fn name(&self) -> &'static str {
        "xdp"
    }

    async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
        let previous = self.peers.get(&peer.subnet).cloned();
        let dst = IpNet::V4(peer.subnet);
        if self.config.direct_routing && self.directly_reachable(peer.public_ip).await {
            self.nl
                .replace_gateway_route(dst, IpAddr::V4(peer.public_ip))
                .await
                .map_err(|e| Self::err(format!("peer {}", peer.subnet), e))?;
            self.tables.update(|w| w.remove(&peer.subnet));
            self.direct.insert(peer.subnet, peer.public_ip);
            self.set_path(
                peer.public_ip,
                PeerPath {
                    next_hop_mac: None,
                    via: Some(IpAddr::V4(peer.public_ip)),
                    state: "direct-routing".into(),
                },
            );
            self.peers.insert(peer.subnet, peer.clone());
            return Ok(());
        }
        self.direct.remove(&peer.subnet);
        let outer = self
            .tracker
            .next_hop(peer.public_ip)
            .and_then(|hop| self.outer_for(peer.public_ip, &hop));
        self.tables.update(|w| {
            w.upsert(
                peer.subnet,
                PeerEntry {
                    vtep_mac: peer.vtep_mac,
                    vtep_ip: IpAddr::V4(peer.public_ip),
                    gateway_v4: Some(peer.gateway()),
                    outer,
                },
            )
        });
        self.nl
            .replace_onlink_route(dst, IpAddr::V4(peer.gateway()), self.tap_index)
            .await
            .map_err(|e| Self::err(format!("peer {}", peer.subnet), e))?;
        if previous.is_some_and(|p| p.vtep_mac != peer.vtep_mac) {
            // The kernel cached the old MAC for this gateway: drop it so the next packet
            // re-ARPs and gets the new one from the ARP table at once.
            let _ = self
                .nl
                .delete_neighbour(self.tap_index, IpAddr::V4(peer.gateway()))
                .await;
        }
        self.peers.insert(peer.subnet, peer.clone());
        if self.tracker.next_hop(peer.public_ip).is_none() {
            self.refresh_paths(vec![peer.public_ip]).await;
        }
        Ok(())
    }

    async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
        self.peers.remove(&previous.subnet);
        let dst = IpNet::V4(previous.subnet);
        let result = if let Some(public_ip) = self.direct.remove(&previous.subnet) {
            self.nl.delete_route(dst, IpAddr::V4(public_ip), None).await
        } else {
            self.tables.update(|w| w.remove(&previous.subnet));
            let r = self
                .nl
                .delete_route(dst, IpAddr::V4(previous.gateway()), Some(self.tap_index))
                .await;
            let _ = self
                .nl
                .delete_neighbour(self.tap_index, IpAddr::V4(previous.gateway()))
                .await;
            r
        };
        if !self
            .peers
            .values()
            .any(|p| p.public_ip == previous.public_ip)
        {
            self.tracker.forget(previous.public_ip);
            if let Ok(mut p) = self.paths.lock() {
                p.remove(&previous.public_ip);
            }
        }
        result.map_err(|e| Self::err(format!("peer {}", previous.subnet), e))
    }

    async fn tick(&mut self) -> Result<(), BackendError> {
        let mut drops: BTreeMap<String, u64> = BTreeMap::new();
        for w in &self.workers {
            let c = w.stats.snapshot();
            for (k, v) in c.rx_drops.into_iter().chain(c.tx_drops) {
                *drops.entry(k).or_default() += v;
            }
        }
        if let Some(warning) = self.drop_alarm.check(drops) {
            tracing::warn!("{warning}");
        }
        // A dead worker leaves its queue's socket in the XSKMAP: the XDP program would keep
        // steering VXLAN into a ring nobody reads. Nothing here can restart it (the TAP
        // queue went with it), so the whole daemon stops.
        for w in &mut self.workers {
            if w.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let why = match w.thread.take().map(JoinHandle::join) {
                    Some(Ok(Ok(()))) | None => "returned".to_string(),
                    Some(Ok(Err(e))) => format!("failed: {e}"),
                    Some(Err(panic)) => format!(
                        "panicked: {}",
                        panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default()
                    ),
                };
                return Err(BackendError(format!(
                    "the worker of queue {} stopped unexpectedly ({why})",
                    w.queue
                )));
            }
        }
        let ips: std::collections::BTreeSet<Ipv4Addr> = self
            .peers
            .iter()
            .filter(|(s, _)| !self.direct.contains_key(s))
            .map(|(_, p)| p.public_ip)
            .collect();
        self.refresh_paths(ips.into_iter().collect()).await;
        Ok(())
    }

    async fn shutdown(mut self) {
        self.stop.stop();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if let Ok(Err(e)) = t.join() {
                    tracing::warn!(queue = w.queue, "worker ended with an error: {e}");
                }
            }
        }
        // Detach XDP first: from here VXLAN goes to the kernel, nothing is redirected into
        // closed sockets.
        self.program.take();
        for (subnet, public_ip) in std::mem::take(&mut self.direct) {
            let _ = self
                .nl
                .delete_route(IpNet::V4(subnet), IpAddr::V4(public_ip), None)
                .await;
        }
        // The workers owned the TAP queues: with them gone the kernel deleted the device,
        // its address and every route through it.
        tracing::info!(
            "xdp backend stopped: XDP detached, {} removed",
            self.config.device
        );
    }
}

impl Drop for XdpBackend {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_alarm_speaks_once_a_minute_above_the_rate() {
        let mut a = DropAlarm::default();
        let t = |unknown: u64, vni: u64| {
            BTreeMap::from([
                ("unknown_peer".to_string(), unknown),
                ("wrong_vni".to_string(), vni),
            ])
        };
        assert_eq!(a.check(t(10, 0)), None, "a trickle is not a storm");
        let w = a.check(t(5_010, 300)).expect("a storm is reported");
        assert!(
            w.contains("5300 frames/s") && w.starts_with("dropping"),
            "{w}"
        );
        assert!(
            w.find("unknown_peer").unwrap() < w.find("wrong_vni").unwrap(),
            "{w}"
        );
        assert_eq!(a.check(t(10_010, 600)), None, "held back for a minute");
    }
}
