//! Dual-stack overlays end to end: hosts whose underlay carries IPv4 (192.0.2.0/24) and IPv6
//! (2001:db8::/64) on one bridge, an overlay of 10.5.0.0/16 and fd00:5::/48, etcd in the
//! underlay namespace, and
//!
//! - vxdp nodes on each backend: kernel (`vxdp.1` and `vxdp-v6.1`, the latter programmed as
//!   flanneld programs `flannel-v6.1`), UDP and AF_XDP (one TAP carrying both families),
//! - a flanneld-style node: `flannel.1` and `flannel-v6.1` created and programmed by the test
//!   with `ip`/`bridge` exactly as flanneld does (independent of vxdp's code), and its lease
//!   written into etcd as flanneld's JSON under flannel's dual-stack key.
//!
//! Interop matrix covered: kernel<->kernel, kernel<->flanneld-style, udp<->udp, udp<->kernel,
//! udp<->flanneld-style, xdp<->udp, xdp<->kernel, xdp<->flanneld-style. Checked: ping and ping6
//! both ways, byte-compared TCP over IPv6 both ways, IPv4 and IPv6 TCP at the same time,
//! subnet.env as flanneld writes it (but FLANNEL_MTU, whose reason is logged), and a lease
//! removed from the store withdrawing both families' routes. (Leases are removed through the
//! store, not by stopping a daemon: a stopped node keeps its lease for a hitless restart.)
//!
//! IPv6-only overlays (`"EnableIPv4": false`) over an IPv6-only underlay (no IPv4 address on
//! any host's `eth0`, etcd reached over IPv6): leases under flannel's IPv6-only key
//! `0.0.0.0-0&<v6>-64`, kernel<->flanneld-style (`flannel-v6.1` only, as flanneld creates it
//! without IPv4), xdp<->kernel, xdp<->flanneld-style and udp<->udp: ping6 and byte-compared
//! TCP both ways, subnet.env as flanneld's `WriteSubnetFile` writes it without IPv4 (but
//! FLANNEL_MTU), a lease removed from etcd withdrawing the route, and `vxdp cleanup`.
//!
//! Needs root; without it the tests fail, never skip.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{tcp_transfer, Cluster, FlanneldLink, Host};
use ipnet::Ipv6Net;
use testkit::etcd::EtcdServer;
use testkit::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// The flanneld-style node's leases and VtepMACs.
const FL_NET4: &str = "10.5.77.0";
const FL_NET6: &str = "fd00:5:0:77::";
const FL_MAC4: &str = "02:aa:00:00:77:04";
const FL_MAC6: &str = "02:aa:00:00:77:06";

/// Host `i`'s IPv6 underlay address.
fn underlay6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))
}

/// A cluster of `n` hosts with the IPv6 underlay added (`nodad`: no duplicate address
/// detection delay) and etcd in the underlay namespace holding the dual-stack config.
fn dual_stack_cluster(n: u8) -> (Cluster, EtcdServer) {
    let c = Cluster::new(n);
    for h in &c.hosts {
        h.ns.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", underlay6(h.index)),
            "dev",
            "eth0",
            "nodad",
        ]);
    }
    c.underlay
        .run(&["ip", "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    let etcd = EtcdServer::start_in_netns(c.underlay.name(), ETCD_IP);
    etcd.put(&format!("{PREFIX}/config"), CONFIG);
    (c, etcd)
}

fn subnet_env(h: &Host) -> BTreeMap<String, String> {
    std::fs::read_to_string(h.subnet_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The base address of a vxdp node's IPv6 lease (on its IPv6 link as a /128).
fn overlay6(h: &Host) -> Ipv6Addr {
    let env = subnet_env(h);
    let sn: Ipv6Net = env
        .get("FLANNEL_IPV6_SUBNET")
        .unwrap_or_else(|| panic!("no FLANNEL_IPV6_SUBNET on host {}: {env:?}", h.index))
        .parse()
        .expect("FLANNEL_IPV6_SUBNET is an IPv6 prefix");
    sn.network()
}

/// Pings `dst` (either family) until three echoes in a row come back, for up to 10 s: the
/// overlay's IPv6 address needs its duplicate address detection (about a second) before the
/// kernel uses it as a source.
fn pings(from: &Host, dst: IpAddr) -> bool {
    let fam = if dst.is_ipv6() { "-6" } else { "-4" };
    let dst = dst.to_string();
    wait_for(Duration::from_secs(10), || {
        from.ns
            .try_run(&["ping", fam, "-c", "3", "-i", "0.1", "-W", "1", &dst])
            .status
            .success()
            .then_some(())
    })
    .is_some()
}

fn both_ways(a: &Host, a_ip: IpAddr, b: &Host, b_ip: IpAddr, port: u16) {
    let what = format!("h{} {a_ip} <-> h{} {b_ip}", a.index, b.index);
    assert!(pings(a, b_ip), "{what}: ping h{} -> {b_ip}", a.index);
    assert!(pings(b, a_ip), "{what}: ping h{} -> {a_ip}", b.index);
    assert!(
        tcp_transfer(a, b, b_ip, port, 2 << 20),
        "{what}: TCP h{} -> h{}",
        a.index,
        b.index
    );
    assert!(
        tcp_transfer(b, a, a_ip, port + 1, 2 << 20),
        "{what}: TCP h{} -> h{}",
        b.index,
        a.index
    );
}

/// Which families a flanneld-style node runs: dual stack, or IPv6 only (`EnableIPv4` false).
#[derive(Clone, Copy, PartialEq)]
enum Stack {
    Dual,
    Ipv6Only,
}

/// The etcd key of the flanneld-style node's lease, as flannel's `MakeSubnetKey` writes it:
/// dual stack `10.5.77.0-24&fd00:5:0:77::-64`; IPv6-only the zero IPv4 half,
/// `0.0.0.0-0&fd00:5:0:77::-64`.
fn flanneld_key(stack: Stack) -> String {
    match stack {
        Stack::Dual => format!("{PREFIX}/subnets/{FL_NET4}-24&{FL_NET6}-64"),
        Stack::Ipv6Only => format!("{PREFIX}/subnets/0.0.0.0-0&{FL_NET6}-64"),
    }
}

/// Makes `h` a flanneld-style node: the links flanneld creates (`flannel.1` only with IPv4 on,
/// `flannel-v6.1`: local address, `eth0`, port 8472, nolearning, its MAC, up), the lease base
/// addresses (/32 and /128), and its lease in etcd as flanneld writes it (IPv6-only:
/// `newSubnetAttrs` without an IPv4 device leaves `PublicIP` 0.0.0.0 and no `BackendData`).
/// MTU: 1450 on `flannel.1` as flanneld computes it; on `flannel-v6.1` the kernel refuses 1450
/// over a 1500-byte link (it keeps 70 bytes of IPv6 headroom, flannel #1781), so 1430, what
/// such a node ends up working with.
fn flanneld_node(h: &Host, etcd: &EtcdServer, stack: Stack) {
    let ip4 = h.underlay_ip().to_string();
    let ip6 = underlay6(h.index).to_string();
    let mut links = vec![(
        "flannel-v6.1",
        &ip6,
        FL_MAC6,
        format!("{FL_NET6}/128"),
        "1430",
    )];
    if stack == Stack::Dual {
        links.insert(
            0,
            ("flannel.1", &ip4, FL_MAC4, format!("{FL_NET4}/32"), "1450"),
        );
    }
    for (dev, local, mac, addr, mtu) in links {
        h.ns.run(&[
            "ip",
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            local,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        h.ns.run(&["ip", "link", "set", dev, "address", mac, "mtu", mtu, "up"]);
        h.ns.run(&["ip", "addr", "add", &addr, "dev", dev]);
    }
    let value = match stack {
        Stack::Dual => format!(
            r#"{{"PublicIP":"{ip4}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FL_MAC4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{FL_MAC6}"}}}}"#
        ),
        Stack::Ipv6Only => format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{FL_MAC6}"}}}}"#
        ),
    };
    etcd.put(&flanneld_key(stack), &value);
}

/// What flanneld programs on `fl` for the vxdp node `peer`'s lease, in its order, for each
/// family of `stack`.
fn flanneld_learns(fl: &Host, peer: &Host, stack: Stack) {
    let gw6 = overlay6(peer).to_string();
    let mac6 = peer.status()["lease"]["vtep_mac_v6"]
        .as_str()
        .expect("lease.vtep_mac_v6 in the status of a node with IPv6")
        .to_string();
    let ul6 = underlay6(peer.index).to_string();
    let mut halves = vec![("flannel-v6.1", gw6, mac6, ul6, 64)];
    if stack == Stack::Dual {
        halves.insert(
            0,
            (
                "flannel.1",
                peer.overlay_ip().to_string(),
                peer.vtep_mac(),
                peer.underlay_ip().to_string(),
                24,
            ),
        );
    }
    for (dev, gw, mac, ul, len) in halves {
        let link = FlanneldLink {
            dev: dev.to_string(),
        };
        fl.flanneld_learns(&link, &format!("{gw}/{len}"), &gw, &mac, &ul);
    }
}

fn routes(h: &Host, family: &str) -> String {
    h.ns.run(&["ip", family, "route", "show"])
}

#[test]
fn dual_stack_kernel_nodes_and_a_flanneld_node_carry_ipv4_and_ipv6() {
    let (mut c, etcd) = dual_stack_cluster(3);
    let endpoints = etcd.endpoint();
    flanneld_node(&c.hosts[2], &etcd, Stack::Dual);
    // One node lets auto choose (the kernel carries IPv6), one asks for the kernel.
    c.host(1)
        .start(&["--etcd-endpoints", &endpoints, "--backend", "auto"]);
    c.host(2)
        .start(&["--etcd-endpoints", &endpoints, "--backend", "kernel"]);
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(2);
    }
    let (h1, h2, fl) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    flanneld_learns(fl, h1, Stack::Dual);
    flanneld_learns(fl, h2, Stack::Dual);

    // subnet.env: flanneld's lines for this config, but FLANNEL_MTU 1500 - 70.
    for h in [h1, h2] {
        let text = std::fs::read_to_string(h.subnet_file()).unwrap();
        let env = subnet_env(h);
        let sn4 = &env["FLANNEL_SUBNET"];
        let sn6 = &env["FLANNEL_IPV6_SUBNET"];
        let flanneld = format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={sn4}\nFLANNEL_IPV6_NETWORK=fd00:5::/48\n\
             FLANNEL_IPV6_SUBNET={sn6}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            text,
            flanneld.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1430"),
            "host {}",
            h.index
        );
        assert!(sn6.ends_with("::1/64"), "{sn6}");
        let log = h.log_text();
        assert!(
            log.contains("FLANNEL_MTU is 1430, not the 1450 flanneld writes")
                && log.contains("#1781"),
            "the MTU reason is logged on host {}:\n{log}",
            h.index
        );
        // The IPv6 link, as flanneld programs flannel-v6.1: local6, the external interface,
        // dstport 8472, nolearning, the /128, MTU as the IPv4 link's.
        let link = h.ns.run(&["ip", "-d", "link", "show", "vxdp-v6.1"]);
        assert!(
            link.contains(&format!("vxlan id 1 local {} dev eth0", underlay6(h.index)))
                && link.contains("dstport 8472")
                && link.contains("nolearning")
                && link.contains("mtu 1430"),
            "{link}"
        );
        let addrs = h.ns.run(&["ip", "-6", "addr", "show", "dev", "vxdp-v6.1"]);
        assert!(addrs.contains(&format!("{}/128", overlay6(h))), "{addrs}");
    }
    assert!(
        h1.log_text()
            .contains("--backend auto: the network config enables IPv6"),
        "{}",
        h1.log_text()
    );
    // `vxdp status` shows both halves of the lease and of every peer.
    let st = h1.status();
    assert_eq!(
        st["lease"]["ipv6_subnet"],
        format!("{}/64", overlay6(h1)),
        "{st:#}"
    );
    assert_eq!(
        st["lease"]["public_ipv6"],
        underlay6(1).to_string(),
        "{st:#}"
    );
    assert_eq!(st["device"]["v6_name"], "vxdp-v6.1", "{st:#}");
    assert_eq!(st["network"]["ipv6_network"], "fd00:5::/48", "{st:#}");
    let fl_peer = st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["subnet"] == format!("{FL_NET4}/24")))
        .unwrap_or_else(|| panic!("the flanneld node among the peers: {st:#}"));
    assert_eq!(fl_peer["ipv6_subnet"], format!("{FL_NET6}/64"), "{st:#}");
    assert_eq!(fl_peer["public_ipv6"], underlay6(3).to_string(), "{st:#}");
    assert_eq!(fl_peer["vtep_mac_v6"], FL_MAC6, "{st:#}");
    // Each vxdp node programmed the flanneld node's IPv6 half as flanneld would.
    assert_programs_flanneld_v6_half(h1);

    // Every pair, both families, both ways: vxdp<->vxdp and vxdp<->flanneld.
    let fl4: IpAddr = FL_NET4.parse().unwrap();
    let fl6: IpAddr = FL_NET6.parse().unwrap();
    let (h1_4, h2_4) = (IpAddr::V4(h1.overlay_ip()), IpAddr::V4(h2.overlay_ip()));
    let (h1_6, h2_6) = (IpAddr::V6(overlay6(h1)), IpAddr::V6(overlay6(h2)));
    both_ways(h1, h1_6, h2, h2_6, 7600);
    both_ways(h1, h1_6, fl, fl6, 7610);
    both_ways(h2, h2_6, fl, fl6, 7620);
    for (a, a4, b, b4) in [
        (h1, h1_4, h2, h2_4),
        (h1, h1_4, fl, fl4),
        (h2, h2_4, fl, fl4),
    ] {
        assert!(
            pings(a, b4) && pings(b, a4),
            "IPv4 h{} <-> h{}",
            a.index,
            b.index
        );
    }
    // IPv4 and IPv6 at the same time between the same nodes.
    std::thread::scope(|s| {
        let v4 = s.spawn(|| tcp_transfer(h1, h2, h2_4, 7630, 8 << 20));
        let v6 = s.spawn(|| tcp_transfer(h2, h1, h1_6, 7631, 8 << 20));
        assert!(
            v4.join().expect("IPv4 thread"),
            "IPv4 TCP h1 -> h2 beside IPv6"
        );
        assert!(
            v6.join().expect("IPv6 thread"),
            "IPv6 TCP h2 -> h1 beside IPv4"
        );
    });

    // The flanneld node's lease removed from etcd: both families' routes are withdrawn.
    etcd.del(&flanneld_key(Stack::Dual));
    for h in [h1, h2] {
        let gone = wait_for(Duration::from_secs(10), || {
            let r4 = routes(h, "-4");
            let r6 = routes(h, "-6");
            (!r4.contains(FL_NET4) && !r6.contains(FL_NET6)).then_some(())
        });
        assert!(
            gone.is_some(),
            "host {} still routes the removed lease:\n{}\n{}",
            h.index,
            routes(h, "-4"),
            routes(h, "-6")
        );
        let neigh = h.ns.run(&["ip", "-6", "neigh", "show", "dev", "vxdp-v6.1"]);
        assert!(!neigh.contains(FL_NET6), "{neigh}");
        let fdb = h.ns.run(&["bridge", "fdb", "show", "dev", "vxdp-v6.1"]);
        assert!(!fdb.contains(FL_MAC6), "{fdb}");
    }
    // The vxdp nodes still reach each other over both families.
    assert!(
        pings(h1, h2_6) && pings(h1, h2_4),
        "h1 -> h2 after the removal"
    );
    eprintln!("interop (dual stack): kernel<->kernel ok, kernel<->flanneld-style ok (ping, ping6, TCP over IPv6 both ways, IPv4+IPv6 at once)");
}

#[test]
fn dual_stack_udp_nodes_with_kernel_and_flanneld_nodes() {
    // h1, h2: the UDP backend; h3: the kernel backend; h4: flanneld-style.
    let (mut c, etcd) = dual_stack_cluster(4);
    let endpoints = etcd.endpoint();
    flanneld_node(&c.hosts[3], &etcd, Stack::Dual);
    for (i, backend) in [(1, "udp"), (2, "udp"), (3, "kernel")] {
        c.host(i)
            .start(&["--etcd-endpoints", &endpoints, "--backend", backend]);
    }
    for i in 1..=3 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(3);
    }
    let (h1, h2, h3, fl) = (&c.hosts[0], &c.hosts[1], &c.hosts[2], &c.hosts[3]);
    for h in [h1, h2, h3] {
        flanneld_learns(fl, h, Stack::Dual);
    }
    // The UDP node: one TAP with both lease addresses, one VtepMAC for both families, the
    // IPv6 peers routed through the TAP with permanent neighbours, IPv6 sockets on the port.
    let st = h1.status();
    assert_eq!(st["backend"], "udp", "{st:#}");
    assert_eq!(
        st["lease"]["vtep_mac_v6"], st["lease"]["vtep_mac"],
        "{st:#}"
    );
    let addrs = h1.ns.run(&["ip", "-6", "addr", "show", "dev", "vxdp.1"]);
    assert!(addrs.contains(&format!("{}/128", overlay6(h1))), "{addrs}");
    let r6 = routes(h1, "-6");
    assert!(
        r6.contains(&format!("{FL_NET6}/64 via {FL_NET6} dev vxdp.1")),
        "{r6}"
    );
    let neigh = h1.ns.run(&["ip", "-6", "neigh", "show", "dev", "vxdp.1"]);
    assert!(
        neigh.contains(&format!("{FL_NET6} lladdr {FL_MAC6} PERMANENT")),
        "{neigh}"
    );
    let socks = h1.ns.run(&["ss", "-uln", "sport", "= :8472"]);
    assert!(
        socks.contains(&format!("[{}]:8472", underlay6(1))),
        "{socks}"
    );

    let fl6: IpAddr = FL_NET6.parse().unwrap();
    let fl4: IpAddr = FL_NET4.parse().unwrap();
    let v6 = |h: &Host| IpAddr::V6(overlay6(h));
    let v4 = |h: &Host| IpAddr::V4(h.overlay_ip());
    // udp<->udp, udp<->kernel, udp<->flanneld-style: IPv6 both ways, then IPv4.
    both_ways(h1, v6(h1), h2, v6(h2), 7700);
    both_ways(h1, v6(h1), h3, v6(h3), 7710);
    both_ways(h1, v6(h1), fl, fl6, 7720);
    for (a, b, b4) in [(h1, h2, v4(h2)), (h1, h3, v4(h3)), (h1, fl, fl4)] {
        assert!(
            pings(a, b4) && pings(b, v4(a)),
            "IPv4 h{} <-> h{}",
            a.index,
            b.index
        );
    }
    // IPv4 and IPv6 at the same time, udp <-> udp.
    std::thread::scope(|s| {
        let t4 = s.spawn(|| tcp_transfer(h1, h2, v4(h2), 7730, 8 << 20));
        let t6 = s.spawn(|| tcp_transfer(h2, h1, v6(h1), 7731, 8 << 20));
        assert!(
            t4.join().expect("IPv4 thread"),
            "IPv4 TCP h1 -> h2 beside IPv6"
        );
        assert!(
            t6.join().expect("IPv6 thread"),
            "IPv6 TCP h2 -> h1 beside IPv4"
        );
    });
    // It went through the UDP sockets, and nothing was dropped as an unknown peer.
    let st = h1.status();
    assert!(
        // 3 x 2 MB and 8 MB of IPv6 TCP came to h1.
        st["totals"]["underlay_rx_bytes"].as_u64().unwrap_or(0) > 14 << 20,
        "{st:#}"
    );
    assert_eq!(
        common::counter(&st, &["totals", "rx_drops", "unknown_peer"]),
        0,
        "{st:#}"
    );

    // The flanneld node's lease removed from etcd: the UDP node withdraws both families.
    etcd.del(&flanneld_key(Stack::Dual));
    let gone = wait_for(Duration::from_secs(10), || {
        let r4 = routes(h1, "-4");
        let r6 = routes(h1, "-6");
        (!r4.contains(FL_NET4) && !r6.contains(FL_NET6)).then_some(())
    });
    assert!(
        gone.is_some(),
        "h1 still routes the removed lease:\n{}\n{}",
        routes(h1, "-4"),
        routes(h1, "-6")
    );
    let neigh = h1.ns.run(&["ip", "-6", "neigh", "show", "dev", "vxdp.1"]);
    assert!(!neigh.contains(FL_NET6), "{neigh}");
    assert!(pings(h1, v6(h2)), "h1 -> h2 over IPv6 after the removal");
    eprintln!("interop (dual stack): udp<->udp ok, udp<->kernel ok, udp<->flanneld-style ok (ping, ping6, TCP over IPv6 both ways, IPv4+IPv6 at once)");
}

#[test]
fn dual_stack_af_xdp_node_with_udp_kernel_and_flanneld_nodes() {
    // h1: AF_XDP (copy mode on veth); h2: UDP; h3: kernel; h4: flanneld-style.
    let (mut c, etcd) = dual_stack_cluster(4);
    let endpoints = etcd.endpoint();
    flanneld_node(&c.hosts[3], &etcd, Stack::Dual);
    for (i, backend) in [(1, "xdp"), (2, "udp"), (3, "kernel")] {
        c.host(i)
            .start(&["--etcd-endpoints", &endpoints, "--backend", backend]);
    }
    for i in 1..=3 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(3);
    }
    let (h1, h2, h3, fl) = (&c.hosts[0], &c.hosts[1], &c.hosts[2], &c.hosts[3]);
    for h in [h1, h2, h3] {
        flanneld_learns(fl, h, Stack::Dual);
    }
    let st = h1.status();
    assert_eq!(st["backend"], "xdp", "{st:#}");
    let fl6: IpAddr = FL_NET6.parse().unwrap();
    let v6 = |h: &Host| IpAddr::V6(overlay6(h));
    let v4 = |h: &Host| IpAddr::V4(h.overlay_ip());
    let before = h1.status();
    // xdp<->udp, xdp<->kernel, xdp<->flanneld-style over IPv6, both ways; then IPv4.
    both_ways(h1, v6(h1), h2, v6(h2), 7800);
    both_ways(h1, v6(h1), h3, v6(h3), 7810);
    both_ways(h1, v6(h1), fl, fl6, 7820);
    for (b, b4) in [(h2, v4(h2)), (h3, v4(h3)), (fl, FL_NET4.parse().unwrap())] {
        assert!(
            pings(h1, b4) && pings(b, v4(h1)),
            "IPv4 h1 <-> h{}",
            b.index
        );
    }
    // Through AF_XDP both ways, the IPv6 next hops resolved by NDP, no peer unknown.
    let after = h1.status();
    let delta = |k: &str| {
        after["totals"][k].as_u64().unwrap_or(0) - before["totals"][k].as_u64().unwrap_or(0)
    };
    assert!(delta("underlay_rx_bytes") > 6 << 20, "{after:#}");
    assert!(delta("underlay_tx_bytes") > 6 << 20, "{after:#}");
    assert_eq!(
        common::counter(&after, &["totals", "rx_drops", "unknown_peer"]),
        0,
        "{after:#}"
    );
    // The IPv6 next hop of every peer is resolved (it carried the traffic above; the status
    // is refreshed once a second).
    let resolved = wait_for(Duration::from_secs(5), || {
        let st = h1.status();
        let peers = st["peers"].as_array()?.clone();
        peers
            .iter()
            .all(|p| p["state_v6"] == "resolved")
            .then_some(())
    });
    assert!(resolved.is_some(), "{:#}", h1.status());
    eprintln!("interop (dual stack): xdp<->udp ok, xdp<->kernel ok, xdp<->flanneld-style ok (ping, ping6, TCP over IPv6 both ways)");
}

/// `ping -i 0.01` from `from` to `to` until `during` returns; (sent, received).
fn pings_during(from: &Host, to: IpAddr, tag: &str, during: impl FnOnce()) -> (u64, u64) {
    let log = from.dir.join(format!("ping-{tag}.log"));
    let fam = if to.is_ipv6() { "-6" } else { "-4" };
    let mut child = from.ns.spawn(
        &["ping", fam, "-i", "0.01", "-W", "2", &to.to_string()],
        Some(&log),
    );
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(500));
    child.signal(libc::SIGINT);
    let _ = wait_for(Duration::from_secs(5), || child.exited());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let nums: Vec<u64> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn dual_stack_udp_node_hands_over_both_families_to_a_new_process() {
    let (mut c, etcd) = dual_stack_cluster(2);
    let endpoints = etcd.endpoint();
    let args = ["--etcd-endpoints", endpoints.as_str(), "--backend", "udp"];
    for i in 1..=2 {
        c.host(i).start(&args);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(1);
    }
    let h1_6 = IpAddr::V6(overlay6(&c.hosts[0]));
    let h1_4 = IpAddr::V4(c.hosts[0].overlay_ip());
    assert!(
        pings(&c.hosts[1], h1_6) && pings(&c.hosts[1], h1_4),
        "warm paths"
    );
    // A second vxdp on node 1 takes the TAP queues and both families' sockets over.
    let mut old = c.hosts[0].daemon.take().expect("node 1 runs");
    let mut old_exit = None;
    let (sent, received) = {
        let (first, rest) = c.hosts.split_at_mut(1);
        let (h1, peer) = (&mut first[0], &rest[0]);
        pings_during(peer, h1_6, "handover6", || {
            h1.start(&args);
            old_exit = wait_for(Duration::from_secs(10), || old.exited());
            h1.wait_ready();
        })
    };
    let log = c.hosts[0].log_text();
    assert_eq!(old_exit.map(|s| s.code()), Some(Some(0)), "{log}");
    assert!(log.contains("took over forwarding"), "{log}");
    eprintln!(
        "dual-stack udp handover: ping6 every 10 ms: {sent} sent, {} lost",
        sent - received
    );
    assert!(
        sent - received <= 2,
        "ping6 lost {} of {sent} across the handover:\n{log}",
        sent - received
    );
    // Both families still flow, through the new process.
    assert!(
        pings(&c.hosts[1], h1_6) && pings(&c.hosts[1], h1_4),
        "after the handover"
    );
    assert!(
        tcp_transfer(&c.hosts[1], &c.hosts[0], h1_6, 7900, 2 << 20),
        "TCP over IPv6 after the handover"
    );
}

const CONFIG_V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;
/// etcd's address on an IPv6-only underlay.
const ETCD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

/// A cluster of `n` hosts whose underlay is IPv6 only: each `eth0` loses its IPv4 address and
/// gets 2001:db8::<i>/64, and etcd listens on [2001:db8::fe] holding the IPv6-only config.
fn ipv6_only_cluster(n: u8) -> (Cluster, EtcdServer) {
    let c = Cluster::new(n);
    for h in &c.hosts {
        h.ns.run(&["ip", "-4", "addr", "flush", "dev", "eth0"]);
        h.ns.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", underlay6(h.index)),
            "dev",
            "eth0",
            "nodad",
        ]);
        let v4 = h.ns.run(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(
            v4.trim().is_empty(),
            "eth0 of host {} has IPv4: {v4}",
            h.index
        );
    }
    c.underlay.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{ETCD_IP6}/64"),
        "dev",
        "br0",
        "nodad",
    ]);
    let etcd = EtcdServer::start_in_netns(c.underlay.name(), ETCD_IP6);
    etcd.put(&format!("{PREFIX}/config"), CONFIG_V6_ONLY);
    (c, etcd)
}

/// The etcd key of a vxdp node's IPv6-only lease, as flannel's `MakeSubnetKey` names it.
fn ipv6_only_key(h: &Host) -> String {
    format!("{PREFIX}/subnets/0.0.0.0-0&{}-64", overlay6(h))
}

/// What every IPv6-only vxdp node shows: subnet.env as flanneld writes it for this config
/// (`WriteSubnetFile` skips the IPv4 lines without `EnableIPv4`; FLANNEL_MTU 1500 - 70, not
/// flanneld's 1450, for the reason the log gives), its lease in etcd under the IPv6-only key
/// with flanneld's value shape, and a status without any IPv4 lease.
fn assert_ipv6_only_node(h: &Host, etcd: &EtcdServer) {
    let text = std::fs::read_to_string(h.subnet_file()).unwrap_or_default();
    let env = subnet_env(h);
    let sn6 = env
        .get("FLANNEL_IPV6_SUBNET")
        .unwrap_or_else(|| panic!("no FLANNEL_IPV6_SUBNET on host {}: {text}", h.index));
    let flanneld = format!(
        "FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET={sn6}\nFLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=false\n"
    );
    assert_eq!(
        text,
        flanneld.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1430"),
        "host {}",
        h.index
    );
    assert!(
        sn6.starts_with("fd00:5:") && sn6.ends_with("::1/64"),
        "{sn6}"
    );
    let log = h.log_text();
    assert!(
        log.contains("FLANNEL_MTU is 1430, not the 1450 flanneld writes"),
        "the MTU reason is logged on host {}:\n{log}",
        h.index
    );

    let value = etcd
        .get(&ipv6_only_key(h))
        .unwrap_or_else(|| panic!("no lease {} in etcd", ipv6_only_key(h)));
    assert!(
        value.starts_with(&format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":""#,
            underlay6(h.index)
        )) && !value.contains("BackendData\""),
        "host {}'s lease value: {value}",
        h.index
    );

    let st = h.status();
    for (section, field) in [
        ("lease", "subnet"),
        ("lease", "public_ip"),
        ("lease", "vtep_mac"),
        ("network", "network"),
        ("iface", "public_ip"),
    ] {
        assert!(
            st[section].get(field).is_none(),
            "{section}.{field}: {st:#}"
        );
    }
    assert_eq!(
        st["lease"]["public_ipv6"],
        underlay6(h.index).to_string(),
        "{st:#}"
    );
    assert_eq!(
        st["lease"]["ipv6_subnet"],
        format!("{}/64", overlay6(h)),
        "{st:#}"
    );
    for p in st["peers"].as_array().into_iter().flatten() {
        assert!(
            p.get("subnet").is_none() && p.get("public_ip").is_none(),
            "{st:#}"
        );
    }
    // The human status prints no IPv4 lease line.
    let out = testkit::try_run(&[
        common::VXDP,
        "status",
        "--control-socket",
        &h.control_socket().display().to_string(),
    ]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vxdp status on host {}: {human}",
        h.index
    );
    assert!(
        human.contains("network none (IPv6-only)")
            && human.contains(&format!("lease6 {}/64", overlay6(h)))
            && !human.lines().any(|l| l.starts_with("lease ")),
        "{human}"
    );
}

#[test]
fn ipv6_only_kernel_xdp_and_flanneld_nodes_over_an_ipv6_only_underlay() {
    // h1: the kernel backend; h2: AF_XDP (copy mode on veth); h3: flanneld-style.
    let (mut c, etcd) = ipv6_only_cluster(3);
    let endpoints = etcd.endpoint();
    flanneld_node(&c.hosts[2], &etcd, Stack::Ipv6Only);
    for (i, backend) in [(1, "kernel"), (2, "xdp")] {
        c.host(i)
            .start(&["--etcd-endpoints", &endpoints, "--backend", backend]);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(2);
    }
    let (h1, h2, fl) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    flanneld_learns(fl, h1, Stack::Ipv6Only);
    flanneld_learns(fl, h2, Stack::Ipv6Only);
    for h in [h1, h2] {
        assert_ipv6_only_node(h, &etcd);
    }
    assert_eq!(h2.status()["backend"], "xdp");

    // The kernel node has only the IPv6 link, programmed as flanneld programs flannel-v6.1.
    let links = h1.ns.run(&["ip", "-br", "link", "show"]);
    assert!(
        links.lines().any(|l| l.starts_with("vxdp-v6.1"))
            && !links.lines().any(|l| l.starts_with("vxdp.1")),
        "{links}"
    );
    let link = h1.ns.run(&["ip", "-d", "link", "show", "vxdp-v6.1"]);
    assert!(
        link.contains(&format!("vxlan id 1 local {} dev eth0", underlay6(1)))
            && link.contains("dstport 8472")
            && link.contains("nolearning")
            && link.contains("mtu 1430"),
        "{link}"
    );
    let addrs = h1.ns.run(&["ip", "addr", "show", "dev", "vxdp-v6.1"]);
    assert!(
        addrs.contains(&format!("{}/128", overlay6(h1))) && !addrs.contains("inet "),
        "{addrs}"
    );
    assert_programs_flanneld_v6_half(h1);
    // The AF_XDP node's TAP carries only its IPv6 address and routes.
    let tap = h2.ns.run(&["ip", "addr", "show", "dev", "vxdp.1"]);
    assert!(
        tap.contains(&format!("{}/128", overlay6(h2))) && !tap.contains("inet "),
        "{tap}"
    );
    assert!(routes(h2, "-4").trim().is_empty(), "{}", routes(h2, "-4"));

    // xdp<->kernel, kernel<->flanneld-style, xdp<->flanneld-style: ping6 and TCP both ways.
    let fl6: IpAddr = FL_NET6.parse().unwrap();
    let v6 = |h: &Host| IpAddr::V6(overlay6(h));
    let before = h2.status();
    both_ways(h2, v6(h2), h1, v6(h1), 7950);
    both_ways(h1, v6(h1), fl, fl6, 7960);
    both_ways(h2, v6(h2), fl, fl6, 7970);
    // Through AF_XDP both ways, nothing dropped as from an unknown peer.
    let after = h2.status();
    let delta = |k: &str| {
        after["totals"][k].as_u64().unwrap_or(0) - before["totals"][k].as_u64().unwrap_or(0)
    };
    assert!(delta("underlay_rx_bytes") > 4 << 20, "{after:#}");
    assert!(delta("underlay_tx_bytes") > 4 << 20, "{after:#}");
    assert_eq!(
        common::counter(&after, &["totals", "rx_drops", "unknown_peer"]),
        0,
        "{after:#}"
    );

    // The flanneld node's lease removed from etcd: both vxdp nodes withdraw its route.
    etcd.del(&flanneld_key(Stack::Ipv6Only));
    for (h, dev) in [(h1, "vxdp-v6.1"), (h2, "vxdp.1")] {
        let gone = wait_for(Duration::from_secs(10), || {
            (!routes(h, "-6").contains(FL_NET6)).then_some(())
        });
        assert!(
            gone.is_some(),
            "host {} still routes the removed lease:\n{}",
            h.index,
            routes(h, "-6")
        );
        let neigh = h.ns.run(&["ip", "-6", "neigh", "show", "dev", dev]);
        assert!(!neigh.contains(FL_NET6), "{neigh}");
    }
    let fdb = h1.ns.run(&["bridge", "fdb", "show", "dev", "vxdp-v6.1"]);
    assert!(!fdb.contains(FL_MAC6), "{fdb}");
    assert!(pings(h1, v6(h2)), "h1 -> h2 after the removal");
    eprintln!("interop (IPv6-only): xdp<->kernel ok, kernel<->flanneld-style ok, xdp<->flanneld-style ok (ping6, TCP both ways)");
}

#[test]
fn ipv6_only_udp_nodes_over_an_ipv6_only_underlay() {
    let (mut c, etcd) = ipv6_only_cluster(2);
    let endpoints = etcd.endpoint();
    let args = ["--etcd-endpoints", endpoints.as_str(), "--backend", "udp"];
    for i in 1..=2 {
        c.host(i).start(&args);
    }
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(1);
    }
    let (h1, h2) = (&c.hosts[0], &c.hosts[1]);
    for h in [h1, h2] {
        assert_ipv6_only_node(h, &etcd);
        // Only the IPv6 socket on the VXLAN port; the TAP carries only IPv6.
        let socks = h.ns.run(&["ss", "-uln", "sport", "= :8472"]);
        assert!(
            socks.contains(&format!("[{}]:8472", underlay6(h.index)))
                && !socks.contains("0.0.0.0:8472")
                && !socks.contains("192.0.2."),
            "{socks}"
        );
        let tap = h.ns.run(&["ip", "addr", "show", "dev", "vxdp.1"]);
        assert!(
            tap.contains(&format!("{}/128", overlay6(h))) && !tap.contains("inet "),
            "{tap}"
        );
    }
    let r6 = routes(h1, "-6");
    let h2_net = overlay6(h2);
    assert!(
        r6.contains(&format!("{h2_net}/64 via {h2_net} dev vxdp.1")),
        "{r6}"
    );

    // udp<->udp: ping6 and TCP both ways, through the UDP sockets.
    let v6 = |h: &Host| IpAddr::V6(overlay6(h));
    both_ways(h1, v6(h1), h2, v6(h2), 7980);
    let st = h1.status();
    assert!(
        st["totals"]["underlay_rx_bytes"].as_u64().unwrap_or(0) > 2 << 20,
        "{st:#}"
    );
    assert_eq!(
        common::counter(&st, &["totals", "rx_drops", "unknown_peer"]),
        0,
        "{st:#}"
    );

    // h2's lease removed from etcd: h1 withdraws the route, and h2 sees its lease revoked
    // and stops (it no longer advertises).
    let h2_key = ipv6_only_key(h2);
    etcd.del(&h2_key);
    let gone = wait_for(Duration::from_secs(10), || {
        (!routes(&c.hosts[0], "-6").contains(&h2_net.to_string())).then_some(())
    });
    assert!(
        gone.is_some(),
        "h1 still routes h2's removed lease:\n{}",
        routes(&c.hosts[0], "-6")
    );
    let h2 = &mut c.hosts[1];
    let exited = wait_for(Duration::from_secs(10), || h2.daemon.as_mut()?.exited());
    assert!(
        exited.is_some() && h2.log_text().contains("revoked"),
        "h2 after its lease was removed:\n{}",
        h2.log_text()
    );

    // `vxdp cleanup` on a stopped IPv6-only node: device, routes and lease go.
    let h1_key = ipv6_only_key(&c.hosts[0]);
    assert_eq!(c.hosts[0].stop(libc::SIGTERM), Some(0));
    assert!(etcd.get(&h1_key).is_some(), "a plain stop keeps the lease");
    let out = c.hosts[0].cleanup(&["--etcd-endpoints", &endpoints]);
    assert!(
        out.status.success(),
        "vxdp cleanup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        etcd.get(&h1_key),
        None,
        "cleanup releases the IPv6-only lease"
    );
    let links = c.hosts[0].ns.run(&["ip", "-br", "link", "show"]);
    assert!(!links.contains("vxdp"), "{links}");
    eprintln!("interop (IPv6-only): udp<->udp ok (ping6, TCP both ways), lease removal, cleanup");
}

/// The kernel-backend node `h` programmed the flanneld-style node's IPv6 half as flanneld
/// programs a peer on flannel-v6: an onlink route via the peer's base address, a permanent
/// neighbour entry with its VtepMAC, and an FDB entry to its PublicIPv6.
fn assert_programs_flanneld_v6_half(h: &Host) {
    let r6 = routes(h, "-6");
    assert!(
        r6.contains(&format!("{FL_NET6}/64 via {FL_NET6} dev vxdp-v6.1")),
        "{r6}"
    );
    let neigh = h.ns.run(&["ip", "-6", "neigh", "show", "dev", "vxdp-v6.1"]);
    assert!(
        neigh.contains(&format!("{FL_NET6} lladdr {FL_MAC6} PERMANENT")),
        "{neigh}"
    );
    let fdb = h.ns.run(&["bridge", "fdb", "show", "dev", "vxdp-v6.1"]);
    assert!(
        fdb.contains(&format!("{FL_MAC6} dst {} self permanent", underlay6(3))),
        "{fdb}"
    );
}
