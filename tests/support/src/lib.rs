//! Test support: network namespaces, veth links and child processes that clean up after
//! themselves, also when a test fails or panics.
//!
//! [`checksum`] is the reference Internet checksum and [`packet`] builds and sends raw frames,
//! for tests and fuzzers that check vxdp's packet code against something independent of it.
//!
//! `kube` (feature `kube`, on by default) is a stand-in Kubernetes API server (HTTPS, bearer
//! token, list/watch/patch of nodes) for the Kubernetes subnet manager's tests. Without it the
//! test kit depends on libc alone, light enough for the fuzz crates.
//!
//! Every namespace name carries a prefix unique to this process, so parallel test runs never
//! touch each other's hosts, and only processes started here are ever killed (by PID).

#![allow(
    clippy::cast_possible_truncation,
    reason = "test frames, socket addresses and test data are sized by the kit itself; counters are truncated into test bytes on purpose"
)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod checksum;
pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;
pub mod packet;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless the test can create namespaces and load XDP programs (root here). Privileged
/// tests fail instead of skipping: a skipped test must never be counted as a pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces, TAP devices and XDP programs and must run as root \
         (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF); run it through scripts/test.sh"
    );
}

/// A name prefix unique to this process and call, short enough to build interface names from.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("vxt{}x{n}", std::process::id() % 100_000)
}

/// Deterministic pseudo-random bytes (xorshift64, the low byte of each step), so tests need no
/// rand crate and a failure replays from its seed.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let out = try_run(args);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, whatever its status.
pub fn try_run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<tag>` with its loopback up.
    pub fn new(prefix: &str, tag: &str) -> Netns {
        let name = format!("{prefix}-{tag}");
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        v
    }

    /// Runs a command inside, panicking with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        run(&self.exec_args(args))
    }

    /// Runs a command inside and returns its output, whatever its status.
    pub fn try_run(&self, args: &[&str]) -> Output {
        try_run(&self.exec_args(args))
    }

    /// The MAC address of interface `ifname` inside.
    pub fn mac_address(&self, ifname: &str) -> [u8; 6] {
        let text = self.run(&["cat", &format!("/sys/class/net/{ifname}/address")]);
        packet::parse_mac(&text)
            .unwrap_or_else(|| panic!("{ifname} in {}: no MAC address in {text:?}", self.name))
    }

    /// Starts a long-running command inside; it is killed (by PID) when the guard drops.
    pub fn spawn(&self, args: &[&str], log: Option<&std::path::Path>) -> ChildGuard {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        self.spawn_guarded(cmd, args, log)
    }

    /// Spawns `cmd` (which runs `args` here) with its output in `log`, under a guard.
    fn spawn_guarded(
        &self,
        mut cmd: Command,
        args: &[&str],
        log: Option<&std::path::Path>,
    ) -> ChildGuard {
        cmd.stdin(Stdio::null());
        if let Some(path) = log {
            let f = File::create(path).expect("create log file");
            cmd.stdout(f.try_clone().expect("dup log file")).stderr(f);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {args:?} in {}: {e}", self.name));
        ChildGuard {
            child: Some(child),
            what: args.join(" "),
        }
    }

    /// Starts a long-running command inside as systemd starts a service with a file
    /// descriptor store: `fds` become descriptors 3.. of the command, named in
    /// `LISTEN_FDNAMES`, with `LISTEN_FDS` and `LISTEN_PID` (the command's own PID: `sh`
    /// execs `ip netns exec`, which execs the command, all in one process).
    pub fn spawn_with_listen_fds(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        fds: &[(String, std::os::fd::BorrowedFd<'_>)],
        log: Option<&std::path::Path>,
    ) -> ChildGuard {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"", "sh"])
            .args(["ip", "netns", "exec", &self.name])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !fds.is_empty() {
            cmd.env("LISTEN_FDS", fds.len().to_string()).env(
                "LISTEN_FDNAMES",
                fds.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        }
        assert!(fds.len() <= 256, "at most 256 descriptors are passed");
        let raw: Vec<i32> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        // Above every target (3..3+n) and every source, so the second step never overwrites
        // a source it has yet to move.
        let floor = 3
            + i32::try_from(fds.len()).expect("at most 256")
            + raw.iter().max().copied().unwrap_or(0);
        // SAFETY: the closure runs between fork and exec and calls only fcntl and dup2
        // (async-signal-safe) on descriptors this process holds open; `raw` was built before.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way of 3.. first, then into place (dup2 clears FD_CLOEXEC).
                let mut high = [0i32; 256];
                for (i, fd) in raw.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD, floor);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate().take(raw.len()) {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(*fd);
                }
                Ok(())
            });
        }
        self.spawn_guarded(cmd, args, log)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        enter_netns(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the namespace called `name` (as [`Netns::enter`], for
/// code that holds only the name while the [`Netns`] is borrowed elsewhere).
pub fn enter_netns<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = try_run(&["ip", "netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(&[
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.run(&["ip", "link", "set", a_if, "up"]);
    b.run(&["ip", "link", "set", b_if, "up"]);
}

/// A child process killed by PID (never by name) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill on a PID we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Whether the child has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the child to exit after `signal`; returns its status.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                eprintln!("killing leftover child {} ({})", c.id(), self.what);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
