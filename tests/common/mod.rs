//! A test cluster: hosts in network namespaces on one underlay bridge, each able to run vxdp,
//! plus helpers to query nodes and move bytes between them. Everything is torn down on drop,
//! also when a test fails.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::{require_root, run, unique_prefix, wait_for, ChildGuard, Netns};

/// The vxdp binary under test.
pub const VXDP: &str = env!("CARGO_BIN_EXE_vxdp");

/// One host: a namespace with `eth0` on the underlay at 192.0.2.<n>/24.
pub struct Host {
    pub ns: Netns,
    pub index: u8,
    pub dir: PathBuf,
    pub daemon: Option<ChildGuard>,
}

impl Host {
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, self.index)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("vxdp.log")
    }

    /// Starts vxdp with `extra` arguments after the per-host defaults.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_with_env(&[], extra);
    }

    /// Starts vxdp with extra environment variables (`NAME=value`) and arguments.
    pub fn start_with_env(&mut self, env: &[&str], extra: &[&str]) {
        self.start_wrapped(&[], env, extra);
    }

    /// Starts vxdp through `wrapper` (a command prefix such as `capsh --drop=... --`, which
    /// must exec what follows), with extra environment and arguments.
    pub fn start_wrapped(&mut self, wrapper: &[&str], env: &[&str], extra: &[&str]) {
        assert!(
            self.daemon.is_none(),
            "vxdp already running on host {}",
            self.index
        );
        let subnet_file = self.subnet_file();
        let control = self.control_socket();
        let mut args: Vec<String> = wrapper.iter().map(|w| w.to_string()).collect();
        args.extend(["env".into(), "RUST_LOG=info".into()]);
        args.extend(env.iter().map(|e| e.to_string()));
        args.extend([
            VXDP.into(),
            "run".into(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            subnet_file.display().to_string(),
            "--control-socket".into(),
            control.display().to_string(),
            "--worker-cpus".into(),
            "none".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.log();
        // Append: a restarted daemon keeps the earlier log for post-mortems.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        drop(f);
        self.daemon = Some(self.ns.spawn(&argv, Some(&log)));
    }

    /// Waits until the daemon wrote its subnet file and answers on its control socket.
    pub fn wait_ready(&mut self) {
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(d) = self.daemon.as_mut() {
                if let Some(status) = d.exited() {
                    panic!(
                        "vxdp on host {} exited early ({status}):\n{}",
                        self.index,
                        self.log_text()
                    );
                }
            }
            // `ready` turns true only once this run wrote the subnet file (a restarted node
            // finds the previous run's file already there).
            (self.try_status()?["ready"] == true).then_some(())
        });
        assert!(
            ready.is_some(),
            "vxdp on host {} did not become ready:\n{}",
            self.index,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Stops the daemon with `signal` and returns its exit code.
    pub fn stop(&mut self, signal: i32) -> Option<i32> {
        let mut d = self.daemon.take()?;
        let status = d.stop(signal, Duration::from_secs(15));
        assert!(
            status.is_some(),
            "vxdp on host {} did not exit after signal {signal}:\n{}",
            self.index,
            self.log_text()
        );
        status.and_then(|s| s.code())
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = testkit::try_run(&[
            VXDP,
            "status",
            "--json",
            "--control-socket",
            self.control_socket().to_str()?,
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("no status from host {}:\n{}", self.index, self.log_text()))
    }

    /// The subnet line of the subnet file, e.g. `10.244.7.1/24`.
    pub fn flannel_subnet(&self) -> String {
        let text = std::fs::read_to_string(self.subnet_file()).expect("subnet file");
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .expect("FLANNEL_SUBNET line")
            .to_string()
    }

    /// This host's VTEP address on the overlay: the lease's base address, which the daemon puts
    /// on its device.
    pub fn overlay_ip(&self) -> Ipv4Addr {
        let first: Ipv4Addr = self
            .flannel_subnet()
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("address in FLANNEL_SUBNET");
        Ipv4Addr::from(u32::from(first) - 1)
    }

    /// Number of peers the daemon reports.
    pub fn peer_count(&self) -> usize {
        self.try_status()
            .and_then(|s| s["peers"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Waits until the daemon reports `n` peers, all resolved.
    pub fn wait_peers(&self, n: usize) {
        let ok = wait_for(Duration::from_secs(10), || {
            let s = self.try_status()?;
            let peers = s["peers"].as_array()?;
            (peers.len() == n && peers.iter().all(|p| p["state"] == "resolved")).then_some(())
        });
        assert!(
            ok.is_some(),
            "host {} does not see {n} resolved peers: {:#}\n{}",
            self.index,
            self.try_status().unwrap_or_default(),
            self.log_text()
        );
    }

    /// Pings `dst` `count` times; true if every echo came back.
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> bool {
        self.ns
            .try_run(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "2",
                &dst.to_string(),
            ])
            .status
            .success()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can check every byte.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `len` pattern bytes over TCP from `from` to `to` (listening on `to_ip:port`), and
/// returns whether the receiver got exactly those bytes.
pub fn tcp_transfer(from: &Host, to: &Host, to_ip: Ipv4Addr, port: u16, len: usize) -> bool {
    let data = pattern(u64::from(port) * 7919 + len as u64, len);
    let listener = to
        .ns
        .enter(|| TcpListener::bind((to_ip, port)).expect("bind"));
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::with_capacity(len);
            conn.read_to_end(&mut got).expect("receive");
            got
        });
        from.ns.enter(|| {
            let addr = SocketAddr::from((to_ip, port));
            let mut conn =
                TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
            conn.set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            conn.write_all(&data).expect("send");
        });
        let got = receiver.join().expect("receiver thread");
        got.len() == data.len() && got == data
    })
}

/// Hosts on one bridge, and a scratch directory.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub underlay: Netns,
    pub dir: tempfile::TempDir,
    pub prefix: String,
}

impl Cluster {
    /// Creates `n` hosts (192.0.2.1..n) on a bridge in their own underlay namespace.
    pub fn new(n: u8) -> Cluster {
        require_root();
        let prefix = unique_prefix();
        let underlay = Netns::new(&prefix, "ul");
        underlay.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.run(&["ip", "link", "set", "br0", "up"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = Netns::new(&prefix, &format!("h{i}"));
            let port = format!("h{i}");
            run(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                underlay.name(),
            ]);
            underlay.run(&["ip", "link", "set", &port, "master", "br0", "up"]);
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("192.0.2.{i}/24"),
                "dev",
                "eth0",
            ]);
            ns.run(&["ip", "link", "set", "eth0", "up"]);
            let hdir = dir.path().join(format!("h{i}"));
            std::fs::create_dir_all(&hdir).unwrap();
            hosts.push(Host {
                ns,
                index: i,
                dir: hdir,
                daemon: None,
            });
        }
        Cluster {
            hosts,
            underlay,
            dir,
            prefix,
        }
    }

    /// A local lease store in the scratch directory with this network config.
    pub fn local_store(&self, config: &str) -> PathBuf {
        let store = self.dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("config"), config).unwrap();
        store
    }

    pub fn host(&mut self, i: u8) -> &mut Host {
        &mut self.hosts[usize::from(i) - 1]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Daemons first (their guards kill by PID), then the namespaces.
        for h in &mut self.hosts {
            if let Some(mut d) = h.daemon.take() {
                let _ = d.stop(libc::SIGTERM, Duration::from_secs(5));
            }
        }
        if std::thread::panicking() {
            for h in &self.hosts {
                eprintln!("---- vxdp log of host {} ----\n{}", h.index, h.log_text());
            }
        }
    }
}

/// A path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
