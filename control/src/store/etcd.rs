//! The etcd v3 lease store: what flanneld clusters use, with flanneld's keys, values and
//! transactions (`pkg/subnet/etcd/registry.go`), so vxdp and flanneld nodes share one network.
//!
//! ```text
//! <prefix>/config                    flannel's network config JSON
//! <prefix>/subnets/10.5.52.0-24      one lease: flannel's LeaseAttrs JSON, attached to an etcd
//!                                    lease whose TTL is the lease's lifetime (none: a reservation)
//! ```
//!
//! - Creation is flannel's create-if-absent: grant an etcd lease, then `if version(key) == 0 then
//!   put(key, value, lease)`. Renewal grants a new etcd lease and puts the key again.
//! - Removal deletes the key only while it still holds this node's PublicIP (a transaction
//!   guarded by the key's mod revision, so a concurrent takeover survives).
//! - The watcher watches `<prefix>/subnets/` from the listing's revision. When the watch breaks
//!   (etcd down, connection lost, or the start revision compacted away) it re-lists and reports
//!   the difference to what it last reported, then watches again from the new listing. It
//!   reports vxlan leases only; a `Removed` event carries the lease last reported for the key.
//! - Requests go to the endpoint that answered last and fail over to the others in order.
//!   Each has a deadline ([`RPC_TIMEOUT`]), so a daemon never hangs on an etcd that accepts
//!   connections but does not answer (no leader, partitioned).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use super::{diff, LeaseStore, LeaseWatcher, Listing, StoreError};
use crate::lease::{
    config_key, subnets_dir, Lease, LeaseAttrs, LeaseEvent, SubnetKey, DEFAULT_ETCD_PREFIX,
};

/// The deadline of every etcd request (and of connecting).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// How long establishing a TCP (and TLS) connection to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 pings on idle connections, so that a watch on a dead connection (etcd host gone, no
/// RST) fails within seconds. etcd refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The watcher's pause after a failure, doubled per consecutive failure up to the maximum (as
/// flanneld: 100 ms doubling to 5 s).
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// gRPC status codes (the gRPC spec's `doc/statuscodes.md`), as etcd-client's `Status` carries.
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// How to reach etcd: flanneld's `--etcd-*` flags.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs (`--etcd-endpoints`), e.g. `http://127.0.0.1:2379`. `https://` endpoints use
    /// TLS; endpoints without a scheme use TLS when TLS files are given.
    pub endpoints: Vec<String>,
    /// The key prefix (`--etcd-prefix`), default `/coreos.com/network`.
    pub prefix: String,
    /// The CA that signed etcd's server certificate (`--etcd-cafile`).
    pub ca_file: Option<PathBuf>,
    /// This client's certificate (`--etcd-certfile`), for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file` (`--etcd-keyfile`).
    pub key_file: Option<PathBuf>,
    /// The etcd user (`--etcd-username`), when etcd has authentication enabled.
    pub username: Option<String>,
    /// Its password (`--etcd-password`).
    pub password: Option<String>,
}

impl Default for EtcdOptions {
    /// flanneld's defaults: `http://127.0.0.1:4001,http://127.0.0.1:2379` and
    /// `/coreos.com/network`, no TLS, no user.
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec![
                "http://127.0.0.1:4001".into(),
                "http://127.0.0.1:2379".into(),
            ],
            prefix: DEFAULT_ETCD_PREFIX.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A lease store in etcd (v3 API), shared with flanneld nodes.
///
/// It keeps one client per endpoint and sends each request to the endpoint that answered last,
/// failing over to the others in order: etcd-client's own balancing keeps sending a share of
/// the requests to an endpoint that refuses connections, and flanneld's default endpoint list
/// names `:4001`, where nothing listens nowadays.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Member>,
    /// The index of the member that answered last.
    preferred: AtomicUsize,
    connect: ConnectOptions,
    /// Whether TLS is used (for hints).
    tls: bool,
    prefix: String,
    /// The endpoints, comma-separated, for messages.
    endpoints: String,
}

/// One endpoint and its client, made on first use (with authentication, making a client talks
/// to etcd, which may be down then).
struct Member {
    url: String,
    client: OnceCell<Client>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Why one request to one endpoint failed.
struct Failure {
    /// Connection trouble (worth another endpoint, and a retry later).
    unavailable: bool,
    /// What went wrong, and for anything but connection trouble what to do.
    reason: String,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (reading the config key, which this node
    /// needs read access to anyway).
    ///
    /// Unreachable endpoints are [`StoreError::Unavailable`] (the caller may retry); bad TLS
    /// files, bad URLs or refused credentials are [`StoreError::Other`] or [`StoreError::Io`]
    /// and name what to fix.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Other(
                "no etcd endpoints given: set --etcd-endpoints, e.g. http://127.0.0.1:2379".into(),
            ));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            // As flanneld's watches: a member cut off from its cluster must not keep serving
            // a stale view.
            .with_require_leader(true);
        let tls = tls_options(&opts)?;
        let uses_tls = tls.is_some();
        if let Some(tls) = tls {
            connect = connect.with_tls(tls);
        }
        match (&opts.username, &opts.password) {
            (Some(user), password) => {
                connect = connect
                    .with_user(user.clone(), password.clone().unwrap_or_default())
                    // etcd's auth tokens expire (5 min by default); a daemon runs longer.
                    .with_auto_token_refresh(true);
            }
            (None, Some(_)) => tracing::warn!(
                "--etcd-password is ignored without --etcd-username; connecting to etcd without \
                 authentication"
            ),
            (None, None) => {}
        }
        let store = EtcdStore {
            inner: Arc::new(Inner {
                members: opts
                    .endpoints
                    .iter()
                    .map(|url| Member {
                        url: url.clone(),
                        client: OnceCell::new(),
                    })
                    .collect(),
                preferred: AtomicUsize::new(0),
                connect,
                tls: uses_tls,
                endpoints: opts.endpoints.join(","),
                prefix: opts.prefix,
            }),
        };
        let key = config_key(store.prefix());
        store
            .call(&format!("reading {key}"), |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(store)
    }

    /// The key prefix (`--etcd-prefix`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    /// `<prefix>/subnets/`, the prefix of every lease key (with the slash, so that a sibling
    /// such as `<prefix>/subnets2` is not listed).
    fn lease_prefix(&self) -> String {
        format!("{}/", subnets_dir(self.prefix()))
    }

    /// Runs one request, `what`, on the endpoint that answered last, then on the others while
    /// they fail with connection trouble, each under [`RPC_TIMEOUT`]. Errors say what was
    /// attempted, where, and what to check.
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let members = &self.inner.members;
        let first = self.inner.preferred.load(Ordering::Relaxed) % members.len();
        let mut tried = Vec::new();
        for i in 0..members.len() {
            let idx = (first + i) % members.len();
            let member = &members[idx];
            let attempt = async {
                let client = member.client(&self.inner.connect).await?;
                op(client).await.map_err(failure)
            };
            let failure = match tokio::time::timeout(RPC_TIMEOUT, attempt).await {
                Ok(Ok(v)) => {
                    if idx != first {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                        tracing::info!(endpoint = %member.url, "using etcd endpoint");
                    }
                    return Ok(v);
                }
                Ok(Err(f)) => f,
                Err(_) => Failure {
                    unavailable: true,
                    reason: format!("no answer within {} s", RPC_TIMEOUT.as_secs()),
                },
            };
            if !failure.unavailable {
                return Err(StoreError::Other(format!(
                    "etcd at {}: {what} failed: {}",
                    member.url, failure.reason
                )));
            }
            tried.push(format!("{}: {}", member.url, failure.reason));
        }
        let tls_hint = if self.inner.tls {
            ", and that etcd accepts this host's --etcd-certfile and its certificate is signed by \
             --etcd-cafile"
        } else {
            ""
        };
        Err(StoreError::Unavailable(format!(
            "etcd: {what} failed at every endpoint ({}); check --etcd-endpoints, that etcd is \
             running, has a leader and is reachable from this host{tls_hint} (vxdp retries)",
            tried.join("; ")
        )))
    }

    /// When leases attached to these etcd lease IDs lapse, asking each ID once. A lease that is
    /// gone already (TTL -1: expired or revoked, its keys about to be deleted) lapses now.
    async fn expirations(&self, ids: Vec<i64>) -> Result<HashMap<i64, OffsetDateTime>, StoreError> {
        let mut out = HashMap::new();
        for id in ids {
            if id == 0 || out.contains_key(&id) {
                continue;
            }
            let resp = self
                .call(
                    &format!("asking the TTL of lease {id:x}"),
                    |mut c| async move { c.lease_time_to_live(id, None).await },
                )
                .await?;
            let now = OffsetDateTime::now_utc();
            out.insert(id, now + time::Duration::seconds(resp.ttl().max(0)));
        }
        Ok(out)
    }

    /// Grants an etcd lease lasting until `expiration` (at least 1 s); its ID.
    async fn grant_until(&self, expiration: OffsetDateTime, key: &str) -> Result<i64, StoreError> {
        let ttl = ttl_seconds(expiration, OffsetDateTime::now_utc());
        let what = format!("granting a {ttl} s lease for {key}");
        let resp = self
            .call(&what, |mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!(
                "etcd at {}: {what} failed: {}",
                self.endpoints(),
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    /// Revokes a lease this store granted and did not use; failures only cost a lease that
    /// lapses by itself, so they are logged.
    async fn revoke_unused(&self, id: i64) {
        let what = format!("revoking unused lease {id:x}");
        if let Err(e) = self
            .call(&what, |mut c| async move { c.lease_revoke(id).await })
            .await
        {
            tracing::warn!("{e}; it lapses by itself");
        }
    }

    /// Every lease under `<prefix>/subnets/`, the revision of the listing, and each key's mod
    /// revision.
    async fn fetch_listing(&self) -> Result<(Listing, HashMap<SubnetKey, i64>), StoreError> {
        let prefix = self.lease_prefix();
        let resp = self
            .call(&format!("listing {prefix}"), |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).ok_or_else(|| {
            StoreError::Other(format!(
                "etcd at {}: the answer to listing {prefix} has no header (no revision to watch \
                 from); is this an etcd v3 server?",
                self.endpoints()
            ))
        })?;
        let mut found = Vec::new();
        for kv in resp.kvs() {
            if let Some((key, attrs)) = self.decode(kv) {
                found.push((key, attrs, kv.lease(), kv.mod_revision()));
            }
        }
        let ids: Vec<i64> = found.iter().map(|f| f.2).collect();
        let expirations = self.expirations(ids).await?;
        let mut leases = BTreeMap::new();
        let mut mod_revisions = HashMap::new();
        for (key, attrs, id, mod_revision) in found {
            let expiration = match id {
                0 => None,
                id => expirations.get(&id).copied(),
            };
            leases.insert(key, Lease::new(key, attrs, expiration));
            mod_revisions.insert(key, mod_revision);
        }
        Ok((Listing { leases, revision }, mod_revisions))
    }

    /// A lease key and value, or `None` (logged) when either does not decode.
    fn decode(&self, kv: &KeyValue) -> Option<(SubnetKey, LeaseAttrs)> {
        let key = self.decode_key(kv)?;
        match decode_value(kv) {
            Ok(attrs) => Some((key, attrs)),
            Err(reason) => {
                tracing::warn!(subnet = %key, "skipping a lease: {reason}");
                None
            }
        }
    }

    fn decode_key(&self, kv: &KeyValue) -> Option<SubnetKey> {
        let text = String::from_utf8_lossy(kv.key());
        match SubnetKey::from_etcd_key(self.prefix(), &text) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// Puts `lease` with a new etcd lease for its expiration (none for a reservation), with
    /// `only_if_absent` as flannel's create-if-absent transaction; whether it was written.
    async fn put_lease(&self, lease: &Lease, only_if_absent: bool) -> Result<bool, StoreError> {
        let key = lease.key().etcd_key(self.prefix());
        let value = lease.attrs.to_json();
        let lease_id = match lease.expiration {
            Some(exp) => Some(self.grant_until(exp, &key).await?),
            None => None,
        };
        let options = lease_id.map(|id| PutOptions::new().with_lease(id));
        let written = if only_if_absent {
            self.call(&format!("creating {key}"), |mut c| {
                let txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value.as_str(), options.clone())]);
                async move { c.txn(txn).await }
            })
            .await
            .map(|r| r.succeeded())
        } else {
            self.call(&format!("writing {key}"), |mut c| {
                let (key, value, options) = (key.clone(), value.clone(), options.clone());
                async move { c.put(key, value, options).await }
            })
            .await
            .map(|_| true)
        };
        if let (Some(id), Ok(false) | Err(_)) = (lease_id, &written) {
            self.revoke_unused(id).await;
        }
        written
    }

    /// Opens a watch on `<prefix>/subnets/` from `revision`.
    async fn open_watch(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.lease_prefix();
        let what = format!("watching {prefix} from revision {revision}");
        self.call(&what, |mut c| {
            let prefix = prefix.clone();
            async move {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision);
                c.watch(prefix, Some(options)).await
            }
        })
        .await
    }
}

impl Member {
    /// This endpoint's client, made on first use.
    async fn client(&self, connect: &ConnectOptions) -> Result<Client, Failure> {
        self.client
            .get_or_try_init(|| Client::connect([self.url.as_str()], Some(connect.clone())))
            .await
            .cloned()
            .map_err(|e| match e {
                // Authentication at connect time: etcd's answer.
                etcd_client::Error::GRpcStatus(_) => failure(e),
                // Without I/O: the URL or the TLS settings.
                e => Failure {
                    unavailable: false,
                    reason: format!(
                        "cannot make a client for it: {e}; check the endpoint URL and the TLS \
                         files"
                    ),
                },
            })
    }
}

/// A lease value as flannel's `LeaseAttrs`.
fn decode_value(kv: &KeyValue) -> Result<LeaseAttrs, String> {
    let text = std::str::from_utf8(kv.value()).map_err(|e| format!("value is not UTF-8: {e}"))?;
    LeaseAttrs::from_json(text).map_err(|e| e.to_string())
}

/// Whole seconds from `now` to `expiration`, rounded, at least 1 (etcd raises TTLs below its
/// minimum, about 2 s, to it).
#[expect(
    clippy::cast_possible_truncation,
    reason = "lease TTLs are hours or days, far inside i64 seconds"
)]
fn ttl_seconds(expiration: OffsetDateTime, now: OffsetDateTime) -> i64 {
    ((expiration - now).as_seconds_f64().round() as i64).max(1)
}

/// An etcd-client error: connection trouble is worth another endpoint and a retry; refused
/// credentials and permissions say which flags to check.
fn failure(e: etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    let (unavailable, reason) = match &e {
        E::GRpcStatus(status) => match status.code() as i32 {
            grpc_code::UNAUTHENTICATED => (
                false,
                format!(
                    "{}: etcd refused the credentials; check --etcd-username and \
                     --etcd-password",
                    status.message()
                ),
            ),
            grpc_code::PERMISSION_DENIED => (
                false,
                format!(
                    "{}: the etcd user lacks permission; grant it read and write on the \
                     --etcd-prefix range",
                    status.message()
                ),
            ),
            grpc_code::CANCELLED
            | grpc_code::UNKNOWN
            | grpc_code::DEADLINE_EXCEEDED
            | grpc_code::RESOURCE_EXHAUSTED
            | grpc_code::ABORTED
            | grpc_code::UNAVAILABLE => (true, with_causes(status.message(), status)),
            _ => (false, with_causes(status.message(), status)),
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            (true, with_causes(&e.to_string(), &e))
        }
        _ => (false, with_causes(&e.to_string(), &e)),
    };
    Failure {
        unavailable,
        reason,
    }
}

/// `message` and the causes under `e` (gRPC says "transport error"; the cause says which: a
/// refused connection, a certificate etcd did not accept, ...), without repeats.
fn with_causes(message: &str, e: &dyn std::error::Error) -> String {
    let mut out = message.to_string();
    let mut cause = e.source();
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

/// The TLS settings for `opts`, reading the files (flanneld's `newTlsConfig`, except that
/// half-given settings are refused rather than silently dropped when TLS is used).
fn tls_options(opts: &EtcdOptions) -> Result<Option<TlsOptions>, StoreError> {
    let https = opts
        .endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = opts
        .endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    let bare = opts.endpoints.len() - https - http;
    let files_given = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
    if https == 0 && (bare == 0 || !files_given) {
        if files_given {
            // flanneld's etcd client drops TLS for http:// endpoints the same way.
            tracing::warn!(
                endpoints = %opts.endpoints.join(","),
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile are ignored: the etcd endpoints are \
                 http://; use https:// endpoints to talk TLS"
            );
        }
        return Ok(None);
    }
    if http > 0 {
        return Err(StoreError::Other(format!(
            "etcd endpoints {} mix http:// and https://; use https:// for all of them",
            opts.endpoints.join(",")
        )));
    }
    let Some(ca) = &opts.ca_file else {
        return Err(StoreError::Other(format!(
            "etcd endpoints {} use TLS but no --etcd-cafile is given: vxdp verifies etcd's \
             certificate only against that CA (the system trust store is not used)",
            opts.endpoints.join(",")
        )));
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
        ca,
        "reading the etcd CA (--etcd-cafile)",
        "--etcd-cafile",
    )?));
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_pem(
                cert,
                "reading the etcd client certificate (--etcd-certfile)",
                "--etcd-certfile",
            )?;
            let key = read_pem(
                key,
                "reading the etcd client key (--etcd-keyfile)",
                "--etcd-keyfile",
            )?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(StoreError::Other(
                "--etcd-certfile is given without --etcd-keyfile: give both for a client \
                 certificate, or neither"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(StoreError::Other(
                "--etcd-keyfile is given without --etcd-certfile: give both for a client \
                 certificate, or neither"
                    .into(),
            ))
        }
    }
    Ok(Some(tls))
}

/// A PEM file's bytes; says which flag's file cannot be read or is not PEM.
fn read_pem(path: &Path, what: &'static str, flag: &str) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(|cause| StoreError::Io {
        what,
        path: path.display().to_string(),
        cause,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(StoreError::Other(format!(
            "{flag} {} is not a PEM file (no \"-----BEGIN\" line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl LeaseStore for EtcdStore {
    type Watcher = EtcdWatcher;

    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.endpoints(), self.prefix())
    }

    async fn network_config(&self) -> Result<String, StoreError> {
        let key = config_key(self.prefix());
        let resp = self
            .call(&format!("reading {key}"), |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(StoreError::NoConfig {
                where_: format!("etcd key {key} at {}", self.endpoints()),
                hint: format!(
                    "write flannel's network config there with the etcd v3 API (a config \
                     written through the v2 API is invisible to v3 clients), e.g. \
                     ETCDCTL_API=3 etcdctl --endpoints={} put {key} \
                     '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'",
                    self.endpoints()
                ),
            });
        };
        String::from_utf8(kv.value().to_vec()).map_err(|e| {
            StoreError::Other(format!(
                "etcd key {key} at {} is not UTF-8 text ({e}); write flannel's network \
                 config JSON there",
                self.endpoints()
            ))
        })
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.fetch_listing().await.map(|(listing, _)| listing)
    }

    async fn create(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.put_lease(lease, true).await
    }

    async fn update(&self, lease: &Lease) -> Result<(), StoreError> {
        self.put_lease(lease, false).await.map(|_| ())
    }

    async fn remove(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.key().etcd_key(self.prefix());
        // A changed mod revision means someone wrote the key between reading and deleting:
        // look again (a few times; then someone is rewriting it constantly).
        for _ in 0..3 {
            let resp = self
                .call(&format!("reading {key}"), |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            let Some(kv) = resp.kvs().first() else {
                return Ok(());
            };
            match decode_value(kv) {
                Ok(attrs) if attrs.public_ip == lease.attrs.public_ip => {}
                Ok(attrs) => {
                    tracing::info!(
                        subnet = %lease.key(),
                        owner = %attrs.public_ip,
                        "not removing the lease: another node holds it now"
                    );
                    return Ok(());
                }
                Err(reason) => {
                    tracing::warn!(
                        key = %key,
                        "not removing the lease: its value does not decode, so it cannot be \
                         shown to be this node's ({reason})"
                    );
                    return Ok(());
                }
            }
            let mod_revision = kv.mod_revision();
            let resp = self
                .call(&format!("deleting {key}"), |mut c| {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            mod_revision,
                        )])
                        .and_then([TxnOp::delete(key.as_str(), None)]);
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(StoreError::Other(format!(
            "etcd at {}: {key} changed each time vxdp tried to delete it; another writer is \
             rewriting it",
            self.endpoints()
        )))
    }

    fn watch(
        &self,
        listing: &Listing,
    ) -> impl Future<Output = Result<EtcdWatcher, StoreError>> + Send {
        let watcher = EtcdWatcher::new(self.clone(), listing);
        async move { Ok(watcher) }
    }
}

/// Whether a lease belongs in what the watcher reports: vxlan leases that have not lapsed.
/// Other backends' leases cannot be reached over VXLAN (they still occupy their subnets in
/// [`Listing`]s, which is what allocation needs).
fn reportable(lease: &Lease, now: OffsetDateTime) -> bool {
    if !lease.attrs.is_vxlan() {
        if let Err(e) = lease.attrs.vxlan_data() {
            tracing::warn!(subnet = %lease.key(), "{e}");
        }
        return false;
    }
    !lease.is_expired(now)
}

/// Whether a re-read key holds the lease reported before, when its mod revision is unknown
/// (keys of the listing the watcher started from): same value, and still a lease or still a
/// reservation. The expiration is not compared: it is derived from a TTL read at some moment,
/// and etcd extends every lease's TTL when a new leader takes over.
fn same_lease(old: &Lease, new: &Lease) -> bool {
    old.attrs == new.attrs && old.is_reservation() == new.is_reservation()
}

/// Watches an [`EtcdStore`]: etcd's watch while it works, a re-list and diff when it broke.
///
/// It reports vxlan leases only (others are logged and skipped), and keeps the set it has
/// reported so far with each key's mod revision, so a re-list after a compaction or an outage
/// yields exactly the changes the consumer missed. [`LeaseWatcher::next`] is cancel-safe:
/// dropping its future loses nothing.
pub struct EtcdWatcher {
    store: EtcdStore,
    /// What has been reported: the consumer's view.
    known: BTreeMap<SubnetKey, Lease>,
    /// The mod revision of each known key, where known (not for the initial listing's keys).
    mod_revisions: HashMap<SubnetKey, i64>,
    /// The revision to watch from.
    next_revision: i64,
    stream: Option<WatchStream>,
    /// A watch response received but not yet turned into events (kept across a cancelled or
    /// failed `next`, so no event is lost).
    pending: Option<WatchResponse>,
    /// Re-list before watching again.
    resync: bool,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// When the next attempt may start, after a failure.
    retry_at: Option<tokio::time::Instant>,
}

impl fmt::Debug for EtcdWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdWatcher")
            .field("store", &self.store)
            .field("known", &self.known.len())
            .field("next_revision", &self.next_revision)
            .field("watching", &self.stream.is_some())
            .field("resync", &self.resync)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// What one step of the watcher achieved.
enum Step {
    /// Changes (possibly none) were read from etcd.
    Events(Vec<LeaseEvent>),
    /// A watch stream was opened; nothing read yet.
    Opened,
}

impl EtcdWatcher {
    fn new(store: EtcdStore, listing: &Listing) -> EtcdWatcher {
        let now = OffsetDateTime::now_utc();
        let known = listing
            .leases
            .iter()
            .filter(|(_, l)| reportable(l, now))
            .map(|(k, l)| (*k, l.clone()))
            .collect();
        EtcdWatcher {
            store,
            known,
            mod_revisions: HashMap::new(),
            next_revision: listing.revision + 1,
            stream: None,
            pending: None,
            // A listing without a revision (not from etcd) gives nowhere to watch from.
            resync: listing.revision <= 0,
            failures: 0,
            retry_at: None,
        }
    }

    /// The leases reported so far, by key.
    pub fn known(&self) -> &BTreeMap<SubnetKey, Lease> {
        &self.known
    }

    async fn next_events(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        loop {
            // The retry deadline is kept in `self`, so a caller that drops this future mid-pause
            // and calls again resumes the same pause instead of starting a new one.
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            match self.step().await {
                Ok(Step::Events(events)) => {
                    self.failures = 0;
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Ok(Step::Opened) => {}
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let exp = (self.failures - 1).min(16);
                    let pause = WATCH_BACKOFF_MIN
                        .saturating_mul(1 << exp)
                        .min(WATCH_BACKOFF_MAX);
                    self.retry_at = Some(tokio::time::Instant::now() + pause);
                    return Err(e);
                }
            }
        }
    }

    /// One unit of progress. Each await either completes with its effect applied at once, or
    /// leaves the state as it was, which makes `next` cancel-safe.
    async fn step(&mut self) -> Result<Step, StoreError> {
        if let Some(resp) = &self.pending {
            let ids: Vec<i64> = resp
                .events()
                .iter()
                .filter(|ev| ev.event_type() == EventType::Put)
                .filter_map(|ev| ev.kv().map(KeyValue::lease))
                .collect();
            let expirations = self.store.expirations(ids).await?;
            let events = match self.pending.take() {
                Some(resp) => self.apply(&resp, &expirations),
                None => Vec::new(),
            };
            return Ok(Step::Events(events));
        }
        if self.resync {
            let (listing, mod_revisions) = self.store.fetch_listing().await?;
            return Ok(Step::Events(self.resync_from(&listing, mod_revisions)));
        }
        let Some(stream) = self.stream.as_mut() else {
            let stream = self.store.open_watch(self.next_revision).await?;
            self.stream = Some(stream);
            return Ok(Step::Opened);
        };
        let endpoints = self.store.endpoints().to_string();
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                self.broken();
                return Err(StoreError::Unavailable(format!(
                    "etcd at {endpoints} closed the lease watch; re-listing when it answers again"
                )));
            }
            Err(e) => {
                self.broken();
                return Err(StoreError::Unavailable(format!(
                    "etcd at {endpoints}: the lease watch broke: {}; re-listing when etcd answers \
                     again",
                    failure(e).reason
                )));
            }
        };
        if resp.canceled() {
            self.broken();
            if resp.compact_revision() > 0 {
                // The history from our revision is gone: a re-list is the only way back.
                tracing::info!(
                    from = self.next_revision,
                    compacted = resp.compact_revision(),
                    "etcd compacted the lease history the watch needed; re-listing"
                );
                return Ok(Step::Events(Vec::new()));
            }
            return Err(StoreError::Unavailable(format!(
                "etcd at {endpoints} cancelled the lease watch ({}); re-listing",
                resp.cancel_reason()
            )));
        }
        if resp.events().is_empty() {
            // The creation answer, or a progress notification: nothing happened up to its
            // revision (a creation answer's revision says nothing about older events).
            if !resp.created() {
                if let Some(h) = resp.header() {
                    self.next_revision = self.next_revision.max(h.revision() + 1);
                }
            }
            return Ok(Step::Events(Vec::new()));
        }
        self.pending = Some(resp);
        Ok(Step::Events(Vec::new()))
    }

    /// Drops the watch; the next step re-lists.
    fn broken(&mut self) {
        self.stream = None;
        self.resync = true;
    }

    /// Turns a watch response into events and updates what has been reported.
    fn apply(
        &mut self,
        resp: &WatchResponse,
        expirations: &HashMap<i64, OffsetDateTime>,
    ) -> Vec<LeaseEvent> {
        let now = OffsetDateTime::now_utc();
        let mut events = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.next_revision = self.next_revision.max(kv.mod_revision() + 1);
            let Some(key) = self.store.decode_key(kv) else {
                continue;
            };
            let current = match ev.event_type() {
                EventType::Delete => None,
                EventType::Put => match decode_value(kv) {
                    Err(reason) => {
                        tracing::warn!(subnet = %key, "skipping a lease: {reason}");
                        None
                    }
                    Ok(attrs) => {
                        let expiration = match kv.lease() {
                            0 => None,
                            id => expirations.get(&id).copied(),
                        };
                        let lease = Lease::new(key, attrs, expiration);
                        // A lapsed lease is deleted by etcd right after; its delete follows.
                        Some(lease).filter(|l| reportable(l, now))
                    }
                },
            };
            match current {
                Some(lease) => {
                    self.mod_revisions.insert(key, kv.mod_revision());
                    if self.known.get(&key) != Some(&lease) {
                        self.known.insert(key, lease.clone());
                        events.push(LeaseEvent::Added(lease));
                    }
                }
                // Deleted, or no longer a usable lease: whatever was reported for the key goes.
                None => {
                    self.mod_revisions.remove(&key);
                    if let Some(old) = self.known.remove(&key) {
                        events.push(LeaseEvent::Removed(old));
                    }
                }
            }
        }
        events
    }

    /// Replaces what has been reported by a fresh listing; the difference as events.
    fn resync_from(
        &mut self,
        listing: &Listing,
        mod_revisions: HashMap<SubnetKey, i64>,
    ) -> Vec<LeaseEvent> {
        let now = OffsetDateTime::now_utc();
        let mut current: BTreeMap<SubnetKey, Lease> = listing
            .leases
            .iter()
            .filter(|(_, l)| reportable(l, now))
            .map(|(k, l)| (*k, l.clone()))
            .collect();
        // An unchanged key keeps what was reported for it, so it yields no event.
        for (key, lease) in current.iter_mut() {
            let Some(old) = self.known.get(key) else {
                continue;
            };
            let unchanged = match (self.mod_revisions.get(key), mod_revisions.get(key)) {
                (Some(a), Some(b)) => a == b,
                _ => same_lease(old, lease),
            };
            if unchanged {
                lease.clone_from(old);
            }
        }
        let events = diff(&self.known, &current);
        tracing::debug!(
            revision = listing.revision,
            changes = events.len(),
            "re-listed the leases"
        );
        self.known = current;
        self.mod_revisions = mod_revisions;
        self.next_revision = listing.revision + 1;
        self.resync = false;
        events
    }
}

impl LeaseWatcher for EtcdWatcher {
    fn next(&mut self) -> impl Future<Output = Result<Vec<LeaseEvent>, StoreError>> + Send {
        self.next_events()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_rounded_whole_seconds_of_at_least_one() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let ms = time::Duration::milliseconds;
        assert_eq!(
            ttl_seconds(now + time::Duration::hours(24) - ms(3), now),
            86400
        );
        assert_eq!(ttl_seconds(now + ms(1400), now), 1);
        assert_eq!(ttl_seconds(now + ms(2600), now), 3);
        assert_eq!(ttl_seconds(now - time::Duration::hours(1), now), 1);
    }

    #[test]
    fn options_debug_hides_the_password() {
        let opts = EtcdOptions {
            username: Some("flannel".into()),
            password: Some("hunter2".into()),
            ..EtcdOptions::default()
        };
        let text = format!("{opts:?}");
        assert!(
            text.contains("flannel") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(
            EtcdOptions::default().endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let https = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ca_file: ca.map(PathBuf::from),
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
            ..EtcdOptions::default()
        };
        let err = |o: EtcdOptions| {
            tls_options(&o)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };

        let e = err(https(Some("/nonexistent/ca.pem"), None, None));
        assert!(
            e.contains("--etcd-cafile") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        assert!(err(https(None, None, None)).contains("no --etcd-cafile"));

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let garbage = dir.path().join("key.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let ca = ca.to_str().unwrap();
        assert!(tls_options(&https(Some(ca), None, None)).unwrap().is_some());
        let e = err(https(Some(ca), Some(ca), Some(garbage.to_str().unwrap())));
        assert!(
            e.contains("--etcd-keyfile") && e.contains("not a PEM file"),
            "{e}"
        );
        let e = err(https(Some(ca), Some(ca), None));
        assert!(e.contains("without --etcd-keyfile"), "{e}");

        // http:// endpoints ignore TLS files, as flanneld does; mixing schemes is refused.
        let mut http = https(Some("/nonexistent/ca.pem"), None, None);
        http.endpoints = vec!["http://127.0.0.1:2379".into()];
        assert!(tls_options(&http).unwrap().is_none());
        http.endpoints.push("https://127.0.0.2:2379".into());
        assert!(err(http).contains("mix http:// and https://"));
    }

    #[test]
    fn rereadings_of_one_lease_are_the_same_lease() {
        let key: SubnetKey = "10.5.1.0-24".parse().unwrap();
        let attrs = LeaseAttrs::vxlan(
            "192.0.2.1".parse().unwrap(),
            1,
            packet::wire::MacAddr([2, 0, 0, 0, 0, 1]),
        );
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let at = |s: i64| Lease::new(key, attrs.clone(), Some(t + time::Duration::seconds(s)));
        assert!(same_lease(&at(0), &at(1)));
        assert!(same_lease(&at(0), &at(3600)));
        assert!(!same_lease(&at(0), &Lease::new(key, attrs.clone(), None)));
        let mut other = at(0);
        other.attrs.public_ip = "192.0.2.9".parse().unwrap();
        assert!(!same_lease(&at(0), &other));
    }
}
