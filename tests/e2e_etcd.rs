//! End to end against a real etcd (Debian's etcd-server) running in the underlay namespace:
//! vxdp nodes join like flanneld nodes, read and write flanneld's exact keys and JSON, follow
//! lease changes within 2 s, keep forwarding through an etcd outage, and keep their subnet and
//! VtepMAC across restarts.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{tcp_transfer, Cluster, FLANNEL_PREFIX as PREFIX};
use testkit::etcd::EtcdServer;
use testkit::wait_for;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn cluster_with_etcd(hosts: u8) -> (Cluster, EtcdServer) {
    let c = Cluster::new(hosts);
    let etcd = c.etcd_store(CONFIG);
    (c, etcd)
}

fn lease_key(subnet_line: &str) -> String {
    // FLANNEL_SUBNET=10.244.7.1/24 -> 10.244.7.0-24
    let (addr, len) = subnet_line.split_once('/').unwrap();
    let base = Ipv4Addr::from(u32::from(addr.parse::<Ipv4Addr>().unwrap()) - 1);
    format!("{PREFIX}/subnets/{base}-{len}")
}

fn peer_macs(status: &serde_json::Value) -> Vec<(String, String)> {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["subnet"].as_str().unwrap().to_string(),
                p["vtep_mac"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn vxdp_nodes_share_an_etcd_like_flanneld_nodes() {
    let (mut c, mut etcd) = cluster_with_etcd(3);
    let endpoints = etcd.endpoint();
    let args = ["--etcd-endpoints", endpoints.as_str(), "--backend", "xdp"];
    for i in 1..=3 {
        c.host(i).start(&args);
    }
    for i in 1..=3 {
        c.host(i).wait_ready();
    }
    for i in 1..=3 {
        c.host(i).wait_peers(2);
    }

    // vxdp's own lease reads back exactly as flanneld writes one, with a 24 h etcd lease.
    let h1 = &c.hosts[0];
    let key = lease_key(&h1.flannel_subnet());
    let mac = h1.status()["lease"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(
            format!(
                r#"{{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            )
            .as_str()
        )
    );
    let (granted, remaining) = etcd.key_lease(&key).expect("the key has an etcd lease");
    assert_eq!(granted, 86_400, "flannel's 24 h TTL");
    assert!(remaining > 86_000, "{remaining}");

    // All pairs talk, both ways.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let dst = c.hosts[b].overlay_ip();
                assert!(c.hosts[a].ping(dst, 2), "ping h{} -> {dst}", a + 1);
            }
        }
    }
    for (a, b, port) in [(0, 1, 7101), (1, 2, 7102), (2, 0, 7103)] {
        let dst = c.hosts[b].overlay_ip();
        assert!(
            tcp_transfer(&c.hosts[a], &c.hosts[b], dst, port, 4 << 20),
            "TCP h{} -> h{}",
            a + 1,
            b + 1
        );
    }

    // A lease written by "a flanneld node" in flanneld's exact JSON is picked up within 2 s.
    let flanneld_key = format!("{PREFIX}/subnets/10.244.250.0-24");
    let flanneld_json = r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    let lease = etcd.grant(3600);
    etcd.put_with_lease(&flanneld_key, flanneld_json, &lease);
    let t0 = Instant::now();
    let seen = wait_for(Duration::from_secs(2), || {
        peer_macs(&c.hosts[0].status())
            .contains(&("10.244.250.0/24".into(), "c6:d2:32:6f:8f:44".into()))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "flanneld's lease not picked up: {:#}",
        c.hosts[0].status()
    );
    let routes = c.hosts[0].ns.run(&["ip", "route"]);
    assert!(
        routes.contains("10.244.250.0/24 via 10.244.250.0 dev vxdp.1 proto static onlink"),
        "{routes}"
    );
    eprintln!("flanneld lease picked up after {:?}", t0.elapsed());

    // Its VtepMAC changes: replaced within 2 s, the old MAC gone.
    etcd.put_with_lease(
        &flanneld_key,
        &flanneld_json.replace("c6:d2:32:6f:8f:44", "c6:d2:32:6f:8f:45"),
        &lease,
    );
    let changed = wait_for(Duration::from_secs(2), || {
        let macs = peer_macs(&c.hosts[1].status());
        (macs.contains(&("10.244.250.0/24".into(), "c6:d2:32:6f:8f:45".into()))
            && !macs.iter().any(|(_, m)| m == "c6:d2:32:6f:8f:44"))
        .then_some(())
    });
    assert!(
        changed.is_some(),
        "VtepMAC change not applied: {:#}",
        c.hosts[1].status()
    );

    // Non-vxlan and undecodable leases are skipped, never fatal.
    etcd.put(
        &format!("{PREFIX}/subnets/10.244.251.0-24"),
        r#"{"PublicIP":"192.0.2.10","BackendType":"host-gw"}"#,
    );
    etcd.put(&format!("{PREFIX}/subnets/10.244.252.0-24"), "{not json");

    // Removed: gone within 2 s, route included.
    etcd.del(&flanneld_key);
    let removed = wait_for(Duration::from_secs(2), || {
        (!c.hosts[2]
            .ns
            .run(&["ip", "route"])
            .contains("10.244.250.0/24")
            && c.hosts[2].peer_count() == 2)
            .then_some(())
    });
    assert!(
        removed.is_some(),
        "removal not applied: {:#}",
        c.hosts[2].status()
    );

    // Compaction while watching: the watchers keep going and see later changes.
    etcd.compact_to_latest();
    etcd.put_with_lease(&flanneld_key, flanneld_json, &lease);
    let back = wait_for(Duration::from_secs(2), || {
        (c.hosts[0].peer_count() == 3).then_some(())
    });
    assert!(
        back.is_some(),
        "change after compaction missed: {:#}",
        c.hosts[0].status()
    );
    etcd.del(&flanneld_key);

    // etcd down for 30 s: forwarding carries on, untouched.
    etcd.stop();
    let h2_ip = c.hosts[1].overlay_ip();
    let outage = Instant::now();
    let mut pings = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        assert!(
            c.hosts[0].ping(h2_ip, 5),
            "forwarding broke while etcd was down"
        );
        pings += 5;
    }
    assert!(tcp_transfer(&c.hosts[0], &c.hosts[1], h2_ip, 7104, 4 << 20));
    eprintln!("{pings} pings and a 4 MiB transfer crossed during the 30 s etcd outage");
    // Back: the nodes resynchronise (a change made now arrives).
    etcd.restart();
    etcd.put_with_lease(&flanneld_key, flanneld_json, &etcd.grant(3600));
    let resync = wait_for(Duration::from_secs(15), || {
        (c.hosts[1].peer_count() == 3).then_some(())
    });
    assert!(
        resync.is_some(),
        "no resync after etcd returned: {:#}",
        c.hosts[1].status()
    );
}

#[test]
fn restarts_keep_subnet_and_vtep_mac_and_revocation_stops_the_node() {
    let (mut c, etcd) = cluster_with_etcd(2);
    let endpoints = etcd.endpoint();
    let args = ["--etcd-endpoints", endpoints.as_str(), "--backend", "xdp"];
    for i in 1..=2 {
        c.host(i).start(&args);
        c.host(i).wait_ready();
    }
    c.host(1).wait_peers(1);
    let subnet = c.hosts[0].flannel_subnet();
    let mac = c.hosts[0].status()["lease"]["vtep_mac"].clone();

    // Killed hard: the lease stays in etcd (rule 1: this PublicIP's own lease comes back).
    let _ = c.host(1).stop(libc::SIGKILL);
    let xdp_gone = c.hosts[0].ns.run(&["ip", "link", "show", "eth0"]);
    assert!(
        !xdp_gone.contains("xdp"),
        "XDP outlived the process: {xdp_gone}"
    );
    c.host(1).start(&args);
    c.host(1).wait_ready();
    assert_eq!(c.hosts[0].flannel_subnet(), subnet);
    assert_eq!(c.hosts[0].status()["lease"]["vtep_mac"], mac);
    assert!(
        c.hosts[0].log_text().contains("renewing this node's lease"),
        "{}",
        c.hosts[0].log_text()
    );

    // Stopped, then cleaned up: the lease is released, and the subnet file brings the subnet
    // back.
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    assert!(
        etcd.get(&lease_key(&subnet)).is_some(),
        "a stop released the lease"
    );
    let out = c.hosts[0].cleanup(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(etcd.get(&lease_key(&subnet)), None, "lease not released");
    c.host(1).start(&args);
    c.host(1).wait_ready();
    assert_eq!(c.hosts[0].flannel_subnet(), subnet);
    assert_eq!(c.hosts[0].status()["lease"]["vtep_mac"], mac);
    assert!(c.hosts[0].log_text().contains("named in the subnet file"));
    c.host(2).wait_peers(1);
    assert!(c.hosts[1].ping(c.hosts[0].overlay_ip(), 2));

    // Someone deletes h1's lease: h1 stops advertising, says so, and exits non-zero.
    etcd.del(&lease_key(&subnet));
    let exited = wait_for(Duration::from_secs(3), || {
        c.hosts[0].daemon.as_mut().and_then(|d| d.exited())
    });
    let status = exited.expect("h1 kept running after its lease was revoked");
    assert!(!status.success(), "{status}");
    c.hosts[0].daemon = None;
    let log = c.hosts[0].log_text();
    assert!(log.contains("revoked"), "{log}");
    assert!(!c.hosts[0].ns.run(&["ip", "link"]).contains("vxdp.1"));
}

#[test]
fn an_invalid_network_config_stops_the_daemon_naming_field_and_rule() {
    let (mut c, etcd) = cluster_with_etcd(1);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
    );
    let endpoints = etcd.endpoint();
    c.host(1).start(&["--etcd-endpoints", endpoints.as_str()]);
    let status = wait_for(Duration::from_secs(10), || {
        c.hosts[0].daemon.as_mut().and_then(|d| d.exited())
    })
    .expect("vxdp kept running with an invalid config");
    assert!(!status.success());
    let log = c.hosts[0].log_text();
    assert!(log.contains("SubnetLen") && log.contains("30"), "{log}");
    c.hosts[0].daemon = None;
}

#[test]
fn a_signal_while_starting_is_not_lost() {
    // etcd unreachable: the daemon waits for it, and SIGTERM meanwhile ends it at once.
    let mut c = Cluster::new(1);
    c.host(1)
        .start(&["--etcd-endpoints", "http://192.0.2.254:9"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        c.host(1).stop(libc::SIGTERM),
        Some(0),
        "{}",
        c.hosts[0].log_text()
    );
    // Where the signal lands depends on how far startup got against an unreachable etcd:
    // connecting, or waiting for the lease store. Either way it is logged and obeyed.
    let log = c.hosts[0].log_text();
    assert!(
        log.contains("SIGTERM while connecting to etcd")
            || log.contains("SIGTERM while waiting for the lease store"),
        "{log}"
    );
    // And a signal that lands in the first milliseconds, before any listener of the event loop
    // exists, still shuts it down.
    let (mut c, etcd) = cluster_with_etcd(1);
    let endpoints = etcd.endpoint();
    c.host(1).start(&["--etcd-endpoints", endpoints.as_str()]);
    std::thread::sleep(Duration::from_millis(30));
    let t0 = Instant::now();
    // Exit 0, or killed by the default action if it came before the runtime existed (nothing
    // had been set up yet then); never ignored.
    let code = c.host(1).stop(libc::SIGTERM);
    assert!(
        code.is_none() || code == Some(0),
        "exit {code:?}: {}",
        c.hosts[0].log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "slow to stop: {:?}",
        t0.elapsed()
    );
}
