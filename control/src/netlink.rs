//! Route-netlink operations vxdp needs (`rtnetlink`): links, addresses, routes, neighbours.
//!
//! Every call returns a [`NetlinkError`] that names the operation and object, so a failure reads
//! like `adding route 10.5.2.0/24 via 10.5.2.0 dev vxdp.1 onlink: File exists`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane::wire::MacAddr;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: std::io::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, err: rtnetlink::Error) -> Self {
        let source = match &err {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        NetlinkError {
            what: what.into(),
            source,
        }
    }

    fn other(what: impl Into<String>, msg: impl Into<String>) -> Self {
        NetlinkError {
            what: what.into(),
            source: std::io::Error::other(msg.into()),
        }
    }

    /// The errno behind the failure, if the kernel sent one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// What vxdp needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, if it has an Ethernet one.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// The `IFLA_INFO_KIND` (e.g. "vxlan", "tun", "veth"), if any.
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(a);
                    link.mac = Some(MacAddr(b));
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let netlink_packet_route::link::LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The kernel's answer to `ip route get DST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    /// Egress interface index.
    pub oif: u32,
    /// Source address the kernel would use.
    pub pref_src: Option<IpAddr>,
    /// Gateway, when the destination is not on-link.
    pub gateway: Option<IpAddr>,
}

/// A neighbour table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address, when the kernel has one.
    pub mac: Option<MacAddr>,
    /// Whether the entry can be used to send (reachable, stale, delay, probe, permanent, noarp).
    pub usable: bool,
}

/// A route-netlink connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; its I/O runs as a task on the current tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
            what: "opening a route-netlink socket".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The raw rtnetlink handle, for operations this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Looks a link up by name; `Ok(None)` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(NetlinkError::new(format!("looking up link {name}"), e)),
        }
    }

    /// Looks a link up by index; `Ok(None)` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(NetlinkError::new(format!("looking up link #{index}"), e)),
        }
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing links", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// The addresses on link `index` (with prefix lengths), IPv4 first.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(format!("listing addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.index != index {
                continue;
            }
            let prefix = msg.header.prefix_len;
            // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, prefix));
            }
        }
        out.sort_by_key(|(ip, _)| ip.is_ipv6());
        Ok(out)
    }

    /// Adds `ip/prefix` to link `index`; an address that is already there is fine.
    pub async fn ensure_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
            Err(e) => Err(NetlinkError::new(
                format!("adding address {ip}/{prefix} to link #{index}"),
                e,
            )),
        }
    }

    /// Sets link `index` up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("setting link #{index} up"), e))
    }

    /// Deletes link `index`.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("deleting link #{index}"), e))
    }

    /// The interface carrying the default route of `family`, if any.
    pub async fn default_route_link(&self, v6: bool) -> Result<Option<u32>> {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let msg = match version {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing routes", e))?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.table == netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
            })
            .find_map(route_oif))
    }

    /// `ip route replace DST via VIA dev OIF onlink`.
    pub async fn replace_onlink_route(&self, dst: IpNet, via: IpAddr, oif: u32) -> Result<()> {
        let msg = onlink_route(dst, via, oif)
            .map_err(|m| NetlinkError::other(format!("building route {dst} via {via}"), m))?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("adding route {dst} via {via} onlink"), e))
    }

    /// `ip route replace DST via VIA` (an ordinary gateway route, for DirectRouting).
    pub async fn replace_gateway_route(&self, dst: IpNet, via: IpAddr) -> Result<()> {
        let msg = gateway_route(dst, via, None)
            .map_err(|m| NetlinkError::other(format!("building route {dst} via {via}"), m))?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("adding route {dst} via {via}"), e))
    }

    /// Deletes the route to `dst` via `via` (on `oif` if given); a missing route is fine.
    pub async fn delete_route(&self, dst: IpNet, via: IpAddr, oif: Option<u32>) -> Result<()> {
        let msg = gateway_route(dst, via, oif)
            .map_err(|m| NetlinkError::other(format!("building route {dst} via {via}"), m))?;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ESRCH => Ok(()),
            Err(e) => Err(NetlinkError::new(
                format!("deleting route {dst} via {via}"),
                e,
            )),
        }
    }

    /// All main-table routes whose destination is `dst` exactly.
    pub async fn routes_to_prefix(&self, dst: IpNet) -> Result<Vec<RouteTo>> {
        let msg = match dst {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing routes", e))?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.table == netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
                    && r.header.destination_prefix_length == dst.prefix_len()
                    && route_destination(r) == Some(dst.network())
            })
            .map(|r| RouteTo {
                oif: route_oif(r).unwrap_or(0),
                pref_src: route_addr(r, |a| matches!(a, RouteAttribute::PrefSource(_))),
                gateway: route_addr(r, |a| matches!(a, RouteAttribute::Gateway(_))),
            })
            .collect())
    }

    /// `ip route get DST`: the kernel's routing decision for one destination.
    pub async fn route_to(&self, dst: IpAddr) -> Result<RouteTo> {
        let msg = match dst {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(format!("looking up the route to {dst}"), e))?
            .ok_or_else(|| {
                NetlinkError::other(format!("looking up the route to {dst}"), "no route")
            })?;
        Ok(RouteTo {
            oif: route_oif(&route).ok_or_else(|| {
                NetlinkError::other(
                    format!("looking up the route to {dst}"),
                    "route has no device",
                )
            })?,
            pref_src: route_addr(&route, |a| matches!(a, RouteAttribute::PrefSource(_))),
            gateway: route_addr(&route, |a| matches!(a, RouteAttribute::Gateway(_))),
        })
    }

    /// The neighbour entry for `ip` on link `index`, if the kernel has one.
    pub async fn neighbour(&self, index: u32, ip: IpAddr) -> Result<Option<Neighbour>> {
        let version = if ip.is_ipv6() {
            IpVersion::V6
        } else {
            IpVersion::V4
        };
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(match version {
                IpVersion::V4 => AddressFamily::Inet,
                IpVersion::V6 => AddressFamily::Inet6,
            })
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|n| n.header.ifindex == index && neighbour_destination(n) == Some(ip))
            .map(|n| Neighbour {
                mac: n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut b = [0u8; 6];
                        b.copy_from_slice(l);
                        Some(MacAddr(b))
                    }
                    _ => None,
                }),
                usable: matches!(
                    n.header.state,
                    NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp
                ),
            })
            .next())
    }

    /// Asks the kernel to resolve `ip` on link `index` (`ip neigh replace IP dev DEV use`).
    pub async fn probe_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("resolving neighbour {ip} on link #{index}"), e))
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub async fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::new(
                    format!("adding neighbour {ip} lladdr {mac} on link #{index}"),
                    e,
                )
            })
    }

    /// `ip neigh del IP dev DEV`; a missing entry is fine.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENOENT => Ok(()),
            Err(e) => Err(NetlinkError::new(
                format!("deleting neighbour {ip} on link #{index}"),
                e,
            )),
        }
    }
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_destination(r: &RouteMessage) -> Option<IpAddr> {
    route_addr(r, |a| matches!(a, RouteAttribute::Destination(_)))
}

fn route_addr(r: &RouteMessage, pick: impl Fn(&RouteAttribute) -> bool) -> Option<IpAddr> {
    r.attributes
        .iter()
        .filter(|a| pick(a))
        .find_map(|a| match a {
            RouteAttribute::PrefSource(addr)
            | RouteAttribute::Gateway(addr)
            | RouteAttribute::Destination(addr) => match addr {
                RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                _ => None,
            },
            _ => None,
        })
}

fn neighbour_destination(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn gateway_route(
    dst: IpNet,
    via: IpAddr,
    oif: Option<u32>,
) -> std::result::Result<RouteMessage, String> {
    let msg = match (dst, via) {
        (IpNet::V4(d), IpAddr::V4(g)) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix_len())
                .gateway(g);
            match oif {
                Some(i) => b.output_interface(i).build(),
                None => b.build(),
            }
        }
        (IpNet::V6(d), IpAddr::V6(g)) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix_len())
                .gateway(g);
            match oif {
                Some(i) => b.output_interface(i).build(),
                None => b.build(),
            }
        }
        _ => return Err("destination and gateway are of different address families".into()),
    };
    Ok(msg)
}

fn onlink_route(dst: IpNet, via: IpAddr, oif: u32) -> std::result::Result<RouteMessage, String> {
    let mut msg = gateway_route(dst, via, Some(oif))?;
    msg.header
        .flags
        .insert(netlink_packet_route::route::RouteFlags::Onlink);
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onlink_route_message_carries_everything_flannel_programs() {
        let msg = onlink_route(
            "10.5.2.0/24".parse().unwrap(),
            "10.5.2.0".parse().unwrap(),
            7,
        )
        .unwrap();
        assert!(msg
            .header
            .flags
            .contains(netlink_packet_route::route::RouteFlags::Onlink));
        assert_eq!(msg.header.destination_prefix_length, 24);
        assert_eq!(route_oif(&msg), Some(7));
        assert_eq!(route_destination(&msg), Some("10.5.2.0".parse().unwrap()));
        assert_eq!(
            route_addr(&msg, |a| matches!(a, RouteAttribute::Gateway(_))),
            Some("10.5.2.0".parse().unwrap())
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        assert!(gateway_route(
            "10.5.2.0/24".parse().unwrap(),
            "fc00::1".parse().unwrap(),
            None
        )
        .is_err());
    }
}
