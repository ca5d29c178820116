//! The kernel backend: a kernel vxlan link programmed the way flanneld programs `flannel.<VNI>`
//! (flannel-io/flannel `pkg/backend/vxlan/`), so a vxdp node in kernel mode is, on the wire and
//! in `ip`/`bridge` output, a flanneld node.
//!
//! What is matched, and where flanneld does it:
//! - Link creation (`device.go` `newVXLANDevice`, vishvananda/netlink `addVxlanAttrs`): kind
//!   vxlan, `id VNI`, `local` = the external interface address, `dev` = the external interface,
//!   `dstport`, `learning` only when configured, `gbp` when configured, the link MAC given at
//!   creation, `mtu`, `txqueuelen 0`, and ttl/tos/proxy/rsc/l2miss/l3miss/udp6zerocsum* sent as
//!   zero. Kernel defaults complete it to `ageing 300 udpcsum`; vxdp sends those two explicitly
//!   so the link is the same on a kernel with other defaults. Then `accept_ra` 0 on the link.
//! - Reuse (`device.go` `ensureLink`, `vxlanLinksIncompat`): create first; on `EEXIST` compare
//!   kind, VNI, dev, local, group, l2miss, dstport and gbp (dev/local/group/port only when both
//!   sides have one) and reuse a compatible link, else delete it and create a new one, saying
//!   why.
//! - Configuration (`device.go` `Configure`, `pkg/ip` `EnsureV4AddressOnLink`): the lease's base
//!   address as a /32, other IPv4 addresses removed, link up, then the link MAC checked against
//!   the VtepMAC (flannel issue 1795).
//! - Peers (`vxlan_network.go` `handleSubnetEvents`): neighbour `gateway lladdr VtepMAC nud
//!   permanent` (type unicast), FDB `VtepMAC dst PublicIP self permanent`, route `subnet via
//!   gateway dev LINK onlink` (`proto boot`, scope universe), all with replace semantics and in
//!   that order; a failed step undoes the earlier ones. DirectRouting (`pkg/ip` `DirectRouting`):
//!   a peer whose PublicIP the kernel routes without a gateway gets `subnet via PublicIP`.
//!
//! Where vxdp differs, on purpose:
//! - A reused link gets vxdp's MAC and MTU set (flanneld keeps the existing MTU and fails on a
//!   MAC mismatch): vxdp's VtepMAC is stable and advertised in its lease.
//! - `learning` counts as incompatible too (flanneld ignores it and keeps a stale setting).
//! - Every IPv4 address other than the lease's /32 is removed from the link (flanneld: those
//!   inside the flannel network, which this backend is not told; the link is the overlay's own).
//! - DirectRouting also requires the route to leave through the external interface.
//! - Removal goes route, FDB, neighbour (flanneld: neighbour, FDB, route), so the kernel never
//!   holds a route whose gateway it would have to ARP for; a replaced peer's old FDB entry is
//!   removed (flanneld leaves it behind when the VtepMAC changes).
//! - A deleted link is recreated with backoff and every peer programmed again, a link set down
//!   is set up again with its peers (the kernel flushed its routes and neighbours); shutdown
//!   deletes the link (flanneld leaves `flannel.<VNI>` in place on exit).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv6Net};
use netlink_packet_route::route::RouteProtocol;
use packet::wire::MacAddr;

use control::backend::{Backend, BackendError, Peer, Teardown};
use control::lease::SubnetKey;
use control::netlink::{LinkDetails, Netlink, NetlinkError, VxlanAttrs, VxlanLinkSpec};

/// The kernel's default lifetime of learnt FDB entries, which flanneld's links show.
pub const AGEING_SECS: u32 = 300;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers: an IPv4 underlay needs this much over the
/// overlay MTU (the kernel refuses a larger MTU on a link bound to a device).
pub const IPV4_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (a 40-byte outer header instead of 20).
pub const IPV6_OVERHEAD: u32 = 70;
/// First wait before retrying to recreate a deleted link.
pub const RECREATE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts to recreate a deleted link.
pub const RECREATE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How to set the kernel backend up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBackendConfig {
    /// The vxlan link's name: `vxdp.<VNI>` by default (flanneld uses `flannel.<VNI>`).
    pub device: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP destination port (8472 when the network config says 0).
    pub port: u16,
    /// The external interface's address: the outer source (`local`); IPv4 for the IPv4 link.
    pub local_ip: IpAddr,
    /// The external interface (`dev`).
    pub underlay_ifindex: u32,
    /// This node's VtepMAC: the link's MAC, stable across restarts.
    pub vtep_mac: MacAddr,
    /// The overlay MTU.
    pub mtu: u32,
    /// Let the kernel learn remote MACs from received frames (backend `Learning`).
    pub learning: bool,
    /// VXLAN Group Based Policy extension (backend `GBP`).
    pub gbp: bool,
    /// This node's lease; its base address goes on the link as a /32 (IPv6: /128).
    pub subnet: IpNet,
    /// DirectRouting: peers reachable without a gateway get a plain route to their PublicIP.
    pub direct_routing: bool,
    /// The IPv6 overlay of a dual-stack network: a second link over the IPv6 underlay, as
    /// flanneld's `flannel-v6.<VNI>`. Same VNI, port, MTU and options as the IPv4 link.
    pub ipv6: Option<KernelV6Config>,
}

/// The IPv6 link of a dual-stack network (flanneld's `flannel-v6.<VNI>`): what differs from
/// the IPv4 link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelV6Config {
    /// The link's name: `vxdp-v6.<VNI>` by default.
    pub device: String,
    /// The external interface's IPv6 address: the outer source (`local6`).
    pub local_ip: Ipv6Addr,
    /// This node's IPv6 VtepMAC (`BackendV6Data`): the link's MAC.
    pub vtep_mac: MacAddr,
    /// This node's IPv6 lease; its base address goes on the link as a /128.
    pub subnet: Ipv6Net,
}

impl KernelBackendConfig {
    /// vxdp's default link name for `vni`.
    pub fn default_device(vni: u32) -> String {
        format!("vxdp.{vni}")
    }

    /// vxdp's default IPv6 link name for `vni` (flanneld: `flannel-v6.<VNI>`).
    pub fn default_v6_device(vni: u32) -> String {
        format!("vxdp-v6.{vni}")
    }

    /// The IPv6 link's name beside the IPv4 link `device`: `flannel-v6.<VNI>` when vxdp takes
    /// over flanneld's `flannel.<VNI>`, else `vxdp-v6.<VNI>`.
    pub fn v6_device_for(device: &str, vni: u32) -> String {
        if device == format!("flannel.{vni}") {
            format!("flannel-v6.{vni}")
        } else {
            Self::default_v6_device(vni)
        }
    }

    /// The config of the IPv6 link, as a link config of its own.
    fn v6_link(&self) -> Option<KernelBackendConfig> {
        self.ipv6.as_ref().map(|v6| KernelBackendConfig {
            device: v6.device.clone(),
            local_ip: IpAddr::V6(v6.local_ip),
            vtep_mac: v6.vtep_mac,
            subnet: IpNet::V6(v6.subnet),
            ipv6: None,
            ..self.clone()
        })
    }

    /// Outer headers the underlay of this link adds.
    fn overhead(&self) -> u32 {
        if self.local_ip.is_ipv6() {
            IPV6_OVERHEAD
        } else {
            IPV4_OVERHEAD
        }
    }

    /// The vxlan attributes the link must have.
    pub fn vxlan_attrs(&self) -> VxlanAttrs {
        VxlanAttrs {
            vni: self.vni,
            dev: Some(self.underlay_ifindex),
            local: Some(self.local_ip),
            group: None,
            port: Some(self.port),
            learning: self.learning,
            l2miss: false,
            gbp: self.gbp,
            udp_csum: true,
            ageing: Some(AGEING_SECS),
        }
    }

    fn link_spec(&self) -> VxlanLinkSpec {
        VxlanLinkSpec {
            name: self.device.clone(),
            mac: self.vtep_mac,
            mtu: self.mtu,
            attrs: self.vxlan_attrs(),
        }
    }
}

/// Why the kernel backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum KernelBackendError {
    /// A netlink operation failed (the message names it and its object).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The external interface does not exist.
    #[error("the external interface #{0} does not exist: check --iface")]
    NoUnderlay(u32),
    /// The overlay MTU does not fit the external interface.
    #[error(
        "overlay MTU {mtu} needs an external interface MTU of at least {needed}, but {iface} has \
         {have}: lower the backend MTU in the network config or raise the MTU of {iface}"
    )]
    MtuTooLarge {
        /// The overlay MTU asked for.
        mtu: u32,
        /// What the external interface would need.
        needed: u32,
        /// The external interface.
        iface: String,
        /// Its MTU.
        have: u32,
    },
    /// The link is not what was created (it vanished, or is not vxlan, or kept another MAC).
    #[error("vxlan link {device}: {problem}")]
    Link {
        /// The link name.
        device: String,
        /// What is wrong.
        problem: String,
    },
}

/// Why an existing link of the wanted name cannot be reused, or `None` when it can: flanneld's
/// `vxlanLinksIncompat` (device.go), plus `learning`.
pub fn incompatibility(wanted: &VxlanAttrs, existing: &LinkDetails) -> Option<String> {
    let Some(have) = &existing.vxlan else {
        return Some(format!(
            "link type: {} is not vxlan",
            existing.link.kind.as_deref().unwrap_or("a plain device")
        ));
    };
    fn differ<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
        matches!((a, b), (Some(a), Some(b)) if a != b)
    }
    if wanted.vni != have.vni {
        return Some(format!("vni: {} (wanted {})", have.vni, wanted.vni));
    }
    if differ(wanted.dev, have.dev) {
        return Some(format!(
            "vtep (external) interface: #{} (wanted #{})",
            have.dev.unwrap_or(0),
            wanted.dev.unwrap_or(0)
        ));
    }
    if differ(wanted.local, have.local) {
        return Some(format!(
            "vtep (external) IP: {} (wanted {})",
            have.local.map(|a| a.to_string()).unwrap_or_default(),
            wanted.local.map(|a| a.to_string()).unwrap_or_default()
        ));
    }
    if differ(wanted.group, have.group) {
        return Some(format!(
            "group address: {} (wanted {})",
            have.group.map(|a| a.to_string()).unwrap_or_default(),
            wanted.group.map(|a| a.to_string()).unwrap_or_default()
        ));
    }
    if wanted.l2miss != have.l2miss {
        return Some(format!(
            "l2miss: {} (wanted {})",
            have.l2miss, wanted.l2miss
        ));
    }
    if differ(wanted.port, have.port) {
        return Some(format!(
            "dstport: {} (wanted {})",
            have.port.unwrap_or(0),
            wanted.port.unwrap_or(0)
        ));
    }
    if wanted.gbp != have.gbp {
        return Some(format!("gbp: {} (wanted {})", have.gbp, wanted.gbp));
    }
    if wanted.learning != have.learning {
        return Some(format!(
            "learning: {} (wanted {})",
            have.learning, wanted.learning
        ));
    }
    None
}

/// Pacing of attempts to recreate the link: the first at once, then 1 s, doubling up to 30 s;
/// reset by a success. Time is passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
    next: Option<Instant>,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: RECREATE_BACKOFF_MIN,
            next: None,
            attempts: 0,
        }
    }
}

impl Backoff {
    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Counts an attempt; returns its number (1 for the first since the last reset).
    pub fn attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// Records a failed attempt at `now`; returns how long until the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.next = Some(now + wait);
        self.delay = (wait * 2).min(RECREATE_BACKOFF_MAX);
        wait
    }

    /// Back to the start, after a success.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// What is in the kernel for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Programmed {
    /// Neighbour gateway -> VtepMAC, FDB VtepMAC -> PublicIP, route via gateway onlink.
    Vxlan {
        gateway: IpAddr,
        vtep_mac: MacAddr,
        public_ip: IpAddr,
    },
    /// `subnet via PublicIP` (DirectRouting).
    Direct { public_ip: IpAddr },
}

/// How the link came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkOrigin {
    Created,
    Reused,
    Recreated(String),
}

/// The state of the link seen by [`KernelBackend::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkHealth {
    Healthy,
    /// Present (with this index) but set down.
    Down(u32),
    Missing,
}

/// One address family's view of a peer: what one vxlan link programs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FamilyPeer {
    subnet: IpNet,
    gateway: IpAddr,
    public_ip: IpAddr,
    vtep_mac: MacAddr,
}

impl FamilyPeer {
    /// The IPv4 half, when the peer's lease has one.
    fn v4(peer: &Peer) -> Option<FamilyPeer> {
        let v4 = peer.ipv4.as_ref()?;
        Some(FamilyPeer {
            subnet: IpNet::V4(v4.subnet),
            gateway: IpAddr::V4(v4.gateway()),
            public_ip: IpAddr::V4(v4.public_ip),
            vtep_mac: v4.vtep_mac,
        })
    }

    /// The IPv6 half, when the peer has one it can be reached on (a PublicIPv6).
    fn v6(peer: &Peer) -> Option<FamilyPeer> {
        let v6 = peer.ipv6.as_ref()?;
        Some(FamilyPeer {
            subnet: IpNet::V6(v6.subnet),
            gateway: IpAddr::V6(v6.subnet.network()),
            public_ip: IpAddr::V6(v6.public_ip?),
            vtep_mac: v6.vtep_mac,
        })
    }
}

/// The running kernel backend: the IPv4 vxlan link and, in a dual-stack network, the IPv6 one;
/// in an IPv6-only network only the IPv6 link (flanneld then creates only `flannel-v6.<VNI>`).
#[derive(Debug)]
pub struct KernelBackend {
    v4: Option<KernelLink>,
    v6: Option<KernelLink>,
    /// Each peer's IPv4 half as programmed on the IPv4 link, by lease key.
    v4_of: BTreeMap<SubnetKey, FamilyPeer>,
    /// Each peer's IPv6 half as programmed on the IPv6 link, by lease key.
    v6_of: BTreeMap<SubnetKey, FamilyPeer>,
}

/// One vxlan link and the peers programmed on it.
#[derive(Debug)]
struct KernelLink {
    nl: Netlink,
    config: KernelBackendConfig,
    /// The link's index; `None` while it is missing.
    index: Option<u32>,
    /// Every peer the backend was given, programmed or not.
    peers: BTreeMap<IpNet, FamilyPeer>,
    /// What is in the kernel, per peer subnet.
    programmed: BTreeMap<IpNet, Programmed>,
    /// Peers that failed to be programmed again after the link was restored.
    pending: BTreeSet<IpNet>,
    backoff: Backoff,
    summary: String,
}

fn is_gone(e: &NetlinkError) -> bool {
    e.raw_os_error() == Some(libc::ENODEV)
}

impl KernelBackend {
    /// Creates (or reuses, or recreates) the vxlan link(s), configures their addresses and sets
    /// them up. A config whose `subnet` is IPv6 (and `ipv6` none) describes the one link of an
    /// IPv6-only network: it is started as the IPv6 link, and there is no IPv4 link.
    pub async fn start(
        nl: Netlink,
        config: KernelBackendConfig,
    ) -> Result<KernelBackend, KernelBackendError> {
        if config.subnet.addr().is_ipv6() {
            let v6 = KernelLink::start(nl, config).await?;
            return Ok(KernelBackend {
                v4: None,
                v6: Some(v6),
                v4_of: BTreeMap::new(),
                v6_of: BTreeMap::new(),
            });
        }
        let v6_config = config.v6_link();
        let v4 = KernelLink::start(nl.clone(), config).await?;
        let v6 = match v6_config {
            None => None,
            Some(c) => match KernelLink::start(nl, c).await {
                Ok(l) => Some(l),
                Err(e) => {
                    v4.shutdown(Teardown::Remove).await;
                    return Err(e);
                }
            },
        };
        Ok(KernelBackend {
            v4: Some(v4),
            v6,
            v4_of: BTreeMap::new(),
            v6_of: BTreeMap::new(),
        })
    }

    /// The links, IPv4 first.
    fn links(&self) -> impl Iterator<Item = &KernelLink> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The one-line description of the link(s) for the mode log.
    pub fn summary(&self) -> String {
        match (&self.v4, &self.v6) {
            (Some(v4), Some(v6)) => format!("{}; IPv6: {}", v4.summary, v6.summary),
            (Some(l), None) | (None, Some(l)) => l.summary.clone(),
            (None, None) => String::new(),
        }
    }

    /// The first vxlan link's name: the IPv4 link's, or in an IPv6-only network the IPv6 one's.
    pub fn device(&self) -> &str {
        self.links().next().map_or("", |l| l.config.device.as_str())
    }

    /// The first vxlan link's index; `None` while it is missing and not yet recreated.
    pub fn link_index(&self) -> Option<u32> {
        self.links().next().and_then(|l| l.index)
    }

    /// The IPv6 vxlan link's name, in a dual-stack or IPv6-only network.
    pub fn v6_device(&self) -> Option<&str> {
        self.v6.as_ref().map(|l| l.config.device.as_str())
    }
}

/// Programs one family's half of the peer named `key` on `link`: replaces or removes what the
/// peer had there before (`of`), adds the new half when there is one.
async fn sync_half(
    link: &mut KernelLink,
    of: &mut BTreeMap<SubnetKey, FamilyPeer>,
    key: SubnetKey,
    new: Option<FamilyPeer>,
) -> Result<(), BackendError> {
    // What this peer had on the link and no longer has (a new subnet, or none).
    let stale = match (of.get(&key), &new) {
        (Some(old), Some(new)) if old.subnet == new.subnet => None,
        (old, _) => old.cloned(),
    };
    if let Some(old) = stale {
        of.remove(&key);
        link.remove_peer(&old).await?;
    }
    if let Some(p) = new {
        link.add_peer(&p).await?;
        of.insert(key, p);
    }
    Ok(())
}

impl KernelLink {
    /// Creates (or reuses, or recreates) the vxlan link, configures its address and sets it up.
    async fn start(
        nl: Netlink,
        config: KernelBackendConfig,
    ) -> Result<KernelLink, KernelBackendError> {
        let underlay = nl
            .link_by_index(config.underlay_ifindex)
            .await?
            .ok_or(KernelBackendError::NoUnderlay(config.underlay_ifindex))?;
        let needed = config.mtu.saturating_add(config.overhead());
        if needed > underlay.mtu {
            return Err(KernelBackendError::MtuTooLarge {
                mtu: config.mtu,
                needed,
                iface: underlay.name,
                have: underlay.mtu,
            });
        }
        let (details, origin) = ensure_link(&nl, &config).await?;
        let reused = origin == LinkOrigin::Reused;
        if let Err(e) = configure_link(&nl, &config, &details, reused).await {
            if !reused {
                // Leave nothing half set up behind.
                let _ = nl.delete_link(details.link.index).await;
            }
            return Err(e);
        }

        let a = config.vxlan_attrs();
        let summary = format!(
            "backend kernel: vxlan link {} vni {} dstport {} local {} dev {} mtu {} {}{} udpcsum{} \
             ({})",
            config.device,
            config.vni,
            config.port,
            config.local_ip,
            underlay.name,
            config.mtu,
            if a.learning { "learning" } else { "nolearning" },
            if a.gbp { " gbp" } else { "" },
            if config.direct_routing {
                ", DirectRouting"
            } else {
                ""
            },
            match &origin {
                LinkOrigin::Created => "created".to_string(),
                LinkOrigin::Reused => "reused existing link".to_string(),
                LinkOrigin::Recreated(why) => format!("recreated an incompatible link: {why}"),
            }
        );
        tracing::info!("{summary}");
        Ok(KernelLink {
            nl,
            index: Some(details.link.index),
            config,
            peers: BTreeMap::new(),
            programmed: BTreeMap::new(),
            pending: BTreeSet::new(),
            backoff: Backoff::default(),
            summary,
        })
    }

    fn err(&self, what: &str, subnet: IpNet, e: impl std::fmt::Display) -> BackendError {
        BackendError(format!(
            "{what} peer {subnet} on {}: {e}",
            self.config.device
        ))
    }

    /// flannel's `ip.DirectRouting`: the kernel routes the PublicIP without a gateway (and, for
    /// vxdp, out of the external interface).
    async fn directly_reachable(&self, public_ip: IpAddr) -> bool {
        super::directly_reachable(&self.nl, public_ip, self.config.underlay_ifindex).await
    }

    /// Whether another programmed peer than `subnet` uses the FDB entry `mac` -> `ip` (a node
    /// holding two leases for a while, after it moved to a new subnet).
    fn fdb_shared(&self, subnet: IpNet, mac: MacAddr, ip: IpAddr) -> bool {
        self.programmed.iter().any(|(s, p)| {
            *s != subnet
                && matches!(p, Programmed::Vxlan { vtep_mac, public_ip, .. }
                    if *vtep_mac == mac && *public_ip == ip)
        })
    }

    /// Programs `peer` on link `index`, replacing whatever its subnet had.
    async fn program(&mut self, index: u32, peer: &FamilyPeer) -> Result<(), BackendError> {
        if self.config.direct_routing && self.directly_reachable(peer.public_ip).await {
            self.program_direct(index, peer).await
        } else {
            self.program_vxlan(index, peer).await
        }
    }

    async fn program_direct(&mut self, index: u32, peer: &FamilyPeer) -> Result<(), BackendError> {
        let subnet = peer.subnet;
        self.nl
            .replace_route(subnet, peer.public_ip, None, false, RouteProtocol::Boot)
            .await
            .map_err(|e| self.err("DirectRouting", subnet, e))?;
        let previous = self.programmed.insert(
            subnet,
            Programmed::Direct {
                public_ip: peer.public_ip,
            },
        );
        if let Some(old @ Programmed::Vxlan { .. }) = previous {
            // The route was replaced; the old neighbour and FDB entries must not linger.
            self.remove_entries(index, subnet, old, false).await;
        }
        tracing::debug!(subnet = %subnet, via = %peer.public_ip, "DirectRouting route added");
        Ok(())
    }

    async fn program_vxlan(&mut self, index: u32, peer: &FamilyPeer) -> Result<(), BackendError> {
        let subnet = peer.subnet;
        let gateway = peer.gateway;
        let new = Programmed::Vxlan {
            gateway,
            vtep_mac: peer.vtep_mac,
            public_ip: peer.public_ip,
        };
        let previous = self.programmed.get(&subnet).copied();

        // 1. neighbour: the gateway resolves to the peer's VtepMAC without ARP.
        self.nl
            .replace_permanent_neighbour(index, gateway, peer.vtep_mac)
            .await
            .map_err(|e| self.err("programming", subnet, e))?;
        // 2. FDB: frames to the VtepMAC go to the PublicIP.
        if let Err(e) = self
            .nl
            .replace_fdb(index, peer.vtep_mac, peer.public_ip)
            .await
        {
            let _ = self.nl.delete_neighbour(index, gateway).await;
            self.forget_after_failure(index, subnet, previous).await;
            return Err(self.err("programming", subnet, e));
        }
        // 3. route, last: before it the kernel would have to ARP for the gateway.
        if let Err(e) = self
            .nl
            .replace_route(subnet, gateway, Some(index), true, RouteProtocol::Boot)
            .await
        {
            if !self.fdb_shared(subnet, peer.vtep_mac, peer.public_ip) {
                let _ = self
                    .nl
                    .delete_fdb(index, peer.vtep_mac, peer.public_ip)
                    .await;
            }
            let _ = self.nl.delete_neighbour(index, gateway).await;
            self.forget_after_failure(index, subnet, previous).await;
            return Err(self.err("programming", subnet, e));
        }
        self.programmed.insert(subnet, new);

        // What the replaced programming had that the new one did not overwrite: the FDB entry
        // of an old VtepMAC or PublicIP (the neighbour and route were replaced in place).
        if let Some(Programmed::Vxlan {
            vtep_mac,
            public_ip,
            ..
        }) = previous
        {
            if (vtep_mac, public_ip) != (peer.vtep_mac, peer.public_ip)
                && !self.fdb_shared(subnet, vtep_mac, public_ip)
            {
                if let Err(e) = self.nl.delete_fdb(index, vtep_mac, public_ip).await {
                    tracing::warn!(subnet = %subnet, "removing the replaced FDB entry: {e}");
                }
            }
        }
        Ok(())
    }

    /// After a failed replacement the old programming is half overwritten: remove the rest, so
    /// the subnet has nothing stale until the peer is programmed again.
    async fn forget_after_failure(
        &mut self,
        index: u32,
        subnet: IpNet,
        previous: Option<Programmed>,
    ) {
        if let Some(old) = previous {
            self.programmed.remove(&subnet);
            self.remove_entries(index, subnet, old, true).await;
        }
    }

    /// Removes what `prog` put in the kernel for `subnet` (the route only when `route`),
    /// route first; already missing entries are fine. Returns the first failure.
    async fn remove_entries(
        &self,
        index: u32,
        subnet: IpNet,
        prog: Programmed,
        route: bool,
    ) -> Option<NetlinkError> {
        let dst = subnet;
        let mut first = None;
        let mut keep = |r: Result<(), NetlinkError>| {
            if let Err(e) = r {
                if !is_gone(&e) && first.is_none() {
                    first = Some(e);
                }
            }
        };
        match prog {
            Programmed::Vxlan {
                gateway,
                vtep_mac,
                public_ip,
            } => {
                if route {
                    keep(self.nl.delete_route(dst, gateway, Some(index)).await);
                }
                if !self.fdb_shared(subnet, vtep_mac, public_ip) {
                    keep(self.nl.delete_fdb(index, vtep_mac, public_ip).await);
                }
                keep(self.nl.delete_neighbour(index, gateway).await);
            }
            Programmed::Direct { public_ip } => {
                if route {
                    keep(self.nl.delete_route(dst, public_ip, None).await);
                }
            }
        }
        first
    }

    /// Looks at the link: there and up, set down, or gone.
    async fn health(&self) -> Result<LinkHealth, NetlinkError> {
        let Some(index) = self.index else {
            return Ok(LinkHealth::Missing);
        };
        Ok(match self.nl.link_by_index(index).await? {
            None => LinkHealth::Missing,
            Some(l) if !l.up => LinkHealth::Down(index),
            Some(_) => LinkHealth::Healthy,
        })
    }

    /// Brings the link back and programs every peer again: sets link `down` up again, or,
    /// with `None`, recreates the missing link.
    async fn restore(&mut self, down: Option<u32>) -> Result<u32, KernelBackendError> {
        let index = match down {
            None => {
                self.index = None;
                // Its neighbours, FDB entries and routes went with it.
                self.programmed
                    .retain(|_, p| matches!(p, Programmed::Direct { .. }));
                let (details, _) = ensure_link(&self.nl, &self.config).await?;
                configure_link(&self.nl, &self.config, &details, false).await?;
                details.link.index
            }
            Some(index) => {
                let details = self.nl.link_details_by_index(index).await?.ok_or_else(|| {
                    KernelBackendError::Link {
                        device: self.config.device.clone(),
                        problem: "vanished while being set up again".into(),
                    }
                })?;
                configure_link(&self.nl, &self.config, &details, false).await?;
                index
            }
        };
        self.index = Some(index);
        let peers: Vec<FamilyPeer> = self.peers.values().cloned().collect();
        self.pending.clear();
        for peer in &peers {
            if let Err(e) = self.program(index, peer).await {
                tracing::warn!(subnet = %peer.subnet, "programming peer again failed, will retry: {e}");
                self.pending.insert(peer.subnet);
            }
        }
        Ok(index)
    }

    /// Retries peers that could not be programmed again after a restore.
    async fn retry_pending(&mut self, index: u32) {
        for subnet in std::mem::take(&mut self.pending) {
            let Some(peer) = self.peers.get(&subnet).cloned() else {
                continue;
            };
            if let Err(e) = self.program(index, &peer).await {
                tracing::warn!(subnet = %subnet, "programming peer again failed, will retry: {e}");
                self.pending.insert(subnet);
            }
        }
    }

    /// Repairs the vxlan link when someone deleted it or set it down (with backoff), and
    /// retries peers that could not be programmed.
    async fn repair_link(&mut self) {
        let health = match self.health().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(device = %self.config.device, "checking the vxlan link: {e}");
                return;
            }
        };
        let down = match health {
            LinkHealth::Healthy => {
                self.backoff.reset();
                if let (Some(index), false) = (self.index, self.pending.is_empty()) {
                    self.retry_pending(index).await;
                }
                return;
            }
            LinkHealth::Missing => None,
            LinkHealth::Down(index) => Some(index),
        };
        let now = Instant::now();
        if !self.backoff.ready(now) {
            return;
        }
        let attempt = self.backoff.attempt();
        let device = self.config.device.clone();
        if down.is_none() {
            self.index = None;
            tracing::warn!(
                device = %device,
                attempt,
                "vxlan link {device} was deleted by someone else: recreating it (attempt {attempt})"
            );
        } else {
            tracing::warn!(
                device = %device,
                attempt,
                "vxlan link {device} was set down by someone else (the kernel dropped its routes \
                 and neighbours): setting it up again (attempt {attempt})"
            );
        }
        match self.restore(down).await {
            Ok(index) => {
                self.backoff.reset();
                tracing::info!(
                    device = %device,
                    index,
                    "vxlan link {device} restored with its address and {} peer(s){}",
                    self.peers.len(),
                    if self.pending.is_empty() {
                        String::new()
                    } else {
                        format!(", {} still to program", self.pending.len())
                    }
                );
            }
            Err(e) => {
                let wait = self.backoff.failed(now);
                tracing::warn!(
                    device = %device,
                    attempt,
                    "restoring vxlan link {device} failed: {e}; next attempt in {}s",
                    wait.as_secs()
                );
            }
        }
    }
}

/// flanneld's `ensureLink`: create; on `EEXIST` reuse a compatible link or delete and create.
async fn ensure_link(
    nl: &Netlink,
    config: &KernelBackendConfig,
) -> Result<(LinkDetails, LinkOrigin), KernelBackendError> {
    let spec = config.link_spec();
    let name = &config.device;
    let origin = match nl.create_vxlan_link(&spec).await {
        Ok(()) => LinkOrigin::Created,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            match nl.link_details_by_name(name).await? {
                // Deleted in between: create it after all.
                None => {
                    nl.create_vxlan_link(&spec).await?;
                    LinkOrigin::Created
                }
                Some(existing) => match incompatibility(&spec.attrs, &existing) {
                    None => {
                        tracing::info!(
                            device = %name,
                            index = existing.link.index,
                            "vxlan link already exists with a compatible configuration: reusing it"
                        );
                        LinkOrigin::Reused
                    }
                    Some(why) => {
                        tracing::warn!(
                            device = %name,
                            "{name} already exists with an incompatible configuration ({why}): \
                             deleting and recreating it"
                        );
                        nl.delete_link(existing.link.index).await?;
                        nl.create_vxlan_link(&spec).await?;
                        LinkOrigin::Recreated(why)
                    }
                },
            }
        }
        Err(e) => return Err(e.into()),
    };
    let details = nl
        .link_details_by_name(name)
        .await?
        .ok_or_else(|| KernelBackendError::Link {
            device: name.clone(),
            problem: "vanished right after it was created; is another program deleting it?".into(),
        })?;
    if details.vxlan.is_none() {
        return Err(KernelBackendError::Link {
            device: name.clone(),
            problem: format!(
                "is of kind {}, not vxlan, right after it was created",
                details.link.kind.as_deref().unwrap_or("none")
            ),
        });
    }
    // No IPv6 router advertisements on the overlay (flanneld's newVXLANDevice); absent when
    // IPv6 is disabled, and flanneld ignores failures too.
    let accept_ra = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
    if let Err(e) = std::fs::write(&accept_ra, "0") {
        tracing::debug!("cannot write {accept_ra}: {e}");
    }
    Ok((details, origin))
}

/// flanneld's `Configure`: the lease's base address as the only IPv4 address (a /32, so no
/// subnet or broadcast route appears), the link up, and its MAC checked. A reused link first
/// gets vxdp's MAC and MTU.
async fn configure_link(
    nl: &Netlink,
    config: &KernelBackendConfig,
    details: &LinkDetails,
    reused: bool,
) -> Result<(), KernelBackendError> {
    let index = details.link.index;
    let name = &config.device;
    if details.link.mac != Some(config.vtep_mac) {
        if reused {
            tracing::info!(
                device = %name,
                "setting the existing link's MAC {} to vxdp's VtepMAC {}",
                details.link.mac.map(|m| m.to_string()).unwrap_or_default(),
                config.vtep_mac
            );
        }
        nl.set_link_mac(index, config.vtep_mac).await?;
    }
    if details.link.mtu != config.mtu {
        if reused {
            tracing::info!(
                device = %name,
                "setting the existing link's MTU {} to {}",
                details.link.mtu,
                config.mtu
            );
        }
        nl.set_link_mtu(index, config.mtu).await?;
    }
    let own = config.subnet.network();
    let own_len = if own.is_ipv4() { 32 } else { 128 };
    for (ip, prefix) in nl.addresses(index).await? {
        // The kernel's own fe80::/64 stays, as flanneld's EnsureV6AddressOnLink keeps it.
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if ip.is_ipv4() == own.is_ipv4() && !link_local && (ip, prefix) != (own, own_len) {
            nl.delete_address(index, ip, prefix).await?;
            tracing::info!(device = %name, "removed IP address {ip}/{prefix} from {name}");
        }
    }
    nl.ensure_address(index, own, own_len).await?;
    nl.set_up(index).await?;
    let mac = nl.link_by_index(index).await?.and_then(|l| l.mac);
    if mac != Some(config.vtep_mac) {
        return Err(KernelBackendError::Link {
            device: name.clone(),
            problem: format!(
                "has MAC {} but vxdp's VtepMAC is {}: the kernel did not take the address",
                mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into()),
                config.vtep_mac
            ),
        });
    }
    Ok(())
}

impl KernelLink {
    async fn add_peer(&mut self, peer: &FamilyPeer) -> Result<(), BackendError> {
        self.peers.insert(peer.subnet, peer.clone());
        let Some(index) = self.index else {
            // The link is gone; tick() recreates it and programs every peer then.
            self.pending.insert(peer.subnet);
            tracing::info!(
                subnet = %peer.subnet,
                "{} is missing: the peer will be programmed once it is recreated",
                self.config.device
            );
            return Ok(());
        };
        if let Err(e) = self.program(index, peer).await {
            // Deleted since the last tick: leave the peer to the restore, like the case above.
            if matches!(self.nl.link_by_index(index).await, Ok(None)) {
                self.index = None;
                self.pending.insert(peer.subnet);
                tracing::info!(
                    subnet = %peer.subnet,
                    "{} vanished: the peer will be programmed once it is recreated",
                    self.config.device
                );
                return Ok(());
            }
            return Err(e);
        }
        self.pending.remove(&peer.subnet);
        Ok(())
    }

    async fn remove_peer(&mut self, previous: &FamilyPeer) -> Result<(), BackendError> {
        let subnet = previous.subnet;
        self.peers.remove(&subnet);
        self.pending.remove(&subnet);
        let programmed = self.programmed.remove(&subnet);
        let Some(index) = self.index else {
            // The vxlan entries went with the link; a DirectRouting route did not.
            if let Some(Programmed::Direct { public_ip }) = programmed {
                let r = self.nl.delete_route(subnet, public_ip, None).await;
                r.map_err(|e| self.err("removing", subnet, e))?;
            }
            return Ok(());
        };
        // Not known as programmed (a failed attempt): remove what that peer would have had.
        let prog = programmed.unwrap_or(Programmed::Vxlan {
            gateway: previous.gateway,
            vtep_mac: previous.vtep_mac,
            public_ip: previous.public_ip,
        });
        match self.remove_entries(index, subnet, prog, true).await {
            None => Ok(()),
            Some(e) => Err(self.err("removing", subnet, e)),
        }
    }

    async fn shutdown(self, teardown: Teardown) {
        if teardown == Teardown::Keep {
            // The kernel forwards on its own: the link, its entries and routes stay, and the
            // next start reuses them (flanneld's ensureLink).
            tracing::info!(
                "kernel backend stopped: vxlan link {} and its routes stay for the next start",
                self.config.device
            );
            return;
        }
        for (subnet, prog) in &self.programmed {
            if let Programmed::Direct { public_ip } = prog {
                if let Err(e) = self.nl.delete_route(*subnet, *public_ip, None).await {
                    tracing::warn!(subnet = %subnet, "removing the DirectRouting route: {e}");
                }
            }
        }
        // Deleting the link removes its address, neighbours, FDB entries and routes.
        if let Some(index) = self.index {
            match self.nl.delete_link(index).await {
                Ok(()) => tracing::info!(
                    "kernel backend stopped: vxlan link {} deleted",
                    self.config.device
                ),
                Err(e) if is_gone(&e) => {}
                Err(e) => tracing::warn!(
                    "kernel backend stopped, but the vxlan link {} is left behind: {e}",
                    self.config.device
                ),
            }
        }
    }
}

impl Backend for KernelBackend {
    fn name(&self) -> &'static str {
        "kernel"
    }

    async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
        if let Some(v4) = &mut self.v4 {
            let new = FamilyPeer::v4(peer);
            if new.is_none() {
                tracing::warn!(
                    subnet = %peer.key,
                    "peer's lease has no IPv4 subnet (it runs IPv6 only): its pods are not \
                     reachable over IPv4"
                );
            }
            sync_half(v4, &mut self.v4_of, peer.key, new).await?;
        }
        if let Some(v6) = &mut self.v6 {
            let new = FamilyPeer::v6(peer);
            if new.is_none() {
                tracing::warn!(
                    subnet = %peer.key,
                    "peer's lease has no IPv6 subnet with a PublicIPv6 (IPv6 turned on since it \
                     registered, or it runs IPv4 only): its pods are not reachable over IPv6"
                );
            }
            sync_half(v6, &mut self.v6_of, peer.key, new).await?;
        }
        Ok(())
    }

    async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
        let mut r4 = Ok(());
        if let Some(v4) = &mut self.v4 {
            let known = self.v4_of.remove(&previous.key);
            if let Some(p) = known.or_else(|| FamilyPeer::v4(previous)) {
                r4 = v4.remove_peer(&p).await;
            }
        }
        if let Some(v6) = &mut self.v6 {
            let known = self.v6_of.remove(&previous.key);
            if let Some(p) = known.or_else(|| FamilyPeer::v6(previous)) {
                v6.remove_peer(&p).await?;
            }
        }
        r4
    }

    async fn tick(&mut self) -> Result<(), BackendError> {
        // The kernel forwards on its own: upkeep repairs, it never fails the daemon.
        if let Some(v4) = &mut self.v4 {
            v4.repair_link().await;
        }
        if let Some(v6) = &mut self.v6 {
            v6.repair_link().await;
        }
        Ok(())
    }

    async fn shutdown(self, teardown: Teardown) {
        if let Some(v6) = self.v6 {
            v6.shutdown(teardown).await;
        }
        if let Some(v4) = self.v4 {
            v4.shutdown(teardown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::netlink::Link;
    use std::net::Ipv4Addr;

    fn wanted() -> VxlanAttrs {
        KernelBackendConfig {
            device: KernelBackendConfig::default_device(1),
            vni: 1,
            port: 8472,
            local_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            underlay_ifindex: 2,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            learning: false,
            gbp: false,
            subnet: "10.5.1.0/24".parse().unwrap(),
            direct_routing: false,
            ipv6: None,
        }
        .vxlan_attrs()
    }

    #[test]
    fn the_ipv6_link_is_the_ipv4_one_over_the_ipv6_underlay() {
        let v4 = KernelBackendConfig {
            device: KernelBackendConfig::default_device(7),
            vni: 7,
            port: 8472,
            local_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            underlay_ifindex: 2,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1430,
            learning: false,
            gbp: false,
            subnet: "10.5.1.0/24".parse().unwrap(),
            direct_routing: false,
            ipv6: Some(KernelV6Config {
                device: KernelBackendConfig::default_v6_device(7),
                local_ip: "2001:db8::1".parse().unwrap(),
                vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                subnet: "fd00:0:0:1::/64".parse().unwrap(),
            }),
        };
        assert_eq!(v4.overhead(), 50);
        let v6 = v4.v6_link().unwrap();
        assert_eq!(v6.device, "vxdp-v6.7");
        assert_eq!(v6.overhead(), 70);
        assert_eq!(v6.ipv6, None);
        assert_eq!((v6.vni, v6.port, v6.mtu), (7, 8472, 1430));
        let a = v6.vxlan_attrs();
        assert_eq!(a.local, Some("2001:db8::1".parse().unwrap()));
        assert_eq!((a.dev, a.udp_csum, a.ageing), (Some(2), true, Some(300)));
        assert_eq!(v6.link_spec().mac, MacAddr([2, 0, 0, 0, 0, 2]));
        // A peer's halves: its IPv6 gateway is its IPv6 subnet's base, sent to its PublicIPv6.
        let peer = Peer {
            key: "10.5.2.0-24&fd00:0:0:2::-64".parse().unwrap(),
            ipv4: Some(control::backend::PeerV4 {
                subnet: "10.5.2.0/24".parse().unwrap(),
                public_ip: "192.0.2.2".parse().unwrap(),
                vtep_mac: MacAddr([2, 0, 0, 0, 0, 3]),
            }),
            ipv6: Some(control::backend::PeerV6 {
                subnet: "fd00:0:0:2::/64".parse().unwrap(),
                public_ip: Some("2001:db8::2".parse().unwrap()),
                vtep_mac: MacAddr([2, 0, 0, 0, 0, 4]),
            }),
        };
        let h = FamilyPeer::v6(&peer).unwrap();
        assert_eq!(h.gateway, "fd00:0:0:2::".parse::<IpAddr>().unwrap());
        assert_eq!(h.public_ip, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            FamilyPeer::v4(&peer).unwrap().gateway,
            "10.5.2.0".parse::<IpAddr>().unwrap()
        );
        // Without a PublicIPv6 the IPv6 half cannot be reached.
        let mut no_v6_ip = peer.clone();
        if let Some(v6) = &mut no_v6_ip.ipv6 {
            v6.public_ip = None;
        }
        assert_eq!(FamilyPeer::v6(&no_v6_ip), None);
        // An IPv6-only peer has no IPv4 half to program.
        let mut v6_only = peer.clone();
        v6_only.ipv4 = None;
        v6_only.key = "0.0.0.0-0&fd00:0:0:2::-64".parse().unwrap();
        assert_eq!(FamilyPeer::v4(&v6_only), None);
        assert_eq!(FamilyPeer::v6(&v6_only), FamilyPeer::v6(&peer));
    }

    fn existing(vxlan: Option<VxlanAttrs>, kind: &str) -> LinkDetails {
        LinkDetails {
            link: Link {
                index: 9,
                name: "vxdp.1".into(),
                mtu: 1450,
                mac: None,
                up: true,
                kind: Some(kind.into()),
            },
            vxlan,
        }
    }

    #[test]
    fn compatible_links_are_those_flannel_would_reuse() {
        let w = wanted();
        assert_eq!(
            incompatibility(&w, &existing(Some(w.clone()), "vxlan")),
            None
        );
        // Attributes the existing link lacks are not compared (flannel: "both > 0").
        let sparse = VxlanAttrs {
            dev: None,
            local: None,
            port: None,
            ageing: None,
            udp_csum: false,
            ..w.clone()
        };
        assert_eq!(incompatibility(&w, &existing(Some(sparse), "vxlan")), None);
    }

    #[test]
    fn incompatible_links_say_why() {
        let w = wanted();
        let cases: [(VxlanAttrs, &str); 7] = [
            (
                VxlanAttrs {
                    vni: 2,
                    ..w.clone()
                },
                "vni: 2 (wanted 1)",
            ),
            (
                VxlanAttrs {
                    dev: Some(3),
                    ..w.clone()
                },
                "vtep (external) interface: #3 (wanted #2)",
            ),
            (
                VxlanAttrs {
                    local: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))),
                    ..w.clone()
                },
                "vtep (external) IP: 192.0.2.9 (wanted 192.0.2.1)",
            ),
            (
                VxlanAttrs {
                    l2miss: true,
                    ..w.clone()
                },
                "l2miss: true (wanted false)",
            ),
            (
                VxlanAttrs {
                    port: Some(4789),
                    ..w.clone()
                },
                "dstport: 4789 (wanted 8472)",
            ),
            (
                VxlanAttrs {
                    gbp: true,
                    ..w.clone()
                },
                "gbp: true (wanted false)",
            ),
            (
                VxlanAttrs {
                    learning: true,
                    ..w.clone()
                },
                "learning: true (wanted false)",
            ),
        ];
        for (have, why) in cases {
            assert_eq!(
                incompatibility(&w, &existing(Some(have), "vxlan")).as_deref(),
                Some(why)
            );
        }
        assert_eq!(
            incompatibility(&w, &existing(None, "veth")).as_deref(),
            Some("link type: veth is not vxlan")
        );
    }

    #[test]
    fn backoff_starts_at_once_doubles_to_thirty_seconds_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.ready(t0));
        assert_eq!(b.attempt(), 1);
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let w = b.failed(t);
            assert!(!b.ready(t + w - Duration::from_millis(1)));
            t += w;
            assert!(b.ready(t));
            waits.push(w.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert!(b.ready(t));
        assert_eq!(b.attempt(), 1);
        assert_eq!(b.failed(t), RECREATE_BACKOFF_MIN);
    }
}
