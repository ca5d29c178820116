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
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use dataplane::wire::MacAddr;

use crate::netlink::{Netlink, NetlinkError};

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
    paths: BTreeMap<Ipv4Addr, PathState>,
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
    pub fn forget(&mut self, peer: Ipv4Addr) {
        self.paths.remove(&peer);
    }

    /// The next hop in use towards `peer`, if any.
    pub fn next_hop(&self, peer: Ipv4Addr) -> Option<NextHop> {
        self.paths.get(&peer).and_then(|p| p.in_use)
    }

    /// The state of the path to `peer`.
    pub fn status(&self, peer: Ipv4Addr) -> PathStatus {
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
        peers: impl IntoIterator<Item = Ipv4Addr>,
        now: Instant,
    ) -> Vec<(Ipv4Addr, Option<NextHop>)> {
        match self.nl.link_by_index(self.ifindex).await {
            Ok(Some(link)) => self.src_mac = link.mac,
            Ok(None) => self.src_mac = None,
            Err(e) => tracing::debug!("reading {}: {e}", self.iface),
        }
        let neighbours = match self.nl.neighbours(self.ifindex, false).await {
            Ok(n) => n,
            Err(e) => {
                // Keep using what is known: a failed dump is not a changed network.
                tracing::debug!("listing neighbours on {}: {e}", self.iface);
                Default::default()
            }
        };
        let mut changed = Vec::new();
        for peer in peers {
            let state = self.paths.entry(peer).or_default();
            if state
                .route_checked
                .is_none_or(|t| now.duration_since(t) >= ROUTE_RECHECK)
            {
                state.route_checked = Some(now);
                let problem = match self.nl.route_to(IpAddr::V4(peer)).await {
                    Ok(r) if r.oif == self.ifindex => {
                        state.via = Some(r.gateway.unwrap_or(IpAddr::V4(peer)));
                        None
                    }
                    Ok(r) => Some(
                        UnderlayError::WrongInterface {
                            peer: IpAddr::V4(peer),
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

/// The interface vxdp sends and receives VXLAN on (flannel's "external interface").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// The link.
    pub link: crate::netlink::Link,
    /// Its IPv4 address used as the VTEP source (flannel's `iface_addr`).
    pub iface_addr: std::net::Ipv4Addr,
    /// The address peers send to (`--public-ip`, else `iface_addr`).
    pub public_ip: std::net::Ipv4Addr,
}

/// Why no usable interface was found.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// A netlink query failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// None of the given interfaces exists.
    #[error(
        "none of the interfaces given with --iface/--iface-regex exists ({0}): check `ip -br addr`"
    )]
    NotFound(String),
    /// An --iface-regex is not a valid regular expression.
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    /// No interface was given and there is no default route.
    #[error("no --iface given and no IPv4 default route to pick one from: pass --iface NAME")]
    NoDefaultRoute,
    /// The interface has no IPv4 address.
    #[error("interface {0} has no IPv4 address: vxdp needs one as its VTEP address (or pass --iface with another interface)")]
    NoAddress(String),
    /// `--public-ip` is not IPv4.
    #[error("--public-ip {0} is not an IPv4 address; IPv6 underlays are given with --public-ipv6")]
    PublicIpNotV4(IpAddr),
    /// `--iface-can-reach` is an IPv6 address.
    #[error(
        "--iface-can-reach {0} is an IPv6 address, but vxdp runs over an IPv4 underlay: give the \
         IPv4 address of another node (or its gateway)"
    )]
    CanReachNotV4(IpAddr),
    /// The kernel has no route to the `--iface-can-reach` address.
    #[error("--iface-can-reach {addr}: {source}; check `ip route get {addr}`")]
    CanReachNoRoute {
        /// The address given.
        addr: IpAddr,
        /// The failed lookup.
        #[source]
        source: NetlinkError,
    },
    /// The `--iface-can-reach` address is one of this host's own.
    #[error(
        "--iface-can-reach {0} is an address of this host (the kernel reaches it through the \
         loopback): give the address of another node, or of the gateway, to reach through the \
         external interface"
    )]
    CanReachLocal(IpAddr),
    /// The interface of the route to `--iface-can-reach` disappeared while it was looked up.
    #[error("--iface-can-reach {addr}: the route's interface #{oif} disappeared; retry")]
    CanReachLinkGone {
        /// The address given.
        addr: IpAddr,
        /// The route's interface index.
        oif: u32,
    },
}

/// Picks the external interface like flanneld (`main.go` with `pkg/ipmatch`): the first
/// `--iface` (a name or one of its IP addresses) that exists, else the first `--iface-regex`
/// matching an interface's IP address or, failing that, its name, else the interface and source
/// address of the kernel's route to `--iface-can-reach` (`ip route get ADDR`), else, when none of
/// the three is given, the interface of the default route.
pub async fn find_external_interface(
    nl: &Netlink,
    ifaces: &[String],
    iface_regexes: &[String],
    iface_can_reach: Option<IpAddr>,
    public_ip: Option<IpAddr>,
) -> Result<ExternalInterface, InterfaceError> {
    let regexes = iface_regexes
        .iter()
        .map(|r| {
            regex::Regex::new(r).map_err(|e| InterfaceError::BadRegex(r.clone(), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The source address the kernel picks towards --iface-can-reach, when that decided.
    let mut route_src = None;
    let link = if ifaces.is_empty() && regexes.is_empty() && iface_can_reach.is_none() {
        let index = nl
            .default_route_link(false)
            .await?
            .ok_or(InterfaceError::NoDefaultRoute)?;
        nl.link_by_index(index)
            .await?
            .ok_or(InterfaceError::NoDefaultRoute)?
    } else {
        let mut found = None;
        'search: for want in ifaces {
            if let Ok(ip) = want.parse::<IpAddr>() {
                for link in nl.links().await? {
                    if nl
                        .addresses(link.index)
                        .await?
                        .iter()
                        .any(|(a, _)| *a == ip)
                    {
                        found = Some(link);
                        break 'search;
                    }
                }
            } else if let Some(link) = nl.link_by_name(want).await? {
                found = Some(link);
                break;
            }
        }
        if found.is_none() && !regexes.is_empty() {
            let links = nl.links().await?;
            'regex: for re in &regexes {
                // flanneld tries the addresses first, then the names.
                for link in &links {
                    for (ip, _) in nl.addresses(link.index).await? {
                        if re.is_match(&ip.to_string()) {
                            found = Some(link.clone());
                            break 'regex;
                        }
                    }
                }
                if let Some(link) = links.iter().find(|l| re.is_match(&l.name)) {
                    found = Some(link.clone());
                    break;
                }
            }
        }
        let given: Vec<&str> = ifaces
            .iter()
            .chain(iface_regexes.iter())
            .map(String::as_str)
            .collect();
        match (found, iface_can_reach) {
            (Some(link), _) => link,
            (None, Some(addr)) => {
                if !given.is_empty() {
                    // flanneld logs this and goes on to --iface-can-reach.
                    tracing::info!(
                        "no interface matches --iface/--iface-regex ({}): trying --iface-can-reach {addr}",
                        given.join(", ")
                    );
                }
                let (link, src) = interface_towards(nl, addr).await?;
                route_src = src;
                link
            }
            (None, None) => return Err(InterfaceError::NotFound(given.join(", "))),
        }
    };
    let iface_addr = match route_src {
        Some(src) => src,
        None => nl
            .addresses(link.index)
            .await?
            .into_iter()
            .find_map(|(ip, _)| match ip {
                IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => Some(v4),
                _ => None,
            })
            .ok_or_else(|| InterfaceError::NoAddress(link.name.clone()))?,
    };
    let public_ip = match public_ip {
        None => iface_addr,
        Some(IpAddr::V4(v4)) => v4,
        Some(other) => return Err(InterfaceError::PublicIpNotV4(other)),
    };
    Ok(ExternalInterface {
        link,
        iface_addr,
        public_ip,
    })
}

/// The link and IPv4 source address the kernel would use to send to `addr` (flannel's
/// `GetInterfaceBySpecificIPRouting`: the route's device and its `src`).
async fn interface_towards(
    nl: &Netlink,
    addr: IpAddr,
) -> Result<(crate::netlink::Link, Option<Ipv4Addr>), InterfaceError> {
    if !addr.is_ipv4() {
        return Err(InterfaceError::CanReachNotV4(addr));
    }
    let route = nl
        .route_to(addr)
        .await
        .map_err(|source| InterfaceError::CanReachNoRoute { addr, source })?;
    // flanneld would take `lo` here and run its VXLAN over the loopback.
    if route.local {
        return Err(InterfaceError::CanReachLocal(addr));
    }
    let link = nl
        .link_by_index(route.oif)
        .await?
        .ok_or(InterfaceError::CanReachLinkGone {
            addr,
            oif: route.oif,
        })?;
    let src = match route.pref_src {
        Some(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    };
    tracing::info!(
        iface = %link.name,
        src = ?src,
        "--iface-can-reach {addr}: the kernel routes it through {}",
        link.name
    );
    Ok((link, src))
}
