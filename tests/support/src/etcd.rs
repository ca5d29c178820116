//! A throwaway single-member etcd (`/usr/bin/etcd`, Debian's `etcd-server`) for tests, and a
//! three-member cluster of them ([`EtcdCluster`]) for leader changes and member failures.
//!
//! Every [`EtcdServer`] runs on its own free loopback ports with its own data directory, so tests
//! can run in parallel. It is driven with `etcdctl` (v3 API) so that tests check what is really
//! stored, independently of vxdp's own etcd client. The process is killed by PID and its
//! directory removed on drop; its log is kept in `<dir>/etcd.log` and its tail is printed when a
//! helper fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where Debian's `etcd-server` and `etcd-client` packages put the binaries.
pub const ETCD: &str = "/usr/bin/etcd";
/// `etcdctl`, used for every helper here.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running etcd member with its own data directory and ports.
#[derive(Debug)]
pub struct EtcdServer {
    name: String,
    /// Network namespace etcd runs in (`None`: the caller's).
    netns: Option<String>,
    /// Address it listens on.
    host: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    /// `--initial-cluster` when this is a member of an [`EtcdCluster`] (`None`: alone).
    initial_cluster: Option<String>,
    /// `--quota-backend-bytes`, when set.
    quota_bytes: Option<u64>,
    child: Option<Child>,
}

/// The PEM files of a TLS etcd (made with `openssl` for 127.0.0.1, valid for a day).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates.
    pub ca: PathBuf,
    /// A client certificate etcd accepts (`--client-cert-auth`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// `ip` as the host part of a URL: IPv6 in brackets (RFC 3986 section 3.2.2).
fn url_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl EtcdServer {
    /// Starts etcd and waits (up to 10 s) until it answers. Panics, with etcd's log, when it
    /// cannot: tests that need etcd fail, they never skip.
    pub fn start() -> EtcdServer {
        Self::start_with(false, None, "127.0.0.1")
    }

    /// Starts etcd serving clients over TLS only, requiring client certificates signed by
    /// [`TlsFiles::ca`] (as kubeadm-style etcd clusters do).
    pub fn start_tls() -> EtcdServer {
        Self::start_with(true, None, "127.0.0.1")
    }

    /// Starts etcd inside network namespace `netns`, listening on `host` (an address of that
    /// namespace, IPv4 or IPv6), so that hosts in other namespaces reach it over their
    /// underlay. `etcdctl` helpers run inside the namespace too.
    pub fn start_in_netns(netns: &str, host: impl Into<std::net::IpAddr>) -> EtcdServer {
        Self::start_with(false, Some(netns.to_string()), &url_host(host.into()))
    }

    /// Starts etcd out of space: its backend quota is smaller than its empty database, so it
    /// raises the NOSPACE alarm and refuses every write (gRPC ResourceExhausted, "mvcc:
    /// database space exceeded") while reads go on, as an etcd that filled its quota does.
    /// Runs inside network namespace `netns` on `host`, like [`EtcdServer::start_in_netns`].
    pub fn start_out_of_space_in_netns(netns: &str, host: std::net::Ipv4Addr) -> EtcdServer {
        let mut server = Self::prepare(false, Some(netns.to_string()), &host.to_string());
        server.quota_bytes = Some(4096);
        server.spawn();
        server
    }

    fn start_with(tls: bool, netns: Option<String>, host: &str) -> EtcdServer {
        let mut server = Self::prepare(tls, netns, host);
        server.spawn();
        server
    }

    /// A member with its own name, directory and ports, not started yet.
    fn prepare(tls: bool, netns: Option<String>, host: &str) -> EtcdServer {
        assert!(
            Path::new(ETCD).exists() && Path::new(ETCDCTL).exists(),
            "{ETCD} and {ETCDCTL} are needed for the etcd tests: apt-get install etcd-server \
             etcd-client"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("vxt{}x{n}x{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(format!("vxdp-etcd-{name}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create etcd test directory {}: {e}", dir.display()));
        let tls = tls.then(|| make_tls_files(&dir));
        EtcdServer {
            name,
            netns,
            host: host.to_string(),
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            initial_cluster: None,
            quota_bytes: None,
            child: None,
        }
    }

    /// The peer URL, e.g. `http://127.0.0.1:40124`.
    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    /// The TLS files, for a server from [`EtcdServer::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The directory holding the data directory and `etcd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    /// Starts the process without waiting for it to answer (a cluster member answers only once
    /// a quorum is up).
    fn spawn_process(&mut self) {
        let peer = self.peer_url();
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let log2 = log.try_clone().expect("duplicate the etcd log file");
        let mut cmd = self.command(ETCD);
        if let Some(q) = self.quota_bytes {
            cmd.arg("--quota-backend-bytes").arg(q.to_string());
        }
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={peer}", self.name)),
            )
            .arg("--initial-cluster-token")
            .arg(
                self.initial_cluster
                    .as_ref()
                    .map_or(self.name.as_str(), |_| "vxdp-test"),
            )
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    panic!(
                        "etcd exited during startup ({status}); its log:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            let health = self.etcdctl_output(&["endpoint", "health", "--command-timeout=1s"]);
            if health.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd did not answer at {} within 15 s ({}); its log:\n{}",
                    self.endpoint(),
                    String::from_utf8_lossy(&health.stderr).trim(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) and waits for it to exit; the data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills etcd (SIGKILL: a crash, no leadership hand-over) and waits for it; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): it keeps its connections and accepts new ones but answers
    /// nothing, like a hung or partitioned member. [`EtcdServer::resume`] thaws it.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// Thaws etcd after [`EtcdServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            // SAFETY: as in pause.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    /// Starts etcd again on the same ports and data directory (after [`EtcdServer::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Whether etcd is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `program`, run inside the server's namespace if it has one (`ip netns exec` execs it, so
    /// the child's PID is the program's own).
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn etcdctl_output(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(ETCDCTL);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {ETCDCTL}: {e}"))
    }

    /// Runs `etcdctl <args>` against this member and returns its stdout; panics with the output
    /// and etcd's log when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_output(args);
        assert!(
            out.status.success(),
            "`etcdctl {}` failed ({}): {}{}\netcd log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put key value`.
    pub fn put(&self, key: &str, value: &str) {
        // `--` so that values starting with '-' are not taken for flags.
        self.etcdctl(&["put", "--", key, value]);
    }

    /// `etcdctl put --lease=<lease> key value` (`lease` as [`EtcdServer::grant`] returns it).
    pub fn put_with_lease(&self, key: &str, value: &str, lease: &str) {
        self.etcdctl(&["put", &format!("--lease={lease}"), "--", key, value]);
    }

    /// `etcdctl lease grant <ttl>`: the new lease's ID, in hex as etcdctl prints and takes it.
    pub fn grant(&self, ttl_s: u64) -> String {
        let out = self.etcdctl(&["lease", "grant", &ttl_s.to_string()]);
        // "lease 694d7b3a2e7f1c0a granted with TTL(3600s)"
        out.split_whitespace()
            .nth(1)
            .filter(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("unexpected `etcdctl lease grant` output: {out:?}"))
            .to_string()
    }

    /// The value of `key`, exactly as stored, or `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        // `-w json` would base64 the value; `--print-value-only` prints it and a newline.
        let out = self.etcdctl(&["get", "--print-value-only", "--", key]);
        if out.is_empty() {
            // Absent. (An empty value would print a lone newline.)
            return None;
        }
        Some(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// `etcdctl del key`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", "--", key]);
    }

    /// The lease `key` is attached to, as `(granted TTL, remaining TTL)` in seconds; `None` for
    /// a key without a lease (or an absent key).
    pub fn key_lease(&self, key: &str) -> Option<(i64, i64)> {
        let fields = self.etcdctl(&["get", "-w", "fields", "--", key]);
        let lease: i64 = field(&fields, "Lease")?.parse().ok()?;
        if lease == 0 {
            return None;
        }
        // "lease 694d... granted with TTL(3600s), remaining(3599s)"
        let out = self.etcdctl(&["lease", "timetolive", &format!("{lease:x}")]);
        let num_after = |tag: &str| -> Option<i64> {
            let rest = &out[out.find(tag)? + tag.len()..];
            rest[..rest.find('s')?].parse().ok()
        };
        Some((num_after("TTL(")?, num_after("remaining(")?))
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let fields = self.etcdctl(&["endpoint", "status", "-w", "fields"]);
        field(&fields, "Revision")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in `etcdctl endpoint status`: {fields}"))
    }

    /// Compacts the history up to the current revision (physically, so watchers started from
    /// an older revision are cancelled), like etcd's auto-compaction does on a busy cluster.
    pub fn compact_to_latest(&self) -> i64 {
        let rev = self.revision();
        self.etcdctl(&["compact", "--physical", &rev.to_string()]);
        rev
    }

    /// The process ID (of etcd itself: `ip netns exec` execs it), while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// This member's ID and the ID of the leader it knows (`etcdctl endpoint status`); `None`
    /// when it does not answer.
    pub fn member_and_leader(&self) -> Option<(u64, u64)> {
        let out =
            self.etcdctl_output(&["endpoint", "status", "-w", "fields", "--command-timeout=1s"]);
        if !out.status.success() {
            return None;
        }
        let fields = String::from_utf8_lossy(&out.stdout);
        let id = field(&fields, "MemberID")?.parse().ok()?;
        let leader = field(&fields, "Leader")?.parse().ok()?;
        Some((id, leader))
    }
}

/// A three-member (or n-member) etcd cluster on one address, each member on its own ports and
/// data directory, for leader changes and member failures. Members are killed by PID on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members in namespace `netns` on `host` and waits until each answers (which
    /// needs a leader).
    pub fn start_in_netns(netns: &str, host: std::net::Ipv4Addr, n: usize) -> EtcdCluster {
        let mut members: Vec<EtcdServer> = (0..n)
            .map(|_| EtcdServer::prepare(false, Some(netns.to_string()), &host.to_string()))
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.initial_cluster = Some(initial.clone());
            m.spawn_process();
        }
        for m in &mut members {
            m.wait_ready();
        }
        EtcdCluster { members }
    }

    /// Every member's client URL, comma-separated (for `--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdServer::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdServer {
        &self.members[i]
    }

    /// Member `i`, to stop or restart it.
    pub fn member_mut(&mut self, i: usize) -> &mut EtcdServer {
        &mut self.members[i]
    }

    /// A running member that answers, for reads and writes (etcd forwards to the leader).
    pub fn any(&self) -> &EtcdServer {
        self.members
            .iter()
            .find(|m| m.is_running() && m.member_and_leader().is_some())
            .unwrap_or_else(|| panic!("no etcd member answers"))
    }

    /// The index of the leader, once the running members agree on one (up to `timeout`).
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_leader_among(&all, timeout)
    }

    /// The index of the leader, once the running members among `members` agree on one that is
    /// also among them (up to `timeout`).
    pub fn wait_leader_among(&self, members: &[usize], timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<(usize, u64, u64)> = self
                .members
                .iter()
                .enumerate()
                .filter(|(i, m)| members.contains(i) && m.is_running())
                .filter_map(|(i, m)| m.member_and_leader().map(|(id, l)| (i, id, l)))
                .collect();
            let leader = views.first().map(|v| v.2).filter(|l| *l != 0);
            if let Some(leader) = leader {
                if views.iter().all(|v| v.2 == leader) {
                    if let Some(v) = views.iter().find(|v| v.1 == leader) {
                        return Some(v.0);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Transfers leadership to member `to` (`etcdctl move-leader`, sent to the current leader)
    /// and waits until every running member follows it.
    pub fn move_leader(&self, to: usize) {
        let leader = self
            .wait_leader(Duration::from_secs(10))
            .expect("a leader to move leadership from");
        let (to_id, _) = self.members[to]
            .member_and_leader()
            .unwrap_or_else(|| panic!("etcd member {to} does not answer"));
        self.members[leader].etcdctl(&["move-leader", &format!("{to_id:x}")]);
        let now = self.wait_leader(Duration::from_secs(10));
        assert_eq!(now, Some(to), "leadership did not move to member {to}");
    }
}

/// Makes a CA and a server (IP 127.0.0.1) and a client certificate signed by it, in `dir`.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (needed for the TLS etcd): {e}"));
        assert!(
            out.status.success(),
            "`openssl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", "/CN=vxdp test CA"];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&args);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let ext_file = format!("{name}.ext");
        std::fs::write(p(&ext_file), ext).expect("write an openssl extension file");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/CN=vxdp test {name}");
        let mut args = vec!["req", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &ext_file,
            "-out",
            &pem,
        ]);
    }
    TlsFiles {
        ca: p("ca.pem"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
    }
}

/// The value of `"<name>" : <value>` in `etcdctl -w fields` output.
fn field(fields: &str, name: &str) -> Option<String> {
    let tag = format!("\"{name}\" : ");
    fields
        .lines()
        .find_map(|l| l.strip_prefix(&tag))
        .map(|v| v.trim().to_string())
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
