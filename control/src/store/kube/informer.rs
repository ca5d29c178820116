//! The node informer: list + watch of every Node, as client-go's informer runs for flannel
//! (`cache.NewInformerWithOptions` in `pkg/subnet/kube/kube.go`), turned into lease events
//! with flannel's handlers.
//!
//! - The first list is read at resource version `0` (the API server's watch cache, as
//!   client-go's reflector asks); the watch goes on from the list's resource version with
//!   bookmarks, whose resource versions are kept, so a watch broken by an outage resumes
//!   where it was instead of re-listing. Each watch asks the server to end it after 4-5
//!   minutes (client-go: 5-10) and is then resumed; one that stays silent past that is given
//!   up as dead.
//! - A `410 Gone` (the resource version is no longer in the history, as an `ERROR` event or as
//!   the answer to a request) re-lists at the latest version, in pages of 500, and the new list
//!   is compared with the cache exactly as client-go's `Replace` does: known nodes are
//!   updates, new ones adds, vanished ones deletes.
//! - Failures back off from 800 ms, doubling to 30 s (client-go's reflector).
//! - Handlers (flannel's `AddFunc`, `UpdateFunc`, `DeleteFunc`): only nodes annotated
//!   `kube-subnet-manager: "true"`; an update is an event only when `backend-data`,
//!   `backend-type` or `public-ip` changed; a deletion removes the node's lease. Events about
//!   this node itself are not sent (flannel's lease watcher skips its own lease).
//!   Unlike flannel, a removal names the lease last reported for the node (not one rebuilt
//!   from its final state), and a lease update that moves a node to another subnet removes
//!   the old one first: a pod CIDR is immutable in Kubernetes, but a peer must never keep a
//!   route that nothing will remove.
//! - Events go into a queue of `EVENT_QUEUE_DEPTH` entries. When it is full the informer waits
//!   for room (flannel instead parks up to 100 events in goroutines that retry, which can
//!   reorder them); nothing is dropped and the order is kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::{mpsc, watch};

use super::annotations::Annotations;
use super::node::{is_lease_update, NodeRecord};
use crate::lease::{Lease, LeaseEvent, SubnetKey};

/// Page size of a re-list (client-go's reflector: 500).
const LIST_PAGE: u32 = 500;
/// How long the server is asked to keep a watch open, at least; a random part up to
/// [`WATCH_TIMEOUT_SPREAD_S`] is added so that a cluster's nodes do not re-watch in step.
const WATCH_TIMEOUT_MIN_S: u32 = 240;
const WATCH_TIMEOUT_SPREAD_S: u32 = 50;
/// How long past the requested end a watch may stay silent before it is given up as dead (a
/// connection cut without a reset delivers nothing, ever).
const WATCH_GRACE: Duration = Duration::from_secs(30);
/// The deadline of a list request.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Backoff after failures: client-go's reflector (800 ms doubling to 30 s).
const BACKOFF_MIN: Duration = Duration::from_millis(800);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// State shared between the informer task and the store.
#[derive(Debug)]
pub(super) struct Shared {
    /// The informer's cache: every node, by name.
    pub cache: Mutex<BTreeMap<String, NodeRecord>>,
    /// This node's lease key once assigned: events for it are skipped too (flannel's lease
    /// watcher compares subnets).
    pub own_key: Mutex<Option<SubnetKey>>,
    /// True once a list has been read (client-go's `HasSynced`).
    pub synced: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            cache: Mutex::new(BTreeMap::new()),
            own_key: Mutex::new(None),
            synced: watch::channel(false).0,
        })
    }

    /// The cache (a poisoned lock still holds whole records: every write replaces entries).
    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeRecord>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_key(&self) -> Option<SubnetKey> {
        *self.own_key.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a watch ended.
enum WatchEnd {
    /// The server closed it (its timeout): watch again from here at once.
    Closed,
    /// The resource version is gone from the history: re-list.
    Expired(String),
    /// Connection trouble or an error: back off, then watch again from here.
    Failed(String),
}

/// The list + watch loop; see the module documentation.
pub(super) struct Informer {
    pub api: Api<Node>,
    /// The lease last reported for each node, by name.
    pub reported: BTreeMap<String, Lease>,
    /// For messages.
    pub api_url: String,
    pub annotations: Annotations,
    pub own_node: String,
    pub shared: Arc<Shared>,
    pub events: mpsc::Sender<LeaseEvent>,
    pub queue_depth: usize,
}

impl Informer {
    /// Runs until the event receiver is dropped.
    pub async fn run(mut self) {
        // None: (re-)list first.
        let mut resource_version: Option<String> = None;
        // After a 410, list the latest state rather than the watch cache's (client-go).
        let mut list_latest = false;
        let mut failures = 0u32;
        while !self.events.is_closed() {
            let trouble = match resource_version.clone() {
                None => match self.list(list_latest).await {
                    Ok((nodes, rv)) => {
                        self.replace(nodes).await;
                        self.shared.synced.send_replace(true);
                        tracing::debug!(resource_version = %rv, "listed the nodes");
                        resource_version = Some(rv);
                        list_latest = false;
                        None
                    }
                    Err(ListError::Expired(e)) => {
                        list_latest = true;
                        Some(e)
                    }
                    Err(ListError::Failed(e)) => Some(e),
                },
                Some(rv) => {
                    let (end, progressed) = self.watch(&rv, &mut resource_version).await;
                    if progressed {
                        failures = 0;
                    }
                    match end {
                        WatchEnd::Closed => None,
                        WatchEnd::Expired(why) => {
                            tracing::info!(
                                "the node watch expired ({why}); re-listing the nodes from the \
                                 Kubernetes API"
                            );
                            resource_version = None;
                            list_latest = true;
                            None
                        }
                        WatchEnd::Failed(e) => Some(e),
                    }
                }
            };
            match trouble {
                None => failures = 0,
                Some(e) => {
                    failures = failures.saturating_add(1);
                    let pause = backoff(failures);
                    tracing::warn!(
                        "{e}; retrying in {pause:?} (forwarding to the known peers goes on)"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Every node, page by page, and the resource version of the list.
    async fn list(&self, latest: bool) -> Result<(Vec<Node>, String), ListError> {
        let mut params = if latest {
            ListParams::default().limit(LIST_PAGE)
        } else {
            ListParams::default().match_any()
        };
        let mut nodes = Vec::new();
        loop {
            let page = tokio::time::timeout(LIST_TIMEOUT, self.api.list(&params))
                .await
                .map_err(|_| {
                    ListError::Failed(format!(
                        "listing the nodes at {}: no answer within {} s",
                        self.api_url,
                        LIST_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| match gone(&e) {
                    true => ListError::Expired(format!(
                        "listing the nodes at {}: the list expired ({e}); starting again",
                        self.api_url
                    )),
                    false => ListError::Failed(format!(
                        "listing the nodes at {} failed: {}",
                        self.api_url,
                        super::describe_error(&e)
                    )),
                })?;
            let rv = page.metadata.resource_version.clone().unwrap_or_default();
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            nodes.extend(page.items);
            match next {
                Some(token) => {
                    params = ListParams::default()
                        .limit(LIST_PAGE)
                        .continue_token(&token)
                }
                None => {
                    if rv.is_empty() {
                        return Err(ListError::Failed(format!(
                            "listing the nodes at {}: the answer has no resourceVersion to watch \
                             from; is this a Kubernetes API server?",
                            self.api_url
                        )));
                    }
                    return Ok((nodes, rv));
                }
            }
        }
    }

    /// One watch from `from`; keeps `resource_version` at the last version seen (events and
    /// bookmarks). Also says whether anything arrived (which resets the backoff).
    async fn watch(
        &mut self,
        from: &str,
        resource_version: &mut Option<String>,
    ) -> (WatchEnd, bool) {
        let timeout_s = WATCH_TIMEOUT_MIN_S + jitter(WATCH_TIMEOUT_SPREAD_S);
        let params = WatchParams::default().timeout(timeout_s);
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(timeout_s.into()) + WATCH_GRACE;
        let stream = match tokio::time::timeout_at(deadline, self.api.watch(&params, from)).await {
            Err(_) => {
                return (
                    WatchEnd::Failed(format!(
                        "watching the nodes at {}: no answer to the watch request",
                        self.api_url
                    )),
                    false,
                )
            }
            Ok(Err(e)) if gone(&e) => return (WatchEnd::Expired(e.to_string()), false),
            Ok(Err(e)) => {
                return (
                    WatchEnd::Failed(format!(
                        "watching the nodes at {} failed: {}",
                        self.api_url,
                        super::describe_error(&e)
                    )),
                    false,
                )
            }
            Ok(Ok(s)) => s,
        };
        let mut stream = std::pin::pin!(stream);
        let started = tokio::time::Instant::now();
        let mut progressed = false;
        loop {
            let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    return (
                        WatchEnd::Failed(format!(
                            "watching the nodes at {}: nothing arrived for {} s, not even the \
                             end of the watch; the connection is presumed dead",
                            self.api_url,
                            u64::from(timeout_s) + WATCH_GRACE.as_secs()
                        )),
                        progressed,
                    )
                }
                // A server that ends watches at once, with nothing in them, would otherwise
                // be asked again in a tight loop.
                Ok(None) if !progressed && started.elapsed() < Duration::from_secs(1) => {
                    return (
                        WatchEnd::Failed(format!(
                            "the node watch at {} ended as soon as it started",
                            self.api_url
                        )),
                        false,
                    )
                }
                Ok(None) => return (WatchEnd::Closed, progressed),
                Ok(Some(item)) => item,
            };
            let event = match item {
                Ok(ev) => ev,
                Err(e) if gone(&e) => return (WatchEnd::Expired(e.to_string()), progressed),
                Err(e) => {
                    return (
                        WatchEnd::Failed(format!(
                            "the node watch at {} broke: {}",
                            self.api_url,
                            super::describe_error(&e)
                        )),
                        progressed,
                    )
                }
            };
            progressed = true;
            match event {
                WatchEvent::Added(node) | WatchEvent::Modified(node) => {
                    keep_version(resource_version, node.metadata.resource_version.as_deref());
                    self.upsert(&node).await;
                }
                WatchEvent::Deleted(node) => {
                    keep_version(resource_version, node.metadata.resource_version.as_deref());
                    let record = NodeRecord::from(&node);
                    self.shared.cache().remove(&record.name);
                    self.on_delete(&record).await;
                }
                WatchEvent::Bookmark(b) => {
                    keep_version(resource_version, Some(&b.metadata.resource_version));
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    return (WatchEnd::Expired(status.message.clone()), progressed);
                }
                WatchEvent::Error(status) => {
                    return (
                        WatchEnd::Failed(format!(
                            "the node watch at {} ended with an error: {} ({}, code {})",
                            self.api_url, status.message, status.reason, status.code
                        )),
                        progressed,
                    )
                }
            }
        }
    }

    /// An added or modified node: an update when it was known, else an add.
    async fn upsert(&mut self, node: &Node) {
        let record = NodeRecord::from(node);
        let old = self
            .shared
            .cache()
            .insert(record.name.clone(), record.clone());
        match old {
            Some(old) => self.on_update(&old, &record).await,
            None => self.on_add(&record).await,
        }
    }

    /// A fresh list replaces the cache (client-go's `Replace`).
    async fn replace(&mut self, nodes: Vec<Node>) {
        let fresh: BTreeMap<String, NodeRecord> = nodes
            .iter()
            .map(NodeRecord::from)
            .map(|r| (r.name.clone(), r))
            .collect();
        let old = std::mem::replace(&mut *self.shared.cache(), fresh.clone());
        for (name, record) in &fresh {
            match old.get(name) {
                Some(before) => self.on_update(before, record).await,
                None => self.on_add(record).await,
            }
        }
        for (name, record) in &old {
            if !fresh.contains_key(name) {
                self.on_delete(record).await;
            }
        }
    }

    /// flannel's `AddFunc`.
    async fn on_add(&mut self, node: &NodeRecord) {
        if node.is_kube_managed(&self.annotations) {
            self.send_lease(node, false).await;
        }
    }

    /// flannel's `UpdateFunc`.
    async fn on_update(&mut self, old: &NodeRecord, new: &NodeRecord) {
        if new.is_kube_managed(&self.annotations) && is_lease_update(old, new, &self.annotations) {
            self.send_lease(new, false).await;
        }
    }

    /// flannel's `DeleteFunc`.
    async fn on_delete(&mut self, node: &NodeRecord) {
        if node.is_kube_managed(&self.annotations) {
            self.send_lease(node, true).await;
        }
    }

    async fn send_lease(&mut self, node: &NodeRecord, removed: bool) {
        if node.name == self.own_node {
            return;
        }
        let computed = node.to_lease(&self.annotations);
        let lease = match (removed, self.reported.get(&node.name), computed) {
            // What the consumer knows of the node is what goes.
            (true, Some(last), _) => last.clone(),
            (_, _, Ok(l)) => l,
            (_, _, Err(e)) => {
                tracing::info!(node = %node.name, "node is not a usable lease, skipped: {e}");
                return;
            }
        };
        // Either half of this node's lease claimed by another node.
        let clash = self.shared.own_key().is_some_and(|own| {
            (own.ipv4.is_some() && own.ipv4 == lease.subnet)
                || (own.ipv6.is_some() && own.ipv6 == lease.ipv6_subnet)
        });
        if clash {
            tracing::warn!(
                node = %node.name,
                subnet = %lease.key(),
                "another node claims this node's pod CIDR; ignoring it"
            );
            return;
        }
        if removed {
            self.reported.remove(&node.name);
            self.send(LeaseEvent::Removed(lease)).await;
            return;
        }
        if let Some(old) = self.reported.get(&node.name) {
            if old.key() != lease.key() {
                let old = old.clone();
                self.send(LeaseEvent::Removed(old)).await;
            }
        }
        self.reported.insert(node.name.clone(), lease.clone());
        self.send(LeaseEvent::Added(lease)).await;
    }

    /// Queues `event`, waiting for room when the queue is full.
    async fn send(&self, event: LeaseEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                tracing::info!(
                    depth = self.queue_depth,
                    "the lease event queue is full (EVENT_QUEUE_DEPTH): waiting for room"
                );
                let _ = self.events.send(event).await;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

enum ListError {
    Expired(String),
    Failed(String),
}

/// Whether a request failed with `410 Gone` (the resource version or continue token is too
/// old).
fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 410)
}

/// Keeps `seen` as the newest resource version (an empty one says nothing).
fn keep_version(current: &mut Option<String>, seen: Option<&str>) {
    if let Some(v) = seen.filter(|v| !v.is_empty()) {
        *current = Some(v.to_string());
    }
}

/// The pause after `failures` consecutive failures.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// A number in `0..=max`, differing between nodes and runs.
fn jitter(max: u32) -> u32 {
    rand::random_range(0..=max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_800ms_to_30s() {
        assert_eq!(backoff(1), Duration::from_millis(800));
        assert_eq!(backoff(2), Duration::from_millis(1600));
        assert_eq!(backoff(6), Duration::from_millis(25_600));
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn the_newest_resource_version_is_kept() {
        let mut rv = Some("10".to_string());
        keep_version(&mut rv, Some(""));
        keep_version(&mut rv, None);
        assert_eq!(rv.as_deref(), Some("10"));
        keep_version(&mut rv, Some("12"));
        assert_eq!(rv.as_deref(), Some("12"));
    }
}
