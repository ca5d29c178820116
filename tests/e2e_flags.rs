//! flanneld's remaining flags on a running vxdp: refused flags refused also from `FLANNELD_*`
//! variables, `--iface-can-reach` choosing between two underlay links, `--ip-blackhole-route`,
//! `--ip-masq-fully-random-disable`, and the network config's `EnableNFTables`.
//!
//! The refusal test needs no privileges; the others run vxdp in namespaces and need root
//! (without it they fail, never skip).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{s, Cluster, Host, VXDP};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const CONFIG_NFT: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

/// Runs `vxdp args` with `env` added, for at most 20 s; returns (exit code, stderr). A vxdp
/// that ignored a refused flag would go on to wait for etcd on 127.0.0.1 forever.
fn vxdp_exit(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut cmd = Command::new(VXDP);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // Only the variables under test: the environment running the tests may have its own.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLANNELD_") || k.starts_with("VXDP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("VXDP_CONTROL_SOCKET", dir.path().join("control.sock"));
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn vxdp");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("vxdp {args:?} with {env:?} did not exit (it was not refused):\n{stderr}")
    });
    (status.code(), stderr)
}

#[test]
fn refused_flags_are_refused_from_their_flanneld_variables_too() {
    let (code, err) = vxdp_exit(&[("FLANNELD_CHARON_VICIURI", "unix:///x")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("unsupported flanneld flag: the IPsec backend's --charon-*"),
        "{err}"
    );
    assert!(
        err.contains("set in the environment by FLANNELD_CHARON_VICIURI"),
        "{err}"
    );
    assert!(
        !err.contains("connecting to etcd"),
        "refused before any etcd: {err}"
    );

    let (code, err) = vxdp_exit(&[("FLANNELD_CHARON_EXECUTABLE_PATH", "/x")], &["run"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("vxlan backend") && err.contains("FLANNELD_CHARON_EXECUTABLE_PATH"),
        "{err}"
    );

    // Empty (unset for flanneld): nothing is asked that vxdp lacks, and it goes on (here to a
    // local store that does not exist).
    let store = "/nonexistent/vxdp-store";
    let (code, err) = vxdp_exit(
        &[("FLANNELD_CHARON_VICIURI", "")],
        &["--local-store", store],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("unsupported"), "{err}");
    assert!(err.contains(store), "{err}");
    // FLANNELD_PUBLIC_IPV6 is a real setting now: it is not refused.
    let (code, err) = vxdp_exit(
        &[("FLANNELD_PUBLIC_IPV6", "2001:db8::1")],
        &["--local-store", store],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("unsupported"), "{err}");
    assert!(err.contains(store), "{err}");
    // Only the daemon refuses: `vxdp status` is not flanneld.
    let (_, err) = vxdp_exit(&[("FLANNELD_CHARON_VICIURI", "unix:///x")], &["status"]);
    assert!(!err.contains("unsupported"), "{err}");
}

/// Gives host 1 a second underlay link, `eth1` 198.51.100.1/24 towards a router namespace
/// (198.51.100.2) that carries its default route: the interface vxdp takes when told nothing.
fn second_link_with_default_route(c: &Cluster) -> testkit::Netns {
    let router = testkit::Netns::new(&c.prefix, "rtr");
    let h = &c.hosts[0].ns;
    testkit::veth(h, "eth1", &router, "eth0");
    h.run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "eth1"]);
    h.run(&["ip", "route", "add", "default", "via", "198.51.100.2"]);
    router.run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    router
}

#[test]
fn iface_can_reach_picks_the_underlay_link_towards_the_peers() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    let _router = second_link_with_default_route(&c);
    // Without a flag, the default route's link (eth1) is taken: the peers are not behind it.
    let route = c.hosts[0].ns.run(&["ip", "route", "show", "default"]);
    assert!(route.contains("dev eth1"), "{route}");

    c.host(1)
        .start(&["--local-store", s(&store), "--iface-can-reach", "192.0.2.2"]);
    c.host(2).start(&["--local-store", s(&store)]);
    c.host(1).wait_ready();
    c.host(2).wait_ready();
    let st = c.hosts[0].status();
    assert_eq!(st["iface"]["name"], "eth0", "{st:#}");
    assert_eq!(st["iface"]["public_ip"], "192.0.2.1", "{st:#}");
    assert!(
        c.hosts[0]
            .log_text()
            .contains("--iface-can-reach 192.0.2.2"),
        "{}",
        c.hosts[0].log_text()
    );
    // The lease announces that address, and the overlay works both ways.
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    let peers = c.hosts[1].status();
    assert_eq!(peers["peers"][0]["public_ip"], "192.0.2.1", "{peers:#}");
    let (ip1, ip2) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    assert!(c.hosts[0].ping(ip2, 3));
    assert!(c.hosts[1].ping(ip1, 3));
}

/// `ip -d route show type blackhole` lines of `h` (main table).
fn blackholes(h: &Host) -> Vec<String> {
    h.ns.run(&[
        "ip",
        "-d",
        "route",
        "show",
        "table",
        "main",
        "type",
        "blackhole",
    ])
    .lines()
    .map(|l| l.trim_end().to_string())
    .collect()
}

#[test]
fn ip_blackhole_route_covers_the_lease_while_vxdp_holds_it() {
    let mut c = Cluster::new(1);
    let store = c.local_store(CONFIG);
    let args = [
        "--local-store",
        s(&store),
        "--ip-blackhole-route",
        "--iptables-resync",
        "1",
    ];
    c.host(1).start(&args);
    c.host(1).wait_ready();
    let h = &c.hosts[0];
    let lease = h.flannel_subnet().replace(".1/", ".0/");
    // Ready means in place: flannel's route for the lease.
    assert_eq!(
        blackholes(h),
        [format!("blackhole {lease} proto boot scope global")]
    );
    // Deleted by someone: back within a resync period.
    h.ns.run(&["ip", "route", "del", "blackhole", &lease]);
    let back = testkit::wait_for(Duration::from_secs(5), || {
        (blackholes(h).len() == 1).then_some(())
    });
    assert!(back.is_some(), "not re-added:\n{}", h.log_text());

    // A stop keeps the lease, and the route keeps guarding it; `vxdp cleanup` releases the
    // lease, and the route goes with it.
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));
    assert_eq!(blackholes(&c.hosts[0]).len(), 1);
    let out = c.hosts[0].cleanup(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(blackholes(&c.hosts[0]).is_empty());

    // Without the flag there is none.
    c.host(1).start(&["--local-store", s(&store)]);
    c.host(1).wait_ready();
    assert!(blackholes(&c.hosts[0]).is_empty());
}

#[test]
fn masquerade_follows_enable_nftables_and_fully_random_disable() {
    let mut c = Cluster::new(1);
    let store = c.local_store(CONFIG_NFT);
    c.host(1).start(&["--local-store", s(&store), "--ip-masq"]);
    c.host(1).wait_ready();
    let h = &c.hosts[0];
    let nft = h.ns.run(&["nft", "list", "table", "ip", "vxdp-flannel"]);
    assert!(nft.contains("masquerade fully-random"), "{nft}");
    assert!(
        !h.ns
            .run(&["iptables-save", "-t", "nat"])
            .contains("FLANNEL"),
        "nftables only"
    );
    assert!(
        h.log_text().contains(
            "masquerade/forward rules installed with nftables (the network config sets EnableNFTables)"
        ),
        "{}",
        h.log_text()
    );
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));

    c.host(1).start(&[
        "--local-store",
        s(&store),
        "--ip-masq",
        "--ip-masq-fully-random-disable",
    ]);
    c.host(1).wait_ready();
    let nft = c.hosts[0]
        .ns
        .run(&["nft", "list", "table", "ip", "vxdp-flannel"]);
    assert_eq!(nft.matches(" masquerade comment").count(), 2, "{nft}");
    assert!(!nft.contains("fully-random"), "{nft}");
    assert_eq!(c.host(1).stop(libc::SIGTERM), Some(0));

    // Without EnableNFTables: iptables, here with plain MASQUERADE.
    std::fs::write(store.join("config"), CONFIG).unwrap();
    c.host(1).start_with_env(
        &[
            "FLANNELD_IP_MASQ=true",
            "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE=true",
        ],
        &["--local-store", s(&store)],
    );
    c.host(1).wait_ready();
    let h = &c.hosts[0];
    let nat = h.ns.run(&["iptables-save", "-t", "nat"]);
    let masq: Vec<&str> = nat.lines().filter(|l| l.contains("MASQUERADE")).collect();
    assert_eq!(masq.len(), 2, "{nat}");
    assert!(masq.iter().all(|l| !l.contains("--random-fully")), "{nat}");
    assert!(
        h.ns.try_run(&["nft", "list", "table", "ip", "vxdp-flannel"])
            .status
            .code()
            != Some(0),
        "iptables only"
    );
    assert!(
        h.log_text().contains(
            "masquerade/forward rules installed with iptables (the network config does not set EnableNFTables)"
        ),
        "{}",
        h.log_text()
    );
}
