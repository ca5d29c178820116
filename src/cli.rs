//! Command line. `vxdp run` (also the default when no subcommand is given, so a flanneld
//! command line keeps working) takes flanneld's flags, each also from `FLANNELD_<UPPER_SNAKE>`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Run(RunArgs),
    /// Show the running daemon's backend, lease, peers and counters.
    Status(StatusArgs),
}

/// Which dataplane to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// AF_XDP if this host allows it, else the kernel vxlan link.
    Auto,
    /// AF_XDP only: fail if XDP cannot be used.
    Xdp,
    /// The kernel vxlan link, programmed as flanneld does.
    Kernel,
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

fn parse_worker_cpus(s: &str) -> Result<WorkerCpus, String> {
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
    #[arg(long, value_name = "DIR", env = "VXDP_LOCAL_STORE")]
    pub local_store: Option<PathBuf>,

    /// Interface (name or IP address) for inter-host traffic; repeat to give fallbacks. Default:
    /// the interface of the default route.
    #[arg(
        long,
        value_name = "IFACE",
        env = "FLANNELD_IFACE",
        value_delimiter = ','
    )]
    pub iface: Vec<String>,

    /// IP accessible by other nodes for inter-host traffic (default: the interface's address).
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,

    /// Dataplane: AF_XDP (xdp), the kernel vxlan link (kernel), or the best available (auto).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "VXDP_BACKEND")]
    pub backend: BackendChoice,

    /// Where to write the subnet.env file that CNI reads (as flanneld writes it).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/flannel/subnet.env",
        env = "FLANNELD_SUBNET_FILE"
    )]
    pub subnet_file: PathBuf,

    /// Name of the overlay device (default vxdp.<VNI>).
    #[arg(long, value_name = "NAME", env = "VXDP_DEVICE")]
    pub device: Option<String>,

    /// Unix socket answering `vxdp status`.
    #[arg(long, value_name = "PATH", default_value = crate::control_socket::DEFAULT_PATH, env = "VXDP_CONTROL_SOCKET")]
    pub control_socket: PathBuf,

    /// Worker threads (= NIC queues used = TAP queues). Default: the NIC's RX queues, at most
    /// one per CPU.
    #[arg(long, value_name = "N", env = "VXDP_QUEUES")]
    pub queues: Option<usize>,

    /// CPUs to pin workers to: `auto` (worker i on the i-th CPU this process may run on, so
    /// `taskset`/systemd CPUAffinity= apply), `none` (no pinning), or a list like `2,3` or `4-7`.
    #[arg(long, value_name = "auto|none|LIST", default_value = "auto", value_parser = parse_worker_cpus, env = "VXDP_WORKER_CPUS")]
    pub worker_cpus: WorkerCpus,

    /// UMEM frames (4 KiB each) per queue; default 4096, lowered to fit RLIMIT_MEMLOCK when
    /// vxdp lacks CAP_IPC_LOCK.
    #[arg(long, value_name = "N", env = "VXDP_UMEM_FRAMES")]
    pub umem_frames: Option<u32>,

    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto, env = "VXDP_XDP_MODE")]
    pub xdp_mode: XdpModeChoice,

    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value_t = XskBindChoice::Auto, env = "VXDP_XSK_BIND")]
    pub xsk_bind: XskBindChoice,

    /// Compute outer UDP checksums over IPv4 (RFC 7348 allows zero; IPv6 always has them).
    #[arg(long, env = "VXDP_UDP_CSUM")]
    pub udp_csum: bool,

    /// Accept VXLAN from sources that are not known peer VTEPs (anti-spoofing off).
    #[arg(long, env = "VXDP_ALLOW_UNKNOWN_PEERS")]
    pub allow_unknown_peers: bool,

    /// Minutes before the lease expires at which it is renewed (1..1439).
    #[arg(long, value_name = "MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..1440), env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN")]
    pub subnet_lease_renew_margin: u32,

    /// Lease TTL in seconds (flannel: 24 h). For tests.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 86_400,
        hide = true,
        env = "VXDP_SUBNET_LEASE_TTL"
    )]
    pub subnet_lease_ttl: u64,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "VXDP_LOG_FORMAT")]
    pub log_format: LogFormat,
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
    fn renew_margin_is_bounded_like_flannel() {
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "0"]).is_err());
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "1440"]).is_err());
        assert!(Cli::try_parse_from(["vxdp", "--subnet-lease-renew-margin", "1439"]).is_ok());
    }
}
