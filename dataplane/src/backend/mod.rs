//! The backends that forward, side by side behind control's [`Backend`] trait, and the choice
//! between them:
//!
//! - [`userspace`]: the TAP and pinned workers, over AF_XDP (NICs with zero-copy) or UDP
//!   sockets with GSO/GRO (everywhere else);
//! - [`kernel`]: a kernel vxlan link programmed exactly as flanneld programs it.
//!
//! `--backend auto` takes AF_XDP where the NIC binds zero-copy, the UDP sockets where AF_XDP
//! could only copy, and the kernel link where neither can start; the summary line says which
//! runs and why.

pub mod kernel;
pub mod userspace;

use std::collections::BTreeMap;
use std::net::IpAddr;

use control::backend::{Backend, BackendError, Peer, Teardown};
use control::netlink::{Netlink, NetlinkError};

use self::kernel::{KernelBackend, KernelBackendConfig};
use self::userspace::{UnderlayKind, UserspaceBackend, UserspaceConfig, UserspaceStatusProbe};
use crate::handover::{Inherited, Manifest, FORMAT_VERSION};
use crate::xsk::{BindMode, XskSocket};
use std::os::fd::BorrowedFd;

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// AF_XDP with zero-copy, else UDP sockets, else the kernel link.
    Auto,
    /// AF_XDP only.
    Xdp,
    /// UDP sockets only.
    Udp,
    /// The kernel vxlan link.
    Kernel,
}

/// Why a backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendStartError {
    /// The TAP device.
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    /// Netlink.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The XDP program.
    #[error(transparent)]
    Xdp(#[from] crate::steering::XdpError),
    /// An AF_XDP socket.
    #[error(transparent)]
    Xsk(#[from] crate::xsk::XskError),
    /// The UDP sockets.
    #[error(transparent)]
    Udp(#[from] crate::underlay::udp::UdpError),
    /// The kernel backend.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelBackendError),
    /// A setting that cannot work, or a resource the system refused.
    #[error("{0}")]
    Config(String),
}

/// The running backend.
pub enum ActiveBackend {
    /// TAP + workers over AF_XDP or UDP.
    Userspace(Box<UserspaceBackend>),
    /// A kernel vxlan link.
    Kernel(Box<KernelBackend>),
}

impl ActiveBackend {
    /// Starts the backend `choice` asks for; the returned summary says which one runs, in
    /// which modes, and why. `userspace.underlay` holds the AF_XDP options and `udp` the UDP
    /// ones: the choice decides which of the two the userspace dataplane gets.
    pub async fn start(
        nl: &Netlink,
        choice: BackendChoice,
        userspace: UserspaceConfig,
        af_xdp: userspace::AfXdpOptions,
        udp: userspace::UdpOptions,
        kernel: KernelBackendConfig,
        inherited: Option<Inherited>,
    ) -> Result<(ActiveBackend, String), BackendStartError> {
        // Taken from by whichever userspace start runs; auto may try two.
        let inherited = std::sync::Mutex::new(inherited);
        let inherited = &inherited;
        let with = |underlay: UnderlayKind| UserspaceConfig {
            underlay,
            ..userspace.clone()
        };
        let start_userspace = |config: UserspaceConfig, why: String| async move {
            // The TAP is persistent: one this attempt created must not outlive its failure. A
            // device of another kind (the kernel backend's vxlan link) is replaced by the
            // attempt, so the TAP there afterwards is still this attempt's.
            let existed = nl
                .link_details_by_name(&config.device)
                .await?
                .is_some_and(|d| d.link.kind.as_deref() == Some("tun"));
            let device = config.device.clone();
            let b = match UserspaceBackend::start(nl.clone(), config, inherited).await {
                Ok(b) => b,
                Err(e) => {
                    if !existed {
                        if let Ok(Some(link)) = nl.link_by_name(&device).await {
                            if let Err(undo) = nl.delete_link(link.index).await {
                                tracing::warn!("removing {device} after the failed start: {undo}");
                            }
                        }
                    }
                    return Err(e);
                }
            };
            let summary = format!("{}; {why}", b.summary());
            Ok::<_, BackendStartError>((ActiveBackend::Userspace(Box::new(b)), summary))
        };
        let start_kernel = |why: String| async move {
            // Sockets taken over but not used would hold the VXLAN port the link needs.
            drop(inherited.lock().map(|mut i| i.take()));
            let b = KernelBackend::start(nl.clone(), kernel).await?;
            let summary = format!("{}; {why}", b.summary());
            Ok::<_, BackendStartError>((ActiveBackend::Kernel(Box::new(b)), summary))
        };
        match choice {
            BackendChoice::Kernel => start_kernel("--backend kernel".into()).await,
            BackendChoice::Xdp => {
                start_userspace(with(UnderlayKind::AfXdp(af_xdp)), "--backend xdp".into()).await
            }
            BackendChoice::Udp => {
                start_userspace(with(UnderlayKind::Udp(udp)), "--backend udp".into()).await
            }
            BackendChoice::Auto => {
                let ifname = &userspace.external.link.name;
                // The AF_XDP path only pays where the NIC gives zero-copy; in copy mode every
                // frame is copied and becomes an skb, and the UDP sockets with GSO/GRO are
                // faster (see DESIGN.md). `--xsk-bind copy` still asks for AF_XDP in copy mode.
                let (try_xdp, why_not) = if af_xdp.bind_mode == BindMode::Copy {
                    (true, String::new())
                } else {
                    match XskSocket::probe_zero_copy(ifname, 0) {
                        Ok(true) => (true, String::new()),
                        Ok(false) => (
                            false,
                            format!("the driver of {ifname} offers no zero-copy AF_XDP, where AF_XDP would only copy"),
                        ),
                        Err(e) => (false, format!("AF_XDP is not usable: {e}")),
                    }
                };
                let mut failures = Vec::new();
                if try_xdp {
                    let mut o = af_xdp.clone();
                    if o.bind_mode == BindMode::Auto {
                        o.bind_mode = BindMode::ZeroCopy;
                    }
                    let why = if o.bind_mode == BindMode::Copy {
                        "--backend auto with --xsk-bind copy"
                    } else {
                        "--backend auto: the NIC offers zero-copy AF_XDP"
                    };
                    match start_userspace(with(UnderlayKind::AfXdp(o)), why.into()).await {
                        Ok(b) => return Ok(b),
                        Err(e) => failures.push(format!("AF_XDP failed: {e}")),
                    }
                } else {
                    failures.push(why_not);
                }
                let why = format!("--backend auto: {}", failures.join("; "));
                match start_userspace(with(UnderlayKind::Udp(udp)), why.clone()).await {
                    Ok(b) => Ok(b),
                    Err(e) => {
                        failures.push(format!("the UDP sockets failed: {e}"));
                        start_kernel(format!("--backend auto: {}", failures.join("; "))).await
                    }
                }
            }
        }
    }

    /// Lets the dataplane forward, once the peers known at start are programmed (the kernel
    /// backend forwards on its own).
    pub fn begin_forwarding(&self) {
        if let ActiveBackend::Userspace(b) = self {
            b.begin_forwarding();
        }
    }

    /// Stops forwarding for a successor process; the manifest and descriptors to hand it.
    /// The kernel backend hands over nothing: the kernel forwards on its own.
    pub fn stop_for_handover(&mut self) -> (Manifest, Vec<BorrowedFd<'_>>) {
        match self {
            ActiveBackend::Userspace(b) => b.stop_for_handover(),
            ActiveBackend::Kernel(b) => (kernel_manifest(b.device()), Vec::new()),
        }
    }

    /// The manifest and descriptors to park in systemd's fd store.
    pub fn fd_store_set(&self) -> (Manifest, Vec<BorrowedFd<'_>>) {
        match self {
            ActiveBackend::Userspace(b) => b.fd_store_set(),
            ActiveBackend::Kernel(b) => (kernel_manifest(b.device()), Vec::new()),
        }
    }

    /// The userspace dataplane's status view, when it runs.
    pub fn userspace_probe(&self) -> Option<UserspaceStatusProbe> {
        match self {
            ActiveBackend::Userspace(b) => Some(b.status_probe()),
            ActiveBackend::Kernel(_) => None,
        }
    }
}

impl Backend for ActiveBackend {
    fn name(&self) -> &'static str {
        match self {
            ActiveBackend::Userspace(b) => b.name(),
            ActiveBackend::Kernel(b) => b.name(),
        }
    }

    async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Userspace(b) => b.add_peer(peer).await,
            ActiveBackend::Kernel(b) => b.add_peer(peer).await,
        }
    }

    async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Userspace(b) => b.remove_peer(previous).await,
            ActiveBackend::Kernel(b) => b.remove_peer(previous).await,
        }
    }

    async fn tick(&mut self) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Userspace(b) => b.tick().await,
            ActiveBackend::Kernel(b) => b.tick().await,
        }
    }

    async fn shutdown(self, teardown: Teardown) {
        match self {
            ActiveBackend::Userspace(b) => (*b).shutdown(teardown).await,
            ActiveBackend::Kernel(b) => (*b).shutdown(teardown).await,
        }
    }
}

fn kernel_manifest(device: &str) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        vxdp_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        backend: "kernel".into(),
        device: device.to_string(),
        tap_offloads: None,
        fds: Vec::new(),
    }
}

/// flannel's `ip.DirectRouting` test, for every backend: the kernel routes the peer's PublicIP
/// without a gateway, and (vxdp's addition) out of the external interface `ifindex`. A failed
/// lookup is logged and counts as not reachable: the peer gets the overlay route.
pub async fn directly_reachable(nl: &Netlink, public_ip: IpAddr, ifindex: u32) -> bool {
    match nl.route_to(public_ip).await {
        Ok(r) => r.gateway.is_none() && r.oif == ifindex,
        Err(e) => {
            tracing::warn!(peer = %public_ip, "DirectRouting check: {e}");
            false
        }
    }
}

/// Turns drop counters into at most one warning a minute when frames are being dropped at a
/// rate worth an operator's attention (a blast of garbage, a misconfigured peer), naming the
/// reasons. Per-frame logging would itself be the storm.
#[derive(Debug, Default)]
pub struct DropAlarm {
    last: BTreeMap<String, u64>,
    last_warning: Option<std::time::Instant>,
}

impl DropAlarm {
    /// Drops per second above which the alarm speaks.
    const RATE: u64 = 100;
    const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

    /// `totals` are the current cumulative drops by reason, sampled once a second.
    pub fn check(&mut self, totals: BTreeMap<String, u64>) -> Option<String> {
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
