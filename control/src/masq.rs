//! flanneld's `--ip-masq` and `--iptables-forward-rules`: the NAT rules that masquerade pod traffic
//! leaving the overlay, and the FORWARD accepts for the flannel network, installed at start, kept in
//! place by a periodic [`Masquerade::ensure`] (flanneld's `--iptables-resync`, default 5 s) and
//! removed by [`Masquerade::remove`] on exit.
//!
//! The rule set is flannel's (`pkg/trafficmngr/iptables/iptables.go`, `masqRules`,
//! `masqIP6Rules`, `forwardRules`), in flannel's order, for the IPv4 network and, when the network
//! has one, the IPv6 network (`N` the network, `S` this node's lease, `M` `224.0.0.0/4` or
//! `ff00::/8`):
//!
//! ```text
//! nat    POSTROUTING      -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
//! nat    FLANNEL-POSTRTG  -m mark --mark 0x4000/0x4000 ... -j RETURN   (kube-proxy's mark: no double NAT)
//! nat    FLANNEL-POSTRTG  -s S -d N ... -j RETURN                      (pod to overlay)
//! nat    FLANNEL-POSTRTG  -s N -d S ... -j RETURN                      (overlay to pod)
//! nat    FLANNEL-POSTRTG  ! -s N -d S ... -j RETURN                    (outside to own pods: keep the source)
//! nat    FLANNEL-POSTRTG  -s N ! -d M ... -j MASQUERADE [--random-fully]  (overlay leaving it)
//! nat    FLANNEL-POSTRTG  ! -s N -d N ... -j MASQUERADE [--random-fully]  (host into the overlay)
//! filter FORWARD          -m comment --comment "flanneld forward" -j FLANNEL-FWD
//! filter FLANNEL-FWD      -s N ... -j ACCEPT
//! filter FLANNEL-FWD      -d N ... -j ACCEPT
//! ```
//!
//! Two backends render it, chosen like flanneld chooses (`main.go`, `newTrafficManager`):
//! nftables when the network config's `EnableNFTables` is true, else iptables. vxdp falls back to
//! the other tool, with a warning, when the chosen one is not installed (flanneld exits when `nft`
//! is missing, and runs without rules when `iptables` is). Like flanneld ("Cleaning-up unused
//! traffic manager rules"), it first removes what the unused backend left behind, so that one set
//! of rules runs, never two: in nftables mode flannel's iptables chains and their jumps, in
//! iptables mode vxdp's nftables tables; in both, flanneld's own nftables tables (`ip
//! flannel-ipv4`, `ip6 flannel-ipv6`), which vxdp's rules replace. (flanneld's iptables chains
//! need no such step: vxdp's iptables backend writes the same chains.)
//!
//! - **iptables** (`iptables`/`ip6tables`, `iptables-restore`/`ip6tables-restore`): flannel's own
//!   chains and comments, so a node moved from flanneld to vxdp (or back) ends up with the same
//!   rules. Each chain is written in one `iptables-restore --noflush` transaction (declaring the
//!   chain flushes it), so its rules never appear half-written and their order is always flannel's;
//!   the jumps from `POSTROUTING`/`FORWARD` are appended after a `-C` check, as flanneld appends
//!   them.
//! - **nftables** (`nft`): tables `ip vxdp-flannel` and `ip6 vxdp-flannel` with chains `postrtg`
//!   (nat, postrouting, priority srcnat) and `forward` (filter, forward, priority filter), created
//!   and deleted atomically with `nft -f -`. vxdp renders flannel's *iptables* semantics here, not
//!   flannel's nftables backend (`pkg/trafficmngr/nftables/nftables.go`), which differs in two
//!   places: it matches the kube-proxy mark as `meta mark 0x4000` (the whole mark equal, where
//!   iptables tests the bit: vxdp uses `meta mark & 0x4000 == 0x4000`), and its third RETURN is
//!   `saddr != S daddr N`, which returns every packet the last MASQUERADE rule could match, so
//!   host-to-overlay traffic is never masqueraded there (vxdp uses iptables' `! -s N -d S`).
//!   nftables verdicts are per base chain: an `accept` in `vxdp-flannel forward` does not override
//!   a `drop` in another table (such as Docker's `FORWARD` policy through iptables-nft); the same
//!   holds for flannel's nftables backend.
//!
//! `--random-fully` (nftables `fully-random`) is used when the tool supports it, probed like
//! flannel probes it: iptables 1.6.2 or later (go-iptables' `HasRandomFully`), and for nftables a
//! `nft --check` of a `masquerade fully-random` rule (flannel's `checkRandomfully`).
//!
//! Everything here runs commands and blocks; call it from `spawn_blocking` in async code.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;

mod iptables;
mod nftables;

/// The comment flanneld puts on its NAT rules.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// The comment flanneld puts on its FORWARD rules.
pub const FORWARD_COMMENT: &str = "flanneld forward";
/// The mark bit kube-proxy sets on traffic it will masquerade itself (`KubeProxyMark`,
/// `0x4000/0x4000` in flannel's `pkg/trafficmngr/trafficmngr.go`).
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// flanneld's default `--iptables-resync`, in seconds: how often to call [`Masquerade::ensure`].
pub const DEFAULT_RESYNC_SECONDS: u64 = 5;

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqConfig {
    /// The flannel network (`Network`) and this node's lease, when the network has IPv4 (not
    /// in an IPv6-only network, where flanneld programs only the ip6tables rules).
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    /// The IPv6 network and this node's IPv6 lease, when the network has IPv6.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
    /// `--ip-masq`: install the NAT rules. flanneld's default is false.
    pub ip_masq: bool,
    /// Use `--random-fully` (nftables `fully-random`) when the tool supports it, as flanneld
    /// always does; false never uses it.
    pub random_fully: bool,
    /// `--iptables-forward-rules`: install the FORWARD accepts. flanneld's default is true.
    pub forward_rules: bool,
    /// The network config's `EnableNFTables`: use nftables rather than iptables.
    pub prefer_nftables: bool,
}

impl MasqConfig {
    /// The config for a node holding `subnet` (when the network has IPv4) and `ipv6_subnet`
    /// (when it has IPv6) in `net`, with `--random-fully` when supported and the backend
    /// `EnableNFTables` asks for.
    pub fn for_lease(
        net: &NetworkConfig,
        subnet: Option<Ipv4Net>,
        ipv6_subnet: Option<Ipv6Net>,
        ip_masq: bool,
        forward_rules: bool,
    ) -> MasqConfig {
        MasqConfig {
            ipv4: net
                .ipv4
                .as_ref()
                .zip(subnet)
                .map(|(v4, sn)| (v4.network, sn)),
            ipv6: net
                .ipv6
                .as_ref()
                .zip(ipv6_subnet)
                .map(|(v6, sn)| (v6.network, sn)),
            ip_masq,
            random_fully: true,
            forward_rules,
            prefer_nftables: net.enable_nftables,
        }
    }

    fn validate(&self) -> Result<(), MasqError> {
        if let Some((net, sn)) = self.ipv4 {
            if !net.contains(&sn) {
                return Err(MasqError::InvalidConfig(format!(
                    "the lease {sn} is not inside the network {net}"
                )));
            }
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(MasqError::InvalidConfig(
                "neither an IPv4 nor an IPv6 network and lease to write rules for".into(),
            ));
        }
        if let Some((net, sn)) = self.ipv6 {
            if !net.contains(&sn) {
                return Err(MasqError::InvalidConfig(format!(
                    "the IPv6 lease {sn} is not inside the IPv6 network {net}"
                )));
            }
        }
        Ok(())
    }

    /// The address families to program, each with its network and lease (host bits cleared).
    fn families(&self) -> Vec<FamilyNets> {
        let mut v = Vec::new();
        if let Some((net, sn)) = self.ipv4 {
            v.push(FamilyNets {
                family: Family::V4,
                network: IpNet::V4(net.trunc()),
                subnet: IpNet::V4(sn.trunc()),
            });
        }
        if let Some((net, sn)) = self.ipv6 {
            v.push(FamilyNets {
                family: Family::V6,
                network: IpNet::V6(net.trunc()),
                subnet: IpNet::V6(sn.trunc()),
            });
        }
        v
    }
}

/// Which tool programs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `iptables`/`ip6tables`, flannel's chains `FLANNEL-POSTRTG` and `FLANNEL-FWD`.
    Iptables,
    /// `nft`, tables `ip vxdp-flannel` and `ip6 vxdp-flannel`.
    Nftables,
}

impl BackendKind {
    /// "iptables" or "nftables".
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Iptables => "iptables",
            BackendKind::Nftables => "nftables",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Installing, checking or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The config cannot be rendered into rules.
    #[error("invalid masquerade config: {0}")]
    InvalidConfig(String),
    /// Neither nft nor a complete iptables is installed.
    #[error(
        "cannot program masquerade/forward rules: {0}. Install the `iptables` package (iptables, \
         ip6tables, iptables-restore, ip6tables-restore) or the `nftables` package (nft)"
    )]
    NoTool(String),
    /// A command could not be started.
    #[error("cannot run `{command}`: {cause}; {hint}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start (in the message, not chained: the chain would print it twice).
        cause: std::io::Error,
        /// What the operator can do.
        hint: String,
    },
    /// A command ran and failed, or did not leave what it should have.
    #[error("`{command}` failed ({status}): {stderr}; {hint}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status, or what was wrong with its result.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
        /// What the operator can do.
        hint: String,
    },
}

/// The installed rules. Keep it while running, call [`ensure`](Self::ensure) every
/// [`DEFAULT_RESYNC_SECONDS`] (or `--iptables-resync`), and [`remove`](Self::remove) it on exit;
/// dropping it leaves the rules in place.
#[derive(Debug)]
pub struct Masquerade {
    kind: BackendKind,
    why: &'static str,
    random_fully: bool,
    backend: Mutex<Backend>,
}

#[derive(Debug)]
enum Backend {
    Iptables(iptables::Iptables),
    Nftables(nftables::Nftables),
}

impl Masquerade {
    /// Chooses the backend, probes `--random-fully`, and installs the rules. On failure whatever
    /// was already installed is removed again.
    pub fn install(cfg: MasqConfig) -> Result<Masquerade, MasqError> {
        cfg.validate()?;
        let (chosen, why) = Tools::find(cfg.ipv6.is_some()).choose(cfg.prefer_nftables)?;
        clean_up_unused(chosen.kind());
        let (kind, backend, random_fully) = match chosen {
            Chosen::Iptables(tools) => {
                let b = iptables::Iptables::install(tools, &cfg)?;
                let rf = b.random_fully();
                (BackendKind::Iptables, Backend::Iptables(b), rf)
            }
            Chosen::Nftables(nft) => {
                let b = nftables::Nftables::install(nft, &cfg)?;
                let rf = b.random_fully();
                (BackendKind::Nftables, Backend::Nftables(b), rf)
            }
        };
        tracing::info!(
            backend = kind.name(),
            random_fully,
            ip_masq = cfg.ip_masq,
            forward_rules = cfg.forward_rules,
            network = %cfg.ipv4.map_or_else(|| "-".into(), |(n, _)| n.to_string()),
            subnet = %cfg.ipv4.map_or_else(|| "-".into(), |(_, s)| s.to_string()),
            ipv6_network = %cfg.ipv6.map_or_else(|| "-".into(), |(n, _)| n.to_string()),
            ipv6_subnet = %cfg.ipv6.map_or_else(|| "-".into(), |(_, s)| s.to_string()),
            "installed flanneld's masquerade/forward rules with {kind} ({why})"
        );
        Ok(Masquerade {
            kind,
            why,
            random_fully,
            backend: Mutex::new(backend),
        })
    }

    /// Puts back whatever is missing or was changed; `Ok(true)` when something had to be
    /// repaired. flanneld does this every `--iptables-resync` seconds.
    pub fn ensure(&self) -> Result<bool, MasqError> {
        let mut backend = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *backend {
            Backend::Iptables(b) => b.ensure(),
            Backend::Nftables(b) => b.ensure(),
        }
    }

    /// Removes exactly what [`install`](Self::install) added; other rules are left alone. Tries
    /// every part even when one fails, and returns the first error.
    pub fn remove(self) -> Result<(), MasqError> {
        let backend = self.backend.into_inner().unwrap_or_else(|e| e.into_inner());
        let r = match backend {
            Backend::Iptables(b) => b.remove(),
            Backend::Nftables(b) => b.remove(),
        };
        if r.is_ok() {
            tracing::info!(
                backend = self.kind.name(),
                "removed flanneld's masquerade/forward rules"
            );
        }
        r
    }

    /// "iptables" or "nftables".
    pub fn backend_name(&self) -> &'static str {
        self.kind.name()
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Why that backend: what `EnableNFTables` asked for, and whether the tool was there.
    pub fn backend_reason(&self) -> &'static str {
        self.why
    }

    /// Whether the MASQUERADE rules use `--random-fully` (`fully-random`).
    pub fn random_fully(&self) -> bool {
        self.random_fully
    }
}

// ---------------------------------------------------------------------------------------------
// The rule set, independent of the tool.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The multicast range flannel never masquerades to.
    fn multicast(self) -> IpNet {
        match self {
            Family::V4 => "224.0.0.0/4".parse().expect("valid literal"),
            Family::V6 => "ff00::/8".parse().expect("valid literal"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FamilyNets {
    family: Family,
    network: IpNet,
    subnet: IpNet,
}

/// An address match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    Any,
    In(IpNet),
    NotIn(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Return,
    Masquerade,
    Accept,
}

/// One rule of flannel's chains, in a form both backends render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    /// Match kube-proxy's mark bit.
    kube_proxy_mark: bool,
    src: Addr,
    dst: Addr,
    verdict: Verdict,
    comment: &'static str,
}

impl Rule {
    fn new(src: Addr, dst: Addr, verdict: Verdict, comment: &'static str) -> Rule {
        Rule {
            kube_proxy_mark: false,
            src,
            dst,
            verdict,
            comment,
        }
    }
}

/// flannel's `masqRules`/`masqIP6Rules` for the `FLANNEL-POSTRTG` chain, in its order.
fn masq_rules(n: &FamilyNets) -> Vec<Rule> {
    use Addr::{In, NotIn};
    let (net, sn) = (n.network, n.subnet);
    let c = MASQ_COMMENT;
    vec![
        // Traffic kube-proxy marked is masqueraded by kube-proxy: no double NAT.
        Rule {
            kube_proxy_mark: true,
            ..Rule::new(Addr::Any, Addr::Any, Verdict::Return, c)
        },
        // Within the overlay: never NAT.
        Rule::new(In(sn), In(net), Verdict::Return, c),
        Rule::new(In(net), In(sn), Verdict::Return, c),
        // From outside to this node's pods: keep the client's address.
        Rule::new(NotIn(net), In(sn), Verdict::Return, c),
        // Overlay traffic leaving the overlay, except multicast.
        Rule::new(In(net), NotIn(n.family.multicast()), Verdict::Masquerade, c),
        // The host (or anything outside) into the overlay, to other nodes' pods.
        Rule::new(NotIn(net), In(net), Verdict::Masquerade, c),
    ]
}

/// flannel's `forwardRules` for the `FLANNEL-FWD` chain.
fn forward_rules(n: &FamilyNets) -> Vec<Rule> {
    let net = n.network;
    vec![
        Rule::new(Addr::In(net), Addr::Any, Verdict::Accept, FORWARD_COMMENT),
        Rule::new(Addr::Any, Addr::In(net), Verdict::Accept, FORWARD_COMMENT),
    ]
}

// ---------------------------------------------------------------------------------------------
// Finding the tools.

/// Where to look besides `$PATH`: daemons often run with a `PATH` without the sbin directories.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The iptables commands for one address family.
#[derive(Debug, Clone)]
struct IptablesTools {
    v4: (PathBuf, PathBuf),
    v6: Option<(PathBuf, PathBuf)>,
}

/// The backend [`Tools::choose`] picked, with its commands.
#[derive(Debug)]
enum Chosen {
    Iptables(IptablesTools),
    Nftables(PathBuf),
}

impl Chosen {
    fn kind(&self) -> BackendKind {
        match self {
            Chosen::Iptables(_) => BackendKind::Iptables,
            Chosen::Nftables(_) => BackendKind::Nftables,
        }
    }
}

#[derive(Debug)]
struct Tools {
    nft: Option<PathBuf>,
    iptables: Option<IptablesTools>,
    /// Why `iptables` is `None`.
    iptables_missing: Vec<&'static str>,
}

impl Tools {
    fn find(need_v6: bool) -> Tools {
        let mut missing = Vec::new();
        let mut get = |name: &'static str| {
            let p = find_tool(name);
            if p.is_none() {
                missing.push(name);
            }
            p
        };
        let v4 = get("iptables").zip(get("iptables-restore"));
        let v6 = if need_v6 {
            get("ip6tables").zip(get("ip6tables-restore"))
        } else {
            None
        };
        let iptables = match (v4, need_v6, v6) {
            (Some(v4), false, _) => Some(IptablesTools { v4, v6: None }),
            (Some(v4), true, Some(v6)) => Some(IptablesTools { v4, v6: Some(v6) }),
            _ => None,
        };
        Tools {
            nft: find_tool("nft"),
            iptables,
            iptables_missing: missing,
        }
    }

    /// flanneld's choice (nftables exactly when `EnableNFTables`), falling back to the other
    /// tool with a warning when the chosen one is not installed; with the reason, for the log.
    fn choose(self, prefer_nftables: bool) -> Result<(Chosen, &'static str), MasqError> {
        let missing = self.iptables_missing.join(", ");
        match (prefer_nftables, self.nft, self.iptables) {
            (true, Some(nft), _) => Ok((
                Chosen::Nftables(nft),
                "the network config sets EnableNFTables",
            )),
            (false, _, Some(ipt)) => Ok((
                Chosen::Iptables(ipt),
                "the network config does not set EnableNFTables",
            )),
            (true, None, Some(ipt)) => {
                tracing::warn!(
                    "the network config sets EnableNFTables, but `nft` is not installed: using \
                     iptables instead (install the nftables package to follow EnableNFTables)"
                );
                Ok((
                    Chosen::Iptables(ipt),
                    "EnableNFTables is set, but nft is not installed",
                ))
            }
            (false, Some(nft), None) => {
                tracing::warn!(
                    "{missing} not installed: using nftables (`nft`) instead (install the \
                     iptables package, or set EnableNFTables in the network config to say so)"
                );
                Ok((
                    Chosen::Nftables(nft),
                    "EnableNFTables is not set, but iptables is not installed",
                ))
            }
            (_, None, None) => Err(MasqError::NoTool(format!(
                "`nft` is not installed and neither is {missing} (looked in $PATH and {})",
                EXTRA_DIRS.join(", ")
            ))),
        }
    }
}

/// Removes what the backend not in use left behind (see the module doc). A failure here only
/// warns: the rules vxdp installs next are what matters, and flanneld goes on the same way.
fn clean_up_unused(using: BackendKind) {
    let mut removed: Vec<String> = Vec::new();
    let warn = |what: &str, e: MasqError| {
        tracing::warn!("removing leftover {what} failed (they may still rewrite traffic): {e}")
    };
    if using == BackendKind::Nftables {
        for (iptables, restore) in [
            ("iptables", "iptables-restore"),
            ("ip6tables", "ip6tables-restore"),
        ] {
            let (Some(ipt), Some(rst)) = (find_tool(iptables), find_tool(restore)) else {
                continue;
            };
            match iptables::remove_leftover_chains(ipt, rst) {
                Ok(chains) => removed.extend(chains.iter().map(|c| format!("{iptables} {c}"))),
                Err(e) => warn(&format!("{iptables} chains"), e),
            }
        }
    }
    if let Some(nft) = find_tool("nft") {
        let mut tables = nftables::FLANNELD_TABLES.to_vec();
        if using == BackendKind::Iptables {
            tables.extend(nftables::VXDP_TABLES);
        }
        match nftables::delete_leftover_tables(&nft, &tables) {
            Ok(t) => removed.extend(t.into_iter().map(|t| format!("nftables table {t}"))),
            Err(e) => warn("nftables tables", e),
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            "using {using}: removed the rules of the unused backend or of flanneld: {}",
            removed.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands.

/// The result of a command that ran.
#[derive(Debug)]
struct Ran {
    command: String,
    success: bool,
    /// The exit code; `None` when a signal ended it.
    code: Option<i32>,
    status: String,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The failure as an error, with a hint chosen from what the tool said.
    fn error(self) -> MasqError {
        let hint = hint_for(&self.stderr);
        MasqError::Failed {
            command: self.command,
            status: self.status,
            stderr: self.stderr,
            hint,
        }
    }

    /// `Ok(stdout)` when it succeeded, else the error.
    fn ok(self) -> Result<String, MasqError> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(self.error())
        }
    }
}

/// Renders a command line for messages, quoting arguments that need it.
fn command_line(tool: &Path, args: &[String]) -> String {
    let mut s = tool.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

/// Double-quotes an argument with whitespace or quotes (as iptables-save writes comments).
fn quote(a: &str) -> String {
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        a.to_owned()
    }
}

/// Runs `tool args`, feeding `input` on standard input; never fails on the exit status (see
/// [`Ran::ok`]).
fn run(tool: &Path, args: &[String], input: Option<&str>) -> Result<Ran, MasqError> {
    use std::io::Write as _;
    let command = command_line(tool, args);
    let spawn_err = |cause: std::io::Error| MasqError::Spawn {
        command: command.clone(),
        hint: format!(
            "check that {} is installed and executable by vxdp",
            tool.display()
        ),
        cause,
    };
    let mut child = Command::new(tool)
        .args(args)
        // Messages in English, so hint_for() can read them.
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status says why, so a write error
        // here is not the error to report.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(Ran {
        command,
        success: out.status.success(),
        code: out.status.code(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// What the operator can do about a failure, from the tool's message.
fn hint_for(stderr: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    let hint = if s.contains("permission denied")
        || s.contains("operation not permitted")
        || s.contains("must be root")
    {
        "vxdp needs CAP_NET_ADMIN to change firewall rules: run it as root or grant the capability"
    } else if s.contains("xtables lock") {
        "another program held the xtables lock for too long; find it (often a loop of iptables \
         calls) and retry"
    } else if s.contains("table does not exist")
        || s.contains("can't initialize")
        || s.contains("protocol not supported")
        || s.contains("operation not supported")
    {
        "the kernel lacks netfilter NAT support: load the modules (`modprobe nf_nat iptable_nat \
         ip6table_nat nft_chain_nat nft_masq`) or use a kernel with them"
    } else if s.contains("incompatible") || s.contains("managed by iptables-legacy") {
        "iptables-legacy and iptables-nft rules are mixed on this host; use the same iptables \
         variant as the rest of the node (update-alternatives --config iptables)"
    } else {
        "check the firewall tool's message above; the rules are flanneld's, see \
         `iptables-save`/`nft list ruleset` for what else is installed"
    };
    hint.to_owned()
}

/// The config the unit tests of this module and its backends share.
#[cfg(test)]
pub(crate) fn example_config(prefer_nftables: bool) -> MasqConfig {
    MasqConfig {
        ipv4: Some((
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
        )),
        ipv6: Some((
            "fc00::/48".parse().unwrap(),
            "fc00:0:0:1::/64".parse().unwrap(),
        )),
        ip_masq: true,
        random_fully: true,
        forward_rules: true,
        prefer_nftables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MasqConfig {
        example_config(false)
    }

    #[test]
    fn families_follow_the_config() {
        let f = cfg().families();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].family, Family::V4);
        assert_eq!(f[1].network.to_string(), "fc00::/48");
        let mut c = cfg();
        c.ipv6 = None;
        assert_eq!(c.families().len(), 1);
        // IPv6-only: only the IPv6 family (flanneld programs only ip6tables then).
        let mut c = cfg();
        c.ipv4 = None;
        let f = c.families();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].family, Family::V6);
        assert!(c.validate().is_ok());
        c.ipv6 = None;
        assert!(c.validate().is_err());
    }

    #[test]
    fn host_bits_are_cleared() {
        let mut c = cfg();
        c.ipv4 = Some((
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.1/24".parse().unwrap(),
        ));
        assert_eq!(c.families()[0].subnet.to_string(), "10.5.1.0/24");
    }

    #[test]
    fn lease_outside_the_network_is_rejected() {
        let mut c = cfg();
        c.ipv4 = Some((
            "10.5.0.0/16".parse().unwrap(),
            "10.6.1.0/24".parse().unwrap(),
        ));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("10.6.1.0/24") && e.contains("10.5.0.0/16"),
            "{e}"
        );
        let mut c = cfg();
        c.ipv6 = Some(("fc00::/48".parse().unwrap(), "fd00::/64".parse().unwrap()));
        assert!(c.validate().is_err());
    }

    #[test]
    fn flannels_rule_order() {
        let n = cfg().families()[0];
        let r = masq_rules(&n);
        assert_eq!(r.len(), 6);
        assert!(r[0].kube_proxy_mark);
        assert_eq!(r[3].src, Addr::NotIn(n.network));
        assert_eq!(r[3].dst, Addr::In(n.subnet));
        assert_eq!(r[4].dst, Addr::NotIn("224.0.0.0/4".parse().unwrap()));
        assert!(r[..4].iter().all(|r| r.verdict == Verdict::Return));
        assert!(r[4..].iter().all(|r| r.verdict == Verdict::Masquerade));
        let v6 = cfg().families()[1];
        assert_eq!(
            masq_rules(&v6)[4].dst,
            Addr::NotIn("ff00::/8".parse().unwrap())
        );
    }

    fn tools(nft: bool, ipt: bool) -> Tools {
        Tools {
            nft: nft.then(|| PathBuf::from("/usr/sbin/nft")),
            iptables: ipt.then(|| IptablesTools {
                v4: (
                    "/usr/sbin/iptables".into(),
                    "/usr/sbin/iptables-restore".into(),
                ),
                v6: None,
            }),
            iptables_missing: if ipt { vec![] } else { vec!["iptables"] },
        }
    }

    #[test]
    fn backend_choice_follows_enable_nftables_and_falls_back() {
        use BackendKind::*;
        let choose = |t: Tools, prefer| {
            let (chosen, why) = t.choose(prefer).unwrap();
            (chosen.kind(), why)
        };
        assert_eq!(
            choose(tools(true, true), true),
            (Nftables, "the network config sets EnableNFTables")
        );
        assert_eq!(
            choose(tools(true, true), false),
            (Iptables, "the network config does not set EnableNFTables")
        );
        assert_eq!(
            choose(tools(false, true), true),
            (Iptables, "EnableNFTables is set, but nft is not installed")
        );
        assert_eq!(
            choose(tools(true, false), false),
            (
                Nftables,
                "EnableNFTables is not set, but iptables is not installed"
            )
        );
        let e = tools(false, false).choose(true).unwrap_err().to_string();
        assert!(
            e.contains("nft") && e.contains("`iptables` package") && e.contains("`nftables`"),
            "{e}"
        );
    }

    #[test]
    fn command_lines_quote_comments() {
        let args: Vec<String> = ["-t", "nat", "--comment", "flanneld masq"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            command_line(Path::new("iptables"), &args),
            "iptables -t nat --comment \"flanneld masq\""
        );
    }

    #[test]
    fn failures_carry_the_command_stderr_and_a_hint() {
        let e = run(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo 'Permission denied (you must be root)' >&2; exit 4".into(),
            ],
            None,
        )
        .unwrap()
        .ok()
        .unwrap_err()
        .to_string();
        assert!(e.contains("/bin/sh -c"), "{e}");
        assert!(e.contains("exit status: 4"), "{e}");
        assert!(e.contains("you must be root"), "{e}");
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
    }

    #[test]
    fn hints_for_what_the_tools_print() {
        // iptables-nft and nft as a user without CAP_NET_ADMIN.
        for msg in [
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
            "Operation not permitted\nnetlink: Error: cache initialization failed: Operation not permitted",
        ] {
            assert!(hint_for(msg).contains("CAP_NET_ADMIN"), "{msg}");
        }
        assert!(hint_for(
            "iptables: Another app is currently holding the xtables lock. Stopped waiting after 10s."
        )
        .contains("xtables lock"));
        assert!(hint_for(
            "iptables v1.8.9 (legacy): can't initialize iptables table `nat': Table does not exist"
        )
        .contains("modprobe"));
    }

    #[test]
    fn input_reaches_the_tool() {
        let out = run(Path::new("/bin/cat"), &[], Some("table ip x\n"))
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(out, "table ip x\n");
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let e = run(Path::new("/nonexistent/iptables"), &[], None).unwrap_err();
        assert!(matches!(e, MasqError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/iptables"));
    }
}
