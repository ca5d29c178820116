//! The Kubernetes subnet manager (`--kube-subnet-mgr`), as flannel's `pkg/subnet/kube`: the
//! Kubernetes API is the lease store.
//!
//! - A node's lease is its `spec.podCIDR(s)`, assigned by Kubernetes (the node IPAM
//!   controller), not acquired: [`LeaseStore::assigned_lease`] waits up to 30 s for this node
//!   with a pod CIDR, checks that it lies inside the network config's `Network`, and publishes
//!   the node's VXLAN endpoint in its annotations (`<prefix>/backend-type`, `backend-data`,
//!   `public-ip`, `kube-subnet-manager`) with a strategic merge patch of `nodes/<name>/status`
//!   (the only write flannel's RBAC allows).
//! - Peers are the nodes annotated `kube-subnet-manager: "true"`, followed by the node
//!   informer ([`informer`]: list + watch with bookmarks, re-list on `410 Gone`).
//! - Once the node forwards, [`LeaseStore::node_ready`] sets its `NetworkUnavailable`
//!   condition to `False` (reason `FlannelIsUp`), unless `--set-node-network-unavailable=false`.
//! - The network config is a file (`--net-config-path`, `/etc/kube-flannel/net-conf.json` in
//!   the DaemonSet), read once at start.
//! - Nothing is removed at shutdown: the annotations stay, as flanneld leaves them, and a
//!   restart finds its VtepMAC there ([`LeaseStore::node_hints`]).

pub mod annotations;
mod informer;
pub mod node;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use self::annotations::{stored_vtep_mac, vxlan_backend_data, Annotations};
use self::informer::{Informer, Shared};
use self::node::NodeRecord;
use super::{LeaseStore, LeaseWatcher, Listing, NodeHints, StoreError};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey, VXLAN_BACKEND_TYPE};

/// Where the flannel DaemonSet mounts the network config (flanneld's default
/// `--net-config-path`).
pub const DEFAULT_NET_CONF_PATH: &str = "/etc/kube-flannel/net-conf.json";
/// flannel's lease event queue depth, unless `EVENT_QUEUE_DEPTH` says otherwise.
pub const DEFAULT_EVENT_QUEUE_DEPTH: usize = 5000;
/// How long to wait for the first list of nodes (flannel's `nodeControllerSyncTimeout`).
pub const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// How long to wait for this node (with its pod CIDR) and for the annotation patch to go
/// through, and how often to try (flannel's `AcquireLease`).
pub const NODE_WAIT: Duration = Duration::from_secs(30);
/// See [`NODE_WAIT`].
pub const NODE_POLL: Duration = Duration::from_secs(3);
/// flannel's `NetworkUnavailable` condition once it runs.
pub const NETWORK_UNAVAILABLE_REASON: &str = "FlannelIsUp";
/// See [`NETWORK_UNAVAILABLE_REASON`]. flannel's exact message: tools and people grep for it.
pub const NETWORK_UNAVAILABLE_MESSAGE: &str = "Flannel is running on this node";

/// The deadline of a single get or patch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which node this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// Given by name (`NODE_NAME`).
    Name(String),
    /// The node a pod runs on (`POD_NAMESPACE`/`POD_NAME`, the DaemonSet's downward API):
    /// its `spec.nodeName`.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
}

impl NodeIdentity {
    /// From the environment's values, as flanneld reads them: `NODE_NAME` if set, else
    /// `POD_NAME` and `POD_NAMESPACE`, both needed.
    pub fn from_env_values(
        node_name: Option<String>,
        pod_name: Option<String>,
        pod_namespace: Option<String>,
    ) -> Result<NodeIdentity, StoreError> {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        if let Some(node) = set(node_name) {
            return Ok(NodeIdentity::Name(node));
        }
        match (set(pod_name), set(pod_namespace)) {
            (Some(name), Some(namespace)) => Ok(NodeIdentity::Pod { namespace, name }),
            _ => Err(StoreError::Other(
                "the Kubernetes subnet manager needs to know this node's name: set NODE_NAME, or \
                 POD_NAME and POD_NAMESPACE (the DaemonSet in deploy/kube-vxdp.yml sets them \
                 with the downward API)"
                    .into(),
            )),
        }
    }
}

/// `EVENT_QUEUE_DEPTH` as flanneld reads it: an integer; positive values set the depth, others
/// keep the default (5000).
pub fn event_queue_depth(value: Option<&str>) -> Result<usize, StoreError> {
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_EVENT_QUEUE_DEPTH);
    };
    let n: i64 = text.parse().map_err(|e| {
        StoreError::Other(format!(
            "env EVENT_QUEUE_DEPTH={text} format error: {e}; give a number of events, e.g. 5000"
        ))
    })?;
    Ok(usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_EVENT_QUEUE_DEPTH))
}

/// How to reach the API and what to publish: flanneld's `--kube-*` flags and environment.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kube-api-url`: the API server, overriding the kubeconfig's.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`. Neither this nor `api_url`: the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// This node.
    pub node: NodeIdentity,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`: set `NetworkUnavailable=False` once running.
    pub set_node_network_unavailable: bool,
    /// `EVENT_QUEUE_DEPTH`.
    pub event_queue_depth: usize,
    /// `CONT_WHEN_CACHE_NOT_READY=true`: start even when the nodes could not be listed within
    /// `cache_sync_timeout`.
    pub continue_when_cache_not_ready: bool,
    /// How long to wait for the first list of nodes ([`CACHE_SYNC_TIMEOUT`]).
    pub cache_sync_timeout: Duration,
    /// How long to wait for this node with a pod CIDR, and for the annotation patch to go
    /// through ([`NODE_WAIT`]).
    pub node_wait: Duration,
}

/// The Kubernetes API as a lease store; see the module documentation.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    api_url: String,
    node_name: String,
    annotations: Annotations,
    net_conf: String,
    set_node_network_unavailable: bool,
    node_wait: Duration,
    shared: Arc<Shared>,
    events: Mutex<Option<mpsc::Receiver<LeaseEvent>>>,
    informer: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.informer.abort();
    }
}

impl fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeStore")
            .field("api_url", &self.inner.api_url)
            .field("node", &self.inner.node_name)
            .finish_non_exhaustive()
    }
}

/// flannel's annotation patch: `CreateTwoWayMergePatch` of the node before and after, which
/// holds the changed annotations only (Go marshals map keys sorted, as this map is).
#[derive(Debug, Serialize)]
struct AnnotationPatch {
    metadata: AnnotationPatchMetadata,
}

#[derive(Debug, Serialize)]
struct AnnotationPatchMetadata {
    annotations: BTreeMap<String, String>,
}

/// flannel's `CompleteLease` patch, `{"status":{"conditions":[...]}}`, fields in the order of
/// Go's `v1.NodeCondition`.
#[derive(Debug, Serialize)]
struct ConditionPatch {
    status: ConditionPatchStatus,
}

#[derive(Debug, Serialize)]
struct ConditionPatchStatus {
    conditions: [NodeConditionPatch; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeConditionPatch {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    last_heartbeat_time: String,
    last_transition_time: String,
    reason: &'static str,
    message: &'static str,
}

/// The `NetworkUnavailable=False` patch body flanneld sends, stamped `now`.
fn network_available_patch(now: OffsetDateTime) -> ConditionPatch {
    // metav1.Time marshals as RFC 3339 in UTC, whole seconds.
    let stamp = now
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    ConditionPatch {
        status: ConditionPatchStatus {
            conditions: [NodeConditionPatch {
                kind: "NetworkUnavailable",
                status: "False",
                last_heartbeat_time: stamp.clone(),
                last_transition_time: stamp,
                reason: NETWORK_UNAVAILABLE_REASON,
                message: NETWORK_UNAVAILABLE_MESSAGE,
            }],
        },
    }
}

/// The annotations to set on `node` to publish `backend_data` and `public_ip` (flannel's
/// `AcquireLease`): empty when they are all in place already. `public-ip-overwrite`, when the
/// operator set it, is published as `public-ip` instead of the node's own address.
pub fn annotation_changes(
    node: &NodeRecord,
    a: &Annotations,
    backend_data: &str,
    public_ip: IpAddr,
) -> BTreeMap<String, String> {
    let ip = public_ip.to_string();
    let overwrite = node.annotation(&a.backend_public_ip_overwrite);
    let stale = node.annotation(&a.backend_data) != backend_data
        || node.annotation(&a.backend_type) != VXLAN_BACKEND_TYPE
        || node.annotation(&a.backend_public_ip) != ip
        || node.annotation(&a.subnet_kube_managed) != "true"
        || (!overwrite.is_empty() && overwrite != ip);
    let mut changes = BTreeMap::new();
    if !stale {
        return changes;
    }
    let mut set = |key: &str, value: &str| {
        if node.annotation(key) != value {
            changes.insert(key.to_string(), value.to_string());
        }
    };
    set(&a.backend_type, VXLAN_BACKEND_TYPE);
    set(&a.backend_data, backend_data);
    if overwrite.is_empty() {
        set(&a.backend_public_ip, &ip);
    } else {
        if node.annotation(&a.backend_public_ip) != overwrite {
            tracing::info!(
                "overriding public ip with {overwrite:?} from node annotation {}",
                a.backend_public_ip_overwrite
            );
        }
        set(&a.backend_public_ip, overwrite);
    }
    set(&a.subnet_kube_managed, "true");
    changes
}

impl KubeStore {
    /// Connects to the API server, finds this node's name, reads the network config file and
    /// starts the node informer; waits for its first list of nodes (at most
    /// `cache_sync_timeout`; then fails unless `continue_when_cache_not_ready`).
    ///
    /// Unreachable API servers are [`StoreError::Unavailable`] (the caller may retry); bad
    /// kubeconfigs, refused credentials, missing permissions and missing files are
    /// [`StoreError::Other`] or [`StoreError::Io`] and name what to fix.
    pub async fn connect(opts: KubeOptions) -> Result<KubeStore, StoreError> {
        let annotations = Annotations::new(&opts.annotation_prefix)
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let config = client_config(&opts).await?;
        let api_url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| {
            StoreError::Other(format!(
                "cannot make a Kubernetes client for {api_url}: {}; check the kubeconfig's \
                 certificate-authority and credentials",
                describe_error(&e)
            ))
        })?;
        let node_name = match &opts.node {
            NodeIdentity::Name(n) => n.clone(),
            NodeIdentity::Pod { namespace, name } => {
                pod_node_name(&client, &api_url, namespace, name).await?
            }
        };
        let net_conf =
            std::fs::read_to_string(&opts.net_config_path).map_err(|cause| StoreError::Io {
                what: "reading the network config (--net-config-path)",
                path: opts.net_config_path.display().to_string(),
                cause,
            })?;

        let shared = Shared::new();
        let mut synced = shared.synced.subscribe();
        let (tx, rx) = mpsc::channel(opts.event_queue_depth.max(1));
        let informer = Informer {
            api: Api::all(client.clone()),
            reported: BTreeMap::new(),
            api_url: api_url.clone(),
            annotations: annotations.clone(),
            own_node: node_name.clone(),
            shared: Arc::clone(&shared),
            events: tx,
            queue_depth: opts.event_queue_depth,
        };
        let task = tokio::spawn(informer.run());
        let store = KubeStore {
            inner: Arc::new(Inner {
                client,
                api_url,
                node_name,
                annotations,
                net_conf,
                set_node_network_unavailable: opts.set_node_network_unavailable,
                node_wait: opts.node_wait,
                shared,
                events: Mutex::new(Some(rx)),
                informer: task.abort_handle(),
            }),
        };
        tracing::info!(
            node = %store.inner.node_name,
            api = %store.inner.api_url,
            "waiting up to {} s for the list of nodes",
            opts.cache_sync_timeout.as_secs()
        );
        let wait = tokio::time::timeout(opts.cache_sync_timeout, synced.wait_for(|s| *s)).await;
        match wait {
            Ok(_) => tracing::info!(
                nodes = store.inner.shared.cache().len(),
                "node list synchronised"
            ),
            Err(_) if opts.continue_when_cache_not_ready => tracing::error!(
                "timed out after {} s waiting for the list of nodes from {}; continuing anyway \
                 (CONT_WHEN_CACHE_NOT_READY=true): peers appear once the list arrives",
                opts.cache_sync_timeout.as_secs(),
                store.inner.api_url
            ),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the list of nodes did not arrive from the Kubernetes API at {} within {} s \
                     (see the warnings above for why); check that the API server is reachable \
                     from this node, or set CONT_WHEN_CACHE_NOT_READY=true to start without it",
                    store.inner.api_url,
                    opts.cache_sync_timeout.as_secs()
                )))
            }
        }
        Ok(store)
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.inner.client.clone())
    }

    /// This node as the API serves it now.
    async fn get_node(&self) -> Result<Node, StoreError> {
        let name = &self.inner.node_name;
        let what = format!("reading node {name}");
        with_deadline(&self.inner.api_url, &what, self.nodes().get(name)).await
    }

    /// This node, waiting up to `node_wait` ([`NODE_WAIT`]) for it to exist with a pod CIDR (flannel waits
    /// for the node only and fails at once without a pod CIDR; the node IPAM controller
    /// assigns it a moment after the node registers, so vxdp gives it the same 30 s). The
    /// node as last seen, or why it was not found.
    async fn wait_for_own_node(&self) -> Result<NodeRecord, StoreError> {
        let name = &self.inner.node_name;
        let deadline = tokio::time::Instant::now() + self.inner.node_wait;
        let mut last_seen = None;
        let mut last_error = None;
        loop {
            let cached = self.inner.shared.cache().get(name).cloned();
            // The cache may lag (or be empty when started without it): ask the API.
            let current = match cached {
                Some(n) if !n.pod_cidr.is_empty() => Some(n),
                _ => match self.get_node().await {
                    Ok(node) => Some(NodeRecord::from(&node)),
                    Err(e) => {
                        tracing::debug!("{e}");
                        last_error = Some(e.to_string());
                        None
                    }
                },
            };
            if let Some(n) = current {
                if !n.pod_cidr.is_empty() {
                    return Ok(n);
                }
                last_seen = Some(n);
            }
            if tokio::time::Instant::now() + NODE_POLL > deadline {
                break;
            }
            tokio::time::sleep(NODE_POLL).await;
        }
        match last_seen {
            Some(n) => Ok(n),
            None => Err(StoreError::Other(format!(
                "node {name:?} was not found in the Kubernetes API at {} within {} s ({}): is \
                 the node registered, and NODE_NAME (or the pod's spec.nodeName) right?",
                self.inner.api_url,
                self.inner.node_wait.as_secs(),
                last_error.unwrap_or_else(|| "not in the node list".into())
            ))),
        }
    }

    /// Sets `changes` on this node's annotations with a strategic merge patch of its status,
    /// trying every [`NODE_POLL`] for `node_wait`.
    async fn patch_annotations(&self, changes: BTreeMap<String, String>) -> Result<(), StoreError> {
        let patch = AnnotationPatch {
            metadata: AnnotationPatchMetadata {
                annotations: changes,
            },
        };
        let what = format!("patching the annotations of node {}", self.inner.node_name);
        let (patch, what) = (&patch, &what);
        let node = retry_for(self.inner.node_wait, NODE_POLL, what, || async move {
            let nodes = self.nodes();
            let params = PatchParams::default();
            let patch = Patch::Strategic(patch);
            with_deadline(
                &self.inner.api_url,
                what,
                nodes.patch_status(&self.inner.node_name, &params, &patch),
            )
            .await
        })
        .await?;
        // The informer's copy catches up when the watch delivers the change; until then the
        // patched node is the freshest there is (a second look must not patch again).
        let record = NodeRecord::from(&node);
        self.inner
            .shared
            .cache()
            .insert(record.name.clone(), record);
        Ok(())
    }
}

/// Runs `op` until it succeeds, every `every` for `total`; the last error otherwise.
async fn retry_for<T, F, Fut>(
    total: Duration,
    every: Duration,
    what: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + total;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + every > deadline => return Err(e),
            Err(e) => tracing::warn!("{what}: {e}; trying again in {every:?}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// `request` under [`REQUEST_TIMEOUT`], its error described.
async fn with_deadline<T>(
    api_url: &str,
    what: &str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Err(_) => Err(StoreError::Unavailable(format!(
            "Kubernetes API at {api_url}: {what}: no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(api_error(api_url, what, &e)),
    }
}

/// A client error as a store error: connection trouble and overload are
/// [`StoreError::Unavailable`]; the rest say what to fix.
fn api_error(api_url: &str, what: &str, e: &kube::Error) -> StoreError {
    let text = format!(
        "Kubernetes API at {api_url}: {what} failed: {}",
        describe_error(e)
    );
    match e {
        kube::Error::Api(status) if status.code >= 500 || status.code == 429 => {
            StoreError::Unavailable(text)
        }
        kube::Error::Api(_) => StoreError::Other(text),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Other(text),
    }
}

/// A client error in words, with its causes, and for refused credentials and permissions
/// what to check.
pub(crate) fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => {
                    "; the API server refused the credentials: check the token or client \
                     certificate in the kubeconfig (--kubeconfig-file) or the pod's service \
                     account"
                }
                403 => {
                    "; the service account lacks a permission: apply the ClusterRole of \
                     deploy/kube-vxdp.yml (nodes: get, list, watch; nodes/status: patch; pods: \
                     get) and its ClusterRoleBinding"
                }
                _ => "",
            };
            format!(
                "{} ({}, HTTP {}){hint}",
                status.message, status.reason, status.code
            )
        }
        other => {
            let mut out = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                let text = c.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                cause = c.source();
            }
            out
        }
    }
}

/// The client configuration flanneld's `clientcmd.BuildConfigFromFlags` makes: the kubeconfig
/// (with `--kube-api-url` overriding its server), else `--kube-api-url` alone (no
/// credentials), else the pod's service account.
async fn client_config(opts: &KubeOptions) -> Result<kube::Config, StoreError> {
    let parse_url = |url: &str| {
        url.parse::<http::Uri>().map_err(|e| {
            StoreError::Other(format!(
                "--kube-api-url {url:?} is not a URL ({e}); give e.g. https://10.96.0.1:443"
            ))
        })
    };
    let mut config = match (&opts.kubeconfig, &opts.api_url) {
        (Some(path), _) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Other(format!(
                    "reading the kubeconfig {} (--kubeconfig-file): {e}",
                    path.display()
                ))
            })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| {
                StoreError::Other(format!(
                    "the kubeconfig {} (--kubeconfig-file) is unusable: {e}",
                    path.display()
                ))
            })?
        }
        (None, Some(url)) => kube::Config::new(parse_url(url)?),
        (None, None) => kube::Config::incluster().map_err(|e| {
            StoreError::Other(format!(
                "no --kubeconfig-file or --kube-api-url given, and this is not a Kubernetes pod \
                 with a service account ({e}): run vxdp in the DaemonSet of deploy/kube-vxdp.yml, \
                 or give --kubeconfig-file"
            ))
        })?,
    };
    if let (Some(_), Some(url)) = (&opts.kubeconfig, &opts.api_url) {
        config.cluster_url = parse_url(url)?;
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(config)
}

/// The node pod `namespace/name` runs on (flanneld's way when `NODE_NAME` is not set).
async fn pod_node_name(
    client: &kube::Client,
    api_url: &str,
    namespace: &str,
    name: &str,
) -> Result<String, StoreError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("retrieving pod {namespace}/{name} (POD_NAMESPACE/POD_NAME)");
    let pod = with_deadline(api_url, &what, pods.get(name)).await?;
    pod.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            StoreError::Other(format!(
                "node name not present in pod spec '{namespace}/{name}': the pod is not \
                 scheduled yet; set NODE_NAME instead"
            ))
        })
}

impl LeaseStore for KubeStore {
    type Watcher = KubeWatcher;

    fn describe(&self) -> String {
        format!(
            "Kubernetes API {} (node {})",
            self.inner.api_url, self.inner.node_name
        )
    }

    async fn network_config(&self) -> Result<String, StoreError> {
        Ok(self.inner.net_conf.clone())
    }

    /// The leases of the nodes in the informer's cache (this node's included).
    async fn list(&self) -> Result<Listing, StoreError> {
        let a = &self.inner.annotations;
        let leases = self
            .inner
            .shared
            .cache()
            .values()
            .filter(|n| n.is_kube_managed(a))
            .filter_map(|n| n.to_lease(a).ok())
            .map(|l| (l.key(), l))
            .collect();
        Ok(Listing {
            leases,
            revision: 0,
        })
    }

    async fn create(&self, lease: &Lease) -> Result<bool, StoreError> {
        Err(not_written(lease))
    }

    async fn update(&self, lease: &Lease) -> Result<(), StoreError> {
        Err(not_written(lease))
    }

    /// Nothing to release: flanneld leaves the node's annotations when it stops, and the pod
    /// CIDR belongs to the node.
    async fn remove(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    /// The informer's events since it started (a replay of what `listing` holds comes first:
    /// each event carries a node's whole lease, so replaying it changes nothing).
    async fn watch(&self, _listing: &Listing) -> Result<KubeWatcher, StoreError> {
        let rx = self
            .inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                StoreError::Other("the node informer's events are already being watched".into())
            })?;
        Ok(KubeWatcher { rx })
    }

    async fn node_hints(&self) -> NodeHints {
        let node = match self.get_node().await {
            Ok(n) => NodeRecord::from(&n),
            Err(e) => {
                tracing::warn!("{e}; not reusing a VtepMAC or public IP from its annotations");
                return NodeHints::default();
            }
        };
        let a = &self.inner.annotations;
        let public_ip = match node.annotation(&a.backend_node_public_ip) {
            "" => None,
            text => match text.parse::<IpAddr>() {
                Ok(ip) => {
                    tracing::info!(
                        public_ip = %ip,
                        "using the public IP from node annotation {}",
                        a.backend_node_public_ip
                    );
                    Some(ip)
                }
                Err(e) => {
                    tracing::warn!(
                        "node annotation {} is {text:?}, not an IP address ({e}); ignoring it",
                        a.backend_node_public_ip
                    );
                    None
                }
            },
        };
        // An IPv6-only node (flanneld writes no backend-data then) keeps its MAC in
        // backend-v6-data.
        let vtep_mac = stored_vtep_mac(node.annotation(&a.backend_data))
            .or_else(|| stored_vtep_mac(node.annotation(&a.backend_v6_data)));
        if let Some(mac) = vtep_mac {
            tracing::info!(vtep_mac = %mac, "reusing the VtepMAC of node annotation {}", a.backend_data);
        }
        NodeHints {
            public_ip,
            vtep_mac,
        }
    }

    async fn assigned_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, StoreError> {
        let node = self.wait_for_own_node().await?;
        let a = &self.inner.annotations;
        // The IPv4 half (`backend-data`, `public-ip`), with IPv4 on. flanneld with EnableIPv4
        // false writes neither: its BackendData is empty (`"null"`).
        let (subnet, mut changes) = match config.ipv4 {
            Some(v4) => {
                let subnet = node::own_pod_cidr(&node, v4.network).map_err(StoreError::Other)?;
                let data = attrs
                    .vxlan_data()
                    .map_err(|e| StoreError::Other(e.to_string()))?;
                let backend_data = vxlan_backend_data(config.backend.vni, data.vtep_mac);
                let changes =
                    annotation_changes(&node, a, &backend_data, IpAddr::V4(attrs.public_ip));
                (Some(subnet), changes)
            }
            None => {
                let mut changes = BTreeMap::new();
                for (key, value) in [
                    (&a.backend_type, VXLAN_BACKEND_TYPE),
                    (&a.subnet_kube_managed, "true"),
                ] {
                    if node.annotation(key) != value {
                        changes.insert(key.clone(), value.to_string());
                    }
                }
                (None, changes)
            }
        };
        // Dual stack and IPv6-only: the IPv6 pod CIDR is the IPv6 half of the lease, and
        // `backend-v6-data` and `public-ipv6` publish it as flanneld does.
        let ipv6_subnet = match config.ipv6 {
            None => None,
            Some(v6) => {
                let sn6 = node::own_pod_cidr_v6(&node, v6.network).map_err(StoreError::Other)?;
                let (Some(ip6), Ok(data6)) = (attrs.public_ipv6, attrs.vxlan_v6_data()) else {
                    return Err(StoreError::Other(
                        "the network config enables IPv6, but this node has no IPv6 underlay \
                         address to publish (public-ipv6): give it one, or pass --public-ipv6"
                            .into(),
                    ));
                };
                let v6_data = vxlan_backend_data(config.backend.vni, data6.vtep_mac);
                for (key, value) in [
                    (&a.backend_v6_data, v6_data),
                    (&a.backend_public_ipv6, ip6.to_string()),
                ] {
                    if node.annotation(key) != value {
                        changes.insert(key.clone(), value);
                    }
                }
                Some(sn6)
            }
        };
        let key = SubnetKey::from_parts(subnet, ipv6_subnet).ok_or_else(|| {
            StoreError::Other("the network config enables neither IPv4 nor IPv6".into())
        })?;
        if changes.is_empty() {
            tracing::info!(node = %node.name, "the node's annotations are up to date");
        } else {
            tracing::info!(node = %node.name, annotations = ?changes.keys().collect::<Vec<_>>(), "publishing this node in its annotations");
            self.patch_annotations(changes).await?;
        }
        *self
            .inner
            .shared
            .own_key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(Some(Lease::new(key, attrs.clone(), None)))
    }

    fn node_ready(
        &self,
        _lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let store = self.clone();
        async move {
            if !store.inner.set_node_network_unavailable {
                return Ok(());
            }
            let name = store.inner.node_name.clone();
            let what = format!("setting NetworkUnavailable=False on node {name}");
            retry_for(store.inner.node_wait, NODE_POLL, &what, || {
                let patch = network_available_patch(OffsetDateTime::now_utc());
                let nodes = store.nodes();
                let name = name.clone();
                let what = what.clone();
                let api_url = store.inner.api_url.clone();
                async move {
                    let params = PatchParams::default();
                    let patch = Patch::Strategic(&patch);
                    with_deadline(&api_url, &what, nodes.patch_status(&name, &params, &patch)).await
                }
            })
            .await?;
            tracing::info!(node = %name, "set the node's NetworkUnavailable condition to False ({NETWORK_UNAVAILABLE_REASON})");
            Ok(())
        }
    }
}

fn not_written(lease: &Lease) -> StoreError {
    StoreError::Other(format!(
        "the Kubernetes subnet manager does not write leases ({}): a node's lease is its \
         spec.podCIDR, published in its annotations",
        lease.key()
    ))
}

/// Lease events from the node informer.
#[derive(Debug)]
pub struct KubeWatcher {
    rx: mpsc::Receiver<LeaseEvent>,
}

/// How many queued events one [`LeaseWatcher::next`] hands over at most.
const MAX_BATCH: usize = 256;

impl LeaseWatcher for KubeWatcher {
    async fn next(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        let Some(first) = self.rx.recv().await else {
            // The informer stopped (its store was dropped): nothing will come any more.
            tokio::time::sleep(Duration::from_secs(5)).await;
            return Err(StoreError::Other(
                "the node informer has stopped; no more lease events".into(),
            ));
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests;
