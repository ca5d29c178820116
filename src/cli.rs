//! Command line. `vxdp run` (also the default when no subcommand is given, so a flanneld
//! command line keeps working) takes flanneld's flags, each also from `FLANNELD_<UPPER_SNAKE>`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// vxdp: a userspace VXLAN dataplane (AF_XDP + TAP), a drop-in for flannel's vxlan backend.
#[derive(Debug, Parser)]
#[command(
    name = "vxdp",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand, vxdp runs the daemon (like flanneld)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon flags, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run(Box<RunArgs>),
    /// Show the running daemon's backend, lease, peers and counters.
    Status(StatusArgs),
    /// List the peers the dataplane forwards to (subnet, PublicIP, VtepMAC, next hop, state).
    Peers(StatusArgs),
    /// List every lease in the store as the daemon sees it, its own included.
    Leases(StatusArgs),
    /// Remove what a stopped vxdp left on this host (device, routes, masquerade rules, the
    /// blackhole route) and release its lease. Takes the daemon's flags and environment.
    Cleanup(Box<RunArgs>),
}

/// Which dataplane to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// AF_XDP where the NIC offers zero-copy, else UDP sockets with GSO/GRO, else the kernel
    /// vxlan link.
    Auto,
    /// AF_XDP only: fail if XDP cannot be used.
    Xdp,
    /// UDP sockets with GSO/GRO only (needs only CAP_NET_ADMIN).
    Udp,
    /// The kernel vxlan link, programmed as flanneld does.
    Kernel,
}

/// Whether workers spin instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusyPollChoice {
    /// Sleep in poll when idle (an idle node costs no CPU).
    Off,
    /// Spin while traffic flows (and up to a second of silence): for dedicated cores.
    On,
    /// On only when every worker has a core to itself: its CPU is isolated from the
    /// scheduler (isolcpus= or nohz_full=).
    Auto,
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeChoice {
    /// Native (driver) mode, else generic.
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// How to bind AF_XDP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XskBindChoice {
    /// Zero-copy if the driver offers it, else copy.
    Auto,
    /// Zero-copy only.
    ZeroCopy,
    /// Copy mode only.
    Copy,
}

/// Where workers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCpus {
    /// The CPUs of the process's affinity mask, in order.
    Auto,
    /// No pinning.
    None,
    /// These CPUs, in order (worker i on the i-th, wrapping around).
    List(Vec<usize>),
}

pub fn parse_worker_cpus(s: &str) -> Result<WorkerCpus, String> {
    match s {
        "auto" => return Ok(WorkerCpus::Auto),
        "none" => return Ok(WorkerCpus::None),
        _ => {}
    }
    let bad = || format!("{s:?} is not auto, none or a CPU list like 0,2-3");
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(WorkerCpus::List(cpus))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `vxdp run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Use the embedded lease store in DIR (shared by all nodes on this machine) instead of etcd.
    #[arg(
        long,
        value_name = "DIR",
        env = "VXDP_LOCAL_STORE",
        conflicts_with = "etcd_endpoints",
        help_heading = "Lease store"
    )]
    pub local_store: Option<PathBuf>,

    /// Comma-separated etcd v3 endpoints (flanneld's default).
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379",
        env = "FLANNELD_ETCD_ENDPOINTS",
        help_heading = "Lease store"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd prefix holding the network config and the leases.
    #[arg(long, value_name = "PREFIX", default_value = control::lease::DEFAULT_ETCD_PREFIX, env = "FLANNELD_ETCD_PREFIX", help_heading = "Lease store")]
    pub etcd_prefix: String,

    /// TLS key file for etcd.
    #[arg(
        long,
        value_name = "FILE",
        env = "FLANNELD_ETCD_KEYFILE",
        help_heading = "Lease store"
    )]
    pub etcd_keyfile: Option<PathBuf>,

    /// TLS certificate file for etcd.
    #[arg(
        long,
        value_name = "FILE",
        env = "FLANNELD_ETCD_CERTFILE",
        help_heading = "Lease store"
    )]
    pub etcd_certfile: Option<PathBuf>,

    /// TLS CA file for etcd.
    #[arg(
        long,
        value_name = "FILE",
        env = "FLANNELD_ETCD_CAFILE",
        help_heading = "Lease store"
    )]
    pub etcd_cafile: Option<PathBuf>,

    /// etcd user name.
    #[arg(
        long,
        value_name = "USER",
        env = "FLANNELD_ETCD_USERNAME",
        help_heading = "Lease store"
    )]
    pub etcd_username: Option<String>,

    /// etcd password.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true,
        help_heading = "Lease store"
    )]
    pub etcd_password: Option<String>,

    /// Read the network config from this file instead of `<etcd-prefix>/config` (with
    /// --kube-subnet-mgr: default /etc/kube-flannel/net-conf.json).
    #[arg(
        long,
        value_name = "PATH",
        env = "FLANNELD_NET_CONFIG_PATH",
        help_heading = "Lease store"
    )]
    pub net_config_path: Option<PathBuf>,

    /// Use the Kubernetes API as the lease store: the node's spec.podCIDR is its lease, and
    /// peers are the nodes flannel (or vxdp) annotated.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "local_store", help_heading = "Kubernetes subnet manager (as flanneld)")]
    pub kube_subnet_mgr: bool,

    /// Kubernetes API server URL (default: the kubeconfig's, or the pod's service account's).
    #[arg(
        long,
        value_name = "URL",
        env = "FLANNELD_KUBE_API_URL",
        help_heading = "Kubernetes subnet manager (as flanneld)"
    )]
    pub kube_api_url: Option<String>,

    /// kubeconfig file (default: the pod's service account).
    #[arg(
        long,
        value_name = "FILE",
        env = "FLANNELD_KUBECONFIG_FILE",
        help_heading = "Kubernetes subnet manager (as flanneld)"
    )]
    pub kubeconfig_file: Option<PathBuf>,

    /// Prefix of the node annotations; it may contain one '/' (else one is appended).
    #[arg(long, value_name = "PREFIX", default_value = control::store::kube::annotations::DEFAULT_ANNOTATION_PREFIX, env = "FLANNELD_KUBE_ANNOTATION_PREFIX", help_heading = "Kubernetes subnet manager (as flanneld)")]
    pub kube_annotation_prefix: String,

    /// Set the node's NetworkUnavailable condition to False once vxdp forwards.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Kubernetes subnet manager (as flanneld)")]
    pub set_node_network_unavailable: bool,

    /// Interface (name or IP address) for inter-host traffic; repeat to give fallbacks. Default:
    /// the interface of the default route.
    #[arg(
        long,
        value_name = "IFACE",
        env = "FLANNELD_IFACE",
        value_delimiter = ',',
        help_heading = "Host network (as flanneld)"
    )]
    pub iface: Vec<String>,

    /// Regex matching the interface (name or IP address) to use; repeatable, tried in order
    /// after --iface.
    #[arg(
        long,
        value_name = "REGEX",
        env = "FLANNELD_IFACE_REGEX",
        value_delimiter = ',',
        help_heading = "Host network (as flanneld)"
    )]
    pub iface_regex: Vec<String>,

    /// Use the interface (and source address) the kernel would send to ADDR on, as `ip route
    /// get ADDR` shows; tried after --iface and --iface-regex.
    #[arg(
        long,
        value_name = "ADDR",
        env = "FLANNELD_IFACE_CAN_REACH",
        help_heading = "Host network (as flanneld)"
    )]
    pub iface_can_reach: Option<IpAddr>,

    /// Install flanneld's IP masquerade rules for traffic leaving the overlay.
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Host network (as flanneld)")]
    pub ip_masq: bool,

    /// Masquerade without --random-fully (nftables: without fully-random).
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Host network (as flanneld)")]
    pub ip_masq_fully_random_disable: bool,

    /// Add a blackhole route for this node's own lease subnet, so that packets to its unused
    /// addresses are dropped here instead of following the default route.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Host network (as flanneld)")]
    pub ip_blackhole_route: bool,

    /// With --ip-masq, check the rules every this many seconds and repair them (also the
    /// blackhole route of --ip-blackhole-route).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 5,
        env = "FLANNELD_IPTABLES_RESYNC",
        help_heading = "Host network (as flanneld)"
    )]
    pub iptables_resync: u64,

    /// Add FORWARD accept rules for the overlay network, as flanneld does by default.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Host network (as flanneld)")]
    pub iptables_forward_rules: bool,

    /// Address of the health endpoint (/healthz, /readyz, /metrics).
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        env = "FLANNELD_HEALTHZ_IP",
        help_heading = "Health, status and logs"
    )]
    pub healthz_ip: IpAddr,

    /// Port of the health endpoint; 0 turns it off.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        env = "FLANNELD_HEALTHZ_PORT",
        help_heading = "Health, status and logs"
    )]
    pub healthz_port: u16,

    /// flanneld/klog verbosity: 0-3 info, 4-5 debug, 6+ trace (RUST_LOG overrides).
    #[arg(
        long = "v",
        value_name = "LEVEL",
        env = "FLANNELD_V",
        help_heading = "Health, status and logs"
    )]
    pub verbosity: Option<u8>,

    #[command(flatten)]
    pub unsupported: UnsupportedFlanneldFlags,

    /// IP accessible by other nodes for inter-host traffic (default: the interface's address).
    #[arg(
        long,
        value_name = "IP",
        env = "FLANNELD_PUBLIC_IP",
        help_heading = "Host network (as flanneld)"
    )]
    pub public_ip: Option<IpAddr>,

    /// IPv6 address accessible by other nodes for inter-host traffic of the IPv6 overlay
    /// (default: the external interface's global IPv6 address). Used only when the network
    /// config has `EnableIPv6`.
    #[arg(
        long,
        value_name = "IPV6",
        env = "FLANNELD_PUBLIC_IPV6",
        help_heading = "Host network (as flanneld)"
    )]
    pub public_ipv6: Option<std::net::Ipv6Addr>,

    /// Dataplane: AF_XDP (xdp), UDP sockets with GSO/GRO (udp), the kernel vxlan link
    /// (kernel), or the best available (auto: xdp where the NIC has zero-copy AF_XDP, else
    /// udp, else kernel).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "VXDP_BACKEND", help_heading = "Dataplane (vxdp)")]
    pub backend: BackendChoice,

    /// Busy polling: workers spin instead of sleeping (AF_XDP also asks the kernel to busy
    /// poll the NIC queue). The way to kernel-level round trips from userspace, at the price of
    /// a core per worker: `auto` turns it on only where every worker has a dedicated core.
    #[arg(long, value_enum, default_value_t = BusyPollChoice::Off, env = "VXDP_BUSY_POLL", help_heading = "Dataplane (vxdp)")]
    pub busy_poll: BusyPollChoice,

    /// UDP backend: outer source ports (sockets) per worker that flows are spread over.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64), env = "VXDP_UDP_SOURCE_PORTS", help_heading = "Dataplane (vxdp)")]
    pub udp_source_ports: u16,

    /// UDP backend: send a TCP super-frame's segments in one sendmsg (UDP_SEGMENT).
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), env = "VXDP_UDP_GSO", help_heading = "Dataplane (vxdp)")]
    pub udp_gso: bool,

    /// UDP backend: receive a flow's datagrams coalesced by the kernel (UDP_GRO).
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), env = "VXDP_UDP_GRO", help_heading = "Dataplane (vxdp)")]
    pub udp_gro: bool,

    /// Where to write the subnet.env file that CNI reads (as flanneld writes it).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/flannel/subnet.env",
        env = "FLANNELD_SUBNET_FILE",
        help_heading = "Host network (as flanneld)"
    )]
    pub subnet_file: PathBuf,

    /// On SIGTERM/SIGINT, remove the device, routes and rules and release the lease (what
    /// `vxdp cleanup` does). Off by default: as flanneld does, a stop leaves the node on the
    /// network so that a restart or upgrade costs peers nothing.
    #[arg(long, env = "VXDP_CLEANUP_ON_EXIT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Dataplane (vxdp)")]
    pub cleanup_on_exit: bool,

    /// Name of the overlay device (default vxdp.<VNI>).
    #[arg(
        long,
        value_name = "NAME",
        env = "VXDP_DEVICE",
        help_heading = "Dataplane (vxdp)"
    )]
    pub device: Option<String>,

    /// Unix socket answering `vxdp status`.
    #[arg(long, value_name = "PATH", default_value = crate::control_socket::DEFAULT_PATH, env = "VXDP_CONTROL_SOCKET", help_heading = "Health, status and logs")]
    pub control_socket: PathBuf,

    /// Worker threads (= TAP queues; with AF_XDP also the NIC queues used). Default: AF_XDP
    /// the NIC's RX queues, at most one per CPU; UDP sockets one per CPU (of --worker-cpus if
    /// given), at most 16.
    #[arg(
        long,
        value_name = "N",
        env = "VXDP_QUEUES",
        help_heading = "Dataplane (vxdp)"
    )]
    pub queues: Option<usize>,

    /// CPUs to pin workers to: `auto` (worker i on the i-th CPU this process may run on, so
    /// `taskset`/systemd CPUAffinity= apply), `none` (no pinning), or a list like `2,3` or `4-7`.
    #[arg(long, value_name = "auto|none|LIST", default_value = "auto", value_parser = parse_worker_cpus, env = "VXDP_WORKER_CPUS", help_heading = "Dataplane (vxdp)")]
    pub worker_cpus: WorkerCpus,

    /// UMEM frames (4 KiB each) per queue; default 4096, lowered to fit RLIMIT_MEMLOCK when
    /// vxdp lacks CAP_IPC_LOCK.
    #[arg(
        long,
        value_name = "N",
        env = "VXDP_UMEM_FRAMES",
        help_heading = "Dataplane (vxdp)"
    )]
    pub umem_frames: Option<u32>,

    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto, env = "VXDP_XDP_MODE", help_heading = "Dataplane (vxdp)")]
    pub xdp_mode: XdpModeChoice,

    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value_t = XskBindChoice::Auto, env = "VXDP_XSK_BIND", help_heading = "Dataplane (vxdp)")]
    pub xsk_bind: XskBindChoice,

    /// TAP offloads: TCP segmentation of the kernel's super-frames and coalescing of received
    /// segments in userspace (`on`), or one frame per read and write (`off`).
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), env = "VXDP_TAP_OFFLOADS", help_heading = "Dataplane (vxdp)")]
    pub tap_offloads: bool,

    /// Compute outer UDP checksums over IPv4 (RFC 7348 allows zero; IPv6 always has them).
    #[arg(long, env = "VXDP_UDP_CSUM", help_heading = "Dataplane (vxdp)")]
    pub udp_csum: bool,

    /// Accept VXLAN from sources that are not known peer VTEPs (anti-spoofing off).
    #[arg(
        long,
        env = "VXDP_ALLOW_UNKNOWN_PEERS",
        help_heading = "Dataplane (vxdp)"
    )]
    pub allow_unknown_peers: bool,

    /// Minutes before the lease expires at which it is renewed (1..1439).
    #[arg(long, value_name = "MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..1440), env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", help_heading = "Lease store")]
    pub subnet_lease_renew_margin: u32,

    /// Lease TTL in seconds (flannel: 24 h). For tests.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 86_400,
        hide = true,
        env = "VXDP_SUBNET_LEASE_TTL",
        help_heading = "Lease store"
    )]
    pub subnet_lease_ttl: u64,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "VXDP_LOG_FORMAT", help_heading = "Health, status and logs")]
    pub log_format: LogFormat,
}

/// flanneld flags vxdp does not implement. They are accepted by the parser only so that vxdp can
/// refuse them with a reason instead of a bare "unexpected argument"; [`command`] also reads each
/// from its `FLANNELD_*` variable, so that one set in the environment is refused too.
#[derive(Debug, Clone, Default, Args)]
pub struct UnsupportedFlanneldFlags {
    /// The `FLANNELD_*` variables that set any of these (filled by [`parse`], for the message).
    #[arg(skip)]
    from_env: Vec<String>,
    #[arg(long, hide = true)]
    charon_executable_path: Option<String>,
    #[arg(long, hide = true)]
    charon_viciuri: Option<String>,
}

impl UnsupportedFlanneldFlags {
    /// An error naming the first unsupported flag given, and what to do instead.
    pub fn check(&self) -> Result<(), String> {
        // Empty means unset, as in flanneld; [`command`] turns a boolean flag's false into "".
        let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        let msg = if given(&self.charon_executable_path) || given(&self.charon_viciuri) {
            "the IPsec backend's --charon-* flags do not apply: vxdp implements the vxlan backend"
        } else {
            return Ok(());
        };
        let mut err = format!("unsupported flanneld flag: {msg}");
        if !self.from_env.is_empty() {
            err.push_str(&format!(
                " (set in the environment by {}: remove it from the environment, e.g. the \
                 unit's EnvironmentFile)",
                self.from_env.join(", ")
            ));
        }
        Err(err)
    }
}

/// flanneld's environment variable for the long flag `long`: `FLANNELD_` and the name in upper
/// snake case, as flanneld's `flagutil.SetFlagsFromEnv(flannelFlags, "FLANNELD")` derives it.
pub fn flanneld_env_name(long: &str) -> String {
    format!("FLANNELD_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The id clap's derive gives the group of [`UnsupportedFlanneldFlags`]' arguments.
const REFUSED_GROUP: &str = "UnsupportedFlanneldFlags";

/// The ids of the refused flags' arguments in `cmd`.
fn refused_ids(cmd: &clap::Command) -> Vec<String> {
    cmd.get_groups()
        .filter(|g| g.get_id() == REFUSED_GROUP)
        .flat_map(|g| g.get_args())
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// Go's `strconv.ParseBool`, which flanneld's boolean flags use: true becomes "true", false
/// becomes "" (unset: a refused feature turned off asks for nothing vxdp lacks).
fn go_bool_flag(s: &str) -> Result<String, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok("true".into()),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(String::new()),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Every refused flag of `cmd` also read from its `FLANNELD_*` variable, as flanneld reads each
/// of its flags. Derived from the flag's name, so a flag added to [`UnsupportedFlanneldFlags`]
/// gets it without another line.
fn refused_flags_from_env(cmd: clap::Command) -> clap::Command {
    refused_ids(&cmd).into_iter().fold(cmd, |cmd, id| {
        cmd.mut_arg(&id, |arg| {
            let env = flanneld_env_name(arg.get_long().unwrap_or(&id));
            // flanneld's boolean flags are the ones that may go without a value (`--flag` alone
            // means true).
            let boolean = arg
                .get_num_args()
                .is_some_and(|n| n.min_values() == 0 && n.max_values() == 1);
            let arg = arg.env(env);
            if boolean {
                arg.value_parser(go_bool_flag)
            } else {
                arg
            }
        })
    })
}

/// The command line definition: [`Cli`], with the refused flanneld flags also read from the
/// environment. Build it right before parsing: clap reads the variables when it is built.
pub fn command() -> clap::Command {
    refused_flags_from_env(Cli::command()).mut_subcommand("run", refused_flags_from_env)
}

/// Parses a command line (flanneld's single-dash spelling included, see [`normalize_go_flags`])
/// and the `FLANNELD_*`/`VXDP_*` environment.
pub fn parse(argv: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let command = command();
    let known: Vec<String> = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    // Each refused flag's id with its variable, for the message.
    let refused: Vec<(String, String)> = refused_ids(&command)
        .into_iter()
        .filter_map(|id| {
            let long = command
                .get_arguments()
                .find(|a| a.get_id() == &id)?
                .get_long()?;
            Some((id.clone(), flanneld_env_name(long)))
        })
        .collect();
    let matches = command.try_get_matches_from(normalize_go_flags(argv, &known))?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let (run_matches, run) = match (matches.subcommand_matches("run"), &mut cli.command) {
        (Some(m), Some(Command::Run(run))) => (m, &mut **run),
        _ => (&matches, &mut cli.run),
    };
    run.unsupported.from_env = refused
        .into_iter()
        .filter(|(id, _)| {
            run_matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable)
                && run_matches
                    .try_get_one::<String>(id)
                    .ok()
                    .flatten()
                    .is_some_and(|v| !v.is_empty())
        })
        .map(|(_, env)| env)
        .collect();
    Ok(cli)
}

/// Rewrites Go-style single-dash long flags (`-etcd-endpoints=...`, as flanneld's flag package
/// accepts) into `--etcd-endpoints=...` for the flags vxdp knows, so flanneld command lines
/// work unchanged.
pub fn normalize_go_flags(
    args: Vec<std::ffi::OsString>,
    known_long: &[String],
) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(text) = arg.to_str() else { return arg };
            if i == 0 || text.starts_with("--") || !text.starts_with('-') || text.len() < 3 {
                return arg;
            }
            let name = text[1..].split('=').next().unwrap_or_default();
            if known_long.iter().any(|k| k == name) {
                format!("-{text}").into()
            } else {
                arg
            }
        })
        .collect()
}

/// Flags of `vxdp status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the raw JSON document.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::control_socket::DEFAULT_PATH, env = "VXDP_CONTROL_SOCKET")]
    pub control_socket: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_run() {
        let cli =
            Cli::try_parse_from(["vxdp", "--local-store", "/tmp/s", "--iface", "eth0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.iface, vec!["eth0"]);
        let cli = Cli::try_parse_from(["vxdp", "run", "--iface", "eth0,eth1"]).unwrap();
        match cli.command {
            Some(Command::Run(r)) => assert_eq!(r.iface, vec!["eth0", "eth1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_cpu_lists() {
        assert_eq!(parse_worker_cpus("auto"), Ok(WorkerCpus::Auto));
        assert_eq!(parse_worker_cpus("none"), Ok(WorkerCpus::None));
        assert_eq!(
            parse_worker_cpus("0,2-4"),
            Ok(WorkerCpus::List(vec![0, 2, 3, 4]))
        );
        assert!(parse_worker_cpus("3-1").is_err());
        assert!(parse_worker_cpus("x").is_err());
        assert!(parse_worker_cpus("").is_err());
    }

    #[test]
    fn flanneld_command_lines_parse() {
        let known: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let argv = normalize_go_flags(
            [
                "flanneld",
                "-etcd-endpoints=http://10.0.0.1:2379",
                "-iface",
                "eth1",
                "-ip-masq",
                "-v=5",
            ]
            .iter()
            .map(Into::into)
            .collect(),
            &known,
        );
        let cli = Cli::try_parse_from(argv).unwrap();
        assert_eq!(cli.run.etcd_endpoints, vec!["http://10.0.0.1:2379"]);
        assert_eq!(cli.run.iface, vec!["eth1"]);
        assert!(cli.run.ip_masq);
        assert_eq!(cli.run.verbosity, Some(5));
        assert!(cli.run.iptables_forward_rules, "flanneld's default");
        let cli =
            Cli::try_parse_from(["vxdp", "--iptables-forward-rules=false", "--ip-masq=false"])
                .unwrap();
        assert!(!cli.run.iptables_forward_rules && !cli.run.ip_masq);
        // A negative number is not a flag.
        let argv = normalize_go_flags(vec!["vxdp".into(), "-1".into()], &known);
        assert_eq!(argv[1], "-1");
    }

    fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
        parse(args.iter().map(Into::into).collect())
    }

    fn refusal(args: &[&str]) -> Option<String> {
        let cli = parse_args(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let run = match cli.command {
            Some(Command::Run(r)) => *r,
            _ => cli.run,
        };
        run.unsupported.check().err()
    }

    #[test]
    fn unsupported_flanneld_flags_are_refused_with_a_reason() {
        let err = refusal(&["vxdp", "--charon-viciuri", "unix:///x"]).unwrap();
        assert!(
            err.contains("--charon-*") && err.contains("vxlan backend"),
            "{err}"
        );
        assert!(!err.contains("  "), "one sentence, no gaps: {err}");
        assert!(
            !err.contains("environment"),
            "given on the command line: {err}"
        );
        let err = refusal(&["vxdp", "run", "-charon-executable-path=/x"]).unwrap();
        assert!(err.contains("--charon-*"), "{err}");
        // The IPv6 underlay address is a real flag now.
        assert_eq!(refusal(&["vxdp", "--public-ipv6", "2001:db8::1"]), None);
        let cli = parse_args(&["vxdp", "run", "-public-ipv6=2001:db8::1"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert!(parse_args(&["vxdp", "--public-ipv6", "192.0.2.1"]).is_err());
        let err = refusal(&["vxdp", "--charon-viciuri=unix:///x"]).unwrap();
        assert!(err.contains("--charon-*"), "{err}");
        assert_eq!(refusal(&["vxdp"]), None);
    }

    #[test]
    fn an_empty_refused_flag_is_unset_as_in_flanneld() {
        assert_eq!(refusal(&["vxdp", "--charon-viciuri="]), None);
    }

    #[test]
    fn every_refused_flag_is_also_read_from_its_flanneld_variable() {
        let cmd = command();
        let run = cmd.find_subcommand("run").unwrap();
        for c in [&cmd, run] {
            let ids = refused_ids(c);
            assert!(ids.len() >= 2, "the refused group is found: {ids:?}");
            for id in ids {
                let arg = c.get_arguments().find(|a| a.get_id() == &id).unwrap();
                let long = arg.get_long().unwrap();
                assert_eq!(
                    arg.get_env().and_then(|e| e.to_str()),
                    Some(flanneld_env_name(long).as_str()),
                    "--{long}"
                );
            }
        }
        assert!(refused_ids(&cmd)
            .iter()
            .all(|id| id != "iface_can_reach" && id != "kube_subnet_mgr"));
    }

    #[test]
    fn flanneld_variables_are_named_after_their_flags() {
        assert_eq!(
            flanneld_env_name("kube-subnet-mgr"),
            "FLANNELD_KUBE_SUBNET_MGR"
        );
        let run = command();
        let run = run.find_subcommand("run").unwrap();
        let mut seen = 0;
        for arg in run.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            if env.starts_with("FLANNELD_") {
                let long = arg.get_long().unwrap();
                assert_eq!(env, flanneld_env_name(long), "--{long}");
                seen += 1;
            }
        }
        assert!(seen >= 20, "only {seen} flanneld flags checked");
    }

    #[test]
    fn iface_can_reach_blackhole_and_fully_random_flags() {
        let cli = parse_args(&[
            "flanneld",
            "-iface-can-reach=192.0.2.9",
            "-ip-blackhole-route",
            "--ip-masq-fully-random-disable",
        ])
        .unwrap();
        assert_eq!(cli.run.iface_can_reach, Some("192.0.2.9".parse().unwrap()));
        assert!(cli.run.ip_blackhole_route && cli.run.ip_masq_fully_random_disable);
        let cli = parse_args(&["vxdp", "run"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("run subcommand")
        };
        assert_eq!(run.iface_can_reach, None);
        assert!(!run.ip_blackhole_route && !run.ip_masq_fully_random_disable);
        let cli = parse_args(&["vxdp", "--ip-blackhole-route=false"]).unwrap();
        assert!(!cli.run.ip_blackhole_route);
        let e = parse_args(&["vxdp", "--iface-can-reach", "eth0"]).unwrap_err();
        assert!(e.to_string().contains("eth0"), "{e}");
    }

    #[test]
    fn kube_subnet_manager_flags_parse_as_flanneld_takes_them() {
        let cli = Cli::try_parse_from(["vxdp"]).unwrap();
        assert!(!cli.run.kube_subnet_mgr);
        assert!(cli.run.set_node_network_unavailable, "flanneld's default");
        assert_eq!(cli.run.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert!(cli.run.unsupported.check().is_ok());

        // kube-flannel.yml's command line, Go style.
        let known: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let argv = normalize_go_flags(
            ["/opt/bin/flanneld", "--ip-masq", "-kube-subnet-mgr"]
                .iter()
                .map(Into::into)
                .collect(),
            &known,
        );
        let cli = Cli::try_parse_from(argv).unwrap();
        assert!(cli.run.kube_subnet_mgr && cli.run.ip_masq);
        assert!(cli.run.unsupported.check().is_ok());

        let cli = Cli::try_parse_from([
            "vxdp",
            "--kube-subnet-mgr=true",
            "--kubeconfig-file",
            "/etc/vxdp/kubeconfig",
            "--kube-api-url",
            "https://192.0.2.254:6443",
            "--kube-annotation-prefix",
            "example.com/vxdp",
            "--set-node-network-unavailable=false",
        ])
        .unwrap();
        assert!(cli.run.kube_subnet_mgr);
        assert_eq!(
            cli.run.kubeconfig_file,
            Some(PathBuf::from("/etc/vxdp/kubeconfig"))
        );
        assert_eq!(
            cli.run.kube_api_url.as_deref(),
            Some("https://192.0.2.254:6443")
        );
        assert_eq!(cli.run.kube_annotation_prefix, "example.com/vxdp");
        assert!(!cli.run.set_node_network_unavailable);

        // The two stores that are not etcd exclude each other.
        assert!(Cli::try_parse_from(["vxdp", "--kube-subnet-mgr", "--local-store", "/x"]).is_err());
    }

    #[test]
    fn local_store_and_etcd_endpoints_exclude_each_other() {
        assert!(Cli::try_parse_from([
            "vxdp",
            "--local-store",
            "/x",
            "--etcd-endpoints",
            "http://e:2379"
        ])
        .is_err());
    }

    #[test]
    fn the_example_environment_file_sets_only_variables_vxdp_reads() {
        let known: Vec<String> = Cli::command()
            .get_subcommands()
            .find(|c| c.get_name() == "run")
            .unwrap()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let file = include_str!("../dist/systemd/vxdp.env");
        let mut seen = 0;
        for line in file.lines().map(str::trim) {
            let line = line.trim_start_matches("# ");
            let Some((name, _)) = line.split_once('=') else {
                continue;
            };
            if name.is_empty() || name.contains(' ') || name == "RUST_LOG" {
                continue;
            }
            assert!(
                known.iter().any(|k| k == name),
                "{name} is not read by vxdp run"
            );
            seen += 1;
        }
        assert!(seen >= 12, "only {seen} variables checked");
    }

    #[test]
    fn renew_margin_is_bounded_like_flannel() {
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "0"]).is_err());
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "1440"]).is_err());
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "1439"]).is_ok());
    }
}
