//! What a dataplane backend (AF_XDP or the kernel vxlan link) is told, and the one piece of
//! logic that turns lease events into it.
//!
//! [`PeerSync`] is the only consumer of lease events: it skips this node's own lease, ignores
//! leases of other backend types and undecodable ones (with a warning, never fatally), and
//! hands the backend whole peers to add, replace or remove. Both backends therefore see exactly
//! the same sequence, and neither contains lease logic.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use packet::wire::MacAddr;

use crate::lease::{Lease, LeaseEvent, SubnetKey};

/// A remote node, as the backends need it: one lease, with an IPv4 half (IPv4 and dual-stack
/// networks), an IPv6 half (dual-stack and IPv6-only networks), or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The lease key, which names the peer.
    pub key: SubnetKey,
    /// Its IPv4 half, when the lease has an IPv4 subnet.
    pub ipv4: Option<PeerV4>,
    /// Its IPv6 half, when the lease has an IPv6 subnet.
    pub ipv6: Option<PeerV6>,
}

/// The IPv4 half of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerV4 {
    /// Its IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Its IPv4 underlay address (outer destination, `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC for the IPv4 overlay (`BackendData`).
    pub vtep_mac: MacAddr,
}

/// The IPv6 half of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerV6 {
    /// Its IPv6 subnet.
    pub subnet: Ipv6Net,
    /// Its IPv6 underlay address (`PublicIPv6`), if it has one.
    pub public_ip: Option<Ipv6Addr>,
    /// Its VTEP MAC for the IPv6 overlay (`BackendV6Data`).
    pub vtep_mac: MacAddr,
}

impl PeerV4 {
    /// The gateway address for the peer's subnet (its base address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

impl Peer {
    /// The address that names the peer in logs: its PublicIP, else its PublicIPv6.
    pub fn node_addr(&self) -> Option<IpAddr> {
        match (&self.ipv4, &self.ipv6) {
            (Some(v4), _) => Some(IpAddr::V4(v4.public_ip)),
            (None, Some(v6)) => v6.public_ip.map(IpAddr::V6),
            (None, None) => None,
        }
    }
}

/// Why a lease does not describe a usable vxlan peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The lease belongs to another backend type.
    #[error("lease {key} is of backend type {backend_type:?}, not vxlan: ignored")]
    NotVxlan {
        /// Lease key.
        key: SubnetKey,
        /// Its BackendType.
        backend_type: String,
    },
    /// The lease's backend data could not be decoded.
    #[error("lease {key} has unusable vxlan backend data: {reason}")]
    BadBackendData {
        /// Lease key.
        key: SubnetKey,
        /// What is wrong.
        reason: String,
    },
}

impl Peer {
    /// The peer a lease describes: the IPv4 half from `BackendData` when the lease has an IPv4
    /// subnet, the IPv6 half from `BackendV6Data` when it has an IPv6 one (an IPv6-only lease
    /// has no `BackendData`, as flanneld writes it).
    pub fn from_lease(lease: &Lease) -> Result<Peer, PeerError> {
        let key = lease.key();
        if !lease.attrs.is_vxlan() {
            return Err(PeerError::NotVxlan {
                key,
                backend_type: lease.attrs.backend_type.clone(),
            });
        }
        let bad = |reason: String| PeerError::BadBackendData { key, reason };
        let unicast = |mac: MacAddr, field: &str| {
            if mac.is_unicast() {
                Ok(mac)
            } else {
                Err(bad(format!(
                    "{field} VtepMAC {mac} is not a unicast address"
                )))
            }
        };
        let ipv4 = match lease.subnet {
            None => None,
            Some(subnet) => {
                let data = lease.attrs.vxlan_data().map_err(|e| bad(e.to_string()))?;
                Some(PeerV4 {
                    subnet,
                    public_ip: lease.attrs.public_ip,
                    vtep_mac: unicast(data.vtep_mac, "BackendData")?,
                })
            }
        };
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
                    vtep_mac: unicast(v6.vtep_mac, "BackendV6Data")?,
                })
            }
        };
        Ok(Peer { key, ipv4, ipv6 })
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

/// A dataplane: it programs peers. `add_peer` for a lease key it already has replaces it whole.
pub trait Backend: Send {
    /// `xdp` or `kernel`.
    fn name(&self) -> &'static str;

    /// Adds `peer`, or replaces the peer that holds the same lease key.
    fn add_peer(&mut self, peer: &Peer) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes the peer that holds `previous.key` (`previous` is what was programmed for it).
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
    own_key: SubnetKey,
    peers: BTreeMap<SubnetKey, Peer>,
    failed: BTreeMap<SubnetKey, Peer>,
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
    /// Starts with no peers; `own_key` is this node's lease key.
    pub fn new(backend: B, own_key: SubnetKey) -> Self {
        PeerSync {
            backend,
            own_key,
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
    pub fn peers(&self) -> &BTreeMap<SubnetKey, Peer> {
        &self.peers
    }

    /// Applies a batch of events; reports what happened to this node's own lease.
    pub async fn apply(&mut self, events: Vec<LeaseEvent>) -> OwnLease {
        let mut own = OwnLease::Untouched;
        for event in events {
            let key = event.lease().key();
            if key == self.own_key {
                own = match event {
                    LeaseEvent::Added(l) => OwnLease::Written(Box::new(l)),
                    LeaseEvent::Removed(_) => OwnLease::Removed,
                };
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => self.add(&lease).await,
                LeaseEvent::Removed(_) => self.remove(key).await,
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
        if self.peers.get(&peer.key) == Some(&peer) {
            return; // a renewal: nothing to reprogram
        }
        self.program(peer).await;
    }

    async fn program(&mut self, peer: Peer) {
        let verb = if self.peers.contains_key(&peer.key) {
            "replacing"
        } else {
            "adding"
        };
        tracing::info!(
            subnet = %peer.key.cidrs(),
            public_ip = %peer.ipv4.as_ref().map_or_else(|| "-".into(), |v4| v4.public_ip.to_string()),
            vtep_mac = %peer.ipv4.as_ref().map_or_else(|| "-".into(), |v4| v4.vtep_mac.to_string()),
            public_ipv6 = %peer.ipv6.as_ref().and_then(|v6| v6.public_ip).map_or_else(|| "-".into(), |a| a.to_string()),
            vtep_mac_v6 = %peer.ipv6.as_ref().map_or_else(|| "-".into(), |v6| v6.vtep_mac.to_string()),
            backend = self.backend.name(),
            "lease event: {verb} peer"
        );
        match self.backend.add_peer(&peer).await {
            Ok(()) => {
                self.failed.remove(&peer.key);
                self.peers.insert(peer.key, peer);
            }
            Err(e) => {
                tracing::warn!(subnet = %peer.key.cidrs(), "programming peer failed, will retry: {e}");
                self.failed.insert(peer.key, peer);
            }
        }
    }

    async fn remove(&mut self, key: SubnetKey) {
        self.failed.remove(&key);
        let Some(previous) = self.peers.remove(&key) else {
            return;
        };
        tracing::info!(
            subnet = %key.cidrs(),
            node = %previous.node_addr().map_or_else(|| "-".into(), |a| a.to_string()),
            backend = self.backend.name(),
            "lease event: removing peer"
        );
        if let Err(e) = self.backend.remove_peer(&previous).await {
            tracing::warn!(subnet = %key.cidrs(), "removing peer failed: {e}");
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
            let mac = match (&peer.ipv4, &peer.ipv6) {
                (Some(v4), _) => v4.vtep_mac,
                (None, Some(v6)) => v6.vtep_mac,
                (None, None) => MacAddr::BROADCAST,
            };
            self.0
                .lock()
                .unwrap()
                .push(format!("add {} {mac}", peer.key));
            Ok(())
        }
        async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("remove {}", previous.key));
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
        let mut sync = PeerSync::new(rec.clone(), own.key());
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
                "add 10.5.2.0-24 02:00:00:00:00:02",
                "add 10.5.2.0-24 02:00:00:00:00:09",
                "remove 10.5.2.0-24"
            ]
        );
        assert!(sync.peers().is_empty());
        assert_eq!(
            sync.apply(vec![LeaseEvent::Removed(own)]).await,
            OwnLease::Removed
        );
    }

    /// An IPv6-only network's leases (`0.0.0.0-0&<ipv6>`, no `BackendData`, as flanneld writes
    /// them) become peers with only an IPv6 half, and the node's own lease is recognised by its
    /// key.
    #[tokio::test]
    async fn ipv6_only_leases_become_ipv6_only_peers() {
        let v6_lease = |key: &str, ip: &str, mac_last: u8| {
            Lease::new(
                key.parse().unwrap(),
                LeaseAttrs::vxlan_v6_only(
                    ip.parse().unwrap(),
                    1,
                    MacAddr([2, 0, 0, 0, 6, mac_last]),
                ),
                None,
            )
        };
        let own = v6_lease("0.0.0.0-0&fd00:5:0:1::-64", "2001:db8::1", 1);
        let b = v6_lease("0.0.0.0-0&fd00:5:0:2::-64", "2001:db8::2", 2);
        let peer = Peer::from_lease(&b).unwrap();
        assert_eq!(peer.ipv4, None);
        assert_eq!(
            peer.ipv6,
            Some(PeerV6 {
                subnet: "fd00:5:0:2::/64".parse().unwrap(),
                public_ip: Some("2001:db8::2".parse().unwrap()),
                vtep_mac: MacAddr([2, 0, 0, 0, 6, 2]),
            })
        );
        assert_eq!(peer.node_addr(), Some("2001:db8::2".parse().unwrap()));

        let rec = Recorder::default();
        let mut sync = PeerSync::new(rec.clone(), own.key());
        let own_state = sync
            .apply(vec![
                LeaseEvent::Added(own.clone()),
                LeaseEvent::Added(b.clone()),
                LeaseEvent::Removed(Lease::new(b.key(), LeaseAttrs::default(), None)),
            ])
            .await;
        assert_eq!(own_state, OwnLease::Written(Box::new(own)));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "add 0.0.0.0-0&fd00:5:0:2::-64 02:00:00:00:06:02",
                "remove 0.0.0.0-0&fd00:5:0:2::-64"
            ]
        );

        // An IPv6-only lease needs BackendV6Data.
        let mut broken = b.clone();
        broken.attrs.backend_v6_data = None;
        assert!(matches!(
            Peer::from_lease(&broken),
            Err(PeerError::BadBackendData { .. })
        ));
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
