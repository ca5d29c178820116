//! The external interface: where vxdp sends and receives VXLAN, chosen as flanneld chooses it
//! (`--iface`, `--iface-regex`, else the default route's interface).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::{Netlink, NetlinkError};

/// The interface vxdp sends and receives VXLAN on (flannel's "external interface").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// The link.
    pub link: crate::netlink::Link,
    /// Its IPv4 address used as the VTEP source (flannel's `iface_addr`); `None` in an
    /// IPv6-only network, where none is looked for or needed.
    pub iface_addr: Option<Ipv4Addr>,
    /// The address peers send to (`--public-ip`, else `iface_addr`); `None` in an IPv6-only
    /// network (its leases carry `PublicIP` 0.0.0.0, as flanneld's do).
    pub public_ip: Option<Ipv4Addr>,
    /// Its IPv6 address for the IPv6 overlay's VTEP (flannel's `iface_v6_addr`): the IPv6
    /// address `--iface`/`--iface-regex` matched, else its first global IPv6 address; `None`
    /// when it has none.
    pub iface_addr6: Option<Ipv6Addr>,
    /// The IPv6 address peers send the IPv6 overlay to (`--public-ipv6`, else `iface_addr6`).
    pub public_ipv6: Option<Ipv6Addr>,
}

impl ExternalInterface {
    /// The IPv4 underlay address, or why there is none, for a network with `EnableIPv4`.
    pub fn require_ipv4(&self) -> Result<Ipv4Addr, InterfaceError> {
        self.public_ip
            .ok_or_else(|| InterfaceError::NoAddress(self.link.name.clone()))
    }

    /// The IPv6 underlay address, or why there is none, for a network with `EnableIPv6`.
    pub fn require_ipv6(&self) -> Result<Ipv6Addr, InterfaceError> {
        self.public_ipv6
            .ok_or_else(|| InterfaceError::NoIpv6Address(self.link.name.clone()))
    }
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
    #[error("no --iface given and no {0} default route to pick one from: pass --iface NAME")]
    NoDefaultRoute(&'static str),
    /// The interface has no IPv4 address.
    #[error(
        "interface {0} has no IPv4 address: vxdp needs one as its VTEP address (or pass --iface \
         with another interface, or set EnableIPv4 to false for an IPv6-only network)"
    )]
    NoAddress(String),
    /// IPv6 is enabled but the interface has no global IPv6 address.
    #[error(
        "the network config enables IPv6, but interface {0} has no global IPv6 address to carry \
         the IPv6 overlay: add one (`ip -6 addr add ... dev {0}`), pass --public-ipv6, or choose \
         another interface with --iface"
    )]
    NoIpv6Address(String),
    /// `--public-ip` is not IPv4.
    #[error("--public-ip {0} is not an IPv4 address; IPv6 underlays are given with --public-ipv6")]
    PublicIpNotV4(IpAddr),
    /// `--iface-can-reach` is of the wrong family.
    #[error(
        "--iface-can-reach {0} is not of the underlay's address family (IPv4, or IPv6 in an \
         IPv6-only network): give the address of another node (or its gateway) of that family"
    )]
    CanReachNotV4(IpAddr),
    /// The kernel has no route to the `--iface-can-reach` address.
    #[error("--iface-can-reach {addr}: {cause}; check `ip route get {addr}`")]
    CanReachNoRoute {
        /// The address given.
        addr: IpAddr,
        /// The failed lookup (in the message, not chained: the chain would print it twice).
        cause: NetlinkError,
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
///
/// The IPv6 underlay address (for `EnableIPv6`) is found on the same interface, as flanneld's
/// `LookupExtIface` does: the IPv6 address `--iface` or `--iface-regex` matched, else the link's
/// first global IPv6 address; `public_ipv6` (`--public-ipv6`) overrides what peers are told.
///
/// With `ipv6_only` (`EnableIPv4: false`, flanneld's `ipv6Stack`) the default route looked at is
/// the IPv6 one, `--iface-can-reach` takes an IPv6 address, no IPv4 address is looked for (the
/// interface needs none; `--public-ip` is ignored, as flanneld's lease then carries
/// `PublicIP` 0.0.0.0), and the interface must have an IPv6 address (or `--public-ipv6`).
pub async fn find_external_interface(
    nl: &Netlink,
    ifaces: &[String],
    iface_regexes: &[String],
    iface_can_reach: Option<IpAddr>,
    public_ip: Option<IpAddr>,
    public_ipv6: Option<Ipv6Addr>,
    ipv6_only: bool,
) -> Result<ExternalInterface, InterfaceError> {
    let family = if ipv6_only { "IPv6" } else { "IPv4" };
    let regexes = iface_regexes
        .iter()
        .map(|r| {
            regex::Regex::new(r).map_err(|e| InterfaceError::BadRegex(r.clone(), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The source address the kernel picks towards --iface-can-reach, when that decided.
    let mut route_src = None;
    // The IPv6 address that --iface or --iface-regex matched, if it was one.
    let mut matched_v6 = None;
    let link = if ifaces.is_empty() && regexes.is_empty() && iface_can_reach.is_none() {
        let index = nl
            .default_route_link(ipv6_only)
            .await?
            .ok_or(InterfaceError::NoDefaultRoute(family))?;
        nl.link_by_index(index)
            .await?
            .ok_or(InterfaceError::NoDefaultRoute(family))?
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
                        if let IpAddr::V6(v6) = ip {
                            matched_v6 = Some(v6);
                        }
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
                            if let IpAddr::V6(v6) = ip {
                                matched_v6 = Some(v6);
                            }
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
                let (link, src) = interface_towards(nl, addr, ipv6_only).await?;
                match src {
                    Some(IpAddr::V4(v4)) => route_src = Some(v4),
                    Some(IpAddr::V6(v6)) => matched_v6 = Some(v6),
                    None => {}
                }
                link
            }
            (None, None) => return Err(InterfaceError::NotFound(given.join(", "))),
        }
    };
    let (iface_addr, public_ip) = if ipv6_only {
        if public_ip.is_some() {
            tracing::warn!(
                "--public-ip is ignored in an IPv6-only network (EnableIPv4 false): the lease \
                 carries PublicIP 0.0.0.0 as flanneld's does; use --public-ipv6"
            );
        }
        (None, None)
    } else {
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
        (Some(iface_addr), Some(public_ip))
    };
    let iface_addr6 = match matched_v6 {
        Some(v6) => Some(v6),
        None => nl
            .addresses(link.index)
            .await?
            .into_iter()
            .find_map(|(ip, _)| match ip {
                IpAddr::V6(v6) if is_global_v6(v6) => Some(v6),
                _ => None,
            }),
    };
    let external = ExternalInterface {
        link,
        iface_addr,
        public_ip,
        iface_addr6,
        public_ipv6: public_ipv6.or(iface_addr6),
    };
    if ipv6_only {
        external.require_ipv6()?;
    }
    Ok(external)
}

/// Whether `a` can be an IPv6 VTEP address: not loopback, unspecified, multicast or link-local
/// (fe80::/10 is only meaningful with a scope; flanneld skips it too).
fn is_global_v6(a: Ipv6Addr) -> bool {
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// The link and source address the kernel would use to send to `addr` (flannel's
/// `GetInterfaceBySpecificIPRouting`: the route's device and its `src`); `addr` is IPv4, or IPv6
/// in an IPv6-only network.
async fn interface_towards(
    nl: &Netlink,
    addr: IpAddr,
    ipv6_only: bool,
) -> Result<(crate::netlink::Link, Option<IpAddr>), InterfaceError> {
    if addr.is_ipv6() != ipv6_only {
        return Err(InterfaceError::CanReachNotV4(addr));
    }
    let route = nl
        .route_to(addr)
        .await
        .map_err(|cause| InterfaceError::CanReachNoRoute { addr, cause })?;
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
    let src = route.pref_src.filter(|src| src.is_ipv6() == ipv6_only);
    tracing::info!(
        iface = %link.name,
        src = ?src,
        "--iface-can-reach {addr}: the kernel routes it through {}",
        link.name
    );
    Ok((link, src))
}
