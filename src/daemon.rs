//! The daemon's life: network config, external interface, lease, backend, subnet file,
//! readiness, then the event loop (lease events, upkeep ticks, renewal, signals), then a stop
//! that leaves the node on the network (lease, device, routes, rules stay for the next start,
//! as flanneld leaves them) unless asked to clean up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use control::backend::{Backend, PeerSync, Teardown};
use control::blackhole::BlackholeRoute;
use control::config::NetworkConfig;
use control::interface::{find_external_interface, ExternalInterface};
use control::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use control::masq::{MasqConfig, Masquerade};
use control::netlink::Netlink;
use control::node::{Action, Exit, ExitReason, Input, LeasePolicy, Node};
use control::store::etcd::{EtcdOptions, EtcdStore};
use control::store::kube::{self as kube_store, KubeOptions, KubeStore, NodeIdentity};
use control::store::local::LocalStore;
use control::store::{self, AcquireError, LeaseStore, LeaseWatcher, StoreError};
use control::subnet_alloc::Allocation;
use control::{subnet_file, vtep_mac};
use dataplane::backend::kernel::{KernelBackendConfig, KernelV6Config};
use dataplane::backend::userspace::{
    AfXdpOptions, UdpOptions, UnderlayKind, UserspaceConfig, UserspaceStatusProbe,
    UserspaceV6Config,
};
use dataplane::backend::{ActiveBackend, BackendChoice};
use dataplane::privileges;
use dataplane::stats::WorkerCounters;
use dataplane::steering::XdpMode;
use dataplane::xsk::BindMode;
use ipnet::IpNet;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{BusyPollChoice, RunArgs, WorkerCpus, XdpModeChoice, XskBindChoice};
use crate::control_socket::ControlSocket;
use crate::health::{self, Readiness};
use crate::status::{
    DeviceStatus, IfaceStatus, LeaseRow, LeaseStatus, NetworkStatus, PeerStatus, StatusDoc,
};

/// How often the backend's upkeep runs (next hops, worker health).
const TICK: Duration = Duration::from_secs(1);

/// What `vxdp status` shows, kept current by the event loop.
struct View {
    config: NetworkConfig,
    external: ExternalInterface,
    device: String,
    /// The IPv6 overlay's link, in a dual-stack network.
    v6_device: Option<String>,
    mtu: u32,
    lease: Lease,
    peers: Vec<control::backend::Peer>,
    backend: &'static str,
    summary: String,
    probe: Option<UserspaceStatusProbe>,
    last_watch_event: std::time::Instant,
    ready: Readiness,
    /// Every lease the store reported, by key.
    leases: BTreeMap<SubnetKey, Lease>,
}

impl View {
    fn record(&mut self, events: &[LeaseEvent]) {
        for e in events {
            match e {
                LeaseEvent::Added(l) => {
                    self.leases.insert(l.key(), l.clone());
                }
                LeaseEvent::Removed(l) => {
                    self.leases.remove(&l.key());
                }
            }
        }
    }

    fn lease_rows(&self) -> Vec<LeaseRow> {
        self.leases
            .values()
            .map(|l| {
                let role = if l.key() == self.lease.key() {
                    "this node".to_string()
                } else {
                    match control::backend::Peer::from_lease(l) {
                        Ok(_) => "peer".to_string(),
                        Err(e) => format!("ignored: {e}"),
                    }
                };
                LeaseRow {
                    subnet: l.key().to_string(),
                    // The node's address: PublicIPv6 for an IPv6-only lease (PublicIP 0.0.0.0).
                    public_ip: l.attrs.node_addr().to_string(),
                    backend_type: l.attrs.backend_type.clone(),
                    vtep_mac: l
                        .attrs
                        .vxlan_data()
                        .or_else(|_| l.attrs.vxlan_v6_data())
                        .ok()
                        .map(|d| d.vtep_mac.to_string()),
                    expiration: l.expiration.and_then(|e| e.format(&Rfc3339).ok()),
                    reservation: l.is_reservation(),
                    role,
                }
            })
            .collect()
    }

    fn to_doc(&self) -> StatusDoc {
        let paths = self
            .probe
            .as_ref()
            .map(UserspaceStatusProbe::paths)
            .unwrap_or_default();
        let workers = self
            .probe
            .as_ref()
            .map(UserspaceStatusProbe::workers)
            .unwrap_or_default();
        let mut totals = WorkerCounters::default();
        for w in &workers {
            totals.accumulate(&w.counters);
        }
        let vtep_mac = self
            .lease
            .attrs
            .vxlan_data()
            .ok()
            .filter(|_| self.lease.subnet.is_some())
            .map(|d| d.vtep_mac.to_string());
        let vtep_mac_v6 = self
            .lease
            .attrs
            .vxlan_v6_data()
            .ok()
            .map(|d| d.vtep_mac.to_string());
        // The kernel backend hands the underlay to the kernel: nothing to resolve here.
        let default_state = if self.probe.is_some() {
            "resolving"
        } else {
            "programmed"
        };
        StatusDoc {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: self.ready.is_ready(),
            backend: self.backend.to_string(),
            summary: self.summary.clone(),
            xdp_mode: self.probe.as_ref().and_then(UserspaceStatusProbe::xdp_mode),
            iface: IfaceStatus {
                name: self.external.link.name.clone(),
                index: self.external.link.index,
                public_ip: self.external.public_ip.map(|a| a.to_string()),
                mtu: self.external.link.mtu,
                public_ipv6: self
                    .config
                    .ipv6
                    .and(self.external.public_ipv6)
                    .map(|a| a.to_string()),
            },
            device: DeviceStatus {
                name: self.device.clone(),
                mtu: self.mtu,
                // The device's MAC: the IPv6 VtepMAC in an IPv6-only network.
                vtep_mac: vtep_mac
                    .clone()
                    .or_else(|| vtep_mac_v6.clone())
                    .unwrap_or_default(),
                v6_name: self.v6_device.clone(),
            },
            network: NetworkStatus {
                network: self.config.ipv4.map(|v4| v4.network.to_string()),
                vni: self.config.backend.vni,
                port: self.config.vxlan_port(),
                ipv6_network: self.config.ipv6.map(|v6| v6.network.to_string()),
            },
            lease: LeaseStatus {
                subnet: self.lease.subnet.map(|n| n.to_string()),
                public_ip: self
                    .lease
                    .subnet
                    .map(|_| self.lease.attrs.public_ip.to_string()),
                vtep_mac,
                expiration: self.lease.expiration.and_then(|e| e.format(&Rfc3339).ok()),
                expiration_unix: self.lease.expiration.map(|e| e.unix_timestamp()),
                ipv6_subnet: self.lease.ipv6_subnet.map(|n| n.to_string()),
                public_ipv6: self.lease.attrs.public_ipv6.map(|a| a.to_string()),
                vtep_mac_v6,
            },
            last_watch_event_age_seconds: self.last_watch_event.elapsed().as_secs_f64(),
            peers: self
                .peers
                .iter()
                .map(|p| {
                    // The IPv6 half's underlay path (AF_XDP resolves it by NDP).
                    let path6 = p
                        .ipv6
                        .as_ref()
                        .and_then(|v6| v6.public_ip)
                        .and_then(|ip| paths.get(&std::net::IpAddr::V6(ip)));
                    // The first half's path: IPv4, or IPv6 for an IPv6-only peer.
                    let path = match &p.ipv4 {
                        Some(v4) => paths.get(&std::net::IpAddr::V4(v4.public_ip)),
                        None => path6,
                    };
                    PeerStatus {
                        subnet: p.ipv4.as_ref().map(|v4| v4.subnet.to_string()),
                        public_ip: p.ipv4.as_ref().map(|v4| v4.public_ip.to_string()),
                        vtep_mac: p.ipv4.as_ref().map(|v4| v4.vtep_mac.to_string()),
                        next_hop_mac: path.and_then(|x| x.next_hop_mac).map(|m| m.to_string()),
                        state: path.map_or_else(|| default_state.to_string(), |x| x.state.clone()),
                        ipv6_subnet: p.ipv6.as_ref().map(|v6| v6.subnet.to_string()),
                        public_ipv6: p
                            .ipv6
                            .as_ref()
                            .and_then(|v6| v6.public_ip)
                            .map(|a| a.to_string()),
                        vtep_mac_v6: p.ipv6.as_ref().map(|v6| v6.vtep_mac.to_string()),
                        state_v6: path6.map(|x| x.state.clone()),
                    }
                })
                .collect(),
            leases: self.lease_rows(),
            workers,
            totals,
            xdp_counters: self
                .probe
                .as_ref()
                .and_then(UserspaceStatusProbe::xdp_counters),
        }
    }
}

/// SIGTERM and SIGINT, listened to from the first moment of `run`: a signal that arrives while
/// the daemon is still starting must not be lost (once any listener exists, the process no
/// longer dies of it by default).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// Waits for either; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs the daemon until SIGINT/SIGTERM (Ok) or a fatal condition (Err); or, with
/// [`Mode::Cleanup`], removes what a stopped daemon left behind.
pub async fn run(args: RunArgs, mode: Mode) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    if args.kube_subnet_mgr {
        return match kube_store_from_args(&args, &mut signals).await? {
            Some(store) => run_with_store(args.clone(), store, signals, mode).await,
            None => Ok(()),
        };
    }
    match &args.local_store {
        Some(dir) => {
            let store = LocalStore::open(dir)
                .with_context(|| format!("opening the local store {}", dir.display()))?;
            run_with_store(args.clone(), store, signals, mode).await
        }
        None => {
            let opts = EtcdOptions {
                endpoints: args.etcd_endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                ca_file: args.etcd_cafile.clone(),
                cert_file: args.etcd_certfile.clone(),
                key_file: args.etcd_keyfile.clone(),
                username: args.etcd_username.clone(),
                password: args.etcd_password.clone(),
            };
            let store = match retry_unavailable(&mut signals, "connecting to etcd", || {
                EtcdStore::connect(opts.clone())
            })
            .await?
            {
                Some(store) => store,
                None => return Ok(()),
            };
            run_with_store(args.clone(), store, signals, mode).await
        }
    }
}

/// The Kubernetes subnet manager's store (`--kube-subnet-mgr`), from the flags and flanneld's
/// environment: `NODE_NAME` (else `POD_NAME`/`POD_NAMESPACE`), `EVENT_QUEUE_DEPTH`,
/// `CONT_WHEN_CACHE_NOT_READY`. Waits while the API server is unreachable; `None` when SIGTERM
/// or SIGINT arrives meanwhile.
async fn kube_store_from_args(
    args: &RunArgs,
    signals: &mut Signals,
) -> anyhow::Result<Option<KubeStore>> {
    let env = |name: &str| std::env::var(name).ok();
    let opts = KubeOptions {
        api_url: args.kube_api_url.clone(),
        kubeconfig: args.kubeconfig_file.clone(),
        annotation_prefix: args.kube_annotation_prefix.clone(),
        node: NodeIdentity::from_env_values(
            env("NODE_NAME"),
            env("POD_NAME"),
            env("POD_NAMESPACE"),
        )?,
        net_config_path: args
            .net_config_path
            .clone()
            .unwrap_or_else(|| kube_store::DEFAULT_NET_CONF_PATH.into()),
        set_node_network_unavailable: args.set_node_network_unavailable,
        event_queue_depth: kube_store::event_queue_depth(env("EVENT_QUEUE_DEPTH").as_deref())?,
        continue_when_cache_not_ready: env("CONT_WHEN_CACHE_NOT_READY").as_deref() == Some("true"),
        cache_sync_timeout: kube_store::CACHE_SYNC_TIMEOUT,
        node_wait: kube_store::NODE_WAIT,
    };
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            r = KubeStore::connect(opts.clone()) => r,
            name = signals.recv() => {
                tracing::info!("{name} while connecting to the Kubernetes API: exiting");
                return Ok(None);
            }
        };
        match attempt {
            Ok(store) => return Ok(Some(store)),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!("connecting to the Kubernetes API: {e}; retrying in {delay:?}");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("starting the Kubernetes subnet manager"))
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            name = signals.recv() => {
                tracing::info!("{name} while waiting for the Kubernetes API: exiting");
                return Ok(None);
            }
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A failure that waiting may cure (the store could not be reached).
trait Transient: std::error::Error + Send + Sync + 'static {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl Transient for AcquireError {
    fn is_transient(&self) -> bool {
        AcquireError::is_transient(self)
    }
}

/// Runs `op` until it succeeds or fails for a reason other than the store being unreachable
/// (flanneld also waits for etcd at startup instead of exiting), backing off from 1 s to 30 s.
/// Returns `None` when SIGTERM or SIGINT arrives meanwhile: every wait on the store at start-up
/// goes through here, so none of them can make the daemon deaf to a stop.
async fn retry_unavailable<T, E, F, Fut>(
    signals: &mut Signals,
    what: &str,
    mut op: F,
) -> anyhow::Result<Option<T>>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            r = op() => r,
            name = signals.recv() => {
                tracing::info!("{name} while {what}: exiting");
                return Ok(None);
            }
        };
        match attempt {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_transient() => {
                tracing::warn!("{what}: {e}; retrying in {delay:?}");
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_string())),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            name = signals.recv() => {
                tracing::info!("{name} while waiting for the lease store: exiting");
                return Ok(None);
            }
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Puts the blackhole route back if it is missing; says so when it had to, and logs a problem
/// once when it appears or changes (flanneld logs it every period).
async fn upkeep_blackhole(route: &BlackholeRoute, last_problem: &mut Option<String>) {
    let problem = match route.ensure().await {
        Ok(added) => {
            if added {
                tracing::info!(subnet = %route.subnet(), "blackhole route added");
            }
            None
        }
        Err(e) => Some(route.explain(&e)),
    };
    if problem != *last_problem {
        if let Some(p) = &problem {
            tracing::warn!(subnet = %route.subnet(), "{p}");
        }
        *last_problem = problem;
    }
}

/// The network config: the file named by `--net-config-path`, else the store's (waiting while
/// the store is unreachable). `None` when SIGTERM or SIGINT arrives meanwhile.
pub(crate) async fn network_config<S: LeaseStore>(
    args: &RunArgs,
    store: &S,
    signals: &mut Signals,
) -> anyhow::Result<Option<NetworkConfig>> {
    let config_json = match &args.net_config_path {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the network config {}", path.display()))?,
        None => {
            let what = format!("reading the network config from the {}", store.describe());
            match retry_unavailable(signals, &what, || store.network_config()).await? {
                Some(json) => json,
                None => return Ok(None),
            }
        }
    };
    control::config::parse(&config_json)
        .context("invalid network config")
        .map(Some)
}

/// What `run` is asked to do once the store is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the daemon.
    Run,
    /// Remove what a stopped daemon left on the host and release its lease (`vxdp cleanup`).
    Cleanup,
}

async fn run_with_store<S: LeaseStore>(
    args: RunArgs,
    store: S,
    mut signals: Signals,
    mode: Mode,
) -> anyhow::Result<()> {
    if mode == Mode::Cleanup {
        return crate::cleanup::run(&args, &store, &mut signals).await;
    }
    // What systemd's fd store kept from the last run (a restart or a crash). Out of the store
    // at once: what is taken is stored again once ready, and what is not must not stay held.
    let from_store = crate::systemd::take_from_store();
    crate::systemd::remove_from_store(&from_store.names);
    let nl = Netlink::connect()?;
    let Some(config) = network_config(&args, &store, &mut signals).await? else {
        return Ok(());
    };
    if config.backend.gbp || config.backend.learning {
        tracing::warn!(
            gbp = config.backend.gbp,
            learning = config.backend.learning,
            "the vxlan GBP and Learning options apply to the kernel backend only; the AF_XDP \
             backend ignores them"
        );
    }
    if !config.ignored_fields.is_empty() {
        tracing::info!(fields = ?config.ignored_fields, "network config fields vxdp does not use");
    }
    // flanneld's br_netfilter check, after the config (it depends on EnableNFTables) and before
    // anything is set up.
    control::br_netfilter::check(
        Path::new(control::br_netfilter::PROC_SYS_NET_BRIDGE),
        config.enable_nftables,
        true,
        config.ipv6.is_some(),
    )?;
    // Kubernetes: the node's annotations may name its public IP (node-public-ip replaces
    // --public-ip, as in flanneld) and the VtepMAC an earlier run announced.
    let hints = store.node_hints().await;
    let public_ip = hints.public_ip.or(args.public_ip);
    let external = find_external_interface(
        &nl,
        &args.iface,
        &args.iface_regex,
        args.iface_can_reach,
        public_ip,
        args.public_ipv6,
        config.is_ipv6_only(),
    )
    .await?;
    // The underlay addresses, checked before any lease is taken: the IPv4 one with IPv4 on,
    // the IPv6 one (flanneld's PublicIPv6) with IPv6 on. An IPv6-only node needs no IPv4
    // address at all.
    let public_ip = match config.ipv4 {
        Some(_) => Some(external.require_ipv4()?),
        None => None,
    };
    let public_ipv6 = match config.ipv6 {
        Some(_) => Some(external.require_ipv6()?),
        None => None,
    };
    tracing::info!(
        iface = %external.link.name,
        public_ip = %public_ip.map_or_else(|| "none (IPv6-only)".into(), |a| a.to_string()),
        public_ipv6 = %public_ipv6.map_or_else(|| "-".into(), |a| a.to_string()),
        mtu = external.link.mtu,
        "using external interface"
    );
    let vni = config.backend.vni;
    // The address that names this node: the IPv4 underlay address, else (IPv6-only) the IPv6
    // one; one of the two is there (checked above, and parse() refuses both families off).
    let node_addr = match (public_ip, public_ipv6) {
        (Some(v4), _) => std::net::IpAddr::V4(v4),
        (None, Some(v6)) => std::net::IpAddr::V6(v6),
        (None, None) => bail!("the network config enables neither IPv4 nor IPv6"),
    };
    let vtep_mac = hints
        .vtep_mac
        .unwrap_or_else(|| vtep_mac::stable_vtep_mac(&vtep_mac::machine_id(), node_addr, vni));
    // flanneld gives its IPv6 link a MAC of its own (BackendV6Data), and so does vxdp's
    // kernel backend in a dual-stack network (stable, derived from the IPv6 underlay address).
    // The userspace backends have one TAP, whose one MAC receives both families: they announce
    // that MAC for IPv6 too. An IPv6-only node has one device, whose MAC is `vtep_mac`.
    let vtep_mac6 = public_ipv6.map(|v6| {
        if public_ip.is_none()
            || matches!(
                args.backend,
                crate::cli::BackendChoice::Udp | crate::cli::BackendChoice::Xdp
            )
        {
            vtep_mac
        } else {
            vtep_mac::stable_vtep_mac(&vtep_mac::machine_id(), std::net::IpAddr::V6(v6), vni)
        }
    });
    let attrs = match (public_ip, public_ipv6, vtep_mac6) {
        (Some(v4), Some(v6), Some(mac6)) => {
            tracing::info!(public_ipv6 = %v6, vtep_mac6 = %mac6, "IPv6 overlay over the IPv6 underlay");
            LeaseAttrs::vxlan(v4, vni, vtep_mac).with_ipv6(v6, mac6)
        }
        (Some(v4), _, _) => LeaseAttrs::vxlan(v4, vni, vtep_mac),
        (None, Some(v6), _) => {
            tracing::info!(public_ipv6 = %v6, vtep_mac = %vtep_mac, "IPv6-only network: the overlay runs over the IPv6 underlay alone");
            LeaseAttrs::vxlan_v6_only(v6, vni, vtep_mac)
        }
        (None, None, _) => bail!("the network config enables neither IPv4 nor IPv6"),
    };
    let previous = subnet_file::read_previous_subnet(&args.subnet_file).ok();
    let ttl = Duration::from_secs(args.subnet_lease_ttl.max(1));
    let assigned = store
        .assigned_lease(&config, &attrs)
        .await
        .with_context(|| format!("taking this node's lease from the {}", store.describe()))?;
    // Whether this start wrote a lease that did not exist before: only such a lease is given
    // back when the dataplane cannot start. One that was renewed may have peers routing to
    // a dataplane an earlier run left in place.
    let mut fresh_lease = false;
    let lease = match assigned {
        // Kubernetes: the lease is the node's pod CIDR, given, not acquired.
        Some(lease) => {
            tracing::info!(
                subnet = %lease.key(),
                vtep_mac = %vtep_mac,
                "lease assigned by the {}",
                store.describe()
            );
            lease
        }
        None => {
            let what = format!("acquiring a lease from the {}", store.describe());
            let Some(acquired) = retry_unavailable(&mut signals, &what, || {
                store::acquire(
                    &store,
                    &config,
                    &attrs,
                    previous,
                    ttl,
                    OffsetDateTime::now_utc(),
                )
            })
            .await?
            else {
                return Ok(());
            };
            tracing::info!(
                subnet = %acquired.lease.key().cidrs(),
                vtep_mac = %vtep_mac,
                "lease acquired ({})",
                acquired.allocation
            );
            fresh_lease = !matches!(acquired.allocation, Allocation::Renew(_));
            acquired.lease
        }
    };

    if let (Some(v6), None) = (&config.ipv6, lease.ipv6_subnet) {
        let _ = store.remove(&lease).await;
        bail!(
            "the network config enables IPv6 ({}), but the {} gave lease {} no IPv6 subnet: \
             check that the IPv6 network has free subnets",
            v6.network,
            store.describe(),
            lease.key()
        );
    }
    if let (Some(v4), None) = (&config.ipv4, lease.subnet) {
        let _ = store.remove(&lease).await;
        bail!(
            "the network config enables IPv4 ({}), but the {} gave lease {} no IPv4 subnet: \
             check that the network has free subnets (or set EnableIPv4 to false for an \
             IPv6-only network)",
            v4.network,
            store.describe(),
            lease.key()
        );
    }
    // One overlay MTU for the TAP or both links: the IPv6 family runs over the IPv6 underlay,
    // whose headers take 70 bytes, so a dual-stack node needs 20 bytes more than IPv4 alone.
    let mtu = config.mtu_for(external.link.mtu, config.ipv6.is_some());
    let flanneld_mtu = config.mtu_for(external.link.mtu, false);
    if mtu != flanneld_mtu {
        tracing::info!(
            mtu,
            flanneld_mtu,
            "FLANNEL_MTU is {mtu}, not the {flanneld_mtu} flanneld writes: the IPv6 overlay runs \
             over an IPv6 underlay, whose outer headers take 70 bytes, not the 50 flanneld \
             subtracts (flannel issue #1781); with {flanneld_mtu} full-sized IPv6 overlay \
             packets would not fit the underlay MTU {}",
            external.link.mtu
        );
    }
    let device = args.device.clone().unwrap_or_else(|| format!("vxdp.{vni}"));
    let worker_cpus = match &args.worker_cpus {
        WorkerCpus::Auto => core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
        WorkerCpus::None => Vec::new(),
        WorkerCpus::List(l) => l.clone(),
    };
    let busy_poll = match args.busy_poll {
        BusyPollChoice::Off => false,
        BusyPollChoice::On => true,
        BusyPollChoice::Auto => {
            let dedicated = cpus_are_dedicated(&worker_cpus);
            tracing::info!(
                "--busy-poll auto: {}",
                if dedicated {
                    "the worker CPUs are isolated from the scheduler: busy polling on"
                } else {
                    "the workers share their CPUs (none isolated with isolcpus= or nohz_full=): busy polling off"
                }
            );
            dedicated
        }
    };
    let userspace_config = UserspaceConfig {
        external: external.clone(),
        device: device.clone(),
        vtep_mac,
        mtu,
        vni,
        port: config.vxlan_port(),
        subnet: lease.subnet,
        queues: args.queues,
        worker_cpus,
        allow_unknown_peers: args.allow_unknown_peers,
        direct_routing: config.backend.direct_routing,
        tap_offloads: args.tap_offloads,
        busy_poll,
        // Replaced by the backend choice with one of the two below.
        underlay: UnderlayKind::Udp(UdpOptions {
            source_ports: usize::from(args.udp_source_ports),
            gso: args.udp_gso,
            gro: args.udp_gro,
        }),
        // The sockets bind the interface's own IPv6 address (--public-ipv6 may be a NAT's).
        ipv6: lease
            .ipv6_subnet
            .zip(external.iface_addr6.or(public_ipv6))
            .map(|(subnet, local_ip)| UserspaceV6Config { subnet, local_ip }),
    };
    let af_xdp_options = AfXdpOptions {
        xdp_modes: match args.xdp_mode {
            XdpModeChoice::Auto => vec![XdpMode::Native, XdpMode::Generic],
            XdpModeChoice::Native => vec![XdpMode::Native],
            XdpModeChoice::Generic => vec![XdpMode::Generic],
        },
        bind_mode: match args.xsk_bind {
            XskBindChoice::Auto => BindMode::Auto,
            XskBindChoice::ZeroCopy => BindMode::ZeroCopy,
            XskBindChoice::Copy => BindMode::Copy,
        },
        umem_frames: args.umem_frames,
        udp_checksum: args.udp_csum,
    };
    let udp_options = UdpOptions {
        source_ports: usize::from(args.udp_source_ports),
        gso: args.udp_gso,
        gro: args.udp_gro,
    };
    let v6_link = match (
        lease.ipv6_subnet,
        external.iface_addr6.or(public_ipv6),
        vtep_mac6,
    ) {
        (Some(subnet), Some(local_ip), Some(vtep_mac)) => Some(KernelV6Config {
            device: KernelBackendConfig::v6_device_for(&device, vni),
            local_ip,
            vtep_mac,
            subnet,
        }),
        _ => None,
    };
    let kernel_config = match (lease.subnet.zip(public_ip), v6_link) {
        // IPv4 (and dual stack): the IPv4 link, with the IPv6 one beside it.
        (Some((subnet, local_ip)), ipv6) => KernelBackendConfig {
            device: device.clone(),
            vni,
            port: config.vxlan_port(),
            local_ip: std::net::IpAddr::V4(local_ip),
            underlay_ifindex: external.link.index,
            vtep_mac,
            mtu,
            learning: config.backend.learning,
            gbp: config.backend.gbp,
            subnet: IpNet::V4(subnet),
            direct_routing: config.backend.direct_routing,
            ipv6,
        },
        // IPv6-only: the IPv6 link alone (flanneld: flannel-v6.<VNI> and no flannel.<VNI>).
        (None, Some(v6)) => KernelBackendConfig {
            device: v6.device,
            vni,
            port: config.vxlan_port(),
            local_ip: std::net::IpAddr::V6(v6.local_ip),
            underlay_ifindex: external.link.index,
            vtep_mac: v6.vtep_mac,
            mtu,
            learning: config.backend.learning,
            gbp: config.backend.gbp,
            subnet: IpNet::V6(v6.subnet),
            direct_routing: config.backend.direct_routing,
            ipv6: None,
        },
        (None, None) => bail!(
            "lease {} has no subnet this node can carry: no IPv4 subnet with an IPv4 address, \
             nor an IPv6 subnet with an IPv6 address",
            lease.key()
        ),
    };
    // A vxdp already running here hands its dataplane over (an upgrade); else systemd's
    // store may hold the last run's descriptors.
    let control_path = args.control_socket.clone();
    let taken =
        tokio::task::spawn_blocking(move || crate::takeover::request(&control_path)).await??;
    let mut from_store = from_store;
    let (inherited, predecessor) = match taken {
        Some(t) => {
            // The predecessor's own descriptors win; the store's copies must not stay open
            // (an unread socket in the SO_REUSEPORT group would take a share of the traffic).
            drop(from_store.inherited.take());
            let version = t.inherited.manifest.vxdp_version.clone();
            let fds = t.inherited.manifest.fds.len();
            let (inherited, predecessor) = t.split();
            (Some(inherited), Some((predecessor, version, fds)))
        }
        None => {
            if let Some(i) = &from_store.inherited {
                tracing::info!(
                    descriptors = i.manifest.fds.len(),
                    pid = i.manifest.pid,
                    "resuming on the TAP queues and sockets systemd's fd store kept from the \
                     last run"
                );
            }
            (from_store.inherited.take(), None)
        }
    };
    let (backend, summary) = match ActiveBackend::start(
        &nl,
        match args.backend {
            // Only the kernel links carry IPv6 so far (checked above for explicit choices).
            crate::cli::BackendChoice::Auto if config.ipv6.is_some() => {
                tracing::info!("--backend auto: the network config enables IPv6, which the kernel backend carries");
                BackendChoice::Kernel
            }
            crate::cli::BackendChoice::Auto => BackendChoice::Auto,
            crate::cli::BackendChoice::Xdp => BackendChoice::Xdp,
            crate::cli::BackendChoice::Udp => BackendChoice::Udp,
            crate::cli::BackendChoice::Kernel => BackendChoice::Kernel,
        },
        userspace_config,
        af_xdp_options,
        udp_options,
        kernel_config,
        inherited,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            // A lease written just now has nothing behind it: give the subnet back.
            if fresh_lease {
                let _ = store.remove(&lease).await;
            }
            // With an explicit --backend, say what auto would have done.
            let what = match args.backend {
                crate::cli::BackendChoice::Auto => "starting the dataplane",
                _ => "starting the dataplane (--backend auto falls back from AF_XDP to the UDP sockets to the kernel vxlan link)",
            };
            return Err(anyhow::Error::new(e).context(what));
        }
    };
    tracing::info!("{summary}");
    if let Some((predecessor, version, fds)) = predecessor {
        // Its control socket and health port go with it; ours are bound below.
        let pid = predecessor.pid;
        let gone =
            tokio::task::spawn_blocking(move || predecessor.wait_gone(Duration::from_secs(10)))
                .await?;
        if !gone {
            bail!("took over from vxdp pid {pid}, but it did not exit within 10 s");
        }
        tracing::info!(
            pid,
            version = %version,
            descriptors = fds,
            "took over forwarding from the vxdp that ran before (it has exited)"
        );
    }
    let probe = backend.userspace_probe();
    let backend_name = backend.name();
    let mut sync = PeerSync::new(backend, lease.key());

    let listing = store.list().await?;
    sync.apply(
        listing
            .leases
            .values()
            .cloned()
            .map(LeaseEvent::Added)
            .collect(),
    )
    .await;
    // The tables hold every known peer: frames waiting in queues taken over can go.
    sync.backend().begin_forwarding();
    let mut watcher = store.watch(&listing).await?;
    // The watcher runs in its own task: the event loop below selects on a channel, so its
    // other branches (ticks, renewals) can never cancel a watch half-way (a backoff sleep, a
    // reconnect) and restart it.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(16);
    let watch_task = tokio::spawn(async move {
        loop {
            let batch = watcher.next().await;
            if events_tx.send(batch).await.is_err() {
                return;
            }
        }
    });

    let readiness = Readiness::default();
    let view = Arc::new(Mutex::new(View {
        config: config.clone(),
        external: external.clone(),
        device: device.clone(),
        // The kernel backend's IPv6 link (its only one in an IPv6-only network); the userspace
        // backends carry IPv6 on the TAP.
        v6_device: (config.ipv6.is_some() && backend_name == "kernel")
            .then(|| KernelBackendConfig::v6_device_for(&device, vni)),
        mtu,
        lease: lease.clone(),
        peers: sync.peers().values().cloned().collect(),
        backend: backend_name,
        summary,
        probe,
        last_watch_event: std::time::Instant::now(),
        ready: readiness.clone(),
        leases: listing.leases.clone(),
    }));
    let control = ControlSocket::bind(&args.control_socket).await?;
    let handler_view = Arc::clone(&view);
    let (handover_tx, mut handover_rx) = tokio::sync::mpsc::channel(1);
    let control_task = tokio::spawn(control.serve(
        Arc::new(move |request: &str| {
            match request {
                "status" | "" => handler_view
                    .lock()
                    .ok()
                    .and_then(|v| serde_json::to_value(v.to_doc()).ok())
                    .unwrap_or_else(|| json!({"error": "status unavailable"})),
                other => json!({"error": format!("unknown request {other:?}; try status")}),
            }
        }),
        handover_tx,
    ));

    // flanneld's --ip-masq and --iptables-forward-rules (on by default).
    let masquerade = if args.ip_masq || args.iptables_forward_rules {
        let mut cfg = MasqConfig::for_lease(
            &config,
            lease.subnet,
            lease.ipv6_subnet,
            args.ip_masq,
            args.iptables_forward_rules,
        );
        cfg.random_fully = !args.ip_masq_fully_random_disable;
        match tokio::task::spawn_blocking(move || Masquerade::install(cfg)).await? {
            Ok(m) => {
                tracing::info!(
                    backend = m.backend_name(),
                    ip_masq = args.ip_masq,
                    forward_rules = args.iptables_forward_rules,
                    random_fully = m.random_fully(),
                    "masquerade/forward rules installed with {} ({})",
                    m.backend_name(),
                    m.backend_reason()
                );
                Some(Arc::new(m))
            }
            Err(e) if args.ip_masq => {
                // A lease and dataplane this start adopted may have peers routing to them:
                // only what this start created goes (the service manager's restart retries).
                if fresh_lease {
                    sync.shutdown(Teardown::Remove).await;
                    let _ = store.remove(&lease).await;
                } else {
                    sync.shutdown(Teardown::Keep).await;
                }
                return Err(anyhow::Error::new(e).context("installing the --ip-masq rules"));
            }
            Err(e) => {
                tracing::warn!("installing flanneld's FORWARD accept rules failed (forwarding may be blocked by a DROP policy; pass --iptables-forward-rules=false to skip them): {e}");
                None
            }
        }
    } else {
        None
    };
    let mut masq_resync = tokio::time::interval(Duration::from_secs(args.iptables_resync.max(1)));

    // flanneld's --ip-blackhole-route: in place before readiness, then checked every
    // --iptables-resync seconds (see control::blackhole).
    // One per enabled family, as flanneld (AddBlackholeV4Route, AddBlackholeV6Route).
    let blackhole: Vec<BlackholeRoute> = if args.ip_blackhole_route {
        crate::cleanup::blackhole_nets(&config, lease.key())
            .into_iter()
            .map(|net| BlackholeRoute::new(nl.clone(), net))
            .collect()
    } else {
        Vec::new()
    };
    let mut blackhole_problem: Option<String> = None;
    for b in &blackhole {
        upkeep_blackhole(b, &mut blackhole_problem).await;
    }
    let mut blackhole_resync =
        tokio::time::interval(Duration::from_secs(args.iptables_resync.max(1)));

    let health_task = if args.healthz_port != 0 {
        let listener = health::bind(std::net::SocketAddr::new(
            args.healthz_ip,
            args.healthz_port,
        ))
        .await?;
        let metrics_view = Arc::clone(&view);
        let metrics: health::MetricsSource = Arc::new(move || {
            metrics_view
                .lock()
                .map(|v| crate::metrics::render(&v.to_doc()))
                .unwrap_or_default()
        });
        Some(tokio::spawn(health::serve(
            listener,
            readiness.clone(),
            metrics,
        )))
    } else {
        None
    };

    // Setup is done: keep only what running needs (see privileges.rs).
    match privileges::drop_process_wide(privileges::RUNTIME_CAPS) {
        Ok(threads) => tracing::info!(
            threads = threads + 1,
            "capabilities dropped to CAP_NET_ADMIN and CAP_NET_RAW"
        ),
        Err(e) => {
            tracing::warn!("could not drop capabilities (running with what it was given): {e}")
        }
    }

    subnet_file::write_subnet_file(
        &args.subnet_file,
        &config,
        lease.subnet,
        lease.ipv6_subnet,
        mtu,
        args.ip_masq,
    )
    .with_context(|| format!("writing {}", args.subnet_file.display()))?;
    readiness.set_ready();
    {
        let (manifest, fds) = sync.backend().fd_store_set();
        crate::systemd::store(&manifest, &fds);
    }
    crate::systemd::notify_ready();
    tracing::info!(subnet_file = %args.subnet_file.display(), "ready");
    // Kubernetes: NetworkUnavailable=False, beside the event loop (the API may be slow).
    let node_ready = store.node_ready(&lease);
    let node_ready_task = tokio::spawn(async move {
        if let Err(e) = node_ready.await {
            tracing::warn!("telling the cluster that this node forwards: {e}");
        }
    });

    let mut tick = tokio::time::interval(TICK);
    let margin = Duration::from_secs(u64::from(args.subnet_lease_renew_margin) * 60);
    let mut node = Node::new(
        lease.clone(),
        LeasePolicy::new(ttl, margin).releasing_on_stop(args.cleanup_on_exit),
        OffsetDateTime::now_utc(),
    );
    let timeout = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timeout);

    // A successor this process handed over to: told of the end by this connection closing.
    let mut handed_over_to: Option<std::os::unix::net::UnixStream> = None;

    // The shell: wait for the next thing to happen, tell the core, carry out what it says.
    let exit: Exit = 'running: loop {
        let deadline = node.next_timeout();
        if let Some(at) = deadline {
            let wait = Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
            timeout.as_mut().reset(tokio::time::Instant::now() + wait);
        }
        let mut actions = tokio::select! {
            name = signals.recv() => {
                tracing::info!("{name}: shutting down");
                node.handle(Input::Stop(name), OffsetDateTime::now_utc())
            }
            Some(events) = events_rx.recv() => match events {
                Ok(events) => {
                    if let Ok(mut v) = view.lock() {
                        v.record(&events);
                        v.last_watch_event = std::time::Instant::now();
                    }
                    node.handle(Input::LeaseEvents(events), OffsetDateTime::now_utc())
                }
                Err(e) => {
                    tracing::warn!("watching leases: {e}");
                    Vec::new()
                }
            },
            _ = tick.tick() => {
                sync.retry_failed().await;
                match sync.backend_mut().tick().await {
                    Ok(()) => Vec::new(),
                    Err(e) => node.handle(Input::DataplaneFailed(e.to_string()), OffsetDateTime::now_utc()),
                }
            }
            _ = masq_resync.tick(), if masquerade.is_some() => {
                if let Some(m) = masquerade.clone() {
                    match tokio::task::spawn_blocking(move || m.ensure()).await {
                        Ok(Ok(true)) => tracing::warn!("masquerade/forward rules were changed by someone else: repaired"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!("checking the masquerade/forward rules failed: {e}"),
                        Err(e) => tracing::warn!("masquerade check task failed: {e}"),
                    }
                }
                Vec::new()
            }
            _ = blackhole_resync.tick(), if !blackhole.is_empty() => {
                for b in &blackhole {
                    upkeep_blackhole(b, &mut blackhole_problem).await;
                }
                Vec::new()
            }
            _ = &mut timeout, if deadline.is_some() => node.handle_timeout(OffsetDateTime::now_utc()),
            Some((stream, line)) = handover_rx.recv() => {
                match handover_refusal(&stream, &line) {
                    Some(why) => {
                        tracing::warn!("a new vxdp asked to take over: {why}; running on");
                        let body = json!({"error": why}).to_string();
                        let _ = std::io::Write::write_all(&mut &stream, body.as_bytes());
                        Vec::new()
                    }
                    None => {
                tracing::info!("a new vxdp asks to take over: stopping the workers and handing over");
                let (manifest, fds) = sync.backend_mut().stop_for_handover();
                let sent = dataplane::handover::send_handover(
                    std::os::fd::AsFd::as_fd(&stream),
                    &manifest,
                    &fds,
                );
                let count = fds.len();
                // Open until this process has let go of its control socket and health port:
                // the successor waits for its end.
                handed_over_to = Some(stream);
                match sent {
                    Ok(()) => {
                        tracing::info!(descriptors = count, "handed over; exiting, leaving everything to the new vxdp");
                        node.handle(Input::HandedOver, OffsetDateTime::now_utc())
                    }
                    // The workers are stopped: without a successor nothing forwards. Exit
                    // with an error and leave everything in place for the restart.
                    Err(e) => node.handle(
                        Input::DataplaneFailed(format!("handing over to the new vxdp failed: {e}")),
                        OffsetDateTime::now_utc(),
                    ),
                }
                    }
                }
            }
        };
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    Action::ApplyPeers(events) => {
                        sync.apply(events).await;
                        if let Ok(mut v) = view.lock() {
                            v.peers = sync.peers().values().cloned().collect();
                        }
                    }
                    Action::Renew(current) => {
                        let input = match store::renew(
                            &store,
                            &current,
                            ttl,
                            OffsetDateTime::now_utc(),
                        )
                        .await
                        {
                            Ok(renewed) => {
                                tracing::info!(subnet = %renewed.key(), "lease renewed");
                                Input::Renewed(renewed)
                            }
                            Err(e) => {
                                tracing::warn!(subnet = %current.key(), "renewing the lease failed, retrying in {:?}: {e}", LeasePolicy::new(ttl, margin).renew_retry);
                                Input::RenewFailed(e.to_string())
                            }
                        };
                        next.extend(node.handle(input, OffsetDateTime::now_utc()));
                    }
                    Action::LeaseChanged(l) => {
                        if let Ok(mut v) = view.lock() {
                            v.lease = l;
                        }
                    }
                    Action::Exit(exit) => {
                        match &exit.reason {
                            ExitReason::Signal(_) | ExitReason::HandedOver => {}
                            ExitReason::Revoked => tracing::error!(subnet = %node.lease().key(), "this node's lease was removed from the store by someone else: it has been revoked; no longer advertising, shutting down"),
                            ExitReason::TakenOver(by) => tracing::error!(subnet = %node.lease().key(), other = %by, "this node's subnet was taken over by another node: shutting down"),
                            ExitReason::DataplaneFailed(why) => tracing::error!("the dataplane failed, shutting down so that the service manager restarts vxdp: {why}"),
                        }
                        break 'running exit;
                    }
                }
            }
            actions = next;
        }
    };
    let lease = node.lease().clone();
    let outcome: anyhow::Result<()> = match &exit.reason {
        ExitReason::Signal(_) | ExitReason::HandedOver => Ok(()),
        ExitReason::Revoked => Err(anyhow::anyhow!("lease {} was revoked", lease.key())),
        ExitReason::TakenOver(by) => Err(anyhow::anyhow!(
            "lease {} was taken over by {by}",
            lease.key()
        )),
        ExitReason::DataplaneFailed(why) => Err(anyhow::anyhow!("dataplane failed: {why}")),
    };

    control_task.abort();
    watch_task.abort();
    node_ready_task.abort();
    let _ = control_task.await;
    if let Some(t) = health_task {
        t.abort();
        let _ = t.await;
    }
    // The control socket file is removed and the health port closed: a successor may bind them.
    drop(handed_over_to);
    // A stop keeps what forwards (flanneld's behaviour): peers keep their routes to this node
    // and the next start adopts it all. Only a released or lost subnet takes it away.
    let teardown = if exit.release_subnet {
        Teardown::Remove
    } else {
        Teardown::Keep
    };
    sync.shutdown(teardown).await;
    if let Some(m) = masquerade.and_then(|m| Arc::try_unwrap(m).ok()) {
        if teardown == Teardown::Remove {
            match tokio::task::spawn_blocking(move || m.remove()).await {
                Ok(Ok(())) => tracing::info!("masquerade/forward rules removed"),
                Ok(Err(e)) => tracing::warn!("removing the masquerade/forward rules failed: {e}"),
                Err(e) => tracing::warn!("masquerade removal task failed: {e}"),
            }
        } else {
            tracing::info!("masquerade/forward rules stay for the next start");
        }
    }
    // The blackhole route goes with the lease: kept for the next start whenever the lease is
    // kept (a plain stop, an error exit), removed when the subnet is released or lost, since it
    // may become another node's.
    for b in &blackhole {
        if exit.release_subnet {
            match b.remove().await {
                Ok(()) => tracing::info!(subnet = %b.subnet(), "blackhole route removed"),
                Err(e) => {
                    tracing::warn!(subnet = %b.subnet(), "removing the blackhole route failed: {e}")
                }
            }
        }
    }
    if exit.release_lease {
        match store.remove(&lease).await {
            Ok(()) => tracing::info!(subnet = %lease.key(), "lease released"),
            Err(e) => tracing::warn!(subnet = %lease.key(), "releasing the lease failed: {e}"),
        }
    }
    outcome
}

/// Why a handover request on `stream` is refused, if it is: another manifest format, or a
/// successor that already hung up (a timed-out one), which stopping the workers would leave
/// the node without.
fn handover_refusal(stream: &std::os::unix::net::UnixStream, line: &str) -> Option<String> {
    let format = dataplane::handover::FORMAT_VERSION;
    match crate::takeover::requested_format(line) {
        Some(f) if f == format => {}
        Some(f) => {
            return Some(format!(
                "it reads handover format {f}, this vxdp sends format {format}"
            ))
        }
        None => {
            return Some(format!(
                "the request names no handover format (this vxdp sends {format})"
            ))
        }
    }
    let mut fds = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(stream),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    // SAFETY: poll on one valid descriptor with a zero timeout.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    if ready > 0 && fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
        return Some("it has already given up waiting".into());
    }
    None
}

/// Whether every CPU in `cpus` is kept from the scheduler's general use (the kernel's
/// `isolcpus=` or `nohz_full=` lists), so a worker pinned there has the core to itself.
/// Without pinning (`cpus` empty) no worker has a dedicated core.
fn cpus_are_dedicated(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    let mut isolated = std::collections::BTreeSet::new();
    for file in [
        "/sys/devices/system/cpu/isolated",
        "/sys/devices/system/cpu/nohz_full",
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(crate::cli::WorkerCpus::List(l)) = crate::cli::parse_worker_cpus(text.trim())
            {
                isolated.extend(l);
            }
        }
    }
    cpus.iter().all(|c| isolated.contains(c))
}
