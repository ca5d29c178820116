//! A stand-in Kubernetes API server for tests: the part of the real API that flannel's
//! Kubernetes subnet manager uses, over the real wire protocol, so that the client under test
//! cannot tell it from a kube-apiserver.
//!
//! - HTTPS (HTTP/1.1) with a CA and a server certificate made at start ([`rcgen`]), valid for
//!   the address it listens on; every request needs `Authorization: Bearer <token>` (401
//!   otherwise). [`KubeApiServer::write_kubeconfig`] writes the kubeconfig a user would have.
//! - `GET /api/v1/nodes` (list; `limit`/`continue` pages unless `resourceVersion=0`, a `410
//!   Gone` Status for an expired continue token), `GET /api/v1/nodes?watch=true` (chunked
//!   JSON events, one per line: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when
//!   `allowWatchBookmarks=true`, an `ERROR` event carrying a `410 Expired` Status when the
//!   `resourceVersion` is older than the retained history; `timeoutSeconds` ends the watch),
//!   `GET /api/v1/nodes/{name}`, `GET /api/v1/namespaces/{ns}/pods/{name}`, and
//!   `PATCH /api/v1/nodes/{name}/status` with a strategic merge patch, applied to metadata
//!   (annotations, labels) and status (conditions merged by `type`) as the real server does;
//!   the spec is left alone, as the status subresource does.
//! - Objects look as the real server serves them: `apiVersion`, `kind`, metadata with `uid`,
//!   `resourceVersion` (one counter for everything, as etcd's revision) and
//!   `creationTimestamp`; items of a list carry no `apiVersion`/`kind`, as in a real list.
//!
//! Tests drive it directly: add, change and delete nodes, force every watch to expire (410),
//! take the API away (connections refused) and bring it back, and read back what clients
//! patched and which requests they made. The server runs on its own thread and tokio runtime,
//! so it works from synchronous and asynchronous tests alike.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

type Body = BoxBody<Bytes, Infallible>;

/// The port a real API server listens on.
pub const API_PORT: u16 = 6443;

/// How often open watches that asked for bookmarks get one, by default (a real server sends
/// one about every minute; tests want to see them sooner).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// One request the server received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
}

impl ApiRequest {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`?watch=true` or `?watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }
}

/// A node to create: its name, pod CIDRs (none: not assigned yet), annotations and address.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs` (and `spec.podCIDR`, the first one).
    pub pod_cidrs: Vec<String>,
    /// `metadata.annotations`, beside those a kubelet sets.
    pub annotations: BTreeMap<String, String>,
    /// The node's InternalIP in `status.addresses`.
    pub internal_ip: Option<IpAddr>,
}

impl NodeSpec {
    /// A node called `name` with these pod CIDRs.
    pub fn new(name: &str, pod_cidrs: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pod_cidrs: pod_cidrs.iter().map(|c| c.to_string()).collect(),
            ..NodeSpec::default()
        }
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> NodeSpec {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Sets the InternalIP.
    pub fn internal_ip(mut self, ip: IpAddr) -> NodeSpec {
        self.internal_ip = Some(ip);
        self
    }
}

/// An open watch: where its events go.
struct Watcher {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    bookmarks: bool,
}

/// Everything the API serves, and what it saw.
struct State {
    /// The last resource version handed out (etcd's revision: one counter for all objects).
    resource_version: u64,
    /// Watches and continue tokens from before this version get `410 Gone`.
    oldest_retained: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// Node events after `oldest_retained`: (resource version, type, object).
    history: Vec<(u64, &'static str, Value)>,
    watchers: Vec<Watcher>,
    next_watcher: u64,
    next_uid: u64,
    requests: Vec<ApiRequest>,
    bookmark_interval: Duration,
}

/// The tasks serving connections while the API is up.
struct Serving {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

struct Shared {
    state: Mutex<State>,
    token: String,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock leaves consistent data behind (every
    // mutation is complete before the guard drops), so carry on with it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stand-in Kubernetes API server (see the module documentation).
pub struct KubeApiServer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    acceptor: tokio_rustls::TlsAcceptor,
    netns: Option<String>,
    addr: SocketAddr,
    serving: Mutex<Option<Serving>>,
    ca_pem: String,
}

impl KubeApiServer {
    /// Starts a server on 127.0.0.1 (a free port).
    pub fn start() -> KubeApiServer {
        Self::start_at(None, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a server inside network namespace `netns`, listening on `ip`:6443 (an address of
    /// that namespace), for hosts in other namespaces to reach over their underlay.
    pub fn start_in_netns(netns: &str, ip: IpAddr) -> KubeApiServer {
        Self::start_at(Some(netns.to_string()), SocketAddr::new(ip, API_PORT))
    }

    fn start_at(netns: Option<String>, addr: SocketAddr) -> KubeApiServer {
        let (ca_pem, server_config) = make_tls(addr.ip());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kube-api-stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the stand-in API server");
                handle_tx
                    .send(rt.handle().clone())
                    .expect("the starting thread waits for the runtime handle");
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn the stand-in API server thread");
        let runtime = handle_rx
            .recv()
            .expect("the stand-in API server's runtime started");
        let token = format!("vxdp-test-{:016x}", random_u64());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                resource_version: 100,
                oldest_retained: 100,
                nodes: BTreeMap::new(),
                pods: BTreeMap::new(),
                history: Vec::new(),
                watchers: Vec::new(),
                next_watcher: 0,
                next_uid: 0,
                requests: Vec::new(),
                bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            }),
            token,
        });
        let mut server = KubeApiServer {
            shared,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
            netns,
            addr,
            serving: Mutex::new(None),
            ca_pem,
        };
        server.addr = server.listen();
        let shared = Arc::clone(&server.shared);
        server.runtime.spawn(bookmark_ticker(shared));
        server
    }

    /// Binds the listener (inside the namespace, if any) and starts accepting; the address.
    fn listen(&self) -> SocketAddr {
        let addr = self.addr;
        let bind = move || {
            std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("stand-in API server: bind {addr}: {e}"))
        };
        let listener = match &self.netns {
            Some(ns) => crate::enter_netns(ns, bind),
            None => bind(),
        };
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let local = listener.local_addr().expect("listener address");
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let _guard = self.runtime.enter();
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the listener");
            self.runtime.spawn(accept_loop(
                listener,
                self.acceptor.clone(),
                Arc::clone(&self.shared),
                self.runtime.clone(),
                Arc::clone(&connections),
            ))
        };
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(Serving {
            accept,
            connections,
        });
        local
    }

    /// `https://<address>:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token it accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) that signed its server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig for this server (CA data and bearer token), as a user would have.
    pub fn write_kubeconfig(&self, path: &Path) {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: \
             {}\n    certificate-authority-data: {ca}\nusers:\n- name: vxdp\n  user:\n    token: \
             {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: \
             vxdp\ncurrent-context: stand-in\n",
            self.url(),
            self.token()
        );
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Creates a node (an `ADDED` event for watchers).
    pub fn add_node(&self, spec: NodeSpec) {
        let mut st = self.state();
        assert!(
            !st.nodes.contains_key(&spec.name),
            "node {} exists already",
            spec.name
        );
        st.next_uid += 1;
        let uid = format!(
            "{:08x}-7e57-4000-8000-{:012x}",
            std::process::id(),
            st.next_uid
        );
        let node = node_object(&spec, &uid);
        st.store_node(&spec.name, node, "ADDED");
    }

    /// Creates a pod `namespace/name` scheduled on `node_name`.
    pub fn add_pod(&self, namespace: &str, name: &str, node_name: &str) {
        let mut st = self.state();
        st.resource_version += 1;
        st.next_uid += 1;
        let pod = json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("{:08x}-7e57-4000-9000-{:012x}", std::process::id(), st.next_uid),
                "resourceVersion": st.resource_version.to_string(),
                "creationTimestamp": rfc3339(SystemTime::now()),
                "labels": {"app": "vxdp"},
            },
            "spec": {
                "nodeName": node_name,
                "hostNetwork": true,
                "containers": [{"name": "kube-vxdp", "image": "vxdp:test"}],
            },
            "status": {"phase": "Running"},
        });
        st.pods.insert((namespace.into(), name.into()), pod);
    }

    /// Sets (`Some`) or removes (`None`) annotations of `node`, as another client would.
    pub fn set_annotations(&self, node: &str, changes: &[(&str, Option<&str>)]) {
        let mut st = self.state();
        let mut obj = st.node_or_panic(node);
        let annotations = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object")
            .entry("annotations")
            .or_insert_with(|| json!({}));
        for (k, v) in changes {
            match v {
                Some(v) => annotations[*k] = json!(v),
                None => {
                    annotations.as_object_mut().map(|m| m.remove(*k));
                }
            }
        }
        st.store_node(node, obj, "MODIFIED");
    }

    /// Sets `spec.podCIDR(s)` of `node` (what the node IPAM controller does once).
    pub fn set_pod_cidrs(&self, node: &str, cidrs: &[&str]) {
        let mut st = self.state();
        let mut obj = st.node_or_panic(node);
        match cidrs.first() {
            Some(first) => {
                obj["spec"]["podCIDR"] = json!(first);
                obj["spec"]["podCIDRs"] = json!(cidrs);
            }
            // Unset fields are left out, as the real server serves them.
            None => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("podCIDR");
                    spec.remove("podCIDRs");
                }
            }
        }
        st.store_node(node, obj, "MODIFIED");
    }

    /// Deletes `node` (a `DELETED` event carrying its last state).
    pub fn delete_node(&self, node: &str) {
        let mut st = self.state();
        let mut obj = st
            .nodes
            .remove(node)
            .unwrap_or_else(|| panic!("no node {node} to delete"));
        st.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        st.publish("DELETED", obj);
    }

    /// The node as the API serves it now.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.state().nodes.get(name).cloned()
    }

    /// The annotations of `node` (empty when it has none or does not exist).
    pub fn annotations(&self, node: &str) -> BTreeMap<String, String> {
        self.node(node)
            .and_then(|n| {
                n["metadata"]["annotations"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The status condition of `node` of type `kind`, e.g. `NetworkUnavailable`.
    pub fn condition(&self, node: &str, kind: &str) -> Option<Value> {
        self.node(node)?["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state().requests.clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.state().resource_version
    }

    /// Advances the resource version without a node event (another kind of object changed),
    /// so that only bookmarks tell node watchers about it.
    pub fn bump_resource_version(&self) -> u64 {
        let mut st = self.state();
        st.resource_version += 1;
        st.resource_version
    }

    /// Sets how often watches that asked for bookmarks get one.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.state().bookmark_interval = every;
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut st = self.state();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.len()
    }

    /// Drops the history up to now (as an etcd compaction does): every open watch ends with an
    /// `ERROR` event carrying a `410 Expired` Status, and so does any later watch or continue
    /// token from an older resource version. Clients must re-list.
    pub fn expire_watches(&self) {
        let mut st = self.state();
        st.oldest_retained = st.resource_version;
        st.history.clear();
        let message = format!(
            "too old resource version: {} ({})",
            st.resource_version, st.oldest_retained
        );
        for w in st.watchers.drain(..) {
            let _ = w.tx.send(error_event(410, "Expired", &message));
        }
    }

    /// Takes the API away: the listening socket is closed (new connections are refused) and
    /// every open connection, watches included, is cut.
    pub fn go_down(&self) {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(serving) = serving else { return };
        serving.accept.abort();
        let connections = std::mem::take(
            &mut *serving
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in &connections {
            c.abort();
        }
        self.state().watchers.clear();
        // Aborted tasks are dropped (closing their sockets) by the runtime's threads: wait for
        // it, so that the API is really gone when this returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(serving.accept.is_finished() && connections.iter().all(JoinHandle::is_finished)) {
            assert!(
                Instant::now() < deadline,
                "stand-in API server tasks did not stop"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Brings the API back on the same address after [`KubeApiServer::go_down`].
    pub fn come_back(&self) {
        let up = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !up {
            self.listen();
        }
    }

    /// Whether the API is up.
    pub fn is_up(&self) -> bool {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.go_down();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn node_or_panic(&self, name: &str) -> Value {
        self.nodes
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Stores `node` under a new resource version and tells the watchers; a `MODIFIED` that
    /// changes nothing is no change at all (the real server skips no-op updates).
    fn store_node(&mut self, name: &str, mut node: Value, kind: &'static str) {
        if kind == "MODIFIED" && self.nodes.get(name) == Some(&node) {
            return;
        }
        self.resource_version += 1;
        node["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.nodes.insert(name.to_string(), node.clone());
        self.publish(kind, node);
    }

    fn publish(&mut self, kind: &'static str, object: Value) {
        let line = event_line(kind, &object);
        self.history.push((self.resource_version, kind, object));
        self.watchers.retain(|w| w.tx.send(line.clone()).is_ok());
    }
}

/// One watch event as the server writes it: a JSON object and a newline.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error_event(code: u16, reason: &str, message: &str) -> Bytes {
    event_line("ERROR", &status_object(code, reason, message))
}

/// A Node as a kubelet registers it, with `spec` as the node IPAM controller fills it in.
fn node_object(spec: &NodeSpec, uid: &str) -> Value {
    let now = rfc3339(SystemTime::now());
    let mut annotations = Map::new();
    annotations.insert("node.alpha.kubernetes.io/ttl".into(), json!("0"));
    annotations.insert(
        "volumes.kubernetes.io/controller-managed-attach-detach".into(),
        json!("true"),
    );
    for (k, v) in &spec.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    let mut node_spec = Map::new();
    if let Some(first) = spec.pod_cidrs.first() {
        node_spec.insert("podCIDR".into(), json!(first));
        node_spec.insert("podCIDRs".into(), json!(spec.pod_cidrs));
    }
    let mut addresses = Vec::new();
    if let Some(ip) = spec.internal_ip {
        addresses.push(json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": spec.name}));
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": spec.name,
            "uid": uid,
            "resourceVersion": "0",
            "creationTimestamp": now,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
            },
            "annotations": annotations,
        },
        "spec": node_spec,
        "status": {
            "capacity": {"cpu": "2", "memory": "4015876Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "3913476Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": now,
                 "lastTransitionTime": now, "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": now,
                 "lastTransitionTime": now, "reason": "KubeletReady",
                 "message": "kubelet is posting ready status"},
            ],
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.0", "kubeletVersion": "v1.33.0",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

/// `t` as Kubernetes writes times: RFC 3339 in UTC, whole seconds.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, 8, "getrandom: {}", std::io::Error::last_os_error());
    u64::from_ne_bytes(bytes)
}

/// A CA and a server certificate for `ip` (and `localhost`) signed by it: the CA's PEM, and
/// the server's TLS configuration (HTTP/1.1 by ALPN, as a real API server offers besides h2).
fn make_tls(ip: IpAddr) -> (String, rustls::ServerConfig) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vxdp-test-kubernetes-ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

    let mut names = vec![
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ];
    names.push(ip.to_string());
    let mut params = rcgen::CertificateParams::new(names).expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let task = runtime.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
        let mut list = connections.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|c| !c.is_finished());
        list.push(task);
    }
}

async fn bookmark_ticker(shared: Arc<Shared>) {
    loop {
        let every = lock(&shared.state).bookmark_interval;
        tokio::time::sleep(every).await;
        let mut st = lock(&shared.state);
        let bookmark = event_line(
            "BOOKMARK",
            &json!({
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": st.resource_version.to_string()},
            }),
        );
        st.watchers
            .retain(|w| !w.bookmarks || w.tx.send(bookmark.clone()).is_ok());
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(status, &status_object(code, reason, message))
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    let mut body = status_object(404, "NotFound", &format!("{kind} \"{name}\" not found"));
    body["details"] = json!({"name": name, "kind": kind});
    full(StatusCode::NOT_FOUND, &body)
}

fn decode_query(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let authorized = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    let request = ApiRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: decode_query(parts.uri.query()),
        content_type: parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
        authorized,
    };
    lock(&shared.state).requests.push(request.clone());
    if !authorized {
        return Ok(failure(401, "Unauthorized", "Unauthorized"));
    }
    let segments: Vec<&str> = request
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let resp = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) if request.is_watch() => watch_nodes(&shared, &request),
        ("GET", ["api", "v1", "nodes"]) => list_nodes(&shared, &request),
        ("GET", ["api", "v1", "nodes", name]) => match lock(&shared.state).nodes.get(*name) {
            Some(node) => full(StatusCode::OK, node),
            None => not_found("nodes", name),
        },
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            match lock(&shared.state)
                .pods
                .get(&(ns.to_string(), name.to_string()))
            {
                Some(pod) => full(StatusCode::OK, pod),
                None => not_found("pods", name),
            }
        }
        ("PATCH", ["api", "v1", "nodes", name, "status"]) => patch_node_status(
            &shared,
            name,
            request.content_type.as_deref(),
            &request.body,
        ),
        ("PATCH", ["api", "v1", "nodes", name]) => failure(
            403,
            "Forbidden",
            &format!(
                "nodes \"{name}\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" \
                 cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
            ),
        ),
        _ => failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    };
    Ok(resp)
}

fn list_item(node: &Value) -> Value {
    let mut item = node.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

fn list_nodes(shared: &Shared, req: &ApiRequest) -> Response<Body> {
    let st = lock(&shared.state);
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // resourceVersion=0 is served from the watch cache, which does not page.
    let limit = if req.param("resourceVersion") == Some("0") {
        None
    } else {
        limit
    };
    let (list_rv, start_after) = match req.param("continue").filter(|c| !c.is_empty()) {
        None => (st.resource_version, None),
        Some(token) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let Some(decoded) = decoded else {
                return failure(400, "BadRequest", "continue key is not valid");
            };
            let rv = decoded["rv"].as_u64().unwrap_or(0);
            if rv < st.oldest_retained {
                return failure(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter.",
                );
            }
            (rv, decoded["start"].as_str().map(str::to_string))
        }
    };
    let mut items = Vec::new();
    let mut next = None;
    for (name, node) in &st.nodes {
        if start_after.as_ref().is_some_and(|s| name <= s) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            let last = items
                .last()
                .and_then(|i: &Value| i["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_string();
            next = Some(
                base64::engine::general_purpose::STANDARD
                    .encode(json!({"rv": list_rv, "start": last}).to_string()),
            );
            break;
        }
        items.push(list_item(node));
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(c) = next {
        metadata["continue"] = json!(c);
    }
    full(
        StatusCode::OK,
        &json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items}),
    )
}

fn watch_nodes(shared: &Arc<Shared>, req: &ApiRequest) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    {
        let mut st = lock(&shared.state);
        match req.param("resourceVersion").unwrap_or("") {
            // "Any": the current state as ADDED events, then changes.
            "" | "0" => {
                for node in st.nodes.values() {
                    let _ = tx.send(event_line("ADDED", node));
                }
                st.register(tx, bookmarks, timeout, shared);
            }
            rv => match rv.parse::<u64>() {
                Err(_) => {
                    return failure(
                        400,
                        "BadRequest",
                        &format!("invalid resource version {rv:?}"),
                    )
                }
                Ok(rv) if rv < st.oldest_retained => {
                    let message =
                        format!("too old resource version: {rv} ({})", st.oldest_retained);
                    let _ = tx.send(error_event(410, "Expired", &message));
                    drop(tx);
                }
                Ok(rv) => {
                    for (at, kind, object) in &st.history {
                        if *at > rv {
                            let _ = tx.send(event_line(kind, object));
                        }
                    }
                    st.register(tx, bookmarks, timeout, shared);
                }
            },
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

impl State {
    /// Adds an open watch; it ends (its stream completes) after `timeout_s` seconds.
    fn register(
        &mut self,
        tx: mpsc::UnboundedSender<Bytes>,
        bookmarks: bool,
        timeout_s: u64,
        shared: &Arc<Shared>,
    ) {
        self.next_watcher += 1;
        let id = self.next_watcher;
        self.watchers.push(Watcher { id, tx, bookmarks });
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(timeout_s)).await;
            lock(&shared.state).watchers.retain(|w| w.id != id);
        });
    }
}

/// Which lists of a Node merge by a key in a strategic merge patch (`patchMergeKey` in the
/// Kubernetes API types); every other list is replaced whole.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "status.conditions" | "status.addresses" => Some("type"),
        "spec.taints" => Some("key"),
        "status.volumesAttached" => Some("name"),
        _ => None,
    }
}

/// Applies strategic merge patch `patch` to `target` at `path` (dot-separated).
fn strategic_merge(target: &mut Value, patch: &Value, path: &str) {
    let (Some(target_map), Some(patch_map)) = (target.as_object_mut(), patch.as_object()) else {
        *target = strip_directives(patch);
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    for (key, value) in patch_map {
        if key.starts_with('$') {
            // $setElementOrder/<list>, $retainKeys: ordering and pruning hints for lists and
            // maps, which this server keeps in insertion order anyway.
            continue;
        }
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match (target_map.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(existing, value, &child);
            }
            (Some(Value::Array(existing)), Value::Array(items)) if merge_key(&child).is_some() => {
                let key_field = merge_key(&child).unwrap_or_default();
                for item in items {
                    let id = &item[key_field];
                    let pos = existing.iter().position(|e| &e[key_field] == id);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge(&mut existing[i], item, &child),
                        (None, false) => existing.push(strip_directives(item)),
                    }
                }
            }
            _ => {
                target_map.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn patch_node_status(
    shared: &Shared,
    name: &str,
    content_type: Option<&str>,
    body: &str,
) -> Response<Body> {
    let media = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if media != "application/strategic-merge-patch+json" && media != "application/merge-patch+json"
    {
        return failure(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {media:?})"),
        );
    }
    let patch: Value = match serde_json::from_str(body) {
        Ok(p @ Value::Object(_)) => p,
        Ok(_) | Err(_) => {
            return failure(
                400,
                "BadRequest",
                "error decoding patch: the patch is not a JSON object",
            )
        }
    };
    let mut st = lock(&shared.state);
    let Some(current) = st.nodes.get(name).cloned() else {
        return not_found("nodes", name);
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
        if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
            return failure(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on nodes \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again"
                ),
            );
        }
    }
    let mut updated = current.clone();
    let mut patch = patch;
    if let Some(m) = patch.as_object_mut() {
        // The status subresource keeps the spec (the node strategy's PrepareForUpdate), and
        // these are the server's to set.
        m.remove("spec");
        m.remove("kind");
        m.remove("apiVersion");
    }
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["name", "uid", "resourceVersion", "creationTimestamp"] {
            meta.remove(k);
        }
    }
    strategic_merge(&mut updated, &patch, "");
    if updated != current {
        st.store_node(name, updated, "MODIFIED");
    }
    let node = st.nodes.get(name).cloned().unwrap_or(current);
    full(StatusCode::OK, &node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn strategic_merge_patch_as_the_api_server_applies_it() {
        let mut node = json!({
            "metadata": {"annotations": {"a": "1", "b": "2"}},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"},
            ], "addresses": [{"type": "Hostname", "address": "n1"}]},
        });
        let patch = json!({
            "metadata": {"annotations": {"b": null, "c": "3"}},
            "status": {"conditions": [
                {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
                {"type": "Custom", "status": "True"},
            ], "$setElementOrder/conditions": [{"type": "Ready"}]},
        });
        strategic_merge(&mut node, &patch, "");
        assert_eq!(node["metadata"]["annotations"], json!({"a": "1", "c": "3"}));
        let conditions = node["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 3);
        assert_eq!(conditions[0]["reason"], "KubeletReady");
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "FlannelIsUp");
        assert_eq!(conditions[2]["type"], "Custom");
        assert!(node["status"].get("$setElementOrder/conditions").is_none());
        // Lists without a merge key are replaced, and `$patch: delete` removes an element.
        let patch = json!({"status": {"conditions": [{"type": "Custom", "$patch": "delete"}],
                                      "images": [{"names": ["x"]}]}});
        strategic_merge(&mut node, &patch, "");
        assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(node["status"]["images"], json!([{"names": ["x"]}]));
    }

    #[test]
    fn queries_are_decoded() {
        let q = decode_query(Some(
            "watch=true&resourceVersion=12&fieldSelector=metadata.name%3Dn1&x",
        ));
        assert_eq!(
            q,
            vec![
                ("watch".into(), "true".into()),
                ("resourceVersion".into(), "12".into()),
                ("fieldSelector".into(), "metadata.name=n1".into()),
                ("x".into(), String::new()),
            ]
        );
    }
}
