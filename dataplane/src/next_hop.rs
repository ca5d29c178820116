//! The underlay next hop towards each peer VTEP.
//!
//! AF_XDP transmits bypass the kernel's routing and ARP, so vxdp asks the kernel what it would
//! do (`ip route get PEER`, then the neighbour table for the gateway or the peer itself) and
//! writes the answer into the prebuilt outer headers. [`PathTracker`] keeps those answers
//! current at a cost that stays flat as peers grow:
//! - one link query and one neighbour dump per refresh, whatever the number of peers;
//! - each peer's route re-checked only every [`ROUTE_RECHECK`] (routes rarely move), a new
//!   peer's at once;
//! - a neighbour entry the kernel garbage-collects or is re-validating does not take the peer
//!   down: the MAC in use stays until the kernel learns a different one, and the kernel is asked
//!   to resolve again (`ip neigh replace ... use`) with a per-peer backoff from [`PROBE_FIRST`]
//!   doubling to [`PROBE_MAX`], so dead peers on a flat L2 cost a trickle of ARP, not a storm;
//! - a problem (no route, wrong interface) is logged when it appears or changes, not every time
//!   it is seen.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use packet::wire::MacAddr;

use control::netlink::{Netlink, NetlinkError};

/// How often each peer's route is asked for again.
pub const ROUTE_RECHECK: Duration = Duration::from_secs(10);
/// The first wait before asking the kernel again to resolve a next hop it has no entry for.
pub const PROBE_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between such requests.
pub const PROBE_MAX: Duration = Duration::from_secs(60);

/// How to reach one peer VTEP on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Our MAC on that interface (outer source).
    pub src_mac: MacAddr,
    /// The address whose MAC is the destination: the gateway, or the peer when on-link.
    pub via: IpAddr,
    /// The next hop's MAC (outer destination).
    pub dst_mac: MacAddr,
}

/// Why a peer cannot be reached through vxdp's NIC.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// A netlink query failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The kernel routes the peer out of another interface than the one vxdp transmits on.
    #[error("peer VTEP {peer} is routed via interface #{oif}, but vxdp transmits on {iface} (#{ifindex}): fix the routing or run vxdp with --iface on that interface")]
    WrongInterface {
        /// Peer PublicIP.
        peer: IpAddr,
        /// Interface the kernel chose.
        oif: u32,
        /// vxdp's interface name.
        iface: String,
        /// vxdp's interface index.
        ifindex: u32,
    },
    /// The egress interface has no Ethernet address.
    #[error("interface #{0} has no Ethernet address: vxdp needs an Ethernet underlay")]
    NoMac(u32),
}

/// The state of one peer's path, for `vxdp status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStatus {
    /// A next hop MAC is in use.
    Resolved {
        /// The address it belongs to.
        via: IpAddr,
        /// The MAC.
        mac: MacAddr,
    },
    /// The kernel is being asked to resolve `via`.
    Resolving {
        /// The address whose MAC is missing.
        via: IpAddr,
    },
    /// No usable route (the reason).
    Unreachable(String),
}

#[derive(Debug, Default)]
struct PathState {
    via: Option<IpAddr>,
    mac: Option<MacAddr>,
    route_checked: Option<Instant>,
    probed: Option<Instant>,
    /// The wait before the next probe; doubles while the next hop stays unknown.
    probe_backoff: Duration,
    problem: Option<String>,
    in_use: Option<NextHop>,
}

/// Keeps the next hops to every peer VTEP current (see the module docs).
#[derive(Debug)]
pub struct PathTracker {
    nl: Netlink,
    ifindex: u32,
    iface: String,
    src_mac: Option<MacAddr>,
    paths: BTreeMap<IpAddr, PathState>,
}

impl PathTracker {
    /// Tracks paths leaving through interface `ifindex` (`iface`).
    pub fn new(nl: Netlink, ifindex: u32, iface: &str) -> PathTracker {
        PathTracker {
            nl,
            ifindex,
            iface: iface.to_string(),
            src_mac: None,
            paths: BTreeMap::new(),
        }
    }

    /// Stops tracking `peer`.
    pub fn forget(&mut self, peer: IpAddr) {
        self.paths.remove(&peer);
    }

    /// The next hop in use towards `peer`, if any.
    pub fn next_hop(&self, peer: IpAddr) -> Option<NextHop> {
        self.paths.get(&peer).and_then(|p| p.in_use)
    }

    /// The state of the path to `peer`.
    pub fn status(&self, peer: IpAddr) -> PathStatus {
        match self.paths.get(&peer) {
            Some(PathState {
                in_use: Some(hop), ..
            }) => PathStatus::Resolved {
                via: hop.via,
                mac: hop.dst_mac,
            },
            Some(PathState {
                problem: Some(p), ..
            }) => PathStatus::Unreachable(p.clone()),
            Some(PathState { via: Some(via), .. }) => PathStatus::Resolving { via: *via },
            _ => PathStatus::Unreachable("not resolved yet".into()),
        }
    }

    /// Re-checks the paths to `peers` (routes only when due), and returns the peers whose next
    /// hop changed, with the new one (`None`: no usable path any more).
    pub async fn refresh(
        &mut self,
        peers: impl IntoIterator<Item = IpAddr>,
        now: Instant,
    ) -> Vec<(IpAddr, Option<NextHop>)> {
        let peers: Vec<IpAddr> = peers.into_iter().collect();
        match self.nl.link_by_index(self.ifindex).await {
            Ok(Some(link)) => self.src_mac = link.mac,
            Ok(None) => self.src_mac = None,
            Err(e) => tracing::debug!("reading {}: {e}", self.iface),
        }
        // One dump per family in use (IPv6 peers: the neighbour discovery cache).
        let mut neighbours = std::collections::HashMap::new();
        for v6 in [false, true] {
            if !peers.iter().any(|p| p.is_ipv6() == v6) {
                continue;
            }
            match self.nl.neighbours(self.ifindex, v6).await {
                Ok(n) => neighbours.extend(n),
                // Keep using what is known: a failed dump is not a changed network.
                Err(e) => tracing::debug!("listing neighbours on {}: {e}", self.iface),
            }
        }
        let mut changed = Vec::new();
        for peer in peers {
            let state = self.paths.entry(peer).or_default();
            if state
                .route_checked
                .is_none_or(|t| now.duration_since(t) >= ROUTE_RECHECK)
            {
                state.route_checked = Some(now);
                let problem = match self.nl.route_to(peer).await {
                    Ok(r) if r.oif == self.ifindex => {
                        state.via = Some(r.gateway.unwrap_or(peer));
                        None
                    }
                    Ok(r) => Some(
                        UnderlayError::WrongInterface {
                            peer,
                            oif: r.oif,
                            iface: self.iface.clone(),
                            ifindex: self.ifindex,
                        }
                        .to_string(),
                    ),
                    Err(e) => Some(e.to_string()),
                };
                if problem.is_some() {
                    state.via = None;
                    state.mac = None;
                }
                if problem != state.problem {
                    match &problem {
                        Some(p) => tracing::warn!(peer = %peer, "underlay path: {p}"),
                        None if state.problem.is_some() => {
                            tracing::info!(peer = %peer, "underlay path back")
                        }
                        None => {}
                    }
                    state.problem = problem;
                }
            }
            if let Some(via) = state.via {
                match neighbours.get(&via) {
                    Some(n) if n.usable && n.mac.is_some() => {
                        state.mac = n.mac;
                        state.probe_backoff = Duration::ZERO;
                    }
                    _ => {
                        // Expired, being re-validated, or never learnt: ask the kernel, less and
                        // less often while it gets no answer, and keep the MAC in use meanwhile.
                        if state
                            .probed
                            .is_none_or(|t| now.duration_since(t) >= state.probe_backoff)
                        {
                            state.probed = Some(now);
                            state.probe_backoff =
                                (state.probe_backoff * 2).clamp(PROBE_FIRST, PROBE_MAX);
                            if let Err(e) = self.nl.probe_neighbour(self.ifindex, via).await {
                                tracing::debug!(peer = %peer, "resolving {via}: {e}");
                            }
                        }
                    }
                }
            }
            let hop = match (state.via, state.mac, self.src_mac) {
                (Some(via), Some(dst_mac), Some(src_mac)) => Some(NextHop {
                    ifindex: self.ifindex,
                    src_mac,
                    via,
                    dst_mac,
                }),
                _ => None,
            };
            if hop != state.in_use {
                if let Some(h) = hop {
                    tracing::info!(peer = %peer, via = %h.via, mac = %h.dst_mac, "underlay next hop");
                }
                state.in_use = hop;
                changed.push((peer, hop));
            }
        }
        changed
    }
}
