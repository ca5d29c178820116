//! What a dataplane backend (AF_XDP or the kernel vxlan link) is told, and the one piece of
//! logic that turns lease events into it.
//!
//! [`PeerSync`] is the only consumer of lease events: it skips this node's own lease, ignores
//! leases of other backend types and undecodable ones (with a warning, never fatally), and
//! hands the backend whole peers to add, replace or remove. Both backends therefore see exactly
//! the same sequence, and neither contains lease logic.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use packet::wire::MacAddr;

use crate::lease::{Lease, LeaseEvent};

/// A remote node, as the backends need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its IPv4 subnet (the lease key).
    pub subnet: Ipv4Net,
    /// Its IPv4 underlay address (outer destination).
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC for the IPv4 overlay.
    pub vtep_mac: MacAddr,
    /// Its IPv6 half, on dual-stack leases.
    pub ipv6: Option<PeerV6>,
}

/// The IPv6 half of a dual-stack peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerV6 {
    /// Its IPv6 subnet.
    pub subnet: Ipv6Net,
    /// Its IPv6 underlay address, if it has one.
    pub public_ip: Option<Ipv6Addr>,
    /// Its VTEP MAC for the IPv6 overlay.
    pub vtep_mac: MacAddr,
}

impl Peer {
    /// The gateway address for the peer's subnet (its base address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// Why a lease does not describe a usable vxlan peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The lease belongs to another backend type.
    #[error("lease {subnet} is of backend type {backend_type:?}, not vxlan: ignored")]
    NotVxlan {
        /// Lease subnet.
        subnet: Ipv4Net,
        /// Its BackendType.
        backend_type: String,
    },
    /// The lease's backend data could not be decoded.
    #[error("lease {subnet} has unusable vxlan backend data: {reason}")]
    BadBackendData {
        /// Lease subnet.
        subnet: Ipv4Net,
        /// What is wrong.
        reason: String,
    },
}

impl Peer {
    /// The peer a lease describes.
    pub fn from_lease(lease: &Lease) -> Result<Peer, PeerError> {
        if !lease.attrs.is_vxlan() {
            return Err(PeerError::NotVxlan {
                subnet: lease.subnet,
                backend_type: lease.attrs.backend_type.clone(),
            });
        }
        let bad = |reason: String| PeerError::BadBackendData {
            subnet: lease.subnet,
            reason,
        };
        let data = lease.attrs.vxlan_data().map_err(|e| bad(e.to_string()))?;
        if !data.vtep_mac.is_unicast() {
            return Err(bad(format!(
                "VtepMAC {} is not a unicast address",
                data.vtep_mac
            )));
        }
        let ipv6 = match lease.ipv6_subnet {
            None => None,
            Some(subnet) => {
                let v6 = lease
                    .attrs
                    .vxlan_v6_data()
                    .map_err(|e| bad(e.to_string()))?;
                Some(PeerV6 {
                    subnet,
                    public_ip: lease.attrs.public_ipv6,
                    vtep_mac: v6.vtep_mac,
                })
            }
        };
        Ok(Peer {
            subnet: lease.subnet,
            public_ip: lease.attrs.public_ip,
            vtep_mac: data.vtep_mac,
            ipv6,
        })
    }
}

/// A backend failure: named operation, the peer, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What a stopping backend leaves on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Everything that forwards stays (device, address, routes, neighbour and FDB entries), as
    /// flanneld leaves flannel.1 when it stops: a restart or upgrade adopts it, and peers never
    /// lose their path to this node. Only what would black-hole traffic without this process
    /// goes (the XDP program).
    Keep,
    /// Everything the backend created is removed (`vxdp cleanup`, `--cleanup-on-exit`, a lease
    /// that is no longer ours).
    Remove,
}

/// A dataplane: it programs peers. `add_peer` for a subnet it already has replaces it whole.
pub trait Backend: Send {
    /// `xdp` or `kernel`.
    fn name(&self) -> &'static str;

    /// Adds `peer`, or replaces the peer that holds the same subnet.
    fn add_peer(&mut self, peer: &Peer) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes the peer that holds `subnet` (`previous` is what was programmed for it).
    fn remove_peer(
        &mut self,
        previous: &Peer,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Periodic upkeep (about once a second): underlay next hops, a deleted link, ...
    /// An error means the backend can no longer forward and cannot repair itself (a worker
    /// died): the daemon stops and exits non-zero, so that the service manager restarts it.
    fn tick(&mut self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stops forwarding; with [`Teardown::Remove`], also undoes everything the backend created
    /// on this host.
    fn shutdown(self, teardown: Teardown) -> impl Future<Output = ()> + Send;
}

/// Applies lease events to a backend, skipping this node's own lease.
#[derive(Debug)]
pub struct PeerSync<B> {
    backend: B,
    own_subnet: Ipv4Net,
    peers: BTreeMap<Ipv4Net, Peer>,
    failed: BTreeMap<Ipv4Net, Peer>,
}

/// What happened to this node's own lease in a batch of events.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnLease {
    /// Not mentioned.
    Untouched,
    /// Rewritten (a renewal, or somebody else's write).
    Written(Box<Lease>),
    /// Deleted by someone else: flanneld treats this as revocation.
    Removed,
}

impl<B: Backend> PeerSync<B> {
    /// Starts with no peers.
    pub fn new(backend: B, own_subnet: Ipv4Net) -> Self {
        PeerSync {
            backend,
            own_subnet,
            peers: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The programmed peers.
    pub fn peers(&self) -> &BTreeMap<Ipv4Net, Peer> {
        &self.peers
    }

    /// Applies a batch of events; reports what happened to this node's own lease.
    pub async fn apply(&mut self, events: Vec<LeaseEvent>) -> OwnLease {
        let mut own = OwnLease::Untouched;
        for event in events {
            let subnet = event.lease().subnet;
            if subnet == self.own_subnet {
                own = match event {
                    LeaseEvent::Added(l) => OwnLease::Written(Box::new(l)),
                    LeaseEvent::Removed(_) => OwnLease::Removed,
                };
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => self.add(&lease).await,
                LeaseEvent::Removed(_) => self.remove(subnet).await,
            }
        }
        own
    }

    /// Retries peers whose programming failed.
    pub async fn retry_failed(&mut self) {
        let failed = std::mem::take(&mut self.failed);
        for (_, peer) in failed {
            self.program(peer).await;
        }
    }

    async fn add(&mut self, lease: &Lease) {
        let peer = match Peer::from_lease(lease) {
            Ok(p) => p,
            Err(e @ PeerError::NotVxlan { .. }) => {
                tracing::warn!("{e}");
                return;
            }
            Err(e) => {
                tracing::warn!("{e}: skipped");
                return;
            }
        };
        if self.peers.get(&peer.subnet) == Some(&peer) {
            return; // a renewal: nothing to reprogram
        }
        self.program(peer).await;
    }

    async fn program(&mut self, peer: Peer) {
        let verb = if self.peers.contains_key(&peer.subnet) {
            "replacing"
        } else {
            "adding"
        };
        tracing::info!(
            subnet = %peer.subnet,
            public_ip = %peer.public_ip,
            vtep_mac = %peer.vtep_mac,
            backend = self.backend.name(),
            "lease event: {verb} peer"
        );
        match self.backend.add_peer(&peer).await {
            Ok(()) => {
                self.failed.remove(&peer.subnet);
                self.peers.insert(peer.subnet, peer);
            }
            Err(e) => {
                tracing::warn!(subnet = %peer.subnet, "programming peer failed, will retry: {e}");
                self.failed.insert(peer.subnet, peer);
            }
        }
    }

    async fn remove(&mut self, subnet: Ipv4Net) {
        self.failed.remove(&subnet);
        let Some(previous) = self.peers.remove(&subnet) else {
            return;
        };
        tracing::info!(
            subnet = %subnet,
            public_ip = %previous.public_ip,
            backend = self.backend.name(),
            "lease event: removing peer"
        );
        if let Err(e) = self.backend.remove_peer(&previous).await {
            tracing::warn!(subnet = %subnet, "removing peer failed: {e}");
        }
    }

    /// Stops the backend, leaving or undoing what it created.
    pub async fn shutdown(self, teardown: Teardown) {
        self.backend.shutdown(teardown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("add {} {}", peer.subnet, peer.vtep_mac));
            Ok(())
        }
        async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("remove {}", previous.subnet));
            Ok(())
        }
        async fn tick(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn shutdown(self, _: Teardown) {}
    }

    fn lease(subnet: &str, ip: [u8; 4], mac_last: u8) -> Lease {
        Lease::new(
            subnet.parse().unwrap(),
            LeaseAttrs::vxlan(Ipv4Addr::from(ip), 1, MacAddr([2, 0, 0, 0, 0, mac_last])),
            None,
        )
    }

    #[tokio::test]
    async fn events_become_peer_programming() {
        let rec = Recorder::default();
        let own = lease("10.5.1.0-24", [192, 0, 2, 1], 1);
        let mut sync = PeerSync::new(rec.clone(), own.subnet);
        let b = lease("10.5.2.0-24", [192, 0, 2, 2], 2);
        let b_new_mac = lease("10.5.2.0-24", [192, 0, 2, 2], 9);
        let mut other = lease("10.5.3.0-24", [192, 0, 2, 3], 3);
        other.attrs.backend_type = "host-gw".into();
        other.attrs.backend_data = None;

        let own_state = sync
            .apply(vec![
                LeaseEvent::Added(own.clone()),
                LeaseEvent::Added(b.clone()),
                LeaseEvent::Added(b.clone()), // renewal: no reprogramming
                LeaseEvent::Added(other),
                LeaseEvent::Added(b_new_mac),
                LeaseEvent::Removed(lease("10.5.2.0-24", [0, 0, 0, 0], 0)),
                LeaseEvent::Removed(lease("10.5.7.0-24", [0, 0, 0, 0], 0)), // unknown: no-op
            ])
            .await;
        assert_eq!(own_state, OwnLease::Written(Box::new(own.clone())));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "add 10.5.2.0/24 02:00:00:00:00:02",
                "add 10.5.2.0/24 02:00:00:00:00:09",
                "remove 10.5.2.0/24"
            ]
        );
        assert!(sync.peers().is_empty());
        assert_eq!(
            sync.apply(vec![LeaseEvent::Removed(own)]).await,
            OwnLease::Removed
        );
    }

    #[test]
    fn non_unicast_vtep_mac_is_refused() {
        let mut l = lease("10.5.2.0-24", [192, 0, 2, 2], 2);
        l.attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 2), 1, MacAddr::BROADCAST);
        assert!(matches!(
            Peer::from_lease(&l),
            Err(PeerError::BadBackendData { .. })
        ));
    }
}
