//! End to end, embedded lease store: hosts in namespaces on one bridge run vxdp; traffic
//! crosses TAP -> VXLAN -> AF_XDP and back, byte for byte, and the workers' counters prove it
//! went through vxdp's sockets, not the kernel.

mod common;

use std::time::Duration;

use common::{s, tcp_transfer, Cluster};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const TRANSFER: usize = 16 << 20;

fn totals(status: &serde_json::Value, key: &str) -> u64 {
    status["totals"][key].as_u64().unwrap_or(0)
}

#[test]
fn frames_cross_hosts_through_af_xdp_and_back() {
    let mut c = Cluster::new(3);
    let store = c.local_store(CONFIG);
    for i in 1..=3 {
        c.host(i)
            .start(&["--local-store", s(&store), "--backend", "xdp"]);
    }
    for i in 1..=3 {
        c.host(i).wait_ready();
    }
    for i in 1..=3 {
        c.host(i).wait_peers(2);
    }

    // Every node got its own subnet, and the device looks like flannel's.
    let subnets: std::collections::BTreeSet<String> =
        c.hosts.iter().map(|h| h.flannel_subnet()).collect();
    assert_eq!(subnets.len(), 3, "subnets collide: {subnets:?}");
    let st = c.hosts[0].status();
    assert_eq!(st["backend"], "xdp");
    assert_eq!(st["device"]["name"], "vxdp.1");
    assert_eq!(st["device"]["mtu"], 1450);
    assert_eq!(st["workers"][0]["underlay"]["socket_mode"], "copy");
    assert!(
        st["summary"].as_str().unwrap().contains("with TSO/GRO"),
        "{st:#}"
    );
    let link = c.hosts[0].ns.run(&["ip", "-d", "link", "show", "vxdp.1"]);
    assert!(link.contains("tun type tap"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    let addr = c.hosts[0].ns.run(&["ip", "-4", "addr", "show", "vxdp.1"]);
    assert!(
        addr.contains(&format!("{}/32", c.hosts[0].overlay_ip())),
        "{addr}"
    );
    let routes = c.hosts[0].ns.run(&["ip", "route", "show", "dev", "vxdp.1"]);
    for peer in &c.hosts[1..] {
        let net = peer.overlay_ip();
        assert!(
            routes.contains(&format!("{net}/24 via {net} proto static onlink")),
            "no onlink route to {net}: {routes}"
        );
    }

    // Ping both ways between every pair.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let dst = c.hosts[b].overlay_ip();
                assert!(c.hosts[a].ping(dst, 3), "ping h{} -> {dst} failed", a + 1);
            }
        }
    }

    // 16 MiB each way between h1 and h2, every byte compared.
    let before = (c.hosts[0].status(), c.hosts[1].status());
    let h2_ip = c.hosts[1].overlay_ip();
    let h1_ip = c.hosts[0].overlay_ip();
    assert!(
        tcp_transfer(&c.hosts[0], &c.hosts[1], h2_ip, 7001, TRANSFER),
        "h1 -> h2 transfer corrupted or incomplete"
    );
    assert!(
        tcp_transfer(&c.hosts[1], &c.hosts[0], h1_ip, 7002, TRANSFER),
        "h2 -> h1 transfer corrupted or incomplete"
    );
    let after = (c.hosts[0].status(), c.hosts[1].status());

    // The bytes went through the AF_XDP sockets: each side's workers put at least the payload
    // on the TX ring and took it off the RX ring, and the XDP program redirected as many frames
    // as the workers received.
    for (name, b, a) in [("h1", &before.0, &after.0), ("h2", &before.1, &after.1)] {
        let tx = totals(a, "underlay_tx_bytes") - totals(b, "underlay_tx_bytes");
        let rx = totals(a, "underlay_rx_bytes") - totals(b, "underlay_rx_bytes");
        let tap_in = totals(a, "tap_tx_bytes") - totals(b, "tap_tx_bytes");
        assert!(
            tx > TRANSFER as u64,
            "{name} put only {tx} bytes on its AF_XDP TX ring"
        );
        assert!(
            rx > TRANSFER as u64,
            "{name} took only {rx} bytes off its AF_XDP RX ring"
        );
        assert!(
            tap_in > TRANSFER as u64,
            "{name} delivered only {tap_in} bytes to its TAP"
        );
        let redirected = a["xdp_counters"]["redirected"].as_u64().unwrap();
        let received = totals(a, "underlay_rx_frames");
        assert!(
            redirected >= received && received > 0,
            "{name}: XDP redirected {redirected}, workers received {received}"
        );
        assert_eq!(
            a["workers"][0]["underlay"]["socket"]["rx_dropped"], 0,
            "{name}: {a:#}"
        );
        // The TAP offloads did their part: the kernel handed over TCP super-frames that the
        // worker cut into segments, and received segments were merged before delivery.
        let tso = totals(a, "tso_super_frames") - totals(b, "tso_super_frames");
        let segs = totals(a, "tso_segments") - totals(b, "tso_segments");
        let gro = totals(a, "gro_super_frames") - totals(b, "gro_super_frames");
        assert!(
            tso > 0 && segs > 2 * tso,
            "{name}: TSO {tso} super-frames, {segs} segments"
        );
        assert!(gro > 0, "{name}: no GRO super-frames written");
    }

    // A stop leaves the node on the network, as flanneld's does: exit 0, XDP detached (nothing
    // black-holes VXLAN), the persistent TAP with its routes, the lease, and every peer's
    // route to this node stay.
    let lease_file = store
        .join("subnets")
        .join(c.hosts[0].flannel_subnet().replace(".1/", ".0-"));
    assert!(lease_file.exists(), "{} missing", lease_file.display());
    let routes_before = c.hosts[0].ns.run(&["ip", "route"]);
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    // The kernel marks routes `linkdown` while no queue of the TAP is attached.
    let routes_after = c.hosts[0].ns.run(&["ip", "route"]).replace(" linkdown", "");
    let eth0 = c.hosts[0].ns.run(&["ip", "link", "show", "dev", "eth0"]);
    assert!(!eth0.contains("xdp"), "XDP left attached: {eth0}");
    let link = c.hosts[0].ns.run(&["ip", "link", "show"]);
    assert!(
        link.contains("vxdp.1"),
        "TAP removed by a plain stop: {link}"
    );
    assert_eq!(
        routes_after, routes_before,
        "a plain stop changed the routes"
    );
    assert!(lease_file.exists(), "a plain stop released the lease");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.hosts[1].peer_count(), 2, "{:#}", c.hosts[1].status());
    assert!(
        c.hosts[1]
            .ns
            .run(&["ip", "route"])
            .contains(&h1_ip.to_string()),
        "a peer withdrew its route to a stopped node"
    );

    // `vxdp cleanup` takes it all away: TAP, routes, lease; the others drop the peer.
    let out = c.hosts[0].cleanup(&["--local-store", s(&store)]);
    assert!(
        out.status.success(),
        "vxdp cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = c.hosts[0].ns.run(&["ip", "link", "show"]);
    assert!(!link.contains("vxdp.1"), "TAP left behind: {link}");
    assert!(!lease_file.exists(), "lease not released");
    let gone = testkit::wait_for(Duration::from_secs(3), || {
        (c.hosts[1].peer_count() == 1).then_some(())
    });
    assert!(
        gone.is_some(),
        "h2 still lists h1: {:#}",
        c.hosts[1].status()
    );
    let routes = c.hosts[1].ns.run(&["ip", "route"]);
    assert!(
        !routes.contains(&h1_ip.to_string()),
        "route to h1 left: {routes}"
    );
}

#[test]
fn flows_spread_over_nic_queues_each_with_its_own_pinned_worker() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs (one worker per queue, pinned); the machine has {cpus}"
    );
    let mut c = Cluster::with_queues(2, 2);
    let store = c.local_store(CONFIG);
    for i in 1..=2 {
        // No --queues: vxdp finds the NIC's two RX queues itself, and pins (the harness
        // leaves workers unpinned unless told).
        c.host(i)
            .start(&["--local-store", s(&store), "--worker-cpus", "auto"]);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    for h in &c.hosts {
        let st = h.status();
        let workers = st["workers"].as_array().expect("workers");
        let queues: Vec<u64> = workers.iter().filter_map(|w| w["queue"].as_u64()).collect();
        let cores: Vec<u64> = workers.iter().filter_map(|w| w["core"].as_u64()).collect();
        assert_eq!(queues, vec![0, 1], "one worker per NIC queue: {st:#}");
        assert_eq!(cores.len(), 2, "every worker pinned: {st:#}");
        assert_ne!(cores[0], cores[1], "to different CPUs: {st:#}");
    }
    // Flows are spread by hash (TAP queue on the sender, veth queue on the wire): sixteen
    // of them leave both queues empty-handed with probability 2^-15.
    let h2 = c.hosts[1].overlay_ip();
    for port in 7200..7216 {
        assert!(
            tcp_transfer(&c.hosts[0], &c.hosts[1], h2, port, 256 << 10),
            "transfer on port {port}"
        );
    }
    let per_worker = |h: &common::Host, key: &str| -> Vec<u64> {
        h.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["counters"][key].as_u64().unwrap_or(0))
            .collect()
    };
    let sent = per_worker(&c.hosts[0], "underlay_tx_frames");
    let received = per_worker(&c.hosts[1], "underlay_rx_frames");
    eprintln!("frames per worker: h1 sent {sent:?}, h2 received {received:?}");
    assert!(
        sent.iter().all(|&n| n > 0),
        "h1: every worker sent: {sent:?}"
    );
    assert!(
        received.iter().all(|&n| n > 0),
        "h2: every worker received: {received:?}"
    );
}

#[test]
fn without_tap_offloads_frames_cross_one_by_one() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    for i in 1..=2 {
        c.host(i)
            .start(&["--local-store", s(&store), "--tap-offloads", "off"]);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    let st = c.hosts[0].status();
    assert!(
        st["summary"]
            .as_str()
            .unwrap()
            .contains("without offloads (--tap-offloads off)"),
        "{st:#}"
    );
    let features = c.hosts[0].ns.run(&["ethtool", "-k", "vxdp.1"]);
    assert!(
        features.contains("tcp-segmentation-offload: off"),
        "{features}"
    );
    let h2 = c.hosts[1].overlay_ip();
    assert!(tcp_transfer(&c.hosts[0], &c.hosts[1], h2, 7005, 4 << 20));
    let after = c.hosts[0].status();
    assert_eq!(totals(&after, "tso_super_frames"), 0);
    assert!(totals(&after, "underlay_tx_bytes") > 4 << 20);
    // With offloads on, the TAP offers TSO to the kernel.
    let mut c2 = Cluster::new(1);
    let store2 = c2.local_store(CONFIG);
    c2.host(1).start(&["--local-store", s(&store2)]);
    c2.host(1).wait_ready();
    let features = c2.hosts[0].ns.run(&["ethtool", "-k", "vxdp.1"]);
    assert!(
        features.contains("tcp-segmentation-offload: on"),
        "{features}"
    );
    assert!(
        features.contains("tx-udp-segmentation: off"),
        "vxdp cuts TCP only: {features}"
    );
}

#[test]
fn direct_routing_bypasses_the_tunnel_on_a_shared_l2() {
    let mut c = Cluster::new(2);
    let store = c.local_store(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    for i in 1..=2 {
        c.host(i)
            .start(&["--local-store", s(&store), "--backend", "xdp"]);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    let ok = testkit::wait_for(Duration::from_secs(10), || {
        let st = c.hosts[0].try_status()?;
        (st["peers"][0]["state"] == "direct-routing").then_some(())
    });
    assert!(ok.is_some(), "{:#}", c.hosts[0].status());
    // flanneld's DirectRouting: the peer is on our L2, so its subnet is routed to its PublicIP.
    let h2_net = c.hosts[1].overlay_ip();
    let routes = c.hosts[0].ns.run(&["ip", "route"]);
    assert!(
        routes.contains(&format!("{h2_net}/24 via 192.0.2.2 dev eth0")),
        "{routes}"
    );
    // The peer's VTEP address lives on its vxdp.1, and it routes our subnet back directly:
    // traffic flows without VXLAN, so the workers see none of it.
    assert!(c.hosts[0].ping(h2_net, 3), "direct-routed ping failed");
    let st = c.hosts[0].status();
    assert_eq!(totals(&st, "underlay_tx_frames"), 0, "{st:#}");
}

#[test]
fn readiness_is_signalled_to_systemd_and_the_health_endpoint() {
    let mut c = Cluster::new(1);
    let store = c.local_store(CONFIG);
    let notify = c.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let notify_env = format!("NOTIFY_SOCKET={}", notify.display());
    c.host(1).start_with_env(
        &[notify_env.as_str()],
        &[
            "--local-store",
            s(&store),
            "--healthz-port",
            "9101",
            "--healthz-ip",
            "127.0.0.1",
        ],
    );
    // The TAP queues and sockets go to the fd store first (FDSTORE=1, tested in
    // e2e_restarts), then READY=1.
    let mut buf = [0u8; 256];
    let mut stored = 0;
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 from vxdp");
        if &buf[..n] == b"READY=1" {
            break;
        }
        assert!(
            buf[..n].starts_with(b"FDSTORE=1\n"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        stored += 1;
    }
    assert!(stored > 1, "the manifest and descriptors were not stored");
    assert!(
        c.hosts[0].subnet_file().exists(),
        "READY before the subnet file was written"
    );
    let health = |path: &str| {
        c.hosts[0].ns.try_run(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:9101{path}"),
        ])
    };
    let code = |path: &str| String::from_utf8_lossy(&health(path).stdout).to_string();
    assert_eq!(code("/healthz"), "200");
    assert_eq!(code("/readyz"), "200");
    let metrics = c.hosts[0]
        .ns
        .run(&["curl", "-s", "http://127.0.0.1:9101/metrics"]);
    assert!(metrics.contains("vxdp_info{"), "{metrics}");
    assert!(
        metrics.contains("vxdp_frames_total{queue=\"0\",path=\"underlay_rx\"}"),
        "{metrics}"
    );
}

#[test]
fn ip_masq_rules_outlive_a_stop_are_not_doubled_by_a_restart_and_go_with_cleanup() {
    let mut c = Cluster::new(1);
    let store = c.local_store(CONFIG);
    c.host(1).start(&["--local-store", s(&store), "--ip-masq"]);
    c.host(1).wait_ready();
    let subnet = c.hosts[0].flannel_subnet().replace(".1/", ".0/");
    let nat = c.hosts[0]
        .ns
        .run(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    assert!(
        nat.contains(
            "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE"
        ),
        "{nat}"
    );
    assert!(
        nat.contains(&format!("-s {subnet} -d 10.244.0.0/16")),
        "{nat}"
    );
    let fwd = c.hosts[0].ns.run(&["iptables", "-S", "FLANNEL-FWD"]);
    assert!(
        fwd.contains("-s 10.244.0.0/16") && fwd.contains("ACCEPT"),
        "{fwd}"
    );
    let env = std::fs::read_to_string(c.hosts[0].subnet_file()).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    // Someone deletes our jump: the periodic resync (5 s, flanneld's default) puts it back.
    c.hosts[0].ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ]);
    let repaired = testkit::wait_for(Duration::from_secs(8), || {
        c.hosts[0]
            .ns
            .run(&["iptables", "-t", "nat", "-S", "POSTROUTING"])
            .contains("FLANNEL-POSTRTG")
            .then_some(())
    });
    assert!(repaired.is_some(), "the POSTROUTING jump was not repaired");
    // Rules as iptables-save lists them, without its timestamps and packet counters.
    let rules = |c: &Cluster| -> Vec<String> {
        c.hosts[0]
            .ns
            .run(&["iptables-save"])
            .lines()
            .filter(|l| l.starts_with('-'))
            .map(str::to_string)
            .collect()
    };
    let installed = rules(&c);
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    assert_eq!(rules(&c), installed, "a plain stop changed the rules");
    // The next start adopts them: not one rule twice.
    c.host(1).start(&["--local-store", s(&store), "--ip-masq"]);
    c.host(1).wait_ready();
    assert_eq!(
        rules(&c),
        installed,
        "a restart changed or doubled the rules"
    );
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    let out = c.hosts[0].cleanup(&["--local-store", s(&store), "--ip-masq"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = c.hosts[0].ns.run(&["iptables-save"]);
    assert!(!after.contains("FLANNEL"), "rules left behind:\n{after}");
}

/// Capability sets of every thread of `pid`: (thread name, effective, bounding).
fn thread_caps(pid: u32) -> Vec<(String, u64, u64)> {
    let field = |status: &str, name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap()
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let dir = t.unwrap().path();
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
            (
                comm.trim().to_string(),
                field(&status, "CapEff:"),
                field(&status, "CapBnd:"),
            )
        })
        .collect()
}

#[test]
fn after_setup_only_net_admin_and_net_raw_remain_and_workers_have_none() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    // Host 1 on AF_XDP (the most privileged setup), host 2 on the UDP sockets.
    // --cleanup-on-exit: the stop below removes the rules with only what is left.
    for (i, backend) in [(1, "xdp"), (2, "udp")] {
        c.host(i).start(&[
            "--backend",
            backend,
            "--local-store",
            s(&store),
            "--ip-masq",
            "--cleanup-on-exit",
        ]);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    const NET_ADMIN_AND_RAW: u64 = (1 << 12) | (1 << 13);
    for h in &c.hosts {
        let caps = thread_caps(h.daemon.as_ref().unwrap().pid());
        assert!(caps.len() >= 2, "{caps:?}");
        for (name, eff, bnd) in &caps {
            if name.starts_with("vxdp-worker") {
                assert_eq!((*eff, *bnd), (0, 0), "{name} kept capabilities");
            } else {
                assert_eq!(*eff, NET_ADMIN_AND_RAW, "{name}: effective {eff:#x}");
                assert_eq!(*bnd, NET_ADMIN_AND_RAW, "{name}: bounding {bnd:#x}");
            }
        }
    }
    // Still does its job with them: forwarding, status with XDP counters, rule resync.
    let h2 = c.hosts[1].overlay_ip();
    assert!(c.hosts[0].ping(h2, 3));
    let st = c.hosts[0].status();
    assert!(
        st["xdp_counters"]["redirected"].as_u64().unwrap() >= 3,
        "{st:#}"
    );
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    assert!(!c.hosts[0].ns.run(&["iptables-save"]).contains("FLANNEL"));
}

#[test]
fn without_cap_ipc_lock_umem_fits_memlock_or_the_error_names_the_limit() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    // 8 MiB of RLIMIT_MEMLOCK and no CAP_IPC_LOCK: the default 16 MiB UMEM is halved to fit.
    let wrapper = [
        "capsh",
        "--drop=cap_ipc_lock",
        "--",
        "-c",
        "exec \"$@\"",
        "capsh",
        "prlimit",
        "--memlock=8388608:8388608",
        "--",
    ];
    c.host(1).start_wrapped(
        &wrapper,
        &[],
        &["--local-store", s(&store), "--backend", "xdp"],
    );
    c.host(2)
        .start(&["--local-store", s(&store), "--backend", "xdp"]);
    c.host(1).wait_ready();
    c.host(2).wait_ready();
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    let log = c.hosts[0].log_text();
    assert!(
        log.contains("RLIMIT_MEMLOCK") && log.contains("2048 frames per queue"),
        "{log}"
    );
    assert!(c.hosts[0].status()["summary"]
        .as_str()
        .unwrap()
        .contains("2048 UMEM frames"));
    assert!(c.hosts[0].ping(c.hosts[1].overlay_ip(), 2));
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));

    // 64 KiB: too small for any ring; the error says which limit and how to fix it.
    let tiny = [
        "capsh",
        "--drop=cap_ipc_lock",
        "--",
        "-c",
        "exec \"$@\"",
        "capsh",
        "prlimit",
        "--memlock=65536:65536",
        "--",
    ];
    c.host(1).start_wrapped(
        &tiny,
        &[],
        &["--local-store", s(&store), "--backend", "xdp"],
    );
    let status = testkit::wait_for(Duration::from_secs(10), || {
        c.hosts[0].daemon.as_mut().and_then(|d| d.exited())
    })
    .expect("vxdp should refuse to start");
    assert!(!status.success());
    c.hosts[0].daemon = None;
    let log = c.hosts[0].log_text();
    assert!(
        log.contains("RLIMIT_MEMLOCK is 64 KiB") && log.contains("CAP_IPC_LOCK"),
        "{log}"
    );
}
