//! The underlay next hop towards each peer VTEP.
//!
//! AF_XDP transmits bypass the kernel's routing and ARP, so vxdp asks the kernel what it would
//! do (`ip route get PEER`, then the neighbour table for the gateway or the peer itself) and
//! writes the answer into the prebuilt outer headers. When the neighbour is unknown it asks the
//! kernel to resolve it (`ip neigh replace ... use`) and tries again on the next refresh.

use std::net::IpAddr;

use dataplane::wire::MacAddr;

use crate::netlink::{Netlink, NetlinkError};

/// How to reach one peer VTEP on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Our MAC on that interface (outer source).
    pub src_mac: MacAddr,
    /// The address whose MAC we need: the gateway, or the peer when it is on-link.
    pub via: IpAddr,
    /// The next hop's MAC (outer destination), once known.
    pub dst_mac: Option<MacAddr>,
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

/// Resolves the next hop to `peer`, which must leave through interface `ifindex` (`iface`).
/// When the next hop's MAC is unknown, asks the kernel to resolve it and returns
/// `dst_mac: None`; call again later.
pub async fn resolve(
    nl: &Netlink,
    peer: IpAddr,
    ifindex: u32,
    iface: &str,
) -> Result<NextHop, UnderlayError> {
    let route = nl.route_to(peer).await?;
    if route.oif != ifindex {
        return Err(UnderlayError::WrongInterface {
            peer,
            oif: route.oif,
            iface: iface.to_string(),
            ifindex,
        });
    }
    let link = nl
        .link_by_index(ifindex)
        .await?
        .ok_or(UnderlayError::NoMac(ifindex))?;
    let src_mac = link.mac.ok_or(UnderlayError::NoMac(ifindex))?;
    let via = route.gateway.unwrap_or(peer);
    let dst_mac = match nl.neighbour(ifindex, via).await? {
        Some(n) if n.usable => n.mac,
        _ => None,
    };
    if dst_mac.is_none() {
        nl.probe_neighbour(ifindex, via).await?;
    }
    Ok(NextHop {
        ifindex,
        src_mac,
        via,
        dst_mac,
    })
}
