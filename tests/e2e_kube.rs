//! End to end with `--kube-subnet-mgr` against the test kit's stand-in Kubernetes API server
//! (HTTPS in the underlay namespace, reached through a kubeconfig with a CA and a token, as a
//! user would): two vxdp nodes and a node that flanneld registered and that forwards with a
//! kernel vxlan link programmed as flanneld programs it, all from the API's node objects.
//! They converge, forward, survive a forced watch expiry (410) and a minute without the API
//! without losing a packet, and drop a deleted node's routes.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{s, tcp_transfer, Cluster, FlanneldLink, Host};
use testkit::kube::{KubeApiServer, NodeSpec};
use testkit::wait_for;

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const API_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const P: &str = "flannel.alpha.coreos.com";
/// The VtepMAC flanneld gave node-3's flannel.1.
const FLANNELD_MAC: &str = "02:aa:00:00:00:03";
/// The VtepMAC a flanneld that ran on node-1 before vxdp announced: vxdp must keep it.
const NODE1_OLD_MAC: &str = "0e:6b:75:62:65:01";

/// The annotations flanneld's `AcquireLease` (pkg/subnet/kube/kube.go) writes for a vxlan
/// node: `backend-data` is `json.Marshal(vxlanLeaseAttrs{VNI, VtepMAC})` (vxlan.go's
/// `newSubnetAttrs`), `public-ip` the address's `String()`.
fn flanneld_annotations(spec: NodeSpec, public_ip: Ipv4Addr, mac: &str) -> NodeSpec {
    spec.annotation(
        &format!("{P}/backend-data"),
        &format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
    )
    .annotation(&format!("{P}/backend-type"), "vxlan")
    .annotation(&format!("{P}/kube-subnet-manager"), "true")
    .annotation(&format!("{P}/public-ip"), &public_ip.to_string())
}

/// A cluster whose underlay bridge also carries the API server at 192.0.2.254:6443, plus the
/// kubeconfig and net-conf.json files every vxdp node is given.
struct KubeCluster {
    // Dropped first: the API goes before the namespaces.
    api: KubeApiServer,
    c: Cluster,
    kubeconfig: PathBuf,
    net_conf: PathBuf,
}

fn kube_cluster(hosts: u8) -> KubeCluster {
    let c = Cluster::new(hosts);
    c.underlay
        .run(&["ip", "addr", "add", &format!("{API_IP}/24"), "dev", "br0"]);
    let api = KubeApiServer::start_in_netns(c.underlay.name(), API_IP.into());
    let kubeconfig = c.dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let net_conf = c.dir.path().join("net-conf.json");
    std::fs::write(&net_conf, NET_CONF).unwrap();
    KubeCluster {
        api,
        c,
        kubeconfig,
        net_conf,
    }
}

impl KubeCluster {
    /// Starts vxdp on host `i` in kube mode with environment `env`.
    fn start(&mut self, i: u8, env: &[&str], extra: &[&str]) {
        let (kubeconfig, net_conf) = (self.kubeconfig.clone(), self.net_conf.clone());
        let mut args = vec![
            "--kube-subnet-mgr",
            "--kubeconfig-file",
            s(&kubeconfig),
            "--net-config-path",
            s(&net_conf),
        ];
        args.extend_from_slice(extra);
        self.c.host(i).start_with_env(env, &args);
    }

    fn annotation(&self, node: &str, key: &str) -> String {
        self.api
            .annotations(node)
            .get(&format!("{P}/{key}"))
            .cloned()
            .unwrap_or_default()
    }
}

/// Programs `host`'s flannel.1 for the peer node `node` exactly as flanneld does on a lease
/// event, from what the API says about that node: neighbour, FDB entry, onlink route.
fn flanneld_learns(host: &Host, link: &FlanneldLink, kc: &KubeCluster, node: &str) {
    let spec = kc.api.node(node).expect("the node exists");
    let cidr = spec["spec"]["podCIDR"]
        .as_str()
        .expect("podCIDR")
        .to_string();
    let gw = cidr.split('/').next().unwrap().to_string();
    let public_ip = kc.annotation(node, "public-ip");
    let data: serde_json::Value =
        serde_json::from_str(&kc.annotation(node, "backend-data")).expect("backend-data JSON");
    let mac = data["VtepMAC"].as_str().expect("VtepMAC");
    host.flanneld_learns(link, &cidr, &gw, mac, &public_ip);
}

/// Makes `host` node-3's flanneld: its flannel.1 as flanneld creates it and its address.
fn flanneld_node(host: &Host) -> FlanneldLink {
    host.flanneld_link(1, 8472, FLANNELD_MAC, Ipv4Addr::new(10, 244, 3, 0), None)
}

fn vtep_mac(h: &Host) -> String {
    h.status()["lease"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string()
}

fn has_route(h: &Host, subnet: &str) -> bool {
    !h.routes_matching(&format!("{subnet} ")).is_empty()
}

#[test]
fn vxdp_and_flanneld_nodes_share_a_kubernetes_cluster_through_outages() {
    let mut kc = kube_cluster(3);
    // node-1: flanneld ran here before (its annotations and VtepMAC are still on the node).
    kc.api.add_node(flanneld_annotations(
        NodeSpec::new("node-1", &["10.244.1.0/24"]),
        Ipv4Addr::new(192, 0, 2, 1),
        NODE1_OLD_MAC,
    ));
    // node-2: a fresh node; vxdp finds it through its pod (POD_NAME/POD_NAMESPACE).
    kc.api.add_node(NodeSpec::new("node-2", &["10.244.2.0/24"]));
    kc.api.add_pod("kube-flannel", "kube-vxdp-n2x4q", "node-2");
    // node-3: runs flanneld with the kernel's vxlan.
    kc.api.add_node(flanneld_annotations(
        NodeSpec::new("node-3", &["10.244.3.0/24"]),
        Ipv4Addr::new(192, 0, 2, 3),
        FLANNELD_MAC,
    ));
    let flannel1 = flanneld_node(&kc.c.hosts[2]);

    kc.start(1, &["NODE_NAME=node-1"], &["--backend", "xdp"]);
    kc.start(
        2,
        &["POD_NAME=kube-vxdp-n2x4q", "POD_NAMESPACE=kube-flannel"],
        &["--backend", "xdp"],
    );
    for i in 1..=2 {
        kc.c.host(i).wait_ready();
    }
    for i in 1..=2 {
        kc.c.host(i).wait_peers(2);
    }

    // The leases are the pod CIDRs; node-1 kept the VtepMAC flanneld had announced.
    assert_eq!(kc.c.hosts[0].flannel_subnet(), "10.244.1.1/24");
    assert_eq!(kc.c.hosts[1].flannel_subnet(), "10.244.2.1/24");
    assert_eq!(vtep_mac(&kc.c.hosts[0]), NODE1_OLD_MAC);
    // node-2 is published exactly as flanneld publishes a node.
    let h2_mac = vtep_mac(&kc.c.hosts[1]);
    assert_eq!(
        kc.annotation("node-2", "backend-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{h2_mac}"}}"#)
    );
    assert_eq!(kc.annotation("node-2", "backend-type"), "vxlan");
    assert_eq!(kc.annotation("node-2", "public-ip"), "192.0.2.2");
    assert_eq!(kc.annotation("node-2", "kube-subnet-manager"), "true");
    // Both nodes declare their network up, as flanneld does.
    for node in ["node-1", "node-2"] {
        let up = wait_for(Duration::from_secs(10), || {
            kc.api
                .condition(node, "NetworkUnavailable")
                .filter(|c| c["status"] == "False")
        })
        .unwrap_or_else(|| panic!("{node}: no NetworkUnavailable=False"));
        assert_eq!(up["reason"], "FlannelIsUp");
        assert_eq!(up["message"], "Flannel is running on this node");
    }
    // Only status patches: what flannel's ClusterRole allows.
    assert!(kc
        .api
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .all(|r| r.method == "PATCH" && r.path.ends_with("/status")));

    // node-3's flanneld programs its peers from the API.
    for node in ["node-1", "node-2"] {
        flanneld_learns(&kc.c.hosts[2], &flannel1, &kc, node);
    }
    let ips: Vec<Ipv4Addr> = ["10.244.1.0", "10.244.2.0", "10.244.3.0"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    for (a, from) in kc.c.hosts.iter().enumerate() {
        for (b, dst) in ips.iter().enumerate() {
            if a != b {
                assert!(from.ping(*dst, 2), "ping node-{} -> {dst}", a + 1);
            }
        }
    }
    for (a, b, port) in [(0, 1, 7501), (1, 2, 7502), (2, 0, 7503)] {
        assert!(
            tcp_transfer(&kc.c.hosts[a], &kc.c.hosts[b], ips[b], port, 4 << 20),
            "TCP node-{} -> node-{}",
            a + 1,
            b + 1
        );
    }

    // The watches expire (410): both re-list, and a node added meanwhile arrives.
    let watching = wait_for(Duration::from_secs(10), || {
        (kc.api.open_watches() >= 2).then_some(())
    });
    assert!(watching.is_some(), "the nodes do not watch");
    kc.api.clear_requests();
    kc.api.expire_watches();
    kc.api.add_node(flanneld_annotations(
        NodeSpec::new("node-4", &["10.244.4.0/24"]),
        Ipv4Addr::new(192, 0, 2, 4),
        "02:aa:00:00:00:04",
    ));
    let seen = wait_for(Duration::from_secs(10), || {
        kc.c.hosts[..2]
            .iter()
            .all(|h| has_route(h, "10.244.4.0/24"))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "node-4 not seen after the watch expired: {:#}",
        kc.c.hosts[0].status()
    );
    let relists = kc
        .api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/nodes" && !r.is_watch())
        .count();
    assert!(relists >= 2, "{relists} re-lists after the 410");

    // A minute without the API: not one of the pings (every 10 ms) is lost, on the vxdp path
    // and the flanneld one.
    let pings = [
        kc.c.hosts[0].start_ping(ips[1], "0.01", "outage-vxdp"),
        kc.c.hosts[0].start_ping(ips[2], "0.01", "outage-flanneld"),
    ];
    std::thread::sleep(Duration::from_millis(500));
    kc.api.go_down();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        for i in 1..=2 {
            let h = kc.c.host(i);
            let alive = h.daemon.as_mut().is_some_and(|d| d.exited().is_none());
            assert!(
                alive,
                "vxdp on node-{i} exited without the API:\n{}",
                h.log_text()
            );
        }
    }
    kc.api.come_back();
    std::thread::sleep(Duration::from_millis(500));
    for (p, what) in pings
        .into_iter()
        .zip(["node-1 -> node-2", "node-1 -> node-3"])
    {
        let (sent, received) = p.stop();
        eprintln!("API down 60 s: {what}: {sent} pings, {received} answered");
        // ping asks for one every 10 ms; a loaded machine sends fewer, but they must span
        // the whole minute.
        assert!(sent >= 3000, "{what}: only {sent} pings in a minute");
        assert_eq!(sent, received, "{what}: pings lost while the API was down");
    }

    // Back: node-3 is deleted, and its routes go (after the watch's backoff, at most 30 s).
    kc.api.delete_node("node-3");
    let gone = wait_for(Duration::from_secs(45), || {
        kc.c.hosts[..2]
            .iter()
            .all(|h| !has_route(h, "10.244.3.0/24"))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "node-3's routes stay after its deletion:\n{}",
        kc.c.hosts[0].log_text()
    );
    for h in &kc.c.hosts[..2] {
        let peers = h.status()["peers"].as_array().unwrap().clone();
        assert!(
            peers.iter().all(|p| p["subnet"] != "10.244.3.0/24"),
            "{peers:?}"
        );
    }
    assert!(kc.c.hosts[0].ping(ips[1], 3), "vxdp nodes still talk");
}

#[test]
fn a_misconfigured_node_stops_vxdp_with_a_clear_error() {
    let mut kc = kube_cluster(2);
    kc.api.add_node(NodeSpec::new("outside", &["10.99.1.0/24"]));

    // Its pod CIDR is not inside Network.
    kc.start(1, &["NODE_NAME=outside"], &[]);
    // No node name at all.
    kc.start(2, &[], &[]);
    for (i, needle) in [
        (1usize, "doesn't contain 10.99.1.0/24"),
        (2, "POD_NAME and POD_NAMESPACE"),
    ] {
        let h = &mut kc.c.hosts[i - 1];
        let status = wait_for(Duration::from_secs(20), || {
            h.daemon.as_mut().and_then(|d| d.exited())
        })
        .unwrap_or_else(|| panic!("vxdp on host {i} kept running:\n{}", h.log_text()));
        assert!(!status.success(), "host {i}: {status}");
        h.daemon = None;
        let log = h.log_text();
        assert!(log.contains(needle), "host {i}: {log}");
    }
    // Nothing was published for the refused node.
    assert!(kc.annotation("outside", "kube-subnet-manager").is_empty());
}
