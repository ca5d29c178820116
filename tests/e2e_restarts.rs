//! Restarts and upgrades keep the node on the network (issue 11), for every backend: two nodes
//! in namespaces on an etcd store, a ping every 10 ms and a byte-checked TCP stream each way
//! from the peer, while node 1 is restarted. What the peer must never see: this node's lease
//! deleted (its vxdp log), its route to this node removed (`ip monitor route`, every change as
//! the kernel reports it). Each case prints one line with its measured gap, pings lost and TCP
//! stall.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{tcp_stream_between, Cluster, Pinger, StreamResult, FLANNEL_PREFIX};
use testkit::etcd::EtcdServer;
use testkit::ChildGuard;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Two nodes on etcd: node 1 runs `backend` with `--ip-masq`, node 2 the UDP sockets.
struct Restartable {
    c: Cluster,
    etcd: EtcdServer,
    args: Vec<String>,
}

impl Restartable {
    fn new(backend: &str) -> Restartable {
        Restartable::start(backend, None)
    }

    /// Node 1 runs `binary` when given (another build), else the binary under test.
    fn start(backend: &str, binary: Option<&str>) -> Restartable {
        let mut c = Cluster::new(2);
        let etcd = c.etcd_store(CONFIG);
        let endpoint = etcd.endpoint();
        let args: Vec<String> = ["--etcd-endpoints", &endpoint, "--ip-masq", "--backend"]
            .iter()
            .map(|a| a.to_string())
            .chain([backend.to_string()])
            .collect();
        match binary {
            Some(b) => c.host(1).start_binary(b, &argv(&args)),
            None => c.host(1).start(&argv(&args)),
        }
        c.host(2)
            .start(&["--etcd-endpoints", &endpoint, "--backend", "udp"]);
        for i in 1..=2 {
            c.host(i).wait_ready();
            c.host(i).wait_peers(1);
        }
        Restartable { c, etcd, args }
    }

    fn lease_key(&self) -> String {
        let subnet = self.c.hosts[0].flannel_subnet().replace(".1/", ".0-");
        format!("{FLANNEL_PREFIX}/subnets/{subnet}")
    }
}

fn argv(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// What the peer (node 2) saw while node 1 was restarted.
struct Watch {
    pinger: Pinger,
    routes: ChildGuard,
    routes_log: PathBuf,
    log_before: usize,
}

impl Watch {
    fn start(r: &Restartable, tag: &str) -> Watch {
        let peer = &r.c.hosts[1];
        let routes_log = peer.dir.join(format!("routes-{tag}.log"));
        let routes = peer
            .ns
            .spawn(&["ip", "monitor", "route"], Some(&routes_log));
        // One answered ping first: the path is warm (ARP, next hops) before counting.
        assert!(
            peer.ping(r.c.hosts[0].overlay_ip(), 1),
            "{tag}: no path to node 1"
        );
        let pinger = peer.start_ping(r.c.hosts[0].overlay_ip(), "0.01", tag);
        Watch {
            pinger,
            routes,
            routes_log,
            log_before: peer.log_text().len(),
        }
    }

    /// Stops watching; (pings sent, pings lost), after checking that the peer neither
    /// withdrew its route to node 1 nor saw node 1's lease go.
    fn finish(mut self, r: &Restartable, what: &str) -> (u64, u64) {
        let (sent, received) = self.pinger.stop();
        self.routes.signal(libc::SIGTERM);
        let _ = testkit::wait_for(Duration::from_secs(2), || self.routes.exited());
        let subnet = r.c.hosts[0].flannel_subnet().replace(".1/", ".0/");
        let routes = std::fs::read_to_string(&self.routes_log).unwrap_or_default();
        assert!(
            !routes
                .lines()
                .any(|l| l.starts_with("Deleted") && l.contains(&subnet)),
            "{what}: the peer's route to {subnet} was removed:\n{routes}"
        );
        let peer_log = r.c.hosts[1].log_text();
        let since = &peer_log[self.log_before.min(peer_log.len())..];
        assert!(
            !since.contains("removing peer"),
            "{what}: the peer saw node 1's lease go:\n{since}"
        );
        (sent, sent - received)
    }
}

/// The two nodes' namespaces and overlay addresses, for streams that run while node 1 is
/// being restarted (and the cluster borrowed mutably for that).
struct Ends {
    n1: String,
    n2: String,
    h1_ip: Ipv4Addr,
    h2_ip: Ipv4Addr,
}

impl Ends {
    fn of(r: &Restartable) -> Ends {
        Ends {
            n1: r.c.hosts[0].ns.name().to_string(),
            n2: r.c.hosts[1].ns.name().to_string(),
            h1_ip: r.c.hosts[0].overlay_ip(),
            h2_ip: r.c.hosts[1].overlay_ip(),
        }
    }

    /// Streams at 2 MB/s each way while `during` runs; both streams byte-checked.
    fn streams_during(&self, port: u16, during: impl FnOnce()) -> (StreamResult, StreamResult) {
        let done = AtomicBool::new(false);
        let is_done = || done.load(Ordering::Relaxed);
        std::thread::scope(|sc| {
            let to_h1 = sc.spawn(|| {
                tcp_stream_between(
                    &self.n2,
                    &self.n1,
                    self.h1_ip,
                    port,
                    Some(2 << 20),
                    &is_done,
                )
            });
            let to_h2 = sc.spawn(|| {
                tcp_stream_between(
                    &self.n1,
                    &self.n2,
                    self.h2_ip,
                    port + 1,
                    Some(2 << 20),
                    &is_done,
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            during();
            // Long enough after the restart for TCP's retransmission timer to have fired.
            std::thread::sleep(Duration::from_millis(1500));
            done.store(true, Ordering::Relaxed);
            (
                to_h1.join().expect("stream to node 1"),
                to_h2.join().expect("stream to node 2"),
            )
        })
    }
}

/// Stop (SIGTERM) then start, as `systemctl restart` does.
fn stop_then_start(backend: &str, port: u16) {
    let mut r = Restartable::new(backend);
    let key = r.lease_key();
    let lease = r.etcd.get(&key).expect("node 1's lease in etcd");
    let watch = Watch::start(&r, "restart");
    let mut gap = Duration::ZERO;
    let ends = Ends::of(&r);
    let (to_h1, to_h2) = ends.streams_during(port, || {
        let t0 = Instant::now();
        assert_eq!(r.c.host(1).stop(libc::SIGTERM), Some(0));
        // Between the two processes: the lease and everything that forwards are still there.
        assert!(r.etcd.get(&key).is_some(), "a stop deleted the lease");
        let args = r.args.clone();
        r.c.host(1).start(&argv(&args));
        r.c.host(1).wait_ready();
        gap = t0.elapsed();
    });
    let what = format!("{backend} stop+start");
    let (sent, lost) = watch.finish(&r, &what);
    let report = format!(
        "{what}: gap {} ms (SIGTERM to ready), pings every 10 ms: {sent} sent, {lost} lost; TCP \
         intact both ways, longest stall {:.0} / {:.0} ms",
        gap.as_millis(),
        to_h1.longest_stall * 1e3,
        to_h2.longest_stall * 1e3
    );
    eprintln!("{report}");
    assert!(
        to_h1.intact && to_h2.intact,
        "{report}: {to_h1:?} {to_h2:?}"
    );
    // Forwarding stops at most from SIGTERM to ready; a ping may be in flight at each end.
    let allowed = u64::try_from(gap.as_millis() / 10).unwrap_or(u64::MAX) + 2;
    assert!(lost <= allowed, "{report}: more than {allowed} lost");
    // The same lease, renewed rather than re-created: same subnet and VtepMAC.
    let renewed = r.etcd.get(&key).expect("lease after the restart");
    let field = |v: &str, k: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(v).unwrap_or_default()[k].clone()
    };
    assert_eq!(field(&renewed, "BackendData"), field(&lease, "BackendData"));
    let log = r.c.hosts[0].log_text();
    assert!(log.contains("renewing this node's lease"), "{log}");
}

#[test]
fn udp_backend_stop_then_start_keeps_the_node_on_the_network() {
    stop_then_start("udp", 7600);
}

#[test]
fn xdp_backend_stop_then_start_keeps_the_node_on_the_network() {
    stop_then_start("xdp", 7610);
}

#[test]
fn kernel_backend_stop_then_start_keeps_the_node_on_the_network() {
    stop_then_start("kernel", 7620);
}

#[test]
fn cleanup_leaves_nothing_behind() {
    let mut r = Restartable::new("xdp");
    let key = r.lease_key();
    let subnet = r.c.hosts[0].flannel_subnet().replace(".1/", ".0/");
    assert_eq!(r.c.host(1).stop(libc::SIGTERM), Some(0));
    // The same watch the restart cases rely on sees the peer's route go here.
    let routes_log = r.c.hosts[1].dir.join("routes-cleanup.log");
    let mut routes_monitor = r.c.hosts[1]
        .ns
        .spawn(&["ip", "monitor", "route"], Some(&routes_log));
    std::thread::sleep(Duration::from_millis(200));
    let args = r.args.clone();
    let out = r.c.hosts[0].cleanup(&argv(&args));
    assert!(
        out.status.success(),
        "vxdp cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h1 = &r.c.hosts[0];
    let links = h1.ns.run(&["ip", "-d", "link", "show"]);
    assert!(!links.contains("vxdp.1"), "device left: {links}");
    assert!(!links.contains("prog/xdp"), "XDP program left: {links}");
    let routes = h1.ns.run(&["ip", "route"]);
    assert!(!routes.contains("10.244."), "routes left: {routes}");
    let rules = h1.ns.run(&["iptables-save"]);
    assert!(!rules.contains("FLANNEL"), "rules left: {rules}");
    assert_eq!(r.etcd.get(&key), None, "lease left in etcd");
    // The peer sees the lease go and withdraws its route.
    let gone = testkit::wait_for(Duration::from_secs(3), || {
        (!r.c.hosts[1].ns.run(&["ip", "route"]).contains(&subnet)).then_some(())
    });
    assert!(gone.is_some(), "the peer kept its route to {subnet}");
    routes_monitor.signal(libc::SIGTERM);
    let _ = testkit::wait_for(Duration::from_secs(2), || routes_monitor.exited());
    let seen = std::fs::read_to_string(&routes_log).unwrap_or_default();
    assert!(
        seen.lines()
            .any(|l| l.starts_with("Deleted") && l.contains(&subnet)),
        "ip monitor did not report the withdrawn route: {seen}"
    );

    // And a running daemon is not pulled from under: cleanup refuses, naming what to do.
    r.c.host(1).start(&argv(&args));
    r.c.host(1).wait_ready();
    let out = r.c.hosts[0].cleanup(&argv(&args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stop it first"),
        "{err}"
    );
    assert!(r.c.hosts[0].ns.run(&["ip", "link"]).contains("vxdp.1"));
}

/// A second vxdp started on the running node takes over (an upgrade): `binary` is the new
/// build (the one under test, or a copy at another path).
fn handover(backend: &str, port: u16, binary: Option<&str>) -> String {
    let mut r = Restartable::new(backend);
    let key = r.lease_key();
    let lease = r.etcd.get(&key).expect("node 1's lease in etcd");
    let watch = Watch::start(&r, "handover");
    let ends = Ends::of(&r);
    let mut gap = Duration::ZERO;
    let mut old_exit = None;
    let (to_h1, to_h2) = ends.streams_during(port, || {
        let mut old = r.c.hosts[0].daemon.take().expect("node 1 runs");
        let args = r.args.clone();
        let t0 = Instant::now();
        match binary {
            Some(b) => r.c.host(1).start_binary(b, &argv(&args)),
            None => r.c.host(1).start(&argv(&args)),
        }
        // The old process answers status until it has handed over and exited.
        old_exit = testkit::wait_for(Duration::from_secs(10), || old.exited());
        r.c.host(1).wait_ready();
        gap = t0.elapsed();
    });
    let what = format!(
        "{backend} handover{}",
        if binary.is_some() {
            " between two builds"
        } else {
            ""
        }
    );
    let (sent, lost) = watch.finish(&r, &what);
    let report = format!(
        "{what}: new process ready {} ms after its start (the old one exited on the way), pings every 10 ms: {sent} sent, {lost} \
         lost; TCP intact both ways, longest stall {:.0} / {:.0} ms",
        gap.as_millis(),
        to_h1.longest_stall * 1e3,
        to_h2.longest_stall * 1e3
    );
    eprintln!("{report}");
    let log = r.c.hosts[0].log_text();
    assert_eq!(
        old_exit.map(|s| s.code()),
        Some(Some(0)),
        "{report}: the old process did not exit cleanly:\n{log}"
    );
    assert!(log.contains("took over forwarding"), "{report}:\n{log}");
    assert!(
        to_h1.intact && to_h2.intact,
        "{report}: {to_h1:?} {to_h2:?}"
    );
    let field = |v: &str, k: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(v).unwrap_or_default()[k].clone()
    };
    let now = r.etcd.get(&key).expect("lease after the handover");
    assert_eq!(field(&now, "BackendData"), field(&lease, "BackendData"));
    report
}

#[test]
fn udp_backend_hands_over_to_a_new_process_without_losing_a_ping() {
    let report = handover("udp", 7630, None);
    assert!(report.contains(" 0 lost"), "{report}");
}

#[test]
fn udp_backend_hands_over_between_two_builds() {
    // The "old build" is a copy of the binary at another path: a separate executable file,
    // started and exec'd on its own, that speaks the manifest format this build reads. It
    // proves the handover needs nothing from the running binary's file; it does not prove
    // compatibility with a build of other code, which the manifest's format number guards.
    let dir = tempfile_dir();
    let old_build = dir.join("vxdp-old");
    std::fs::copy(common::VXDP, &old_build).expect("copy the binary");
    let mut r = Restartable::start("udp", Some(old_build.to_str().expect("utf-8")));
    let watch = Watch::start(&r, "upgrade");
    let ends = Ends::of(&r);
    let mut old_exit = None;
    let (to_h1, to_h2) = ends.streams_during(7640, || {
        let mut old = r.c.hosts[0].daemon.take().expect("node 1 runs");
        let args = r.args.clone();
        r.c.host(1).start(&argv(&args));
        old_exit = testkit::wait_for(Duration::from_secs(10), || old.exited());
        r.c.host(1).wait_ready();
    });
    let (sent, lost) = watch.finish(&r, "udp upgrade");
    let report = format!(
        "udp handover from another build: pings every 10 ms: {sent} sent, {lost} lost; TCP \
         longest stall {:.0} / {:.0} ms",
        to_h1.longest_stall * 1e3,
        to_h2.longest_stall * 1e3
    );
    eprintln!("{report}");
    assert_eq!(old_exit.map(|s| s.code()), Some(Some(0)), "{report}");
    assert!(to_h1.intact && to_h2.intact, "{report}");
    assert_eq!(lost, 0, "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn xdp_backend_hands_over_to_a_new_process() {
    // The XDP program is the old process's bpf_link: it detaches it and the new one attaches
    // its own, so VXLAN that arrives in between reaches the kernel, which drops it. Reported,
    // bounded, not zero: 2 to 4 pings (20-40 ms) on a quiet machine; the bound leaves room for
    // a busy one.
    let report = handover("xdp", 7650, None);
    let lost: u64 = report
        .split(" lost")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("lost count");
    assert!(lost <= 20, "{report}");
}

#[test]
fn kernel_backend_hands_over_to_a_new_process_without_losing_a_ping() {
    let report = handover("kernel", 7660, None);
    assert!(report.contains(" 0 lost"), "{report}");
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-upgrade", testkit::unique_prefix()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// kill -9 under (a stand-in of) systemd with a file descriptor store: the TAP queues and
/// sockets the store kept go to the next start, which resumes on them.
fn kill_9_with_fd_store(backend: &str, port: u16) {
    let mut c = Cluster::new(2);
    let etcd = c.etcd_store(CONFIG);
    let endpoint = etcd.endpoint();
    let args: Vec<String> = ["--etcd-endpoints", &endpoint, "--backend", backend]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let systemd = common::FdStoreStandIn::bind(c.hosts[0].dir.join("notify.sock"));
    let notify = format!("NOTIFY_SOCKET={}", systemd.path.display());
    c.host(1).start_with_env(&[notify.as_str()], &argv(&args));
    c.host(2)
        .start(&["--etcd-endpoints", &endpoint, "--backend", "udp"]);
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(1);
    }
    let parked = testkit::wait_for(Duration::from_secs(5), || {
        (systemd.ready_count() == 1 && systemd.names().contains(&"vxdp-manifest".to_string()))
            .then(|| systemd.names().len())
    })
    .expect("nothing parked in the fd store before READY=1");
    let r = Restartable { c, etcd, args };
    let watch = Watch::start(&r, "kill9");
    let ends = Ends::of(&r);
    let Restartable { mut c, etcd, args } = r;
    let mut resumed = Duration::ZERO;
    let (to_h1, to_h2) = ends.streams_during(port, || {
        assert_eq!(c.host(1).stop(libc::SIGKILL), None, "killed by a signal");
        // systemd's RestartSec, shortened.
        std::thread::sleep(Duration::from_millis(100));
        let stored = systemd.stored();
        let fds: Vec<(String, std::os::fd::BorrowedFd<'_>)> = stored
            .iter()
            .map(|(n, fd)| (n.clone(), std::os::fd::AsFd::as_fd(fd)))
            .collect();
        let h1 = &c.hosts[0];
        let cmd = h1.vxdp_argv(&[], &[], "run", &argv(&args));
        let t0 = Instant::now();
        let daemon = h1.ns.spawn_with_listen_fds(
            &argv(&cmd),
            &[("NOTIFY_SOCKET", systemd.path.to_str().expect("utf-8"))],
            &fds,
            Some(&h1.log()),
        );
        let reply = testkit::enter_netns(&ends.n2, || {
            testkit::packet::first_echo_reply(
                ends.h1_ip,
                Duration::from_millis(5),
                t0 + Duration::from_secs(10),
            )
        })
        .expect("ICMP probe socket");
        resumed = reply.expect("no echo reply from node 1 within 10 s of the restart") - t0;
        c.hosts[0].daemon = Some(daemon);
        c.host(1).wait_ready();
    });
    let r = Restartable { c, etcd, args };
    let what = format!("{backend} kill -9 with the fd store");
    let (sent, lost) = watch.finish(&r, &what);
    let report = format!(
        "{what}: first echo reply {} ms after the new start, pings every 10 ms: {sent} sent, \
         {lost} lost; TCP intact both ways, longest stall {:.0} / {:.0} ms",
        resumed.as_millis(),
        to_h1.longest_stall * 1e3,
        to_h2.longest_stall * 1e3
    );
    eprintln!("{report}");
    let log = r.c.hosts[0].log_text();
    assert!(log.contains("systemd's fd store kept"), "{report}:\n{log}");
    assert!(
        to_h1.intact && to_h2.intact,
        "{report}: {to_h1:?} {to_h2:?}"
    );
    assert!(resumed < Duration::from_millis(200), "{report}");
    // Stored again by the new process, nothing stale left beside it.
    let again = testkit::wait_for(Duration::from_secs(5), || {
        (systemd.ready_count() == 2).then(|| systemd.names().len())
    });
    assert_eq!(again, Some(parked), "{:?}", systemd.names());
}

#[test]
fn udp_backend_after_kill_9_resumes_on_the_fd_store() {
    kill_9_with_fd_store("udp", 7670);
}

#[test]
fn xdp_backend_after_kill_9_resumes_on_the_fd_store() {
    kill_9_with_fd_store("xdp", 7680);
}

#[test]
fn a_restart_with_another_backend_replaces_the_device_the_last_one_left() {
    // A stop leaves the kernel backend's vxlan link or the userspace backends' TAP under the
    // same name: the next start with the other kind replaces it, and traffic flows.
    let mut r = Restartable::new("kernel");
    let mut args = r.args.clone();
    for backend in ["udp", "kernel"] {
        assert_eq!(r.c.host(1).stop(libc::SIGTERM), Some(0));
        let last = args.len() - 1;
        args[last] = backend.to_string();
        r.c.host(1).start(&argv(&args));
        r.c.host(1).wait_ready();
        assert_eq!(r.c.hosts[0].status()["backend"], backend);
        r.c.host(2).wait_peers(1);
        assert!(
            r.c.hosts[1].ping(r.c.hosts[0].overlay_ip(), 2),
            "no path after switching to {backend}:\n{}",
            r.c.hosts[0].log_text()
        );
    }
}

#[test]
fn a_successor_of_another_handover_format_is_refused_and_nothing_stops() {
    let r = Restartable::new("udp");
    let sock = r.c.hosts[0].control_socket();
    let answer = |request: &str| -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    };
    for request in ["handover 99", "handover"] {
        let body = answer(request);
        assert!(
            body.contains("error") && body.contains("format"),
            "{request}: {body}"
        );
    }
    // The workers never stopped: the node forwards, and its own process is the same.
    assert!(r.c.hosts[1].ping(r.c.hosts[0].overlay_ip(), 3));
    let log = r.c.hosts[0].log_text();
    assert!(!log.contains("handed over"), "{log}");
}
