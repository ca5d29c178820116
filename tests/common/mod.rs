//! A test cluster: hosts in network namespaces on one underlay bridge, each able to run vxdp,
//! plus helpers to query nodes and move bytes between them. Everything is torn down on drop,
//! also when a test fails.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{require_root, run, unique_prefix, wait_for, ChildGuard, Netns};

/// Where [`Cluster::etcd_store`] runs etcd.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// flannel's etcd prefix.
pub const FLANNEL_PREFIX: &str = "/coreos.com/network";

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
        let args = self.vxdp_argv(wrapper, env, "run", extra);
        self.spawn_daemon(&args);
    }

    /// Starts `binary` (another vxdp build) as this host's daemon, with `extra` arguments.
    pub fn start_binary(&mut self, binary: &str, extra: &[&str]) {
        assert!(
            self.daemon.is_none(),
            "vxdp already running on host {}",
            self.index
        );
        let args = self.binary_argv(binary, &[], &[], "run", extra);
        self.spawn_daemon(&args);
    }

    fn spawn_daemon(&mut self, args: &[String]) {
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

    /// Runs `vxdp cleanup` with the flags a daemon started with `extra` had; its output.
    pub fn cleanup(&self, extra: &[&str]) -> std::process::Output {
        let args = self.vxdp_argv(&[], &[], "cleanup", extra);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns.try_run(&argv)
    }

    /// The command line of `vxdp <subcommand>` on this host: `wrapper`, environment, then
    /// the host's interface, subnet file and control socket, then `extra`.
    pub fn vxdp_argv(
        &self,
        wrapper: &[&str],
        env: &[&str],
        subcommand: &str,
        extra: &[&str],
    ) -> Vec<String> {
        self.binary_argv(VXDP, wrapper, env, subcommand, extra)
    }

    /// [`Host::vxdp_argv`] for another vxdp binary (an upgrade's old or new build).
    pub fn binary_argv(
        &self,
        binary: &str,
        wrapper: &[&str],
        env: &[&str],
        subcommand: &str,
        extra: &[&str],
    ) -> Vec<String> {
        let subnet_file = self.subnet_file();
        let control = self.control_socket();
        let mut args: Vec<String> = wrapper.iter().map(|w| w.to_string()).collect();
        args.extend(["env".into(), "RUST_LOG=info".into()]);
        args.extend(env.iter().map(|e| e.to_string()));
        args.extend([binary.into(), subcommand.into()]);
        // eth0 unless the test chooses the interface itself (--iface, --iface-regex,
        // --iface-can-reach).
        if !extra.iter().any(|a| a.starts_with("--iface")) {
            args.extend(["--iface".into(), "eth0".into()]);
        }
        args.extend([
            "--subnet-file".into(),
            subnet_file.display().to_string(),
            "--control-socket".into(),
            control.display().to_string(),
        ]);
        // Several nodes share this machine's CPUs: workers unpinned unless a test says.
        if !extra.contains(&"--worker-cpus") {
            args.extend(["--worker-cpus".into(), "none".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
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

    /// Waits until the daemon reports `n` peers, all forwarded to: next hop resolved (AF_XDP)
    /// or routed by the kernel (UDP sockets).
    pub fn wait_peers(&self, n: usize) {
        let ok = wait_for(Duration::from_secs(10), || {
            let s = self.try_status()?;
            let peers = s["peers"].as_array()?;
            // `programmed`: a kernel-backend node has written the peer's route, neighbour and FDB entries.
            let ready = |p: &Value| {
                ["resolved", "kernel-routed", "programmed"]
                    .contains(&p["state"].as_str().unwrap_or(""))
            };
            (peers.len() == n && peers.iter().all(ready)).then_some(())
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

impl Host {
    /// The daemon's PID (`ip netns exec` and `env` exec, so it is vxdp's own).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(ChildGuard::pid)
    }

    /// The daemon's resident set (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_rss_kib(self.pid()?)
    }

    /// `eth0`'s MAC address.
    pub fn eth0_mac(&self) -> [u8; 6] {
        let text = self.ns.run(&["cat", "/sys/class/net/eth0/address"]);
        testkit::packet::parse_mac(&text).expect("eth0 MAC")
    }

    /// The VtepMAC the daemon reports for its lease.
    pub fn vtep_mac(&self) -> String {
        self.status()["lease"]["vtep_mac"]
            .as_str()
            .expect("lease.vtep_mac in the status")
            .to_string()
    }

    /// `ip route show` lines (main table) that mention `needle`.
    pub fn routes_matching(&self, needle: &str) -> Vec<String> {
        self.ns
            .run(&["ip", "route", "show"])
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// A counter of the namespace's `/proc/net/snmp`, e.g. `("Udp", "NoPorts")`.
    pub fn snmp(&self, proto: &str, field: &str) -> u64 {
        let text = self.ns.run(&["cat", "/proc/net/snmp"]);
        snmp_field(&text, proto, field)
            .unwrap_or_else(|| panic!("no {proto} {field} in /proc/net/snmp:\n{text}"))
    }
}

/// VmRSS of `pid` in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) `pid` has used.
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `field` of the `proto:` lines of `/proc/net/snmp` text (a header line, then a value line).
pub fn snmp_field(text: &str, proto: &str, field: &str) -> Option<u64> {
    let tag = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// A counter of a `vxdp status --json` document by path, e.g. `["totals", "rx_drops",
/// "unknown_peer"]`; 0 when absent.
pub fn counter(status: &Value, path: &[&str]) -> u64 {
    let mut v = status;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// An endless stream of pattern bytes (xorshift), so a receiver can check a stream of any
/// length as it arrives.
pub struct PatternStream {
    x: u64,
    carry: [u8; 8],
    carry_len: usize,
}

impl PatternStream {
    pub fn new(seed: u64) -> Self {
        PatternStream {
            x: seed | 1,
            carry: [0; 8],
            carry_len: 0,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.carry_len == 0 {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                self.carry = self.x.to_le_bytes();
                self.carry_len = 8;
            }
            let start = 8 - self.carry_len;
            let n = self.carry_len.min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.carry[start..start + n]);
            self.carry_len -= n;
            i += n;
        }
    }
}

/// What a [`tcp_stream`] moved.
#[derive(Debug, Clone, Copy)]
pub struct StreamResult {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Seconds from the connection to the end of the stream at the receiver.
    pub secs: f64,
    /// Every byte sent arrived, in order, unchanged.
    pub intact: bool,
    /// Longest wait for data at the receiver (a stall), in seconds.
    pub longest_stall: f64,
}

impl StreamResult {
    pub fn mbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e6
    }
}

/// Streams pattern bytes over TCP from `from` to `to` (listening on `to_ip:port`) until `done()`
/// says so, at most `pace` bytes per second when given; the receiver checks every byte. A
/// stream that outlives an outage of a few seconds (a daemon restart) survives, as TCP does.
pub fn tcp_stream(
    from: &Host,
    to: &Host,
    to_ip: Ipv4Addr,
    port: u16,
    pace: Option<u64>,
    done: &(dyn Fn() -> bool + Sync),
) -> StreamResult {
    tcp_stream_between(from.ns.name(), to.ns.name(), to_ip, port, pace, done)
}

/// [`tcp_stream`] between namespaces given by name (while the hosts are borrowed elsewhere,
/// e.g. to restart a daemon mid-stream).
pub fn tcp_stream_between(
    from_ns: &str,
    to_ns: &str,
    to_ip: Ipv4Addr,
    port: u16,
    pace: Option<u64>,
    done: &(dyn Fn() -> bool + Sync),
) -> StreamResult {
    let seed = u64::from(port) * 104_729;
    let listener = testkit::enter_netns(to_ns, || TcpListener::bind((to_ip, port)).expect("bind"));
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let start = Instant::now();
            let mut expect = PatternStream::new(seed);
            let mut buf = vec![0u8; 256 << 10];
            let mut want = vec![0u8; 256 << 10];
            let (mut bytes, mut intact, mut longest_stall) = (0u64, true, 0f64);
            let mut last = Instant::now();
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("tcp_stream receiver: {e}");
                        intact = false;
                        break;
                    }
                };
                longest_stall = longest_stall.max(last.elapsed().as_secs_f64());
                last = Instant::now();
                expect.fill(&mut want[..n]);
                if intact && buf[..n] != want[..n] {
                    intact = false;
                }
                bytes += n as u64;
            }
            (bytes, start.elapsed().as_secs_f64(), intact, longest_stall)
        });
        let sent = testkit::enter_netns(from_ns, || {
            let addr = SocketAddr::from((to_ip, port));
            let mut conn =
                TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
            conn.set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut src = PatternStream::new(seed);
            let chunk = 64 << 10;
            let mut buf = vec![0u8; chunk];
            let start = Instant::now();
            let mut sent = 0u64;
            while !done() {
                if let Some(rate) = pace {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait.min(Duration::from_millis(20)));
                        continue;
                    }
                }
                src.fill(&mut buf);
                conn.write_all(&buf).expect("send");
                sent += chunk as u64;
            }
            sent
        });
        let (bytes, secs, intact, longest_stall) = receiver.join().expect("receiver thread");
        StreamResult {
            bytes,
            secs,
            intact: intact && bytes == sent,
            longest_stall,
        }
    })
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
pub fn tcp_transfer(
    from: &Host,
    to: &Host,
    to_ip: impl Into<std::net::IpAddr>,
    port: u16,
    len: usize,
) -> bool {
    let to_ip: std::net::IpAddr = to_ip.into();
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
        Cluster::with_queues(n, 1)
    }

    /// Like [`Cluster::new`], with `queues` RX and TX queues on both ends of every host's veth
    /// (a multi-queue NIC).
    pub fn with_queues(n: u8, queues: u32) -> Cluster {
        require_root();
        let prefix = unique_prefix();
        let underlay = Netns::new(&prefix, "ul");
        underlay.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.run(&["ip", "link", "set", "br0", "up"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut hosts = Vec::new();
        for i in 1..=n {
            hosts.push(plug_host(&prefix, &underlay, dir.path(), i, queues));
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

    /// An etcd server on the underlay at [`ETCD_IP`], holding this network config at
    /// flannel's prefix; its endpoint is `http://192.0.2.254:2379`.
    pub fn etcd_store(&self, config: &str) -> testkit::etcd::EtcdServer {
        self.underlay
            .run(&["ip", "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        let etcd = testkit::etcd::EtcdServer::start_in_netns(self.underlay.name(), ETCD_IP);
        etcd.put(&format!("{FLANNEL_PREFIX}/config"), config);
        etcd
    }

    pub fn host(&mut self, i: u8) -> &mut Host {
        &mut self.hosts[usize::from(i) - 1]
    }

    /// Makes the underlay bridge a plain switch: no br_netfilter (`bridge-nf-call-*`), which
    /// on hosts that load it validates and drops malformed IPv4 and holds fragments for
    /// reassembly before they reach any host. A physical switch forwards such frames.
    pub fn plain_switch(&self) {
        for t in ["iptables", "ip6tables", "arptables"] {
            let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{t}");
            if std::path::Path::new(&knob).exists() {
                self.underlay
                    .run(&["sh", "-c", &format!("echo 0 > {knob}")]);
            }
        }
    }

    /// One more host on the bridge (192.0.2.<index>/24), not in `hosts`: for a namespace that
    /// runs no vxdp (an attacker, a client).
    pub fn add_bare_host(&self, index: u8) -> Host {
        plug_host(&self.prefix, &self.underlay, self.dir.path(), index, 1)
    }
}

/// Creates host `i`: namespace `<prefix>-h<i>` with `eth0` at 192.0.2.<i>/24 (`queues` RX and
/// TX queues on both ends), plugged into the underlay's `br0`, and its scratch directory.
fn plug_host(prefix: &str, underlay: &Netns, dir: &Path, i: u8, queues: u32) -> Host {
    let ns = Netns::new(prefix, &format!("h{i}"));
    let port = format!("h{i}");
    let q = queues.to_string();
    let q = ["numtxqueues", q.as_str(), "numrxqueues", q.as_str()];
    let mut cmd = vec!["ip", "link", "add", "eth0", "netns", ns.name()];
    cmd.extend(q);
    cmd.extend([
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        underlay.name(),
    ]);
    cmd.extend(q);
    run(&cmd);
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
    let hdir = dir.join(format!("h{i}"));
    std::fs::create_dir_all(&hdir).unwrap();
    Host {
        ns,
        index: i,
        dir: hdir,
        daemon: None,
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

/// A `ping` running in the background from a host; see [`Pinger::stop`].
pub struct Pinger {
    child: ChildGuard,
    log: PathBuf,
}

impl Host {
    /// Starts `ping -i <interval_s>` from this host to `to`, logging to `<dir>/ping-<tag>.log`.
    pub fn start_ping(&self, to: Ipv4Addr, interval_s: &str, tag: &str) -> Pinger {
        let log = self.dir.join(format!("ping-{tag}.log"));
        let child = self.ns.spawn(
            &["ping", "-i", interval_s, "-W", "2", &to.to_string()],
            Some(&log),
        );
        Pinger { child, log }
    }
}

impl Pinger {
    /// Stops the ping; (transmitted, received), not counting a last request still unanswered
    /// when ping was interrupted (it was in flight, not lost).
    pub fn stop(mut self) -> (u64, u64) {
        self.child.signal(libc::SIGINT);
        let _ = wait_for(Duration::from_secs(5), || self.child.exited());
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text}"));
        let nums: Vec<u64> = line
            .split(',')
            .filter_map(|p| p.split_whitespace().next()?.parse().ok())
            .collect();
        let last = format!("icmp_seq={} ", nums[0]);
        let in_flight = !text.lines().any(|l| l.contains(&last));
        (nums[0] - u64::from(in_flight), nums[1])
    }
}

/// A node that runs flannel's vxlan backend in the kernel, programmed with `ip` and `bridge`
/// alone as flanneld programs it (flannel `pkg/backend/vxlan/device.go`), independent of
/// vxdp's code: the peer vxdp must interoperate with.
pub struct FlanneldLink {
    /// The link's name, `flannel.<VNI>`.
    pub dev: String,
}

impl Host {
    /// Creates `flannel.<vni>` as flanneld does (local address, `eth0`, `port`, nolearning;
    /// `udpcsum` on or off, or the kernel's default when `None`), with `mac`, MTU 1450, up, and
    /// the /32 address `subnet_gw`.
    pub fn flanneld_link(
        &self,
        vni: u32,
        port: u16,
        mac: &str,
        subnet_gw: Ipv4Addr,
        udpcsum: Option<bool>,
    ) -> FlanneldLink {
        let dev = format!("flannel.{vni}");
        let (ip, vni, port) = (
            self.underlay_ip().to_string(),
            vni.to_string(),
            port.to_string(),
        );
        let mut add = vec![
            "ip",
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &ip,
            "dev",
            "eth0",
            "dstport",
            &port,
            "nolearning",
        ];
        match udpcsum {
            Some(true) => add.push("udpcsum"),
            Some(false) => add.push("noudpcsum"),
            None => {}
        }
        self.ns.run(&add);
        self.ns.run(&[
            "ip", "link", "set", &dev, "address", mac, "mtu", "1450", "up",
        ]);
        self.ns
            .run(&["ip", "addr", "add", &format!("{subnet_gw}/32"), "dev", &dev]);
        FlanneldLink { dev }
    }

    /// What flanneld programs for a peer's lease, in its order: the neighbour entry for the
    /// peer's gateway, the FDB entry toward its underlay address, the onlink route to its
    /// subnet.
    pub fn flanneld_learns(
        &self,
        link: &FlanneldLink,
        subnet: &str,
        gw: &str,
        mac: &str,
        underlay: &str,
    ) {
        let dev = link.dev.as_str();
        self.ns.run(&[
            "ip",
            "neigh",
            "replace",
            gw,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
        self.ns.run(&[
            "bridge",
            "fdb",
            "append",
            mac,
            "dev",
            dev,
            "dst",
            underlay,
            "self",
            "permanent",
        ]);
        self.ns.run(&[
            "ip", "route", "replace", subnet, "via", gw, "dev", dev, "onlink",
        ]);
    }

    /// [`Host::flanneld_learns`] for a vxdp node `peer` on the same cluster (a /24 lease).
    pub fn flanneld_learns_host(&self, link: &FlanneldLink, peer: &Host) {
        let gw = peer.overlay_ip().to_string();
        self.flanneld_learns(
            link,
            &format!("{gw}/24"),
            &gw,
            &peer.vtep_mac(),
            &peer.underlay_ip().to_string(),
        );
    }
}

/// Writes a lease into a local store as flanneld's JSON, for a flanneld-style node.
pub fn write_flanneld_local_lease(
    store: &Path,
    subnet: Ipv4Addr,
    public_ip: Ipv4Addr,
    vni: u32,
    mac: &str,
) {
    let dir = store.join("subnets");
    std::fs::create_dir_all(&dir).expect("create the store's subnets directory");
    std::fs::write(
        dir.join(format!("{subnet}-24")),
        format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
        ),
    )
    .expect("write the flanneld lease");
}

/// A stand-in for systemd's side of sd_notify(3) with a file descriptor store: a datagram
/// socket that reads `READY=1`, `FDSTORE=1`/`FDNAME=` (keeping the descriptors that come with
/// them, as systemd does) and `FDSTOREREMOVE=1`, written against the protocol, not vxdp's code.
pub struct FdStoreStandIn {
    /// The socket path, for `NOTIFY_SOCKET`.
    pub path: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<FdStoreState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct FdStoreState {
    ready: u32,
    fds: Vec<(String, std::os::fd::OwnedFd)>,
}

impl FdStoreStandIn {
    pub fn bind(path: PathBuf) -> FdStoreStandIn {
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new(FdStoreState::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(std::sync::atomic::Ordering::Relaxed) {
                let Some((text, fds)) = recv_notify(&sock) else {
                    continue;
                };
                let mut s = st.lock().unwrap();
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                for line in text.lines() {
                    match line {
                        "READY=1" => s.ready += 1,
                        "FDSTORE=1" => {}
                        "FDSTOREREMOVE=1" => s.fds.retain(|(n, _)| *n != name),
                        _ => {}
                    }
                }
                if text.lines().any(|l| l == "FDSTORE=1") {
                    s.fds.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
                }
            }
        });
        FdStoreStandIn {
            path,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// How many `READY=1` came.
    pub fn ready_count(&self) -> u32 {
        self.state.lock().unwrap().ready
    }

    /// Names of the stored descriptors, in store order.
    pub fn names(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .fds
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Duplicates of the stored descriptors with their names, for the next start.
    pub fn stored(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.state
            .lock()
            .unwrap()
            .fds
            .iter()
            .map(|(n, fd)| (n.clone(), fd.try_clone().expect("dup stored fd")))
            .collect()
    }
}

impl Drop for FdStoreStandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One notify datagram and the descriptors that came with it (`SCM_RIGHTS`).
fn recv_notify(
    sock: &std::os::unix::net::UnixDatagram,
) -> Option<(String, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    // u64 words: the cmsghdrs read through CMSG_FIRSTHDR need their alignment.
    let mut control = [0u64; 128];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; it points at the live buffers above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg into the buffers msg points at.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote well-formed control messages within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<i32>();
                let data = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                        data.add(i),
                    )));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        fds,
    ))
}
