//! The kernel backend against the real kernel: two hosts in namespaces joined by a veth
//! (192.0.2.1 and 192.0.2.2). Host A runs a `KernelBackend`; host B is a flanneld node, its
//! vxlan link and peer entries made with `ip` and `bridge` exactly as flanneld makes them, so
//! nothing on B depends on vxdp's code. Traffic crosses the overlay both ways.
//!
//! Netlink sockets belong to the namespace of the thread that opens them, so each test runs
//! its backend on a thread that entered A (`Netns::enter`), with a single-threaded runtime.

use std::net::Ipv4Addr;

use control::backend::{Backend, Peer, PeerV4, Teardown};
use control::netlink::{FdbEntry, Netlink};
use dataplane::backend::kernel::{KernelBackend, KernelBackendConfig};
use packet::wire::MacAddr;
use testkit::{require_root, unique_prefix, veth, Netns};

const DEV: &str = "vxdp.1";
const FLANNEL_DEV: &str = "flannel.1";
const MAC_A: &str = "02:aa:00:00:00:01";
const MAC_B: &str = "02:bb:00:00:00:02";
const MAC_B2: &str = "02:bb:00:00:00:22";
const SUBNET_A: &str = "10.5.1.0/24";
const SUBNET_B: &str = "10.5.2.0/24";
const GW_A: &str = "10.5.1.0";
const GW_B: &str = "10.5.2.0";

/// Hosts A and B on one veth.
struct Hosts {
    a: Netns,
    b: Netns,
}

fn hosts() -> Hosts {
    require_root();
    let prefix = unique_prefix();
    let a = Netns::new(&prefix, "a");
    let b = Netns::new(&prefix, "b");
    veth(&a, "eth0", &b, "eth0");
    a.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    b.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    Hosts { a, b }
}

/// flanneld's `flannel.1` on B: `newVXLANDevice` + `Configure`.
fn flanneld_link(ns: &Netns, mac: &str, own_gateway: &str) {
    ns.run(&[
        "ip",
        "link",
        "add",
        FLANNEL_DEV,
        "address",
        mac,
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.0.2.2",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{own_gateway}/32"),
        "dev",
        FLANNEL_DEV,
    ]);
    ns.run(&["ip", "link", "set", FLANNEL_DEV, "up"]);
}

/// flanneld's `handleSubnetEvents` for an added lease, on B.
fn flanneld_peer(ns: &Netns, subnet: &str, gateway: &str, mac: &str, public_ip: &str) {
    ns.run(&[
        "ip",
        "neigh",
        "replace",
        gateway,
        "lladdr",
        mac,
        "dev",
        FLANNEL_DEV,
        "nud",
        "permanent",
    ]);
    ns.run(&[
        "bridge",
        "fdb",
        "replace",
        mac,
        "dev",
        FLANNEL_DEV,
        "dst",
        public_ip,
        "self",
        "permanent",
    ]);
    ns.run(&[
        "ip",
        "route",
        "replace",
        subnet,
        "via",
        gateway,
        "dev",
        FLANNEL_DEV,
        "onlink",
    ]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A's backend config; call on A's thread inside the runtime.
async fn config(nl: &Netlink) -> KernelBackendConfig {
    let eth0 = nl
        .link_by_name("eth0")
        .await
        .expect("look up eth0")
        .expect("eth0 exists");
    KernelBackendConfig {
        device: KernelBackendConfig::default_device(1),
        vni: 1,
        port: 8472,
        local_ip: std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        underlay_ifindex: eth0.index,
        vtep_mac: MAC_A.parse().unwrap(),
        mtu: 1450,
        learning: false,
        gbp: false,
        subnet: SUBNET_A.parse().unwrap(),
        direct_routing: false,
        ipv6: None,
    }
}

async fn start(cfg: KernelBackendConfig) -> KernelBackend {
    let nl = Netlink::connect().expect("netlink");
    KernelBackend::start(nl, cfg)
        .await
        .unwrap_or_else(|e| panic!("starting the kernel backend: {e}"))
}

fn peer(subnet: &str, public_ip: &str, mac: &str) -> Peer {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    Peer {
        key: control::lease::SubnetKey::new(subnet, None),
        ipv4: Some(PeerV4 {
            subnet,
            public_ip: public_ip.parse().unwrap(),
            vtep_mac: mac.parse::<MacAddr>().unwrap(),
        }),
        ipv6: None,
    }
}

/// Non-empty output lines, trimmed.
fn lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn neighbours(ns: &Netns, dev: &str) -> Vec<String> {
    lines(&ns.run(&["ip", "-4", "neigh", "show", "dev", dev]))
}

fn fdb(ns: &Netns, dev: &str) -> Vec<String> {
    lines(&ns.run(&["bridge", "fdb", "show", "dev", dev]))
}

fn routes(ns: &Netns) -> Vec<String> {
    lines(&ns.run(&["ip", "-4", "route", "show"]))
}

fn ifindex(ns: &Netns, dev: &str) -> Option<u32> {
    let out = ns.try_run(&["ip", "-o", "link", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
}

fn link_exists(ns: &Netns, dev: &str) -> bool {
    ifindex(ns, dev).is_some()
}

/// The `vxlan ...` line of `ip -d link show`, without the words that differ per host.
fn vxlan_line(ns: &Netns, dev: &str) -> String {
    let out = ns.run(&["ip", "-d", "link", "show", "dev", dev]);
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("vxlan "))
        .unwrap_or_else(|| panic!("no vxlan line in:\n{out}"))
        .to_string();
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if let Some(i) = words.iter().position(|w| *w == "local") {
        words.drain(i..i + 2);
    }
    words.join(" ")
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.try_run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", dst])
        .status
        .success()
}

fn assert_pings_both_ways(h: &Hosts) {
    assert!(
        ping(&h.a, GW_B),
        "A cannot ping B ({GW_B}) over the overlay"
    );
    assert!(
        ping(&h.b, GW_A),
        "B cannot ping A ({GW_A}) over the overlay"
    );
}

/// What flanneld's order leaves for peer B on A.
fn assert_vxlan_entries(h: &Hosts, subnet: &str, gateway: &str, mac: &str, public_ip: &str) {
    let neigh = neighbours(&h.a, DEV);
    assert!(
        neigh.contains(&format!("{gateway} lladdr {mac} PERMANENT")),
        "neighbour {gateway} -> {mac} missing: {neigh:?}"
    );
    let fdb = fdb(&h.a, DEV);
    assert!(
        fdb.contains(&format!("{mac} dst {public_ip} self permanent")),
        "FDB {mac} dst {public_ip} missing: {fdb:?}"
    );
    let routes = routes(&h.a);
    assert!(
        routes.contains(&format!("{subnet} via {gateway} dev {DEV} onlink")),
        "route {subnet} via {gateway} onlink missing: {routes:?}"
    );
}

fn assert_no_entries_mention(h: &Hosts, what: &str) {
    if !link_exists(&h.a, DEV) {
        return;
    }
    let neigh = neighbours(&h.a, DEV);
    assert!(
        neigh.iter().all(|l| !l.contains(what)),
        "stale neighbour {what}: {neigh:?}"
    );
    let fdb = fdb(&h.a, DEV);
    assert!(
        fdb.iter().all(|l| !l.contains(what)),
        "stale FDB entry {what}: {fdb:?}"
    );
}

#[test]
fn the_link_is_created_as_flanneld_creates_it() {
    let h = hosts();
    flanneld_link(&h.b, MAC_B, GW_B);
    h.a.enter(|| {
        let rt = runtime();
        let backend = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            start(config(&nl).await).await
        });
        let summary = backend.summary();
        assert!(
            summary.contains("vxlan link vxdp.1 vni 1 dstport 8472 local 192.0.2.1 dev eth0")
                && summary.ends_with("(created)"),
            "{summary}"
        );

        let link = h.a.run(&["ip", "-d", "link", "show", "dev", DEV]);
        for want in [
            "<BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 ",
            &format!("link/ether {MAC_A} "),
            "vxlan id 1 local 192.0.2.1 dev eth0 ",
            " dstport 8472 ",
            " nolearning ",
            " ageing 300 ",
            " udpcsum ",
        ] {
            assert!(link.contains(want), "`{want}` missing from:\n{link}");
        }
        assert!(!link.contains("qlen"), "txqueuelen is not 0:\n{link}");
        assert!(!link.contains(" gbp"), "{link}");
        // Every vxlan attribute but the local address is what the flanneld-made link has.
        assert_eq!(vxlan_line(&h.a, DEV), vxlan_line(&h.b, FLANNEL_DEV));

        let addrs = lines(&h.a.run(&["ip", "-4", "-o", "addr", "show", "dev", DEV]));
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        assert!(addrs[0].contains("inet 10.5.1.0/32 "), "{addrs:?}");
        let accept_ra =
            h.a.try_run(&["cat", "/proc/sys/net/ipv6/conf/vxdp.1/accept_ra"]);
        if accept_ra.status.success() {
            assert_eq!(String::from_utf8_lossy(&accept_ra.stdout).trim(), "0");
        }
        // No subnet or broadcast route for the /32.
        let routes = routes(&h.a);
        assert!(routes.iter().all(|r| !r.contains(DEV)), "{routes:?}");

        // Learning and GBP as configured, on another VNI and port (a GBP socket cannot share
        // the port of a plain one).
        let other = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            let mut cfg = config(&nl).await;
            cfg.vni = 7;
            cfg.port = 4789;
            cfg.device = KernelBackendConfig::default_device(7);
            cfg.learning = true;
            cfg.gbp = true;
            cfg.subnet = "10.7.1.0/24".parse().unwrap();
            start(cfg).await
        });
        let link7 = h.a.run(&["ip", "-d", "link", "show", "dev", "vxdp.7"]);
        for want in [
            "vxlan id 7 local 192.0.2.1 dev eth0 ",
            " dstport 4789 ",
            " gbp",
        ] {
            assert!(link7.contains(want), "`{want}` missing from:\n{link7}");
        }
        assert!(!link7.contains("nolearning"), "{link7}");
        assert!(
            other.summary().contains("learning gbp udpcsum"),
            "{}",
            other.summary()
        );

        rt.block_on(other.shutdown(Teardown::Remove));
        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, "vxdp.7"), "vxdp.7 left behind");
        assert!(!link_exists(&h.a, DEV), "vxdp.1 left behind");
    });
}

#[test]
fn peers_are_programmed_in_flanneld_order_replaced_and_removed_without_leftovers() {
    let h = hosts();
    flanneld_link(&h.b, MAC_B, GW_B);
    flanneld_peer(&h.b, SUBNET_A, GW_A, MAC_A, "192.0.2.1");
    h.a.enter(|| {
        let rt = runtime();
        let mut backend = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            start(config(&nl).await).await
        });
        let b = peer(SUBNET_B, "192.0.2.2", MAC_B);
        rt.block_on(backend.add_peer(&b)).expect("add B");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");
        let index = backend.link_index().expect("link index");
        let entries = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            nl.fdb_entries(index).await.expect("FDB dump")
        });
        assert_eq!(
            entries,
            [FdbEntry {
                mac: MAC_B.parse().unwrap(),
                dst: Some("192.0.2.2".parse().unwrap()),
                permanent: true,
            }]
        );
        // Exactly what `ip`/`bridge` made on the flanneld side, names aside.
        assert!(routes(&h.b).contains(&format!("{SUBNET_A} via {GW_A} dev {FLANNEL_DEV} onlink")));
        assert_pings_both_ways(&h);
        // A peer whose route the kernel refuses (its gateway is A's own address): the
        // neighbour and FDB entries made before the route are undone.
        let bad = peer(SUBNET_A, "192.0.2.9", "02:ee:00:00:00:09");
        let err = rt
            .block_on(backend.add_peer(&bad))
            .expect_err("a route via a local address is refused");
        assert!(
            err.to_string()
                .contains("adding route 10.5.1.0/24 via 10.5.1.0 dev #"),
            "{err}"
        );
        assert_no_entries_mention(&h, "02:ee:00:00:00:09");
        assert_no_entries_mention(&h, &format!("{GW_A} "));
        rt.block_on(backend.remove_peer(&bad))
            .expect("remove the refused peer");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");

        // Adding the same peer again is harmless.
        rt.block_on(backend.add_peer(&b)).expect("add B again");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");

        // B restarts with a new VtepMAC: the lease update replaces the entries, none stays.
        // (A new MAC makes the kernel flush the link's neighbours; flanneld, restarting,
        // programs its peers again.)
        h.b.run(&["ip", "link", "set", FLANNEL_DEV, "address", MAC_B2]);
        flanneld_peer(&h.b, SUBNET_A, GW_A, MAC_A, "192.0.2.1");
        let b2 = peer(SUBNET_B, "192.0.2.2", MAC_B2);
        rt.block_on(backend.add_peer(&b2)).expect("replace B");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B2, "192.0.2.2");
        assert_no_entries_mention(&h, MAC_B);
        assert_pings_both_ways(&h);

        // B moves to another PublicIP: the FDB entry follows, the old destination is gone.
        h.b.run(&["ip", "addr", "add", "192.0.2.3/24", "dev", "eth0"]);
        let b3 = peer(SUBNET_B, "192.0.2.3", MAC_B2);
        rt.block_on(backend.add_peer(&b3)).expect("move B");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B2, "192.0.2.3");
        assert_no_entries_mention(&h, "192.0.2.2");
        assert_pings_both_ways(&h);

        // The lease goes away: route, FDB entry and neighbour go with it.
        rt.block_on(backend.remove_peer(&b3)).expect("remove B");
        assert_no_entries_mention(&h, GW_B);
        assert_no_entries_mention(&h, MAC_B2);
        let routes = routes(&h.a);
        assert!(
            routes.iter().all(|r| !r.starts_with(SUBNET_B)),
            "{routes:?}"
        );
        assert!(!ping(&h.a, GW_B), "B still reachable after its removal");
        // Removing it again finds nothing to remove, which is fine.
        rt.block_on(backend.remove_peer(&b3))
            .expect("remove B again");

        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, DEV), "vxdp.1 left behind");
    });
}

#[test]
fn a_deleted_or_downed_link_comes_back_with_its_address_and_every_peer() {
    let h = hosts();
    flanneld_link(&h.b, MAC_B, GW_B);
    flanneld_peer(&h.b, SUBNET_A, GW_A, MAC_A, "192.0.2.1");
    h.a.enter(|| {
        let rt = runtime();
        let mut backend = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            start(config(&nl).await).await
        });
        let b = peer(SUBNET_B, "192.0.2.2", MAC_B);
        let c = peer("10.5.3.0/24", "192.0.2.3", "02:cc:00:00:00:03");
        rt.block_on(backend.add_peer(&b)).expect("add B");
        rt.block_on(backend.add_peer(&c)).expect("add C");
        assert_pings_both_ways(&h);
        let first = ifindex(&h.a, DEV).expect("vxdp.1");

        // A network restart deletes the link; the next tick recreates it.
        h.a.run(&["ip", "link", "del", DEV]);
        rt.block_on(backend.tick())
            .expect("kernel backend upkeep never fails");
        let second = ifindex(&h.a, DEV).expect("vxdp.1 recreated by the first tick");
        assert_ne!(first, second);
        assert_eq!(backend.link_index(), Some(second));
        let addrs = h.a.run(&["ip", "-4", "-o", "addr", "show", "dev", DEV]);
        assert!(addrs.contains("inet 10.5.1.0/32 "), "{addrs}");
        assert!(h
            .a
            .run(&["ip", "link", "show", "dev", DEV])
            .contains(",UP,"));
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");
        assert_vxlan_entries(
            &h,
            "10.5.3.0/24",
            "10.5.3.0",
            "02:cc:00:00:00:03",
            "192.0.2.3",
        );
        assert_pings_both_ways(&h);

        // A peer arriving while the link is gone is programmed when it comes back.
        h.a.run(&["ip", "link", "del", DEV]);
        let d = peer("10.5.4.0/24", "192.0.2.4", "02:dd:00:00:00:04");
        rt.block_on(backend.add_peer(&d))
            .expect("add D while the link is missing");
        rt.block_on(backend.tick())
            .expect("kernel backend upkeep never fails");
        assert!(link_exists(&h.a, DEV), "vxdp.1 not recreated");
        assert_vxlan_entries(
            &h,
            "10.5.4.0/24",
            "10.5.4.0",
            "02:dd:00:00:00:04",
            "192.0.2.4",
        );
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");
        assert_pings_both_ways(&h);

        // Set down, the kernel drops its routes and neighbours; the tick restores them.
        h.a.run(&["ip", "link", "set", DEV, "down"]);
        assert!(routes(&h.a).iter().all(|r| !r.contains(DEV)));
        rt.block_on(backend.tick())
            .expect("kernel backend upkeep never fails");
        assert!(h
            .a
            .run(&["ip", "link", "show", "dev", DEV])
            .contains(",UP,"));
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "192.0.2.2");
        assert_pings_both_ways(&h);

        // A healthy link is left alone.
        let index = ifindex(&h.a, DEV);
        rt.block_on(backend.tick())
            .expect("kernel backend upkeep never fails");
        assert_eq!(ifindex(&h.a, DEV), index);

        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, DEV), "vxdp.1 left behind");
    });
}

#[test]
fn an_existing_link_is_reused_when_compatible_and_recreated_when_not() {
    let h = hosts();
    h.a.enter(|| {
        let rt = runtime();
        let cfg = rt.block_on(async { config(&Netlink::connect().unwrap()).await });

        // Compatible (a previous run's link with another MAC, MTU and a stale address).
        h.a.run(&[
            "ip",
            "link",
            "add",
            DEV,
            "address",
            "02:99:00:00:00:99",
            "mtu",
            "1400",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "192.0.2.1",
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        h.a.run(&["ip", "addr", "add", "10.5.9.0/32", "dev", DEV]);
        let before = ifindex(&h.a, DEV);
        let backend = rt.block_on(start(cfg.clone()));
        assert_eq!(
            ifindex(&h.a, DEV),
            before,
            "a compatible link was not reused"
        );
        assert!(
            backend.summary().ends_with("(reused existing link)"),
            "{}",
            backend.summary()
        );
        let link = h.a.run(&["ip", "link", "show", "dev", DEV]);
        assert!(link.contains(&format!("link/ether {MAC_A} ")), "{link}");
        assert!(
            link.contains(" mtu 1450 ") && link.contains(",UP,"),
            "{link}"
        );
        let addrs = lines(&h.a.run(&["ip", "-4", "-o", "addr", "show", "dev", DEV]));
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        assert!(addrs[0].contains("inet 10.5.1.0/32 "), "{addrs:?}");
        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, DEV));

        // Another VNI: deleted and created anew.
        h.a.run(&[
            "ip",
            "link",
            "add",
            DEV,
            "type",
            "vxlan",
            "id",
            "2",
            "local",
            "192.0.2.1",
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        let before = ifindex(&h.a, DEV);
        let backend = rt.block_on(start(cfg.clone()));
        assert_ne!(
            ifindex(&h.a, DEV),
            before,
            "an incompatible link was reused"
        );
        assert!(
            backend
                .summary()
                .ends_with("(recreated an incompatible link: vni: 2 (wanted 1))"),
            "{}",
            backend.summary()
        );
        assert!(vxlan_line(&h.a, DEV).starts_with("vxlan id 1 dev eth0 "));
        rt.block_on(backend.shutdown(Teardown::Remove));

        // Another port, and a device of another kind under the name.
        h.a.run(&[
            "ip",
            "link",
            "add",
            DEV,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "192.0.2.1",
            "dev",
            "eth0",
            "dstport",
            "4789",
            "nolearning",
        ]);
        let backend = rt.block_on(start(cfg.clone()));
        assert!(
            backend.summary().contains("dstport: 4789 (wanted 8472)"),
            "{}",
            backend.summary()
        );
        rt.block_on(backend.shutdown(Teardown::Remove));
        h.a.run(&[
            "ip", "link", "add", DEV, "type", "veth", "peer", "name", "vxdpx",
        ]);
        let backend = rt.block_on(start(cfg.clone()));
        assert!(
            backend.summary().contains("link type: veth is not vxlan"),
            "{}",
            backend.summary()
        );
        assert!(vxlan_line(&h.a, DEV).starts_with("vxlan id 1 dev eth0 "));
        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, DEV));
    });
}

#[test]
fn direct_routing_gives_on_link_peers_a_plain_route_and_others_vxlan() {
    let h = hosts();
    flanneld_link(&h.b, MAC_B, GW_B);
    // B with DirectRouting too: A's subnet via A's PublicIP.
    h.b.run(&["ip", "route", "replace", SUBNET_A, "via", "192.0.2.1"]);
    // A remote PublicIP behind B.
    h.a.run(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
    h.a.enter(|| {
        let rt = runtime();
        let mut backend = rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            let mut cfg = config(&nl).await;
            cfg.direct_routing = true;
            start(cfg).await
        });
        assert!(
            backend.summary().contains("DirectRouting"),
            "{}",
            backend.summary()
        );

        let b = peer(SUBNET_B, "192.0.2.2", MAC_B);
        rt.block_on(backend.add_peer(&b)).expect("add B");
        let r = routes(&h.a);
        assert!(
            r.contains(&format!("{SUBNET_B} via 192.0.2.2 dev eth0")),
            "{r:?}"
        );
        assert_no_entries_mention(&h, GW_B);
        assert_no_entries_mention(&h, MAC_B);
        assert!(ping(&h.a, GW_B), "A cannot reach B directly");

        // Behind a gateway: vxlan as usual.
        let c = peer("10.5.3.0/24", "198.51.100.7", "02:cc:00:00:00:03");
        rt.block_on(backend.add_peer(&c)).expect("add C");
        assert_vxlan_entries(
            &h,
            "10.5.3.0/24",
            "10.5.3.0",
            "02:cc:00:00:00:03",
            "198.51.100.7",
        );

        // B moves behind the gateway, then back: entries switch, nothing stale stays.
        let b_far = peer(SUBNET_B, "198.51.100.8", MAC_B);
        rt.block_on(backend.add_peer(&b_far)).expect("move B away");
        assert_vxlan_entries(&h, SUBNET_B, GW_B, MAC_B, "198.51.100.8");
        rt.block_on(backend.add_peer(&b)).expect("move B back");
        let r = routes(&h.a);
        assert!(
            r.contains(&format!("{SUBNET_B} via 192.0.2.2 dev eth0")),
            "{r:?}"
        );
        assert_no_entries_mention(&h, GW_B);
        assert_no_entries_mention(&h, MAC_B);

        // Direct routes live on eth0: shutdown removes them explicitly.
        rt.block_on(backend.shutdown(Teardown::Remove));
        assert!(!link_exists(&h.a, DEV));
        let r = routes(&h.a);
        assert!(r.iter().all(|l| !l.starts_with("10.5.")), "{r:?}");
    });
}
