//! Taking over from a running vxdp (an upgrade, or a second start on a running node): the
//! new process asks the old one, over its control socket, for the descriptors it forwards
//! through (see `dataplane::handover`). The old one stops its workers, so frames wait in the
//! kernel's queues, sends the descriptors with their manifest, and exits leaving everything in
//! place; the new one starts its workers on them. Neither the lease nor any route changes,
//! and no frame is dropped for lack of a reader.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dataplane::handover::{recv_with_fds, Inherited, Manifest};

/// The request line on the control socket.
pub const REQUEST: &str = "handover";

/// What the predecessor handed over.
pub struct TakenOver {
    /// The descriptors and what they are.
    pub inherited: Inherited,
    /// The predecessor's process id.
    pub pid: u32,
}

/// Asks the vxdp answering on `control_socket` to hand over; `Ok(None)` when none answers.
pub fn request(control_socket: &Path) -> anyhow::Result<Option<TakenOver>> {
    let Ok(mut stream) = UnixStream::connect(control_socket) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream
        .write_all(format!("{REQUEST}\n").as_bytes())
        .context("asking the running vxdp to hand over")?;
    let mut buf = vec![0u8; 64 << 10];
    let (n, fds) = recv_with_fds(stream.as_fd(), &mut buf)
        .context("receiving the running vxdp's descriptors")?;
    let body = &buf[..n];
    // A vxdp from before handovers answers with its JSON error for an unknown request.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            bail!(
                "a vxdp is running on {} and does not hand over ({err}): stop it first \
                 (systemctl restart vxdp)",
                control_socket.display()
            );
        }
    }
    let manifest = Manifest::parse(body)?;
    let pid = manifest.pid;
    let inherited = Inherited::new(manifest, fds)?;
    Ok(Some(TakenOver { inherited, pid }))
}

/// Waits until process `pid` has exited (it released its control socket and ports on the
/// way out), at most `limit`.
pub fn wait_for_exit(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie (exited, not yet reaped) has released everything too.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
