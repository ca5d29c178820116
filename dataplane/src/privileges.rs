//! Dropping capabilities once setup is done.
//!
//! Loading XDP, binding AF_XDP sockets and creating the TAP need CAP_BPF, CAP_SYS_ADMIN,
//! CAP_NET_RAW, CAP_IPC_LOCK and CAP_NET_ADMIN; running afterwards needs only CAP_NET_ADMIN
//! (routes, neighbours, the kernel backend's link) and CAP_NET_RAW (the iptables resync runs
//! iptables). Reading the XDP program's counters through the map descriptor vxdp already holds
//! needs no capability (only creating programs and maps does). Everything else is dropped from
//! the effective, permitted, inheritable, ambient and bounding sets, so neither vxdp nor a
//! program it runs can regain it.
//!
//! Linux keeps capabilities per thread, and a new thread inherits its creator's. So
//! [`drop_process_wide`] does what libcap's psx does: it signals every other thread of the
//! process, each drops its own capabilities in the signal handler (capset and prctl are plain
//! system calls, safe there), and it repeats until no thread it has not reached remains; then
//! it drops its own. Workers, which need nothing once their sockets exist, drop everything when
//! they start ([`drop_all`]).

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Capability numbers from <linux/capability.h>.
pub const CAP_NET_ADMIN: u32 = 12;
/// See [`CAP_NET_ADMIN`].
pub const CAP_NET_RAW: u32 = 13;
const CAP_SETPCAP: u32 = 8;

/// What the daemon keeps after setup.
pub const RUNTIME_CAPS: u64 = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW);

static KEEP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
static ACKS: AtomicUsize = AtomicUsize::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// `capget` for this thread; the error is the raw errno (usable in a signal handler).
fn capget_raw() -> Result<u64, i32> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        // SAFETY: reading this thread's errno.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Reduces the calling thread's capabilities to `keep` (intersected with what it has). Only
/// system calls and atomics: callable from a signal handler.
fn drop_thread_to(keep: u64) -> Result<(), i32> {
    let permitted = capget_raw()?;
    let keep = keep & permitted;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..=LAST_CAP.load(Ordering::Relaxed) {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the 64 capability bits go into two 32-bit words, low then high, on purpose"
    )]
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads two CapData structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        // SAFETY: reading this thread's errno.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(())
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: saving and restoring errno around the handler's system calls.
    let saved = unsafe { *libc::__errno_location() };
    let _ = drop_thread_to(KEEP.load(Ordering::Relaxed));
    ACKS.fetch_add(1, Ordering::Release);
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = saved };
}

fn other_threads() -> io::Result<BTreeSet<i32>> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    Ok(std::fs::read_dir("/proc/self/task")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != me)
        .collect())
}

/// Drops everything but `keep` in every thread of the process (see the module docs); returns
/// how many other threads were reached.
pub fn drop_process_wide(keep: u64) -> io::Result<usize> {
    KEEP.store(keep, Ordering::Relaxed);
    LAST_CAP.store(last_cap(), Ordering::Relaxed);
    let sig = libc::SIGRTMIN() + 3;
    // SAFETY: installing a handler that only makes system calls and touches atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drop_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut reached = BTreeSet::new();
    // A thread not yet reached may start another meanwhile: go round until none is new.
    for _ in 0..5 {
        let pending: Vec<i32> = other_threads()?.difference(&reached).copied().collect();
        if pending.is_empty() {
            break;
        }
        let before = ACKS.load(Ordering::Acquire);
        let mut sent = 0;
        for &tid in &pending {
            // SAFETY: tgkill to a thread of our own process.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                sent += 1;
            }
            reached.insert(tid);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while ACKS.load(Ordering::Acquire) < before + sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop_thread_to(keep).map_err(io::Error::from_raw_os_error)?;
    Ok(reached.len())
}

/// Drops every capability of the calling thread (workers need none once their sockets exist).
pub fn drop_all() -> io::Result<()> {
    LAST_CAP.store(last_cap(), Ordering::Relaxed);
    drop_thread_to(0).map_err(io::Error::from_raw_os_error)
}
