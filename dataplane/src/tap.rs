//! The overlay-side device: a multi-queue TAP (`tun-rs`), one queue per worker.
//!
//! The kernel routes packets for remote subnets into it; workers read Ethernet frames straight
//! into UMEM frames and write decapsulated frames back. The device is persistent (`TUNSETPERSIST`),
//! as flanneld's flannel.1 outlives flanneld: when vxdp stops or restarts, the device keeps its
//! address and every pod route through it, peers keep theirs to this node, and the next start
//! attaches its queues to the same device. `vxdp cleanup` deletes it.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use tun_rs::{DeviceBuilder, Layer};

use packet::wire::MacAddr;

/// What the TAP device should look like.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// Interface name, `vxdp.<VNI>` by default.
    pub name: String,
    /// This node's VtepMAC.
    pub mac: MacAddr,
    /// Overlay MTU (underlay MTU minus the VXLAN overhead).
    pub mtu: u16,
    /// Number of queues (one per worker).
    pub queues: usize,
    /// Ask for `IFF_VNET_HDR` and TCP offloads (TSO4/TSO6 with partial checksums).
    pub offload: bool,
}

/// The offloads the kernel granted the TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TapOffloads {
    /// Frames are prefixed with a 10-byte `virtio_net_hdr` in both directions.
    pub vnet_hdr: bool,
    /// The kernel may hand us frames with a partial checksum (`TUN_F_CSUM`).
    pub csum: bool,
    /// The kernel may hand us TCP super-frames (`TUN_F_TSO4 | TUN_F_TSO6`).
    pub tso: bool,
}

/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`) and its flags, from <linux/if_tun.h>.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
/// `TUNSETPERSIST` (`_IOW('T', 203, int)`) and `TUNGETIFF` (`_IOR('T', 210, unsigned int)`).
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `IFF_VNET_HDR` from <linux/if_tun.h>.
pub const IFF_VNET_HDR: u16 = 0x4000;

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the device-wide offload flags through `fd`.
fn set_offload(fd: RawFd, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; fd is an open TAP queue.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Errors of creating the device.
#[derive(Debug, thiserror::Error)]
#[error("TAP device {name}: {step} failed: {cause}{hint}")]
pub struct TapError {
    name: String,
    step: &'static str,
    // In the message, not chained: the chain would print it twice.
    cause: io::Error,
    hint: &'static str,
}

/// One queue of the TAP device: a non-blocking file descriptor. A plain descriptor rather than
/// tun-rs's device, so that a queue handed over from another process (see `handover`) is the
/// same type as one opened here.
pub struct TapQueue {
    fd: OwnedFd,
}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TapQueue(fd {})", self.fd.as_raw_fd())
    }
}

impl TapQueue {
    /// A queue another vxdp process opened and handed over. `fd` must be a TAP queue of a
    /// device created by `TapDevice::create` (checked with `TUNGETIFF`), so that its framing
    /// (vnet header or not) is what the offloads say.
    pub fn from_fd(fd: OwnedFd) -> io::Result<TapQueue> {
        let mut ifr = [0u8; 40];
        // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes) into the buffer it is given.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, ifr.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        set_nonblocking(fd.as_raw_fd())?;
        Ok(TapQueue { fd })
    }

    /// The device name and flags (`IFF_VNET_HDR` etc.) of the queue, from `TUNGETIFF`.
    pub fn interface(&self) -> io::Result<(String, u16)> {
        let mut ifr = [0u8; 40];
        // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes) into the buffer it is given.
        if unsafe { libc::ioctl(self.fd(), TUNGETIFF as _, ifr.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let name_len = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&ifr[..name_len]).into_owned();
        Ok((name, u16::from_ne_bytes([ifr[16], ifr[17]])))
    }

    /// The descriptor, to hand to another process.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The queue's file descriptor, for poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame; `WouldBlock` when the queue is empty.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (with its vnet header when the device has one).
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame gathered from `parts`: tun takes a frame per `writev`, and copies the
    /// pieces straight into the skb, so a frame assembled from a header here and payloads
    /// elsewhere costs no copy in userspace.
    #[inline]
    pub fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; writev only reads the buffers,
        // which live for the call. At most UIO_MAXIOV parts: callers gather at most 66.
        let n = unsafe {
            libc::writev(
                self.fd(),
                parts.as_ptr().cast::<libc::iovec>(),
                libc::c_int::try_from(parts.len()).unwrap_or(libc::c_int::MAX),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl crate::pipeline::Tap for TapQueue {
    #[inline]
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TapQueue::read(self, buf)
    }

    #[inline]
    fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        TapQueue::write_vectored(self, parts)
    }
}

/// The TAP device with all its queues.
#[derive(Debug)]
pub struct TapDevice {
    name: String,
    queues: Vec<TapQueue>,
    offloads: TapOffloads,
}

impl TapDevice {
    /// Creates the device, sets its MAC and MTU, brings it up, and opens `config.queues` queues.
    pub fn create(config: &TapConfig) -> Result<TapDevice, TapError> {
        let err = |step: &'static str, cause: io::Error| {
            let hint = match cause.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EINVAL) if step == "create" => {
                    ". A device with this name exists and is not a vxdp TAP (a kernel vxlan link \
                     left by flanneld or `--backend kernel`?): delete it with `ip link del NAME` \
                     or choose another --device"
                }
                Some(libc::EPERM) => ". Creating a TAP needs CAP_NET_ADMIN",
                Some(libc::ENOENT) => ". /dev/net/tun is missing: load the tun module",
                _ => "",
            };
            TapError {
                name: config.name.clone(),
                step,
                cause,
                hint,
            }
        };
        if config.queues == 0 {
            return Err(err(
                "create",
                io::Error::other("at least one queue is needed"),
            ));
        }
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(&config.name)
                .layer(Layer::L2)
                .with(|b| {
                    b.multi_queue(true);
                    b.offload(offload);
                    // The tun default (500) drops bursts the workers would absorb a moment later.
                    b.tx_queue_len(1000);
                })
                .build_sync()
        };
        let (first, vnet_hdr) = match build(config.offload) {
            Ok(dev) => (dev, config.offload),
            // A kernel that refuses IFF_VNET_HDR or the TCP offloads: run without them.
            Err(e) if config.offload && e.raw_os_error() != Some(libc::EPERM) => {
                tracing::warn!(device = %config.name, "TAP offloads refused ({e}); running without TSO/GRO");
                (build(false).map_err(|e| err("create", e))?, false)
            }
            Err(e) => return Err(err("create", e)),
        };
        first
            .set_mac_address(config.mac.octets())
            .map_err(|e| err("set MAC address", e))?;
        first.set_mtu(config.mtu).map_err(|e| err("set MTU", e))?;
        let mut queues = Vec::with_capacity(config.queues);
        for _ in 1..config.queues {
            let q = first.try_clone().map_err(|e| err("open extra queue", e))?;
            queues.push(q);
        }
        queues.insert(0, first);
        for q in &queues {
            q.set_nonblocking(true)
                .map_err(|e| err("set non-blocking", e))?;
        }
        // tun-rs also turns on UDP segmentation offload where the kernel has it; vxdp only
        // segments TCP, so set exactly the TCP offloads (the mask is device-wide, and every
        // queue opened above re-applied tun-rs's choice).
        let mut offloads = TapOffloads {
            vnet_hdr,
            csum: false,
            tso: false,
        };
        if vnet_hdr {
            let fd = queues[0].as_raw_fd();
            match set_offload(fd, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) {
                Ok(()) => {
                    offloads.csum = true;
                    offloads.tso = true;
                }
                Err(e) => {
                    tracing::warn!(device = %config.name, "TAP TSO refused ({e}); trying checksum offload only");
                    if set_offload(fd, TUN_F_CSUM).is_ok() {
                        offloads.csum = true;
                    } else {
                        set_offload(fd, 0).map_err(|e| err("clear offloads", e))?;
                    }
                }
            }
        }
        // Persistent: the device, its address and the routes through it outlive this process
        // (a restart, an upgrade, a crash), as flanneld's vxlan link outlives flanneld.
        // SAFETY: TUNSETPERSIST takes its argument by value; the fd is an open TAP queue.
        if unsafe {
            libc::ioctl(
                queues[0].as_raw_fd(),
                TUNSETPERSIST as _,
                1 as libc::c_ulong,
            )
        } < 0
        {
            return Err(err("make persistent", io::Error::last_os_error()));
        }
        queues[0].enabled(true).map_err(|e| err("bring up", e))?;
        Ok(TapDevice {
            name: config.name.clone(),
            queues: queues
                .into_iter()
                .map(|dev| TapQueue {
                    // SAFETY: into_raw_fd gives up tun-rs's ownership of an open descriptor,
                    // which the OwnedFd now holds alone.
                    fd: unsafe { OwnedFd::from_raw_fd(dev.into_raw_fd()) },
                })
                .collect(),
            offloads,
        })
    }

    /// The offloads in effect.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues handed over by another vxdp process (see `handover`), all of device `name`, with
    /// the offloads that process set on the device.
    pub fn from_queues(
        name: &str,
        queues: Vec<TapQueue>,
        offloads: TapOffloads,
    ) -> io::Result<TapDevice> {
        if queues.is_empty() {
            return Err(io::Error::other("no TAP queue was handed over"));
        }
        for q in &queues {
            let (dev, flags) = q.interface()?;
            if dev != name {
                return Err(io::Error::other(format!(
                    "the handed-over TAP queues belong to {dev}, not {name}"
                )));
            }
            if (flags & IFF_VNET_HDR != 0) != offloads.vnet_hdr {
                return Err(io::Error::other(
                    "the handed-over TAP queues' vnet header setting is not the one described",
                ));
            }
        }
        Ok(TapDevice {
            name: name.to_string(),
            queues,
            offloads,
        })
    }

    /// Hands the queues out (one per worker); the device outlives them (it is persistent).
    pub fn into_queues(self) -> Vec<TapQueue> {
        self.queues
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }
}
