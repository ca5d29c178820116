//! The embedded lease store: a directory shared by every node on one machine (or one static
//! setup), laid out like flannel's etcd prefix:
//!
//! ```text
//! DIR/config                  flannel's network config JSON
//! DIR/subnets/10.244.1.0-24   one lease: flannel's lease JSON plus "Expiration" (RFC 3339;
//!                             absent for a reservation)
//! DIR/.lock                   serialises writers (flock)
//! ```
//!
//! Lease files are replaced atomically (write a temporary file, fsync, rename), so a reader
//! never sees half a lease. Writers take an exclusive `flock` on `DIR/.lock` around
//! check-and-write, which makes "create if absent or expired" atomic between nodes. Watchers poll
//! the directory (a `stat` every 200 ms, a re-read only when it changed or a lease lapsed):
//! cheap for the tens of nodes such a store serves, and robust on any filesystem.
//!
//! A directory's mtime is coarse (a timer tick on Linux, seconds elsewhere): two writes in one
//! tick leave the same mtime, so an unchanged mtime proves nothing while it is younger than
//! [`MTIME_SETTLE`]; until then the watcher re-reads on every poll.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{diff, LeaseStore, LeaseWatcher, Listing, StoreError};
use crate::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};

/// How often watchers look at the directory.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How old the directory's mtime must be before an unchanged mtime means an unchanged
/// directory (longer than any mtime granularity of a local filesystem but FAT's).
pub const MTIME_SETTLE: Duration = Duration::from_secs(2);

/// A lease store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |cause| StoreError::Io {
        what,
        path: path.display().to_string(),
        cause,
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let dir = dir.into();
        let subnets = dir.join("subnets");
        fs::create_dir_all(&subnets).map_err(io_err("creating", &subnets))?;
        Ok(LocalStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn subnets_dir(&self) -> PathBuf {
        self.dir.join("subnets")
    }

    fn lease_path(&self, key: &SubnetKey) -> PathBuf {
        self.subnets_dir().join(key.to_string())
    }

    /// Writes the network config (used by setups and tests that create the store).
    pub fn write_network_config(&self, json: &str) -> Result<(), StoreError> {
        let path = self.dir.join("config");
        write_atomically(&path, json.as_bytes())
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || f(this))
                .await
                .map_err(|e| StoreError::Other(format!("local store task failed: {e}")))?
        }
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        // SAFETY: flock on a descriptor we own; released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(file)
    }

    fn read_lease(&self, key: &SubnetKey) -> Result<Option<Lease>, StoreError> {
        let path = self.lease_path(key);
        match fs::read_to_string(&path) {
            Ok(text) => decode(key, &text).map(Some).map_err(|reason| {
                StoreError::Other(format!("lease file {}: {reason}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn scan(&self) -> Result<Listing, StoreError> {
        let dir = self.subnets_dir();
        let mut leases = BTreeMap::new();
        let entries = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue; // temporary files of an in-flight write
            }
            let key: SubnetKey = match name.parse() {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a lease: {e}");
                    continue;
                }
            };
            match self.read_lease(&key) {
                Ok(Some(lease)) => {
                    leases.insert(key, lease);
                }
                Ok(None) => {} // removed between listing and reading
                // A file that cannot be read now (out of descriptors, an I/O error) says nothing
                // about the lease in it: skipping it would report it removed, and this node
                // would take its own lease for revoked. The whole listing fails instead, and
                // the watcher keeps what it knew until a listing succeeds.
                Err(e @ StoreError::Io { .. }) => return Err(e),
                Err(e) => tracing::warn!("skipping an undecodable lease: {e}"),
            }
        }
        Ok(Listing {
            leases,
            revision: 0,
        })
    }
}

/// A lease file's text: flannel's JSON with `"Expiration"` appended.
#[doc(hidden)] // public for the fuzz targets in control/fuzz
pub fn encode(lease: &Lease) -> String {
    let json = lease.attrs.to_json();
    match lease.expiration {
        None => json,
        Some(exp) => {
            let stamp = exp.format(&Rfc3339).unwrap_or_default();
            // to_json always writes one JSON object: insert the field before its closing brace.
            let body = json.strip_suffix('}').unwrap_or(&json);
            format!("{body},\"Expiration\":\"{stamp}\"}}")
        }
    }
}

/// The lease `key` names, from its file's text ([`encode`]), or why it does not decode.
#[doc(hidden)] // public for the fuzz targets in control/fuzz
pub fn decode(key: &SubnetKey, text: &str) -> Result<Lease, String> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        #[serde(rename = "Expiration", default)]
        expiration: Option<String>,
    }
    let attrs = LeaseAttrs::from_json(text).map_err(|e| e.to_string())?;
    let expiry: Expiry = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let expiration = match expiry.expiration {
        None => None,
        Some(s) => Some(
            OffsetDateTime::parse(&s, &Rfc3339)
                .map_err(|e| format!("Expiration {s:?} is not an RFC 3339 time: {e}"))?,
        ),
    };
    Ok(Lease::new(*key, attrs, expiration))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::subnet_file::write_atomically(path, bytes).map_err(|e| StoreError::Other(e.to_string()))
}

impl LeaseStore for LocalStore {
    type Watcher = LocalWatcher;

    fn describe(&self) -> String {
        format!("local store {}", self.dir.display())
    }

    fn network_config(
        &self,
    ) -> impl std::future::Future<Output = Result<String, StoreError>> + Send {
        self.run_blocking(|s| {
            let path = s.dir.join("config");
            match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NoConfig {
                    where_: path.display().to_string(),
                    hint: format!(
                        "write flannel's network config there, e.g. \
                         {{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}} \
                         > {}",
                        path.display()
                    ),
                }),
                Err(e) => Err(io_err("reading", &path)(e)),
            }
        })
    }

    fn list(&self) -> impl std::future::Future<Output = Result<Listing, StoreError>> + Send {
        self.run_blocking(|s| s.scan())
    }

    fn create(
        &self,
        lease: &Lease,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send {
        let lease = lease.clone();
        self.run_blocking(move |s| {
            let _lock = s.lock()?;
            let now = OffsetDateTime::now_utc();
            match s.read_lease(&lease.key()) {
                Ok(Some(existing)) if !existing.is_expired(now) => return Ok(false),
                Ok(_) => {}
                // An undecodable file holds nothing anybody can use: replace it.
                Err(e) => tracing::warn!("replacing an undecodable lease file: {e}"),
            }
            write_atomically(&s.lease_path(&lease.key()), encode(&lease).as_bytes())?;
            Ok(true)
        })
    }

    fn update(
        &self,
        lease: &Lease,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let lease = lease.clone();
        self.run_blocking(move |s| {
            let _lock = s.lock()?;
            write_atomically(&s.lease_path(&lease.key()), encode(&lease).as_bytes())
        })
    }

    fn remove(
        &self,
        lease: &Lease,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let lease = lease.clone();
        self.run_blocking(move |s| {
            let _lock = s.lock()?;
            match s.read_lease(&lease.key()) {
                Ok(Some(current)) if current.attrs.public_ip != lease.attrs.public_ip => {
                    // Another node took the subnet over: it is not ours to delete.
                    Ok(())
                }
                Ok(None) => Ok(()),
                _ => {
                    let path = s.lease_path(&lease.key());
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            Err(io_err("removing", &path)(e))
                        }
                        _ => Ok(()),
                    }
                }
            }
        })
    }

    fn watch(
        &self,
        listing: &Listing,
    ) -> impl std::future::Future<Output = Result<LocalWatcher, StoreError>> + Send {
        let now = OffsetDateTime::now_utc();
        let known = live(&listing.leases, now);
        let store = self.clone();
        async move {
            Ok(LocalWatcher {
                // Unknown: a lease written between the listing and now would otherwise be
                // part of the baseline and never reported. The first poll reads again.
                dir_mtime: None,
                store,
                known,
            })
        }
    }
}

fn live(leases: &BTreeMap<SubnetKey, Lease>, now: OffsetDateTime) -> BTreeMap<SubnetKey, Lease> {
    leases
        .iter()
        .filter(|(_, l)| !l.is_expired(now))
        .map(|(k, l)| (*k, l.clone()))
        .collect()
}

fn dir_mtime(dir: &Path) -> Option<SystemTime> {
    fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Whether `mtime` is old enough that a later write would have changed it.
fn mtime_settled(mtime: Option<SystemTime>) -> bool {
    mtime
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age >= MTIME_SETTLE)
}

/// Watches a [`LocalStore`] by polling.
#[derive(Debug)]
pub struct LocalWatcher {
    store: LocalStore,
    known: BTreeMap<SubnetKey, Lease>,
    dir_mtime: Option<SystemTime>,
}

impl LeaseWatcher for LocalWatcher {
    async fn next(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let now = OffsetDateTime::now_utc();
            // Taken before the read: a write after it changes the mtime again.
            let mtime = dir_mtime(&self.store.subnets_dir());
            let lapsed = self.known.values().any(|l| l.is_expired(now));
            if mtime.is_some() && mtime == self.dir_mtime && mtime_settled(mtime) && !lapsed {
                continue;
            }
            let listing = self.store.list().await?;
            self.dir_mtime = mtime;
            let current = live(&listing.leases, now);
            let events = diff(&self.known, &current);
            self.known = current;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::wire::MacAddr;
    use std::net::Ipv4Addr;

    fn attrs(ip: [u8; 4], mac_last: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(Ipv4Addr::from(ip), 1, MacAddr([2, 0, 0, 0, 0, mac_last]))
    }

    fn lease(key: &str, ip: [u8; 4], mac_last: u8, ttl_s: Option<i64>) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            attrs(ip, mac_last),
            ttl_s.map(|s| {
                // Whole seconds: RFC 3339 round trips keep them exactly.
                let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
                now + time::Duration::seconds(s)
            }),
        )
    }

    #[test]
    fn lease_files_are_flannel_json_plus_expiration() {
        let l = lease("10.5.1.0-24", [192, 0, 2, 1], 1, Some(3600));
        let text = encode(&l);
        assert!(text.starts_with(
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"Expiration":""#
        ), "{text}");
        assert_eq!(decode(&l.key(), &text).unwrap(), l);
        let r = lease("10.5.1.0-24", [192, 0, 2, 1], 1, None);
        assert!(!encode(&r).contains("Expiration"));
        assert_eq!(decode(&r.key(), &encode(&r)).unwrap(), r);
        assert!(decode(&r.key(), "{not json").is_err());
    }

    #[tokio::test]
    async fn dual_stack_leases_are_stored_under_flannels_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let dual = Lease::new(
            "10.5.1.0-24&fd00:5:0:1::-64".parse().unwrap(),
            attrs([192, 0, 2, 1], 1)
                .with_ipv6("2001:db8::1".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 9])),
            Some(now + time::Duration::seconds(3600)),
        );
        assert!(store.create(&dual).await.unwrap());
        let path = dir.path().join("subnets/10.5.1.0-24&fd00:5:0:1::-64");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"},"Expiration":""#
        ), "{text}");
        let listing = store.list().await.unwrap();
        assert_eq!(listing.to_vec(), vec![dual.clone()]);
        // Deleting the file (an operator removing the lease) is a removal for the watcher.
        let mut w = store.watch(&listing).await.unwrap();
        fs::remove_file(&path).unwrap();
        let events = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Removed(dual)]);
    }

    #[tokio::test]
    async fn create_is_exclusive_until_the_lease_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mine = lease("10.5.1.0-24", [192, 0, 2, 1], 1, Some(3600));
        let theirs = lease("10.5.1.0-24", [192, 0, 2, 2], 2, Some(3600));
        assert!(store.create(&mine).await.unwrap());
        assert!(!store.create(&theirs).await.unwrap());
        // Removing with someone else's PublicIP leaves it alone.
        store.remove(&theirs).await.unwrap();
        assert_eq!(store.list().await.unwrap().leases.len(), 1);
        // An expired lease can be taken over.
        let lapsed = lease("10.5.2.0-24", [192, 0, 2, 1], 1, Some(-5));
        store.update(&lapsed).await.unwrap();
        let taker = lease("10.5.2.0-24", [192, 0, 2, 3], 3, Some(3600));
        assert!(store.create(&taker).await.unwrap());
        store.remove(&mine).await.unwrap();
        let listing = store.list().await.unwrap();
        assert_eq!(listing.to_vec(), vec![taker]);
    }

    #[tokio::test]
    async fn an_unreadable_lease_fails_the_listing_instead_of_vanishing_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mine = lease("10.5.1.0-24", [192, 0, 2, 1], 1, Some(3600));
        assert!(store.create(&mine).await.unwrap());
        let garbage: SubnetKey = "10.5.2.0-24".parse().unwrap();
        fs::write(store.lease_path(&garbage), "{not json").unwrap();
        // Undecodable: skipped, as flanneld skips what it cannot decode.
        assert_eq!(store.list().await.unwrap().to_vec(), vec![mine.clone()]);
        // Unreadable (here a directory where the file should be; out of descriptors in the
        // field): the listing fails rather than report the lease removed.
        let path = store.lease_path(&mine.key());
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(matches!(store.list().await, Err(StoreError::Io { .. })));
    }

    #[tokio::test]
    async fn watcher_reports_changes_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let a = lease("10.5.1.0-24", [192, 0, 2, 1], 1, Some(3600));
        store.create(&a).await.unwrap();
        let listing = store.list().await.unwrap();
        let mut watcher = store.watch(&listing).await.unwrap();

        let b = lease("10.5.2.0-24", [192, 0, 2, 2], 2, Some(3600));
        store.create(&b).await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .expect("an event within 1 s")
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Added(b.clone())]);

        let b2 = lease("10.5.2.0-24", [192, 0, 2, 2], 7, Some(3600));
        store.update(&b2).await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Added(b2.clone())]);

        store.remove(&b2).await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Removed(b2)]);

        // Garbage in the directory is skipped, never fatal.
        fs::write(store.subnets_dir().join("10.5.9.0-24"), "{garbage").unwrap();
        fs::write(store.subnets_dir().join("README"), "not a lease").unwrap();
        assert_eq!(store.list().await.unwrap().leases.len(), 1);
    }

    #[tokio::test]
    async fn a_lease_written_between_listing_and_watch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let listing = store.list().await.unwrap();
        let b = lease("10.5.2.0-24", [192, 0, 2, 2], 2, Some(3600));
        store.create(&b).await.unwrap();
        let mut watcher = store.watch(&listing).await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .expect("the lease written after the listing, within 1 s")
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Added(b)]);
    }

    /// Sets the mtime of `dir` (what a second write in the same timer tick leaves behind).
    fn set_mtime(dir: &Path, to: SystemTime) {
        let since = to.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let ts = libc::timespec {
            tv_sec: since.as_secs() as libc::time_t,
            tv_nsec: since.subsec_nanos() as libc::c_long,
        };
        let times = [ts, ts];
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C path and two timespecs.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    #[tokio::test]
    async fn a_write_that_leaves_the_mtime_unchanged_is_still_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let a = lease("10.5.1.0-24", [192, 0, 2, 1], 1, Some(3600));
        store.create(&a).await.unwrap();
        let listing = store.list().await.unwrap();
        let mut watcher = store.watch(&listing).await.unwrap();
        // Let the watcher take the mtime of a's write as its baseline.
        let first = tokio::time::timeout(Duration::from_millis(500), watcher.next()).await;
        assert!(first.is_err(), "no change yet: {first:?}");
        let tick = dir_mtime(&store.subnets_dir()).unwrap();

        let b = lease("10.5.2.0-24", [192, 0, 2, 2], 2, Some(3600));
        store.create(&b).await.unwrap();
        set_mtime(&store.subnets_dir(), tick);
        let events = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .expect("b's write within 1 s although the mtime did not move")
            .unwrap();
        assert_eq!(events, vec![LeaseEvent::Added(b)]);
    }

    #[test]
    fn an_mtime_settles_after_a_while() {
        let now = SystemTime::now();
        assert!(!mtime_settled(None));
        assert!(!mtime_settled(Some(now)));
        assert!(mtime_settled(Some(
            now - MTIME_SETTLE - Duration::from_millis(1)
        )));
    }

    #[tokio::test]
    async fn a_lapsing_lease_is_reported_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let listing = store.list().await.unwrap();
        let mut watcher = store.watch(&listing).await.unwrap();
        let short = lease("10.5.3.0-24", [192, 0, 2, 3], 3, Some(2));
        store.create(&short).await.unwrap();
        let added = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(added, vec![LeaseEvent::Added(short.clone())]);
        let removed = tokio::time::timeout(Duration::from_secs(4), watcher.next())
            .await
            .expect("the lapse is noticed")
            .unwrap();
        assert_eq!(removed, vec![LeaseEvent::Removed(short)]);
    }

    #[tokio::test]
    async fn missing_config_says_what_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let err = store.network_config().await.unwrap_err().to_string();
        assert!(err.contains("\"Network\""), "{err}");
        store
            .write_network_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert!(store
            .network_config()
            .await
            .unwrap()
            .contains("10.5.0.0/16"));
    }
}
