//! The XDP steering program (`bpf/xdp_vxlan.bpf.c`): load it with this node's VTEP address,
//! VXLAN port and VNI baked in, attach it to the underlay NIC through a bpf_link, and register
//! one AF_XDP socket per NIC queue in its XSKMAP.
//!
//! Attaching through a bpf_link (not a netlink attach) ties the program's life to this process:
//! when vxdp dies, even by SIGKILL, the kernel detaches it, so VXLAN traffic falls back to the
//! kernel instead of being redirected into sockets nobody reads.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

#[allow(missing_docs, clippy::all, unsafe_op_in_unsafe_fn)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/xdp_vxlan.skel.rs"));
}
use skel::XdpVxlanSkelBuilder;

/// How the program is attached to the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb is allocated (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic receive path, after the skb exists (`XDP_FLAGS_SKB_MODE`); works on every
    /// device but costs an skb per packet.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => 1 << 2,  // XDP_FLAGS_DRV_MODE
            XdpMode::Generic => 1 << 1, // XDP_FLAGS_SKB_MODE
        }
    }

    /// Lower-case name, as shown in logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the program must match: VXLAN to this node's VTEP address(es), port and VNI.
#[derive(Debug, Clone)]
pub struct SteeringConfig {
    /// Interface index of the underlay NIC.
    pub ifindex: u32,
    /// Interface name, for messages.
    pub ifname: String,
    /// This node's IPv4 VTEP address, if it has one.
    pub local_ip4: Option<Ipv4Addr>,
    /// This node's IPv6 VTEP address, if it has one.
    pub local_ip6: Option<Ipv6Addr>,
    /// VXLAN UDP destination port.
    pub port: u16,
    /// VXLAN network identifier served by this node; other VNIs go to the kernel.
    pub vni: u32,
}

/// Counters kept by the XDP program (summed over CPUs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdpCounters {
    /// Frames redirected towards an AF_XDP socket.
    pub redirected: u64,
    /// VXLAN for this VTEP with a VNI it does not serve, passed to the kernel.
    pub other_vni: u64,
    /// Everything else, passed to the kernel.
    pub passed: u64,
}

/// Errors of loading or attaching the program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The BPF object could not be opened or loaded (verifier, missing CAP_BPF, ...).
    #[error("loading the XDP program failed: {0}. vxdp needs CAP_BPF and CAP_NET_ADMIN (or root) and a kernel with BTF-less XDP support; use --backend kernel to run without XDP")]
    Load(#[source] libbpf_rs::Error),
    /// Attaching in a given mode failed.
    #[error("attaching XDP ({mode}) to {ifname} failed: {cause}{hint}")]
    Attach {
        /// Interface name.
        ifname: String,
        /// The mode tried.
        mode: XdpMode,
        /// The kernel's answer (in the message, not chained: the chain would print it twice).
        cause: std::io::Error,
        /// What the operator can do.
        hint: &'static str,
    },
    /// Updating a map failed.
    #[error("updating the XDP {map} map failed: {cause}")]
    Map {
        /// Which map.
        map: &'static str,
        /// The kernel's answer (in the message, not chained: the chain would print it twice).
        cause: libbpf_rs::Error,
    },
}

/// The steering program, attached. Dropping it detaches the program.
pub struct SteeringProgram {
    // Field order is drop order: detach (close the link) before the maps and program go.
    link: OwnedFd,
    xsks: MapHandle,
    counters: XdpCountersReader,
    _prog: OwnedFd,
    mode: XdpMode,
    ifname: String,
}

impl fmt::Debug for SteeringProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeringProgram")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .field("link_fd", &self.link.as_raw_fd())
            .finish()
    }
}

/// One attach attempt that did not succeed, kept to explain the final choice.
#[derive(Debug)]
pub struct AttachFailure {
    /// The mode tried.
    pub mode: XdpMode,
    /// Why it failed.
    pub error: std::io::Error,
}

impl SteeringProgram {
    /// Loads the program for `config` and attaches it in the first mode of `modes` that the
    /// device accepts. Returns the program and the attempts that failed before it.
    pub fn load_and_attach(
        config: &SteeringConfig,
        modes: &[XdpMode],
    ) -> Result<(SteeringProgram, Vec<AttachFailure>), XdpError> {
        route_libbpf_logs();
        let (prog, xsks, counters) = load(config)?;
        let mut failures = Vec::new();
        let mut last = None;
        for &mode in modes {
            match attach_link(prog.as_raw_fd(), config.ifindex, mode) {
                Ok(link) => {
                    return Ok((
                        SteeringProgram {
                            link,
                            xsks,
                            counters: XdpCountersReader(std::sync::Arc::new(counters)),
                            _prog: prog,
                            mode,
                            ifname: config.ifname.clone(),
                        },
                        failures,
                    ))
                }
                Err(error) => {
                    last = Some((mode, error.raw_os_error()));
                    failures.push(AttachFailure { mode, error });
                }
            }
        }
        let (mode, errno) = last.unwrap_or((XdpMode::Generic, None));
        let cause = failures
            .pop()
            .map(|f| f.error)
            .unwrap_or_else(|| std::io::Error::other("no XDP mode was allowed"));
        Err(XdpError::Attach {
            ifname: config.ifname.clone(),
            mode,
            hint: attach_hint(errno),
            cause,
        })
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Steers frames received on `queue` into the AF_XDP socket `xsk_fd`.
    pub fn register_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<(), XdpError> {
        self.xsks
            .update(&queue.to_ne_bytes(), &xsk_fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|cause| XdpError::Map { map: "xsks", cause })
    }

    /// Stops steering `queue` (its frames go to the kernel again).
    pub fn unregister_socket(&self, queue: u32) {
        // Absent keys are fine: nothing to undo.
        let _ = self.xsks.delete(&queue.to_ne_bytes());
    }

    /// Reads the program's counters, summed over CPUs.
    pub fn counters(&self) -> XdpCounters {
        self.counters.read()
    }

    /// A handle that reads the counters from any thread. It keeps the counters map alive,
    /// not the program: after detach the counters simply stop moving.
    pub fn counters_reader(&self) -> XdpCountersReader {
        self.counters.clone()
    }
}

/// Reads the XDP program's per-CPU counters.
#[derive(Debug, Clone)]
pub struct XdpCountersReader(std::sync::Arc<MapHandle>);

impl XdpCountersReader {
    /// The counters, summed over CPUs.
    pub fn read(&self) -> XdpCounters {
        let read = |idx: u32| -> u64 {
            match self.0.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY) {
                Ok(Some(per_cpu)) => per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                    .map(u64::from_ne_bytes)
                    .sum(),
                _ => 0,
            }
        };
        XdpCounters {
            redirected: read(0),
            other_vni: read(1),
            passed: read(2),
        }
    }
}

fn load(config: &SteeringConfig) -> Result<(OwnedFd, MapHandle, MapHandle), XdpError> {
    let mut storage = std::mem::MaybeUninit::uninit();
    let mut open = XdpVxlanSkelBuilder::default()
        .open(&mut storage)
        .map_err(XdpError::Load)?;
    {
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| XdpError::Load(libbpf_rs::Error::from_raw_os_error(libc::ENOENT)))?;
        rodata.local_ip4 = config
            .local_ip4
            .map_or(0, |ip| u32::from_ne_bytes(ip.octets()));
        if let Some(ip6) = config.local_ip6 {
            let o = ip6.octets();
            for (i, word) in rodata.local_ip6.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
        }
        rodata.vxlan_port = config.port;
        rodata.vxlan_vni = config.vni;
    }
    let skel = open.load().map_err(XdpError::Load)?;
    let prog = skel
        .progs
        .xdp_vxlan_steer
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| XdpError::Load(libbpf_rs::Error::from(e)))?;
    let xsks = MapHandle::try_from(&skel.maps.xsks).map_err(XdpError::Load)?;
    let counters = MapHandle::try_from(&skel.maps.counters).map_err(XdpError::Load)?;
    // The kernel objects live on through the duplicated descriptors; the libbpf object (and its
    // borrow of `storage`) can go.
    drop(skel);
    Ok((prog, xsks, counters))
}

fn attach_link(prog_fd: RawFd, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags: mode.flags(),
        ..Default::default()
    };
    // SAFETY: plain syscall wrapper; `opts` outlives the call.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attach_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            ". Another XDP program is attached to this interface: see `ip link show` (xdp) and \
             detach it (`ip link set dev IFACE xdp off`) or stop its owner"
        }
        Some(libc::EPERM) => ". vxdp needs CAP_BPF and CAP_NET_ADMIN; use --backend kernel otherwise",
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
            ". The driver does not support this XDP mode; --backend auto falls back to the kernel vxlan link"
        }
        Some(libc::ERANGE) => ". The interface MTU is too large for XDP on this driver: lower it",
        _ => "",
    }
}

/// libbpf prints to stderr by default; send it through `tracing` instead.
fn route_libbpf_logs() {
    fn print(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
            libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
            libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, print)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_flags_match_the_kernel_uapi() {
        // include/uapi/linux/if_link.h
        assert_eq!(XdpMode::Native.flags(), 4);
        assert_eq!(XdpMode::Generic.flags(), 2);
    }

    #[test]
    fn busy_interface_gets_an_actionable_hint() {
        assert!(attach_hint(Some(libc::EBUSY)).contains("ip link set dev IFACE xdp off"));
        assert!(attach_hint(Some(libc::EPERM)).contains("CAP_BPF"));
    }
}
