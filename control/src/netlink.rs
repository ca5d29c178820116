//! Route-netlink operations vxdp needs (`rtnetlink`): links (vxlan ones included), addresses,
//! routes, neighbours and bridge FDB entries.
//!
//! Every call returns a [`NetlinkError`] that names the operation and object, so a failure reads
//! like `adding route 10.5.2.0/24 via 10.5.2.0 dev vxdp.1 onlink: File exists`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use packet::wire::MacAddr;
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkVxlan, RouteMessageBuilder};

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct NetlinkError {
    what: String,
    // In the message, not chained: the chain would print it twice.
    cause: std::io::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, err: rtnetlink::Error) -> Self {
        let cause = match &err {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        NetlinkError {
            what: what.into(),
            cause,
        }
    }

    fn other(what: impl Into<String>, msg: impl Into<String>) -> Self {
        NetlinkError {
            what: what.into(),
            cause: std::io::Error::other(msg.into()),
        }
    }

    /// The errno behind the failure, if the kernel sent one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.cause.raw_os_error()
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// The outcome of a request for which the kernel's `tolerated` errno means the host is
/// already as asked (an address already there, an entry already gone).
fn tolerate(
    result: std::result::Result<(), rtnetlink::Error>,
    tolerated: i32,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == tolerated => Ok(()),
        Err(e) => Err(NetlinkError::new(what(), e)),
    }
}

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

/// The vxlan attributes vxdp sets and compares: the `vxlan ...` line of `ip -d link show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanAttrs {
    /// VXLAN network identifier (`id`).
    pub vni: u32,
    /// Underlay device index (`dev`), if the link is bound to one.
    pub dev: Option<u32>,
    /// Outer source address (`local`): IPv4, or IPv6 for a link over an IPv6 underlay.
    pub local: Option<IpAddr>,
    /// Multicast group or default remote (`group` / `remote`).
    pub group: Option<IpAddr>,
    /// UDP destination port (`dstport`).
    pub port: Option<u16>,
    /// Learning of remote MACs from received frames (`learning` / `nolearning`).
    pub learning: bool,
    /// Netlink notifications on FDB misses (`l2miss`).
    pub l2miss: bool,
    /// VXLAN Group Based Policy extension (`gbp`).
    pub gbp: bool,
    /// UDP checksums on transmit over IPv4 (`udpcsum` / `noudpcsum`).
    pub udp_csum: bool,
    /// Lifetime of learnt FDB entries in seconds (`ageing`).
    pub ageing: Option<u32>,
}

impl VxlanAttrs {
    fn from_infos(infos: &[InfoVxlan]) -> VxlanAttrs {
        let mut a = VxlanAttrs::default();
        for info in infos {
            match info {
                InfoVxlan::Id(v) => a.vni = *v,
                InfoVxlan::Link(i) if *i != 0 => a.dev = Some(*i),
                InfoVxlan::Local(ip) if !ip.is_unspecified() => a.local = Some(IpAddr::V4(*ip)),
                InfoVxlan::Local6(ip) if !ip.is_unspecified() => a.local = Some(IpAddr::V6(*ip)),
                InfoVxlan::Group(ip) if !ip.is_unspecified() => a.group = Some(IpAddr::V4(*ip)),
                InfoVxlan::Group6(ip) if !ip.is_unspecified() => a.group = Some(IpAddr::V6(*ip)),
                InfoVxlan::Port(p) if *p != 0 => a.port = Some(*p),
                InfoVxlan::Learning(b) => a.learning = *b,
                InfoVxlan::L2Miss(b) => a.l2miss = *b,
                InfoVxlan::Gbp => a.gbp = true,
                InfoVxlan::UDPCsum(b) => a.udp_csum = *b,
                InfoVxlan::Ageing(s) => a.ageing = Some(*s),
                _ => {}
            }
        }
        a
    }

    /// The `IFLA_INFO_DATA` of a new link. Besides what is asked, it carries the attributes
    /// flanneld's netlink library (vishvananda/netlink `addVxlanAttrs`) always sends with
    /// their zero values: ttl, tos, proxy, rsc, l3miss, udp6zerocsumtx/rx.
    fn to_infos(&self) -> Vec<InfoVxlan> {
        let mut v = vec![InfoVxlan::Id(self.vni)];
        if let Some(dev) = self.dev {
            v.push(InfoVxlan::Link(dev));
        }
        match self.local {
            Some(IpAddr::V4(local)) => v.push(InfoVxlan::Local(local)),
            Some(IpAddr::V6(local)) => v.push(InfoVxlan::Local6(local)),
            None => {}
        }
        match self.group {
            Some(IpAddr::V4(group)) => v.push(InfoVxlan::Group(group)),
            Some(IpAddr::V6(group)) => v.push(InfoVxlan::Group6(group)),
            None => {}
        }
        v.extend([
            InfoVxlan::Ttl(0),
            InfoVxlan::Tos(0),
            InfoVxlan::Learning(self.learning),
            InfoVxlan::Proxy(false),
            InfoVxlan::Rsc(false),
            InfoVxlan::L2Miss(self.l2miss),
            InfoVxlan::L3Miss(false),
            InfoVxlan::UDPZeroCsumTX(false),
            InfoVxlan::UDPZeroCsumRX(false),
            InfoVxlan::UDPCsum(self.udp_csum),
        ]);
        if self.gbp {
            v.push(InfoVxlan::Gbp);
        }
        if let Some(ageing) = self.ageing {
            v.push(InfoVxlan::Ageing(ageing));
        }
        if let Some(port) = self.port {
            v.push(InfoVxlan::Port(port));
        }
        v
    }
}

/// A link and, for a vxlan link, its vxlan attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    /// The generic part.
    pub link: Link,
    /// The vxlan attributes, when the link is of kind vxlan.
    pub vxlan: Option<VxlanAttrs>,
}

impl LinkDetails {
    fn from_message(msg: &LinkMessage) -> LinkDetails {
        let vxlan = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(v)) => Some(VxlanAttrs::from_infos(v)),
                _ => None,
            }),
            _ => None,
        });
        LinkDetails {
            link: Link::from_message(msg),
            vxlan,
        }
    }
}

/// A vxlan link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLinkSpec {
    /// Interface name.
    pub name: String,
    /// Its MAC address (the VtepMAC).
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Its vxlan attributes.
    pub attrs: VxlanAttrs,
}

/// A bridge FDB entry of a vxlan link (`bridge fdb show dev DEV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The remote (or local) MAC.
    pub mac: MacAddr,
    /// The remote VTEP, when the entry has one.
    pub dst: Option<IpAddr>,
    /// NUD_PERMANENT.
    pub permanent: bool,
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
    /// The destination is an address of this host (route type `local`, through `lo`).
    pub local: bool,
}

/// A neighbour table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address, when the kernel has one.
    pub mac: Option<MacAddr>,
    /// Whether the entry can be used to send (reachable, stale, delay, probe, permanent, noarp).
    pub usable: bool,
}

/// How a link is named in a lookup.
#[derive(Debug, Clone, Copy)]
enum LinkKey<'a> {
    Name(&'a str),
    Index(u32),
}

impl fmt::Display for LinkKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKey::Name(n) => f.write_str(n),
            LinkKey::Index(i) => write!(f, "#{i}"),
        }
    }
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
            cause: e,
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
        self.find_link(LinkKey::Name(name))
            .await
            .map(|m| m.as_ref().map(Link::from_message))
    }

    /// Looks a link up by index; `Ok(None)` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        self.find_link(LinkKey::Index(index))
            .await
            .map(|m| m.as_ref().map(Link::from_message))
    }

    /// The kernel's message for one link; `Ok(None)` if there is none.
    async fn find_link(&self, key: LinkKey<'_>) -> Result<Option<LinkMessage>> {
        let request = self.handle.link().get();
        let mut links = match key {
            LinkKey::Name(name) => request.match_name(name.to_string()),
            LinkKey::Index(index) => request.match_index(index),
        }
        .execute();
        match links.try_next().await {
            Ok(found) => Ok(found),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(NetlinkError::new(format!("looking up link {key}"), e)),
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
        tolerate(
            self.handle.address().add(index, ip, prefix).execute().await,
            libc::EEXIST,
            || format!("adding address {ip}/{prefix} to link #{index}"),
        )
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

    /// Looks a link up by name with its kind-specific attributes; `Ok(None)` if there is none.
    pub async fn link_details_by_name(&self, name: &str) -> Result<Option<LinkDetails>> {
        self.find_link(LinkKey::Name(name))
            .await
            .map(|m| m.as_ref().map(LinkDetails::from_message))
    }

    /// Looks a link up by index with its kind-specific attributes; `Ok(None)` if there is none.
    pub async fn link_details_by_index(&self, index: u32) -> Result<Option<LinkDetails>> {
        self.find_link(LinkKey::Index(index))
            .await
            .map(|m| m.as_ref().map(LinkDetails::from_message))
    }

    /// `ip link add NAME address MAC mtu MTU txqueuelen 0 type vxlan id VNI ...`; fails with
    /// `EEXIST` (see [`NetlinkError::raw_os_error`]) when a link of that name exists.
    ///
    /// `txqueuelen 0` is what flanneld's netlink library sends for a zero-valued `LinkAttrs`;
    /// a vxlan link has no qdisc queue, so it only shows in `ip link`.
    pub async fn create_vxlan_link(&self, spec: &VxlanLinkSpec) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkVxlan>::new(&spec.name)
            .set_info_data(InfoData::Vxlan(spec.attrs.to_infos()))
            .mtu(spec.mtu)
            .address(spec.mac.octets().to_vec())
            .txqueuelen(0)
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            NetlinkError::new(
                format!(
                    "creating vxlan link {} (vni {}, dstport {})",
                    spec.name,
                    spec.attrs.vni,
                    spec.attrs.port.unwrap_or(0)
                ),
                e,
            )
        })
    }

    /// `ip link set dev #INDEX address MAC`.
    pub async fn set_link_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .address(mac.octets().to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("setting address {mac} on link #{index}"), e))
    }

    /// `ip link set dev #INDEX mtu MTU`.
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .mtu(mtu)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("setting mtu {mtu} on link #{index}"), e))
    }

    /// `ip link set dev #INDEX gso_max_segs SEGS`: the most segments the kernel puts in one
    /// super-frame it hands this device.
    pub async fn set_gso_max_segs(&self, index: u32, segs: u32) -> Result<()> {
        let mut msg = rtnetlink::LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(netlink_packet_route::link::LinkAttribute::GsoMaxSegs(segs));
        self.handle.link().set(msg).execute().await.map_err(|e| {
            NetlinkError::new(format!("setting gso_max_segs {segs} on link #{index}"), e)
        })
    }

    /// `ip addr del IP/PREFIX dev #INDEX`; a missing address is fine.
    pub async fn delete_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = if ip.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        tolerate(
            self.handle.address().del(msg).execute().await,
            libc::EADDRNOTAVAIL,
            || format!("deleting address {ip}/{prefix} from link #{index}"),
        )
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

    /// `ip route replace DST via VIA dev OIF onlink` (`proto static`).
    pub async fn replace_onlink_route(&self, dst: IpNet, via: IpAddr, oif: u32) -> Result<()> {
        self.replace_route(dst, via, Some(oif), true, RouteProtocol::Static)
            .await
    }

    /// `ip route replace DST via VIA [dev OIF] [onlink] proto PROTO`. flanneld's routes are
    /// `proto boot`, the default of its netlink library.
    pub async fn replace_route(
        &self,
        dst: IpNet,
        via: IpAddr,
        oif: Option<u32>,
        onlink: bool,
        proto: RouteProtocol,
    ) -> Result<()> {
        let what = format!(
            "adding route {dst} via {via}{}{}",
            oif.map(|i| format!(" dev #{i}")).unwrap_or_default(),
            if onlink { " onlink" } else { "" }
        );
        let msg = route_message(dst, via, oif, onlink, proto)
            .map_err(|m| NetlinkError::other(format!("building route {dst} via {via}"), m))?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(what, e))
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

    /// Deletes the route to `dst` via `via` (on `oif` if given), whatever its protocol; a
    /// missing route is fine.
    pub async fn delete_route(&self, dst: IpNet, via: IpAddr, oif: Option<u32>) -> Result<()> {
        let mut msg = gateway_route(dst, via, oif)
            .map_err(|m| NetlinkError::other(format!("building route {dst} via {via}"), m))?;
        // The kernel matches the protocol of a deletion only when it is set (fib_table_delete).
        msg.header.protocol = RouteProtocol::Unspec;
        tolerate(
            self.handle.route().del(msg).execute().await,
            libc::ESRCH,
            || format!("deleting route {dst} via {via}"),
        )
    }

    /// All main-table route messages whose destination is `dst` exactly, of any type.
    async fn main_routes_to_prefix(&self, dst: IpNet) -> Result<Vec<RouteMessage>> {
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
            .into_iter()
            .filter(|r| {
                r.header.table == netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
                    && r.header.destination_prefix_length == dst.prefix_len()
                    && route_destination(r) == Some(dst.network())
            })
            .collect())
    }

    /// Whether the main table holds a blackhole route to exactly `dst`: flannel's test before
    /// it adds one (`RouteListFiltered` on destination and type, main table).
    pub async fn has_blackhole_route(&self, dst: IpNet) -> Result<bool> {
        Ok(self
            .main_routes_to_prefix(dst)
            .await?
            .iter()
            .any(|r| r.header.kind == RouteType::BlackHole))
    }

    /// `ip route add blackhole DST proto boot`: the route flannel's `AddBlackholeV4Route` adds
    /// (main table, scope universe, metric 0, `proto boot`, its netlink library's default).
    /// Fails with `EEXIST` when another route to `dst` with metric 0 is in the main table.
    pub async fn add_blackhole_route(&self, dst: IpNet) -> Result<()> {
        let msg = blackhole_route(dst, RouteProtocol::Boot, RouteScope::Universe);
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("adding route blackhole {dst}"), e))
    }

    /// Deletes the blackhole route to `dst` (whatever its protocol and scope); routes of other
    /// types to `dst` are left alone, and a missing route is fine.
    pub async fn delete_blackhole_route(&self, dst: IpNet) -> Result<()> {
        // The kernel matches protocol and scope of a deletion only when they are set
        // (fib_table_delete): Unspec and NoWhere match any; the type is always matched.
        let msg = blackhole_route(dst, RouteProtocol::Unspec, RouteScope::NoWhere);
        tolerate(
            self.handle.route().del(msg).execute().await,
            libc::ESRCH,
            || format!("deleting route blackhole {dst}"),
        )
    }

    /// All main-table routes whose destination is `dst` exactly.
    pub async fn routes_to_prefix(&self, dst: IpNet) -> Result<Vec<RouteTo>> {
        Ok(self
            .main_routes_to_prefix(dst)
            .await?
            .iter()
            .map(|r| RouteTo {
                oif: route_oif(r).unwrap_or(0),
                pref_src: route_addr(r, |a| matches!(a, RouteAttribute::PrefSource(_))),
                gateway: route_addr(r, |a| matches!(a, RouteAttribute::Gateway(_))),
                local: r.header.kind == RouteType::Local,
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
            local: route.header.kind == RouteType::Local,
        })
    }

    /// The neighbour entry for `ip` on link `index`, if the kernel has one.
    pub async fn neighbour(&self, index: u32, ip: IpAddr) -> Result<Option<Neighbour>> {
        Ok(self.neighbours(index, ip.is_ipv6()).await?.remove(&ip))
    }

    /// Every IPv4 (or IPv6) neighbour entry on link `index`, in one dump.
    pub async fn neighbours(
        &self,
        index: u32,
        v6: bool,
    ) -> Result<std::collections::HashMap<IpAddr, Neighbour>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(if v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            })
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| {
                let ip = neighbour_destination(n)?;
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut b = [0u8; 6];
                        b.copy_from_slice(l);
                        Some(MacAddr(b))
                    }
                    _ => None,
                });
                let usable = matches!(
                    n.header.state,
                    NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp
                );
                Some((ip, Neighbour { mac, usable }))
            })
            .collect())
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

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent` (type unicast, as flanneld's
    /// `AddARP` sends it).
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
            .kind(RouteType::Unicast)
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
        tolerate(
            self.handle.neighbours().del(msg).execute().await,
            libc::ENOENT,
            || format!("deleting neighbour {ip} on link #{index}"),
        )
    }

    /// `bridge fdb replace MAC dev #INDEX dst DST self permanent`: frames for `mac` leave the
    /// vxlan link towards VTEP `dst` (flanneld's `AddFDB`).
    pub async fn replace_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.octets())
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::new(
                    format!("adding FDB entry {mac} dst {dst} on link #{index}"),
                    e,
                )
            })
    }

    /// `bridge fdb del MAC dev #INDEX dst DST self`: removes that remote of `mac` only; a
    /// missing entry is fine.
    pub async fn delete_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        tolerate(
            self.handle.neighbours().del(msg).execute().await,
            libc::ENOENT,
            || format!("deleting FDB entry {mac} dst {dst} on link #{index}"),
        )
    }

    /// The bridge FDB entries of link `index` (`bridge fdb show dev DEV`).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(format!("listing FDB entries of link #{index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| {
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddr)
                    }
                    _ => None,
                })?;
                let dst = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_address(d),
                    _ => None,
                });
                Some(FdbEntry {
                    mac,
                    dst,
                    permanent: n.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
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

/// An address from a neighbour message; AF_BRIDGE messages carry `NDA_DST` as raw bytes.
fn neighbour_address(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
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

/// A blackhole route to `dst` in the main table.
fn blackhole_route(dst: IpNet, proto: RouteProtocol, scope: RouteScope) -> RouteMessage {
    let mut msg = match dst {
        IpNet::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .kind(RouteType::BlackHole)
            .build(),
        IpNet::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .kind(RouteType::BlackHole)
            .build(),
    };
    msg.header.protocol = proto;
    msg.header.scope = scope;
    msg
}

fn route_message(
    dst: IpNet,
    via: IpAddr,
    oif: Option<u32>,
    onlink: bool,
    proto: RouteProtocol,
) -> std::result::Result<RouteMessage, String> {
    let mut msg = gateway_route(dst, via, oif)?;
    if onlink {
        msg.header
            .flags
            .insert(netlink_packet_route::route::RouteFlags::Onlink);
    }
    msg.header.protocol = proto;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onlink_route_message_carries_everything_flannel_programs() {
        let msg = route_message(
            "10.5.2.0/24".parse().unwrap(),
            "10.5.2.0".parse().unwrap(),
            Some(7),
            true,
            RouteProtocol::Boot,
        )
        .unwrap();
        assert_eq!(msg.header.protocol, RouteProtocol::Boot);
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
    fn vxlan_attributes_survive_the_trip_to_the_kernel_and_back() {
        let a = VxlanAttrs {
            vni: 1,
            dev: Some(2),
            local: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            group: None,
            port: Some(8472),
            learning: false,
            l2miss: false,
            gbp: true,
            udp_csum: true,
            ageing: Some(300),
        };
        let infos = a.to_infos();
        assert_eq!(VxlanAttrs::from_infos(&infos), a);
        // flanneld's library sends these zero values too.
        for zero in [
            InfoVxlan::Ttl(0),
            InfoVxlan::Tos(0),
            InfoVxlan::L3Miss(false),
        ] {
            assert!(infos.contains(&zero), "{zero:?} missing from {infos:?}");
        }
        // Unset in the kernel's dump means absent, not zero.
        let dumped = [
            InfoVxlan::Id(5),
            InfoVxlan::Link(0),
            InfoVxlan::Local(Ipv4Addr::UNSPECIFIED),
        ];
        let parsed = VxlanAttrs::from_infos(&dumped);
        assert_eq!((parsed.vni, parsed.dev, parsed.local), (5, None, None));
        // A link over an IPv6 underlay (flanneld's flannel-v6.<VNI>) has `local6`.
        let v6 = VxlanAttrs {
            local: Some(IpAddr::V6("2001:db8::1".parse().unwrap())),
            ..a
        };
        let infos = v6.to_infos();
        assert!(infos.contains(&InfoVxlan::Local6("2001:db8::1".parse().unwrap())));
        assert!(!infos.iter().any(|i| matches!(i, InfoVxlan::Local(_))));
        assert_eq!(VxlanAttrs::from_infos(&infos), v6);
    }

    #[test]
    fn bridge_fdb_destinations_are_read_from_raw_bytes() {
        assert_eq!(
            neighbour_address(&NeighbourAddress::Other(vec![192, 0, 2, 2])),
            Some("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            neighbour_address(&NeighbourAddress::Other(vec![1, 2])),
            None
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
