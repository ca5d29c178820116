//! Lease stores: where the network config and every node's lease live.
//!
//! Three implementations share one trait: the embedded [`local::LocalStore`] (a directory that
//! every node on one machine shares, for single-machine and static setups), etcd v3 (what
//! flanneld clusters use), and the Kubernetes API ([`kube::KubeStore`], flanneld's
//! `--kube-subnet-mgr`). The flannel logic on top of them, choosing a subnet, retrying lost
//! races, turning re-listings into events, is written once here.
//!
//! Local and etcd leases are acquired from the store ([`acquire`]); a Kubernetes node's lease
//! is assigned to it (its pod CIDR) and only published, which the store says through
//! [`LeaseStore::assigned_lease`]. [`LeaseStore::node_hints`] and [`LeaseStore::node_ready`]
//! carry the rest of what the Kubernetes subnet manager does differently; the other stores
//! keep their defaults.

pub mod etcd;
pub mod kube;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use packet::wire::MacAddr;
use time::OffsetDateTime;

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use crate::subnet_alloc::{self, AllocError, Allocation};

/// How many times a lost race for a subnet key is retried (flannel: 10).
pub const ACQUIRE_ATTEMPTS: usize = 10;

/// A lease store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the local store could not be read or written.
    #[error("{what} {path}: {cause}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error (in the message, not chained: the chain would print it twice).
        cause: std::io::Error,
    },
    /// The store holds no network config.
    #[error("no network config in {where_}: {hint}")]
    NoConfig {
        /// Where it was looked for.
        where_: String,
        /// What to do.
        hint: String,
    },
    /// The store could not be reached (etcd down); retried by the caller.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Another failure reported by the store.
    #[error("{0}")]
    Other(String),
}

/// All leases at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// The leases that decoded, by key.
    pub leases: BTreeMap<SubnetKey, Lease>,
    /// The store revision the listing was taken at (etcd), for watching from there.
    pub revision: i64,
}

impl Listing {
    /// The leases as a vector.
    pub fn to_vec(&self) -> Vec<Lease> {
        self.leases.values().cloned().collect()
    }
}

/// What an earlier run left for this node in the store, to reuse (Kubernetes: the node's
/// annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHints {
    /// The public IP this node must announce (flannel's `node-public-ip` annotation); it
    /// overrides `--public-ip`, as in flanneld.
    pub public_ip: Option<IpAddr>,
    /// The VtepMAC this node announced before (flannel's `backend-data` annotation), kept so
    /// that peers' ARP and FDB entries for it stay valid across restarts and a switch from
    /// flanneld.
    pub vtep_mac: Option<MacAddr>,
}

/// Where leases live. Methods are async so the etcd store can do network I/O; the local store
/// runs its file operations on tokio's blocking pool.
pub trait LeaseStore: Send + Sync + 'static {
    /// The watcher type.
    type Watcher: LeaseWatcher;

    /// A short description for logs, e.g. `local store /var/lib/vxdp`.
    fn describe(&self) -> String;

    /// The network config JSON (flannel's `<prefix>/config`).
    fn network_config(&self) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Every lease, and the revision of the listing.
    fn list(&self) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// Writes `lease` if its key is absent (or holds an expired lease); `Ok(false)` when another
    /// node holds the key. `lease.expiration` is when it lapses (`None`: a reservation).
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Overwrites this node's `lease` (renewal or new attrs).
    fn update(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes `lease` if it is still this node's (same PublicIP).
    fn remove(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts watching for changes after `listing`.
    fn watch(
        &self,
        listing: &Listing,
    ) -> impl Future<Output = Result<Self::Watcher, StoreError>> + Send;

    /// What an earlier run left for this node (read before the external interface and the
    /// VtepMAC are chosen). None by default; failures are logged by the store and give none.
    fn node_hints(&self) -> impl Future<Output = NodeHints> + Send {
        async { NodeHints::default() }
    }

    /// The lease the cluster assigned to this node, after publishing `attrs` for it
    /// (Kubernetes: the node's pod CIDR, published in its annotations). `Ok(None)`, the
    /// default, means leases are acquired from this store with [`acquire`] instead.
    fn assigned_lease(
        &self,
        _config: &NetworkConfig,
        _attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Tells the cluster that this node forwards now, once it is ready (Kubernetes: the node's
    /// `NetworkUnavailable` condition). The future owns what it needs, so the daemon can run
    /// it beside its event loop. Nothing to do by default.
    fn node_ready(
        &self,
        _lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        async { Ok(()) }
    }
}

/// A stream of lease changes.
pub trait LeaseWatcher: Send + 'static {
    /// Waits for the next batch of changes. Errors are transient: the caller logs them and
    /// calls again (the watcher resynchronises by itself).
    fn next(&mut self) -> impl Future<Output = Result<Vec<LeaseEvent>, StoreError>> + Send;
}

/// The events that turn `old` into `new`: `Added` for new keys and keys whose value or
/// expiration changed, `Removed` for keys that are gone. Expired leases in `new` count as gone.
pub fn diff(old: &BTreeMap<SubnetKey, Lease>, new: &BTreeMap<SubnetKey, Lease>) -> Vec<LeaseEvent> {
    let mut events = Vec::new();
    for (key, lease) in old {
        if !new.contains_key(key) {
            events.push(LeaseEvent::Removed(lease.clone()));
        }
    }
    for (key, lease) in new {
        if old.get(key) != Some(lease) {
            events.push(LeaseEvent::Added(lease.clone()));
        }
    }
    events
}

impl StoreError {
    /// Whether waiting may help: the store could not be reached.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl AcquireError {
    /// Whether waiting may help: the store could not be reached.
    pub fn is_transient(&self) -> bool {
        matches!(self, AcquireError::Store(e) if e.is_transient())
    }
}

/// Why no lease could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No subnet is free (or the config cannot be allocated from).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// An IPv6-only network, and no PublicIPv6 to name this node's lease by.
    #[error(
        "the network is IPv6-only (EnableIPv4 false) but this node has no PublicIPv6; give its \
         interface a global IPv6 address, or pass --public-ipv6"
    )]
    NoPublicIpv6,
    /// Other nodes won every race for the chosen subnets.
    #[error("lost the race for a subnet {0} times in a row: too many nodes are starting at once; vxdp retries")]
    Contended(usize),
}

/// What [`acquire`] got.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// The lease as written.
    pub lease: Lease,
    /// The rule that chose it (for the log).
    pub allocation: Allocation,
    /// Stale leases of this node that were removed first.
    pub removed_stale: Vec<SubnetKey>,
}

/// Acquires this node's lease the way flanneld does: reuse its own lease, else the subnet of
/// the previous run, else a random free one; retry when another node wins the key. Leases are
/// judged expired, and written to expire, relative to `now`.
pub async fn acquire<S: LeaseStore>(
    store: &S,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<Acquired, AcquireError> {
    // The address that names this node's leases: PublicIP, or PublicIPv6 in an IPv6-only
    // network, where every node's PublicIP is 0.0.0.0.
    let node = match (config.ipv4, attrs.public_ipv6) {
        (Some(_), _) => IpAddr::V4(attrs.public_ip),
        (None, Some(v6)) => IpAddr::V6(v6),
        (None, None) => return Err(AcquireError::NoPublicIpv6),
    };
    for _ in 0..ACQUIRE_ATTEMPTS {
        let listing = store.list().await?;
        let leases = listing.to_vec();
        let allocation = {
            let mut rng = rand::rng();
            subnet_alloc::allocate(config, &leases, node, previous, now, &mut rng)?
        };
        let mut removed_stale = Vec::new();
        for stale in subnet_alloc::stale_own_leases(&allocation, &leases, node) {
            if stale.is_reservation() {
                tracing::warn!(
                    subnet = %stale.key(),
                    "removing this node's reservation: it no longer fits the network config"
                );
            }
            store.remove(stale).await?;
            removed_stale.push(stale.key());
        }
        let expiration = |keep_reservation: bool| {
            if keep_reservation {
                None
            } else {
                Some(now + ttl)
            }
        };
        match &allocation {
            Allocation::Renew(existing) => {
                let lease = Lease {
                    attrs: attrs.clone(),
                    expiration: expiration(existing.is_reservation()),
                    ..existing.clone()
                };
                store.update(&lease).await?;
                return Ok(Acquired {
                    lease,
                    allocation,
                    removed_stale,
                });
            }
            Allocation::Previous { .. } | Allocation::Random { .. } => {
                let lease = Lease::new(allocation.key(), attrs.clone(), expiration(false));
                if store.create(&lease).await? {
                    return Ok(Acquired {
                        lease,
                        allocation,
                        removed_stale,
                    });
                }
                tracing::debug!(subnet = %lease.key(), "another node took the subnet first; retrying");
            }
        }
    }
    Err(AcquireError::Contended(ACQUIRE_ATTEMPTS))
}

/// Renews `lease` for another `ttl` from `now` (reservations stay reservations).
pub async fn renew<S: LeaseStore>(
    store: &S,
    lease: &Lease,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<Lease, StoreError> {
    let renewed = Lease {
        expiration: lease.expiration.map(|_| now + ttl),
        ..lease.clone()
    };
    store.update(&renewed).await?;
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: [u8; 4], mac_last: u8) -> Lease {
        let key: SubnetKey = subnet.parse().unwrap();
        Lease::new(
            key,
            LeaseAttrs::vxlan(
                std::net::Ipv4Addr::from(ip),
                1,
                packet::wire::MacAddr([2, 0, 0, 0, 0, mac_last]),
            ),
            None,
        )
    }

    #[test]
    fn diff_reports_adds_changes_and_removals() {
        let a = lease("10.5.1.0-24", [192, 0, 2, 1], 1);
        let b = lease("10.5.2.0-24", [192, 0, 2, 2], 2);
        let b2 = lease("10.5.2.0-24", [192, 0, 2, 2], 9);
        let c = lease("10.5.3.0-24", [192, 0, 2, 3], 3);
        let old: BTreeMap<_, _> = [(a.key(), a.clone()), (b.key(), b.clone())].into();
        let new: BTreeMap<_, _> = [(b.key(), b2.clone()), (c.key(), c.clone())].into();
        let events = diff(&old, &new);
        assert_eq!(
            events,
            vec![
                LeaseEvent::Removed(a),
                LeaseEvent::Added(b2),
                LeaseEvent::Added(c)
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
