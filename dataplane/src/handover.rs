//! The descriptors that carry forwarding from one vxdp process to the next.
//!
//! A userspace dataplane forwards through open file descriptors: the TAP queues and the
//! underlay sockets. When they outlive a process, frames wait in their kernel queues instead of
//! being dropped, and the next process resumes where the last one stopped. Two ways get them
//! there: a running vxdp hands them to its successor over the control socket (`SCM_RIGHTS`,
//! an upgrade with both processes alive), and under systemd they are parked in the service's
//! file descriptor store (`FDSTORE=1`) and come back through `LISTEN_FDS` (a restart or a
//! crash). Both carry the same [`Manifest`]: which descriptor is what, with a format version
//! the receiver checks before it trusts any of them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use crate::tap::TapOffloads;

/// The manifest's format. A receiver refuses any other: a descriptor taken for something it is
/// not would forward garbage.
pub const FORMAT_VERSION: u32 = 1;

/// At most this many descriptors travel in one handover (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;

/// What one descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FdRole {
    /// Queue `queue` of the TAP device.
    TapQueue {
        /// Worker index.
        queue: usize,
    },
    /// A receive socket of worker `queue` (one per address family the worker receives on).
    UdpRx {
        /// Worker index.
        queue: usize,
    },
    /// Transmit socket `index` of worker `queue`.
    UdpTx {
        /// Worker index.
        queue: usize,
        /// Position in the worker's transmit set (its source port).
        index: usize,
    },
}

/// What a handover or the fd store carries besides the descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the sender.
    pub format: u32,
    /// The sender's vxdp version, for the log.
    pub vxdp_version: String,
    /// The sender's process id (a handover: the successor waits for it to exit).
    pub pid: u32,
    /// `udp`, `xdp` or `kernel`.
    pub backend: String,
    /// The TAP device the queues belong to.
    pub device: String,
    /// The offloads set on the TAP device (its vnet header framing among them).
    pub tap_offloads: Option<TapOffloads>,
    /// The role of each descriptor, in the order they travel.
    pub fds: Vec<FdRole>,
}

/// Why descriptors from another process were not taken.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("the handover manifest is unreadable ({0})")]
    Unreadable(String),
    /// Another format.
    #[error(
        "the handover manifest has format {found} (from vxdp {sender}), this vxdp reads format \
         {FORMAT_VERSION}: starting afresh instead (frames in flight are lost once)"
    )]
    Format {
        /// The format found.
        found: u32,
        /// The sender's version.
        sender: String,
    },
    /// The manifest and the descriptors disagree.
    #[error("the handover names {named} descriptors but {got} arrived")]
    Count {
        /// Roles in the manifest.
        named: usize,
        /// Descriptors received.
        got: usize,
    },
}

impl Manifest {
    /// Reads a manifest, checking its format.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        // The format first, from a permissive view: a newer manifest may not fit this struct.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            #[serde(default)]
            vxdp_version: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        if head.format != FORMAT_VERSION {
            return Err(ManifestError::Format {
                found: head.format,
                sender: head.vxdp_version,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))
    }

    /// The manifest as sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Descriptors received from another process, each taken at most once by the part that
/// knows what to do with it; whatever is left is closed on drop.
#[derive(Debug)]
pub struct Inherited {
    /// What they are.
    pub manifest: Manifest,
    fds: Vec<(FdRole, Option<OwnedFd>)>,
}

impl Inherited {
    /// Pairs `fds` with the roles the manifest gives them, in order.
    pub fn new(manifest: Manifest, fds: Vec<OwnedFd>) -> Result<Inherited, ManifestError> {
        if manifest.fds.len() != fds.len() {
            return Err(ManifestError::Count {
                named: manifest.fds.len(),
                got: fds.len(),
            });
        }
        let fds = manifest
            .fds
            .iter()
            .copied()
            .zip(fds.into_iter().map(Some))
            .collect();
        Ok(Inherited { manifest, fds })
    }

    /// Takes the descriptor with `role`, if it came and was not taken yet.
    pub fn take(&mut self, role: FdRole) -> Option<OwnedFd> {
        self.fds
            .iter_mut()
            .find(|(r, fd)| *r == role && fd.is_some())
            .and_then(|(_, fd)| fd.take())
    }

    /// Takes every TAP queue, in queue order.
    pub fn take_tap_queues(&mut self) -> Vec<OwnedFd> {
        let mut queues: Vec<(usize, OwnedFd)> = self
            .fds
            .iter_mut()
            .filter_map(|(r, fd)| match r {
                FdRole::TapQueue { queue } => fd.take().map(|fd| (*queue, fd)),
                _ => None,
            })
            .collect();
        queues.sort_by_key(|(q, _)| *q);
        queues.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Takes worker `queue`'s receive sockets (one per address family, in the order they
    /// came) and transmit sockets (in index order); `None` unless both kinds came.
    pub fn take_udp(&mut self, queue: usize) -> Option<(Vec<OwnedFd>, Vec<OwnedFd>)> {
        let rx: Vec<OwnedFd> = self
            .fds
            .iter_mut()
            .filter(|(r, _)| *r == FdRole::UdpRx { queue })
            .filter_map(|(_, fd)| fd.take())
            .collect();
        if rx.is_empty() {
            return None;
        }
        let mut tx: Vec<(usize, OwnedFd)> = self
            .fds
            .iter_mut()
            .filter_map(|(r, fd)| match r {
                FdRole::UdpTx { queue: q, index } if *q == queue => {
                    fd.take().map(|fd| (*index, fd))
                }
                _ => None,
            })
            .collect();
        if tx.is_empty() {
            return None;
        }
        tx.sort_by_key(|(i, _)| *i);
        Some((rx, tx.into_iter().map(|(_, fd)| fd).collect()))
    }

    /// How many descriptors nobody took (closed on drop).
    pub fn left_over(&self) -> usize {
        self.fds.iter().filter(|(_, fd)| fd.is_some()).count()
    }
}

/// Sends `data` with `fds` attached (`SCM_RIGHTS`) on the connected Unix socket `sock`.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors to hand over, at most {MAX_FDS} fit one message",
            fds.len()
        )));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload_len = u32::try_from(std::mem::size_of_val(raw.as_slice()))
        .map_err(|_| io::Error::other("too many descriptors"))?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = usize::try_from(unsafe { libc::CMSG_SPACE(payload_len) })
        .map_err(|_| io::Error::other("control message too large"))?;
    // u64 words: the cmsghdr written through CMSG_FIRSTHDR needs its alignment.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control holds CMSG_SPACE(payload_len) bytes in u64 words, room for one
        // aligned header and the descriptors; CMSG_FIRSTHDR of such a buffer is non-null.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload_len) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(raw.as_slice()),
            );
        }
    }
    // SAFETY: msg points at buffers that live for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::try_from(n).ok() != Some(data.len()) {
        return Err(io::Error::other("short send of the handover message"));
    }
    Ok(())
}

/// Receives one message of at most `buf.len()` bytes and the descriptors attached to it, on
/// the connected Unix socket `sock` (blocking). Descriptors arrive close-on-exec.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload_len = u32::try_from(MAX_FDS * std::mem::size_of::<RawFd>())
        .map_err(|_| io::Error::other("descriptor buffer too large"))?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = usize::try_from(unsafe { libc::CMSG_SPACE(payload_len) })
        .map_err(|_| io::Error::other("control message too large"))?;
    // u64 words: the cmsghdrs read through CMSG_FIRSTHDR need their alignment.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at buffers that live for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed control messages; CMSG_NXTHDR
    // stays within msg_controllen, and each SCM_RIGHTS payload is an array of open
    // descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "descriptors were cut off in transit (more than this vxdp takes)",
        ));
    }
    Ok((usize::try_from(n).unwrap_or(0), fds))
}

/// Sends a whole handover on the connected Unix stream `sock`: the manifest with the first
/// [`MAX_FDS`] descriptors, then one byte (`+`) with each further batch (the kernel passes at
/// most 253 per message; 16 UDP workers with 16 source ports each hold 288).
pub fn send_handover(
    sock: BorrowedFd<'_>,
    manifest: &Manifest,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut batches = fds.chunks(MAX_FDS);
    send_with_fds(sock, &manifest.to_bytes(), batches.next().unwrap_or(&[]))?;
    for batch in batches {
        send_with_fds(sock, b"+", batch)?;
    }
    Ok(())
}

/// Receives what [`send_handover`] sent: the manifest's bytes (or whatever single message came
/// instead, such as an error document) and every descriptor it names.
pub fn recv_handover(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 256 << 10];
    let (n, mut fds) = recv_with_fds(sock, &mut buf)?;
    buf.truncate(n);
    // The kernel does not merge a message carrying descriptors into the next read, so the
    // first read is the manifest alone; a document that is not one ends the exchange.
    let Ok(manifest) = Manifest::parse(&buf) else {
        return Ok((buf, fds));
    };
    let mut byte = [0u8; 1];
    while fds.len() < manifest.fds.len() {
        let (n, more) = recv_with_fds(sock, &mut byte)?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "the handover ended after {} of {} descriptors",
                fds.len(),
                manifest.fds.len()
            )));
        }
        fds.extend(more);
    }
    Ok((buf, fds))
}

/// A duplicate of `fd` (close-on-exec) that keeps the open file alive on its own.
pub fn duplicate(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn manifest(fds: Vec<FdRole>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            vxdp_version: "0.1.0".into(),
            pid: 42,
            backend: "udp".into(),
            device: "vxdp.1".into(),
            tap_offloads: Some(TapOffloads {
                vnet_hdr: true,
                csum: true,
                tso: true,
            }),
            fds,
        }
    }

    #[test]
    fn a_manifest_round_trips_and_another_format_is_refused_by_name() {
        let m = manifest(vec![
            FdRole::TapQueue { queue: 0 },
            FdRole::UdpRx { queue: 0 },
            FdRole::UdpTx { queue: 0, index: 0 },
        ]);
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let newer = br#"{"format":2,"vxdp_version":"9.0.0","fds":[{"kind":"hologram"}]}"#;
        let err = Manifest::parse(newer).unwrap_err().to_string();
        assert!(err.contains("format 2") && err.contains("9.0.0"), "{err}");
        assert!(matches!(
            Manifest::parse(b"{not json").unwrap_err(),
            ManifestError::Unreadable(_)
        ));
    }

    #[test]
    fn descriptors_cross_a_unix_socket_with_their_manifest_and_are_taken_by_role() {
        let (a, b) = UnixStream::pair().unwrap();
        // Three pipes' write ends stand for a TAP queue and one worker's sockets.
        let pipes: Vec<(std::fs::File, std::fs::File)> = (0..3)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                (
                    std::fs::File::from(OwnedFd::from(r)),
                    std::fs::File::from(OwnedFd::from(w)),
                )
            })
            .collect();
        let roles = vec![
            FdRole::UdpTx { queue: 0, index: 0 },
            FdRole::TapQueue { queue: 0 },
            FdRole::UdpRx { queue: 0 },
        ];
        let m = manifest(roles);
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        send_with_fds(a.as_fd(), &m.to_bytes(), &fds).unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, got) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(got.len(), 3);
        let mut inherited = Inherited::new(Manifest::parse(&buf[..n]).unwrap(), got).unwrap();
        // Each descriptor is the same pipe: what is written through it comes out of the
        // matching read end.
        let tap = inherited.take_tap_queues();
        assert_eq!(tap.len(), 1);
        std::fs::File::from(tap.into_iter().next().unwrap())
            .write_all(b"tap")
            .unwrap();
        let (rx, tx) = inherited.take_udp(0).unwrap();
        assert_eq!(rx.len(), 1);
        std::fs::File::from(rx.into_iter().next().unwrap())
            .write_all(b"rx")
            .unwrap();
        std::fs::File::from(tx.into_iter().next().unwrap())
            .write_all(b"tx")
            .unwrap();
        assert_eq!(inherited.left_over(), 0);
        assert!(inherited.take_udp(0).is_none(), "taken once");
        let read = |i: usize, n: usize| {
            let mut s = vec![0u8; n];
            pipes[i].0.try_clone().unwrap().read_exact(&mut s).unwrap();
            String::from_utf8(s).unwrap()
        };
        assert_eq!(read(0, 2), "tx");
        assert_eq!(read(1, 3), "tap");
        assert_eq!(read(2, 2), "rx");
    }

    #[test]
    fn more_descriptors_than_one_message_takes_cross_in_batches() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        let n = MAX_FDS * 2 + 7;
        let roles = (0..n)
            .map(|index| FdRole::UdpTx { queue: 0, index })
            .collect();
        let m = manifest(roles);
        let fds: Vec<BorrowedFd<'_>> = (0..n).map(|_| r.as_fd()).collect();
        let sender = std::thread::scope(|s| {
            let t = s.spawn(|| send_handover(a.as_fd(), &m, &fds));
            let got = recv_handover(b.as_fd()).unwrap();
            t.join().unwrap().unwrap();
            got
        });
        let (bytes, got) = sender;
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        assert_eq!(got.len(), n);
        // A document that is not a manifest ends the exchange as it is.
        send_with_fds(a.as_fd(), br#"{"error":"no"}"#, &[]).unwrap();
        let (bytes, got) = recv_handover(b.as_fd()).unwrap();
        assert_eq!(bytes, br#"{"error":"no"}"#);
        assert!(got.is_empty());
    }

    #[test]
    fn a_manifest_that_does_not_match_the_descriptors_is_refused() {
        let (r, _w) = std::io::pipe().unwrap();
        let err = Inherited::new(manifest(vec![]), vec![OwnedFd::from(r)]).unwrap_err();
        assert!(matches!(err, ManifestError::Count { named: 0, got: 1 }));
    }
}
