//! What vxdp says to systemd and takes from it: readiness (`READY=1`), and the file descriptor
//! store. Under systemd (`NOTIFY_SOCKET` set), the running daemon parks its TAP queues and
//! underlay sockets in the store (`FDSTORE=1`, one `FDNAME` each, plus a memfd holding the
//! [`Manifest`] that says which is what); systemd holds them while vxdp is away, a crash or
//! `kill -9` included, and passes them to the next start (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! sd_listen_fds(3)). The kernel keeps frames queued in them meanwhile, and the next process
//! resumes on the same queues and sockets. Outside systemd every function here is a no-op.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;

use dataplane::handover::{send_with_fds, Inherited, Manifest};

/// The store name of the manifest memfd.
const MANIFEST_NAME: &str = "vxdp-manifest";
/// The store name of descriptor `i` of the manifest: `vxdp-fd-<i>`.
const FD_PREFIX: &str = "vxdp-fd-";
/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// A datagram socket connected to `$NOTIFY_SOCKET` (a path or, with `@`, an abstract name);
/// `None` outside systemd.
fn notify_socket() -> Option<std::io::Result<UnixDatagram>> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    Some((|| {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sock.connect_addr(&addr)?;
        } else {
            sock.connect(std::path::Path::new(&path))?;
        }
        Ok(sock)
    })())
}

/// Sends `message` to systemd with `fds` attached; a no-op outside systemd.
fn notify_with_fds(message: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    match notify_socket() {
        None => Ok(()),
        Some(sock) => send_with_fds(sock?.as_fd(), message.as_bytes(), fds),
    }
}

/// Tells systemd (Type=notify) that vxdp is ready; a no-op outside systemd.
pub fn notify_ready() {
    if let Err(e) = notify_with_fds("READY=1", &[]) {
        tracing::warn!("sd_notify READY=1 failed: {e}");
    }
}

/// Descriptors systemd passed this process, with their names; empty outside systemd or when
/// they are meant for another process (`LISTEN_PID`).
fn listen_fds() -> Vec<(String, OwnedFd)> {
    let var = |name: &str| std::env::var(name).ok();
    let for_us = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    let names = var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    (0..count)
        .map(|i| {
            let name = names.next().unwrap_or("unknown").to_string();
            let fd = LISTEN_FDS_START + i;
            // SAFETY: systemd passed descriptors LISTEN_FDS_START.. LISTEN_FDS_START+count-1
            // to this process (LISTEN_PID is ours); each is taken here exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(&fd);
            (name, fd)
        })
        .collect()
}

fn set_cloexec(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on an open descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// What systemd's store gave this start: the descriptors with their manifest, and the names
/// they had there (to be removed from the store: what vxdp keeps, it stores again once ready,
/// and what it does not take must not stay held, an unread UDP socket in the `SO_REUSEPORT`
/// group would swallow its share of the traffic).
pub struct FromStore {
    /// The descriptors, if a readable manifest came with them.
    pub inherited: Option<Inherited>,
    /// Every name systemd passed.
    pub names: Vec<String>,
}

/// Reads what systemd's fd store passed this process.
pub fn take_from_store() -> FromStore {
    let passed = listen_fds();
    let names: Vec<String> = passed.iter().map(|(n, _)| n.clone()).collect();
    let mut manifest = None;
    let mut numbered: Vec<(usize, OwnedFd)> = Vec::new();
    for (name, fd) in passed {
        if name == MANIFEST_NAME {
            manifest = Some(read_manifest(fd));
        } else if let Some(i) = name.strip_prefix(FD_PREFIX).and_then(|i| i.parse().ok()) {
            numbered.push((i, fd));
        }
    }
    let inherited = match manifest {
        None if numbered.is_empty() => None,
        None => {
            tracing::warn!("systemd passed descriptors without their manifest: not taken");
            None
        }
        Some(Err(e)) => {
            tracing::warn!("systemd's fd store: {e}; starting afresh");
            None
        }
        Some(Ok(m)) => {
            numbered.sort_by_key(|(i, _)| *i);
            let in_order = numbered.iter().enumerate().all(|(k, (i, _))| k == *i);
            let fds = numbered.into_iter().map(|(_, fd)| fd).collect();
            match in_order.then(|| Inherited::new(m, fds)) {
                Some(Ok(inh)) => Some(inh),
                Some(Err(e)) => {
                    tracing::warn!("systemd's fd store: {e}; starting afresh");
                    None
                }
                None => {
                    tracing::warn!("systemd's fd store lacks some descriptors; starting afresh");
                    None
                }
            }
        }
    };
    FromStore { inherited, names }
}

fn read_manifest(fd: OwnedFd) -> Result<Manifest, String> {
    let file = File::from(fd);
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut buf = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(0)];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| format!("reading the manifest: {e}"))?;
    Manifest::parse(&buf).map_err(|e| e.to_string())
}

/// Removes `names` from systemd's store (`FDSTOREREMOVE=1`); a no-op outside systemd.
pub fn remove_from_store(names: &[String]) {
    for name in names {
        if let Err(e) = notify_with_fds(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]) {
            tracing::warn!("removing {name} from systemd's fd store: {e}");
        }
    }
}

/// Parks `fds` and their manifest in systemd's store (`FDSTORE=1`); a no-op outside systemd.
/// Returns the names stored.
pub fn store(manifest: &Manifest, fds: &[BorrowedFd<'_>]) -> Vec<String> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Vec::new();
    }
    // systemd 254 and later say how many descriptors the store takes (FileDescriptorStoreMax=);
    // it drops any beyond, silently on this side. A partial set is no use to the next start.
    let room = std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(room) = room {
        if room < fds.len() + 1 {
            tracing::warn!(
                "systemd's fd store takes {room} descriptors, vxdp would park {}: nothing parked, \
                 a restart opens new queues and sockets (raise FileDescriptorStoreMax= in the unit)",
                fds.len() + 1
            );
            return Vec::new();
        }
    }
    let mut stored = Vec::new();
    let result = (|| -> std::io::Result<()> {
        let memfd = manifest_memfd(manifest)?;
        notify_with_fds(
            &format!("FDSTORE=1\nFDNAME={MANIFEST_NAME}"),
            &[memfd.as_fd()],
        )?;
        stored.push(MANIFEST_NAME.to_string());
        // One message per descriptor: FDNAME names every descriptor of its message.
        for (i, fd) in fds.iter().enumerate() {
            let name = format!("{FD_PREFIX}{i}");
            notify_with_fds(&format!("FDSTORE=1\nFDNAME={name}"), &[*fd])?;
            stored.push(name);
        }
        Ok(())
    })();
    match result {
        Ok(()) => tracing::info!(
            descriptors = fds.len(),
            "TAP queues and underlay sockets parked in systemd's fd store: a restart, even \
             after a crash, resumes on them"
        ),
        Err(e) => tracing::warn!(
            "parking descriptors in systemd's fd store failed ({e}): a restart opens new ones \
             (set FileDescriptorStoreMax= in the unit)"
        ),
    }
    stored
}

/// A memfd holding the manifest (read back with `pread`, whatever its file offset).
fn manifest_memfd(manifest: &Manifest) -> std::io::Result<OwnedFd> {
    let name = CString::new("vxdp-manifest").map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(fd);
    file.write_all(&manifest.to_bytes())?;
    Ok(OwnedFd::from(file))
}
