//! flanneld's `--ip-blackhole-route`: a blackhole route for this node's own lease subnet.
//!
//! Pods of this node live in its lease subnet; with the bridge CNI plugin the `cni0` address
//! route keeps that subnet local. Without it (Canal, host-local /32 routes per pod), a packet for
//! an address of the subnet that no pod holds matches no specific route and leaves by the default
//! route, towards a gateway that sends it back: a loop until the TTL runs out. The blackhole route
//! (`ip route add blackhole 10.244.5.0/24`) catches those packets here; per-pod routes are longer
//! prefixes and still win.
//!
//! What flannel does (`main.go`, `pkg/ip/iface.go` `AddBlackholeV4Route`), and vxdp with it:
//! - the route: type blackhole, destination the lease subnet, main table, scope universe,
//!   metric 0, `proto boot` (the default of flannel's netlink library);
//! - "present" means a main-table route of type blackhole to exactly that subnet; only when none
//!   is found is one added, so a node moved from flanneld keeps the route flanneld left;
//! - it is checked again every `--iptables-resync` seconds and put back when someone deleted it.
//!   flannel adds it first after one such period; vxdp adds it before it reports ready, so there
//!   is no window in which the subnet has no route;
//! - when another route to the subnet with metric 0 exists (the `cni0` route of the bridge
//!   plugin), the kernel refuses the blackhole (`EEXIST`); flannel logs that error every period,
//!   vxdp once (the other route already keeps the subnet's traffic on this node).
//!
//! flanneld never removes the route (it leaves everything in place when it stops). vxdp removes it
//! when it lets go of the lease (a clean stop releases it; a revoked or taken-over lease is no
//! longer this node's), since the subnet may then be given to another node whose pods this
//! route would black-hole; when vxdp exits with an error and keeps its lease, the route stays
//! for the next start, as flanneld's does.

use ipnet::IpNet;

use crate::netlink::{Netlink, NetlinkError};

/// The blackhole route for this node's lease subnet.
#[derive(Debug)]
pub struct BlackholeRoute {
    nl: Netlink,
    subnet: IpNet,
}

impl BlackholeRoute {
    /// The route for `subnet` (host bits are cleared).
    pub fn new(nl: Netlink, subnet: IpNet) -> BlackholeRoute {
        BlackholeRoute {
            nl,
            subnet: subnet.trunc(),
        }
    }

    /// The subnet it black-holes.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// Adds the route unless the main table has a blackhole route to the subnet; `Ok(true)` when
    /// it had to add it. An `EEXIST` error means another route to the subnet (see the module doc).
    pub async fn ensure(&self) -> Result<bool, NetlinkError> {
        if self.nl.has_blackhole_route(self.subnet).await? {
            return Ok(false);
        }
        self.nl.add_blackhole_route(self.subnet).await?;
        Ok(true)
    }

    /// Deletes the blackhole route to the subnet (only that one: other routes to it stay).
    pub async fn remove(&self) -> Result<(), NetlinkError> {
        self.nl.delete_blackhole_route(self.subnet).await
    }

    /// What an `ensure` error means for the operator.
    pub fn explain(&self, err: &NetlinkError) -> String {
        if err.raw_os_error() == Some(libc::EEXIST) {
            format!(
                "cannot add the blackhole route for {}: another route to it with metric 0 is in \
                 the main table (the cni0 route of the bridge CNI plugin?); that route already \
                 keeps the subnet's traffic on this node, so --ip-blackhole-route is not needed \
                 here ({err})",
                self.subnet
            )
        } else {
            format!(
                "cannot add the blackhole route for {}: {err}; check `ip route show {}`",
                self.subnet, self.subnet
            )
        }
    }
}
