//! Interoperability on the wire: a vxdp AF_XDP node with a kernel vxlan node programmed by the
//! test itself with `ip`/`bridge` exactly as flanneld programs one (independent of vxdp's code),
//! with the kernel's UDP checksums on and off, another VNI and port 4789; vxdp AF_XDP with vxdp's
//! own kernel backend; the automatic fallback when XDP is not permitted; and a kernel link that
//! someone deletes coming back.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::{s, tcp_transfer, write_flanneld_local_lease, Cluster, FlanneldLink, Host};

const KERNEL_PEER_MAC: &str = "02:aa:00:00:00:02";

fn config(vni: u32, port: u16) -> String {
    format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","VNI":{vni},"Port":{port}}}}}"#
    )
}

/// Makes `host` a flanneld-style kernel vxlan node holding 10.244.200.0/24: the link as
/// flanneld creates it, its /32 address, and its lease in the store as flanneld's JSON.
fn kernel_peer(host: &Host, store: &Path, vni: u32, port: u16, udpcsum: bool) -> FlanneldLink {
    let net = Ipv4Addr::new(10, 244, 200, 0);
    let link = host.flanneld_link(vni, port, KERNEL_PEER_MAC, net, Some(udpcsum));
    write_flanneld_local_lease(store, net, host.underlay_ip(), vni, KERNEL_PEER_MAC);
    link
}

fn both_ways(
    a: &Host,
    a_ip: std::net::Ipv4Addr,
    b: &Host,
    b_ip: std::net::Ipv4Addr,
    port: u16,
    what: &str,
) {
    assert!(a.ping(b_ip, 3), "{what}: ping h{} -> {b_ip}", a.index);
    assert!(b.ping(a_ip, 3), "{what}: ping h{} -> {a_ip}", b.index);
    assert!(
        tcp_transfer(a, b, b_ip, port, 4 << 20),
        "{what}: TCP h{} -> h{}",
        a.index,
        b.index
    );
    assert!(
        tcp_transfer(b, a, a_ip, port + 1, 4 << 20),
        "{what}: TCP h{} -> h{}",
        b.index,
        a.index
    );
}

#[test]
fn af_xdp_node_and_flanneld_kernel_node_exchange_traffic() {
    // (kernel peer UDP checksums, VNI, port in the config (0 = 8472), port on the wire)
    let variants = [
        (true, 1, 0, 8472),
        (false, 1, 8472, 8472),
        (true, 42, 4789, 4789),
        (false, 4096, 4789, 4789),
    ];
    for (n, (udpcsum, vni, cfg_port, port)) in variants.into_iter().enumerate() {
        let what = format!("udpcsum={udpcsum} vni={vni} port={port}");
        let mut c = Cluster::new(2);
        let store = c.local_store(&config(vni, cfg_port));
        let flannel = kernel_peer(&c.hosts[1], &store, vni, port, udpcsum);
        c.host(1)
            .start(&["--local-store", s(&store), "--backend", "xdp"]);
        c.host(1).wait_ready();
        c.host(1).wait_peers(1);
        c.hosts[1].flanneld_learns_host(&flannel, &c.hosts[0]);
        let before = c.hosts[0].status();
        let h1_ip = c.hosts[0].overlay_ip();
        both_ways(
            &c.hosts[0],
            h1_ip,
            &c.hosts[1],
            "10.244.200.0".parse().unwrap(),
            7200 + 2 * u16::try_from(n).expect("a handful of cases"),
            &what,
        );
        let after = c.hosts[0].status();
        let delta =
            |k: &str| after["totals"][k].as_u64().unwrap() - before["totals"][k].as_u64().unwrap();
        assert!(
            delta("underlay_rx_bytes") > 4 << 20,
            "{what}: not received through AF_XDP: {after:#}"
        );
        assert!(
            delta("underlay_tx_bytes") > 4 << 20,
            "{what}: not sent through AF_XDP: {after:#}"
        );
        // The kernel peer's VXLAN really used this port and VNI.
        let link = c.hosts[1]
            .ns
            .run(&["ip", "-d", "link", "show", &format!("flannel.{vni}")]);
        assert!(
            link.contains(&format!("vxlan id {vni} ")) && link.contains(&format!("dstport {port}")),
            "{link}"
        );
        assert_eq!(after["network"]["port"], port, "{what}");
        eprintln!(
            "{what}: ok; inner checksums completed for the kernel peer: {}",
            delta("rx_csum_completed")
        );
    }
}

#[test]
fn af_xdp_node_and_kernel_backend_node_exchange_traffic() {
    let mut c = Cluster::new(2);
    let store = c.local_store(&config(1, 0));
    c.host(1)
        .start(&["--local-store", s(&store), "--backend", "xdp"]);
    c.host(2)
        .start(&["--local-store", s(&store), "--backend", "kernel"]);
    // Both sides: the kernel node programs its neighbour and FDB entries when its own watch
    // sees host 1's lease, which may come after host 1 has seen host 2's.
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(1);
    }
    let st2 = c.hosts[1].status();
    assert_eq!(st2["backend"], "kernel", "{st2:#}");
    assert!(
        st2["summary"]
            .as_str()
            .unwrap()
            .contains("--backend kernel"),
        "{st2:#}"
    );
    let link = c.hosts[1].ns.run(&["ip", "-d", "link", "show", "vxdp.1"]);
    assert!(
        link.contains("vxlan id 1 ")
            && link.contains("dstport 8472")
            && link.contains("nolearning"),
        "{link}"
    );
    // flanneld's per-peer programming on the kernel node.
    let h1_gw = c.hosts[0].overlay_ip().to_string();
    let h1_mac = c.hosts[0].status()["lease"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string();
    let neigh = c.hosts[1].ns.run(&["ip", "neigh", "show", "dev", "vxdp.1"]);
    assert!(
        neigh.contains(&format!("{h1_gw} lladdr {h1_mac} PERMANENT")),
        "{neigh}"
    );
    let fdb = c.hosts[1]
        .ns
        .run(&["bridge", "fdb", "show", "dev", "vxdp.1"]);
    assert!(
        fdb.contains(&format!("{h1_mac} dst 192.0.2.1 self permanent")),
        "{fdb}"
    );
    let (a_ip, b_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    both_ways(
        &c.hosts[0],
        a_ip,
        &c.hosts[1],
        b_ip,
        7300,
        "xdp <-> kernel backend",
    );

    // Someone deletes the kernel link: it comes back (with its peers) and traffic resumes.
    c.hosts[1].ns.run(&["ip", "link", "del", "vxdp.1"]);
    let back = testkit::wait_for(Duration::from_secs(10), || {
        let out = c.hosts[1]
            .ns
            .try_run(&["ip", "route", "show", "dev", "vxdp.1"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&h1_gw)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "the deleted link did not come back:\n{}",
        c.hosts[1].log_text()
    );
    assert!(
        c.hosts[0].ping(b_ip, 3),
        "no traffic after the link came back"
    );
    assert!(c.hosts[1].ping(a_ip, 3));
}

#[test]
fn without_xdp_privileges_auto_runs_the_udp_sockets_and_talks_to_an_af_xdp_node() {
    let mut c = Cluster::new(2);
    let store = c.local_store(&config(1, 0));
    c.host(1)
        .start(&["--local-store", s(&store), "--backend", "xdp"]);
    // Like a container without CAP_BPF/CAP_SYS_ADMIN: capsh drops them from the bounding set,
    // so the daemon exec'd below never has them.
    c.host(2).start_wrapped(
        &[
            "capsh",
            "--drop=cap_bpf,cap_sys_admin,cap_perfmon",
            "--",
            "-c",
            "exec \"$@\"",
            "capsh",
        ],
        &[],
        &["--local-store", s(&store)],
    );
    // Both: each node programs the other when its own watch sees the other's lease.
    for i in 1..=2 {
        c.host(i).wait_ready();
        c.host(i).wait_peers(1);
    }
    // The UDP sockets need neither CAP_BPF nor CAP_SYS_ADMIN: auto runs them.
    let st = c.hosts[1].status();
    assert_eq!(st["backend"], "udp", "{st:#}");
    let summary = st["summary"].as_str().unwrap();
    assert!(summary.contains("--backend auto"), "{summary}");
    let caps = std::fs::read_to_string(format!(
        "/proc/{}/status",
        c.hosts[1].daemon.as_ref().unwrap().pid()
    ))
    .unwrap();
    let bnd = caps.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    let bits = u64::from_str_radix(bnd.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        bits & (1 << 39),
        0,
        "CAP_BPF still in the bounding set: {bnd}"
    );
    let (a_ip, b_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    both_ways(&c.hosts[0], a_ip, &c.hosts[1], b_ip, 7400, "xdp-udp");
}
