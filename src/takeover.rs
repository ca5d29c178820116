//! Taking over from a running vxdp (an upgrade, or a second start on a running node): the
//! new process asks the old one, over its control socket, for the descriptors it forwards
//! through (see `dataplane::handover`). The old one stops its workers, so frames wait in the
//! kernel's queues, sends the descriptors with their manifest, and exits leaving everything in
//! place; the new one starts its workers on them. No route changes and the lease keeps its
//! subnet and VtepMAC (the successor renews it, which peers see as no change); no frame is
//! dropped for lack of a reader.
//!
//! The request names the manifest format (`handover 1`): a predecessor that speaks another
//! refuses before it stops anything. The predecessor keeps the connection open until it has
//! released its control socket and health port and is about to exit; the successor waits for
//! that end of file (a PID would not do across PID namespaces).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use dataplane::handover::{recv_handover, Inherited, Manifest, FORMAT_VERSION};

/// The request line on the control socket.
pub const REQUEST: &str = "handover";

/// What the predecessor handed over.
pub struct TakenOver {
    /// The descriptors and what they are.
    pub inherited: Inherited,
    /// The predecessor's process id (in its PID namespace), for the log.
    pub pid: u32,
    /// The connection, open until the predecessor is gone.
    connection: UnixStream,
}

/// The request line for this build's manifest format.
pub fn request_line() -> String {
    format!("{REQUEST} {FORMAT_VERSION}")
}

/// The format a request line asks for; `None` when it names none or an unreadable one.
pub fn requested_format(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    (words.next() == Some(REQUEST)).then_some(())?;
    words.next()?.parse().ok()
}

/// Asks the vxdp answering on `control_socket` to hand over; `Ok(None)` when none answers.
pub fn request(control_socket: &Path) -> anyhow::Result<Option<TakenOver>> {
    let Ok(mut stream) = UnixStream::connect(control_socket) else {
        return Ok(None);
    };
    // The predecessor answers from its event loop, which may be waiting on a slow store.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream
        .write_all(format!("{}\n", request_line()).as_bytes())
        .context("asking the running vxdp to hand over")?;
    let (body, fds) =
        recv_handover(stream.as_fd()).context("receiving the running vxdp's descriptors")?;
    // A vxdp that cannot hand over (another format, an older build) answers with a JSON error.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            bail!(
                "a vxdp is running on {} and does not hand over ({err}): stop it first \
                 (systemctl restart vxdp)",
                control_socket.display()
            );
        }
    }
    let manifest = Manifest::parse(&body)?;
    let pid = manifest.pid;
    let inherited = Inherited::new(manifest, fds)?;
    Ok(Some(TakenOver {
        inherited,
        pid,
        connection: stream,
    }))
}

impl TakenOver {
    /// Splits off the descriptors; what is left waits for the predecessor to be gone.
    pub fn split(self) -> (Inherited, Predecessor) {
        (
            self.inherited,
            Predecessor {
                pid: self.pid,
                connection: self.connection,
            },
        )
    }
}

/// The process that handed over, until it is gone.
pub struct Predecessor {
    /// Its process id, for the log.
    pub pid: u32,
    connection: UnixStream,
}

impl Predecessor {
    /// Waits until the predecessor closed the connection (it released its control socket and
    /// health port on the way out), at most `limit`. False when it did not.
    pub fn wait_gone(self, limit: Duration) -> bool {
        let mut stream = self.connection;
        if stream.set_read_timeout(Some(limit)).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_manifest_format() {
        assert_eq!(requested_format(&request_line()), Some(FORMAT_VERSION));
        assert_eq!(requested_format("handover"), None);
        assert_eq!(requested_format("handover x"), None);
        assert_eq!(requested_format("status"), None);
    }
}
