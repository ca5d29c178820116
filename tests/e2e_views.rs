//! What an operator sees of a running node: `vxdp status` (columns and JSON), `vxdp peers`,
//! `vxdp leases`, the Prometheus metrics, and JSON logs with one line per lease event.

mod common;

use std::time::Duration;

use common::{s, Cluster, VXDP};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn cli(args: &[&str]) -> String {
    testkit::run(&[&[VXDP], args].concat())
}

#[test]
fn status_peers_leases_metrics_and_logs_describe_the_running_node() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    // A flanneld node of another backend shares the store: listed, but ignored.
    std::fs::create_dir_all(store.join("subnets")).unwrap();
    std::fs::write(
        store.join("subnets/10.244.250.0-24"),
        r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
    )
    .unwrap();
    // The AF_XDP backend: its view has the most to show (XDP mode, next hops, socket counters).
    c.host(1).start(&[
        "--backend",
        "xdp",
        "--local-store",
        s(&store),
        "--log-format",
        "json",
        "--healthz-port",
        "9102",
        "--healthz-ip",
        "127.0.0.1",
    ]);
    c.host(2).start(&["--local-store", s(&store)]);
    c.host(1).wait_ready();
    c.host(2).wait_ready();
    c.host(1).wait_peers(1);
    c.host(2).wait_peers(1);
    let h2_ip = c.hosts[1].overlay_ip();
    assert!(c.hosts[0].ping(h2_ip, 5));
    let sock = c.hosts[0].control_socket();
    let sock = s(&sock);
    let h1_subnet = c.hosts[0].flannel_subnet().replace(".1/", ".0/");
    let h2_subnet = c.hosts[1].flannel_subnet().replace(".1/", ".0/");
    let h2_mac = c.hosts[1].status()["lease"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string();

    // Human status: the modes, the lease, the peer with its next hop, the workers.
    let text = cli(&["status", "--control-socket", sock]);
    assert!(
        text.contains("backend xdp: XDP native on eth0, AF_XDP copy mode"),
        "{text}"
    );
    assert!(text.contains(&format!("lease {h1_subnet}")), "{text}");
    let peer_line = text
        .lines()
        .find(|l| l.starts_with(&h2_subnet))
        .expect(&text);
    assert!(
        peer_line.contains("192.0.2.2")
            && peer_line.contains(&h2_mac)
            && peer_line.contains("resolved"),
        "{peer_line}"
    );
    let worker_line = text.lines().find(|l| l.starts_with("0 ")).expect(&text);
    let cols: Vec<&str> = worker_line.split_whitespace().collect();
    assert_eq!(cols[2], "copy", "{worker_line}");
    assert!(
        cols[3].parse::<u64>().unwrap() >= 5,
        "RX frames: {worker_line}"
    );
    assert!(
        cols[5].parse::<u64>().unwrap() >= 5,
        "TX frames: {worker_line}"
    );

    // JSON status: the fields the text is made of.
    let st: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json", "--control-socket", sock])).unwrap();
    assert_eq!(st["ready"], true);
    assert_eq!(st["lease"]["public_ip"], "192.0.2.1");
    assert!(st["lease"]["expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(st["workers"][0]["queue"], 0);
    assert!(st["workers"][0]["counters"]["rx_drops"]
        .as_object()
        .unwrap()
        .contains_key("unknown_peer"));

    // `vxdp peers`: one line per peer.
    let peers = cli(&["peers", "--control-socket", sock]);
    assert_eq!(peers.lines().count(), 2, "{peers}");
    assert!(
        peers.lines().nth(1).unwrap().starts_with(&h2_subnet),
        "{peers}"
    );
    let peers_json: serde_json::Value =
        serde_json::from_str(&cli(&["peers", "--json", "--control-socket", sock])).unwrap();
    assert_eq!(peers_json.as_array().unwrap().len(), 1);

    // `vxdp leases`: every lease, with its role.
    let leases = cli(&["leases", "--control-socket", sock]);
    let line = |needle: &str| {
        leases
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{leases}"))
            .to_string()
    };
    assert!(
        line(&h1_subnet.replace('/', "-")).ends_with("this node"),
        "{leases}"
    );
    assert!(
        line(&h2_subnet.replace('/', "-")).ends_with("peer"),
        "{leases}"
    );
    let other = line("10.244.250.0-24");
    assert!(
        other.contains("host-gw")
            && other.contains("ignored")
            && other.contains("never (reservation)"),
        "{other}"
    );

    // Metrics: the same counters with labels.
    let metrics = c.hosts[0]
        .ns
        .run(&["curl", "-s", "http://127.0.0.1:9102/metrics"]);
    assert!(metrics.contains("vxdp_peers 1"), "{metrics}");
    assert!(
        metrics.contains("vxdp_lease_expiration_timestamp_seconds "),
        "{metrics}"
    );
    assert!(
        metrics.contains("vxdp_last_watch_event_age_seconds "),
        "{metrics}"
    );
    let frames = metrics
        .lines()
        .find(|l| l.starts_with("vxdp_frames_total{queue=\"0\",path=\"underlay_rx\"}"))
        .unwrap();
    assert!(
        frames.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 5,
        "{frames}"
    );
    // Bytes read from the TAP: this series never appeared before tap_rx_bytes was counted.
    let tap_rx = metrics
        .lines()
        .find(|l| l.starts_with("vxdp_bytes_total{queue=\"0\",path=\"tap_rx\"}"))
        .unwrap_or_else(|| panic!("no tap_rx bytes series:\n{metrics}"));
    assert!(
        tap_rx.rsplit(' ').next().unwrap().parse::<u64>().unwrap() > 0,
        "{tap_rx}"
    );

    // JSON logs: every line is an object; one line per lease event, none per packet.
    std::thread::sleep(Duration::from_millis(300));
    let log = c.hosts[0].log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let adds: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("lease event: adding peer"))
        })
        .collect();
    assert_eq!(adds.len(), 1, "{log}");
    assert_eq!(adds[0]["subnet"], h2_subnet.as_str());
    assert!(lines.iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("backend xdp"))));
    assert!(
        lines.len() < 40,
        "too chatty for a quiet node: {} lines",
        lines.len()
    );
}

#[test]
fn help_speaks_flanneld() {
    let help = cli(&["run", "--help"]);
    for flag in [
        "--etcd-endpoints",
        "--etcd-prefix",
        "--etcd-keyfile",
        "--etcd-certfile",
        "--etcd-cafile",
        "--etcd-username",
        "--etcd-password",
        "--iface",
        "--iface-regex",
        "--iface-can-reach",
        "--ip-blackhole-route",
        "--ip-masq-fully-random-disable",
        "--public-ip",
        "--subnet-file",
        "--subnet-lease-renew-margin",
        "--ip-masq",
        "--iptables-forward-rules",
        "--healthz-ip",
        "--healthz-port",
        "--net-config-path",
        "--local-store",
        "--backend",
    ] {
        assert!(help.contains(flag), "{flag} missing from `vxdp run --help`");
    }
    assert!(
        help.contains("FLANNELD_ETCD_ENDPOINTS"),
        "env fallbacks are shown"
    );
    let top = cli(&["--help"]);
    for cmd in ["run", "status", "peers", "leases"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing:\n{top}"
        );
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/systemd/vxdp.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("Restart=always"));
    let path = dir.path().join("vxdp.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/vxdp", VXDP)).unwrap();
    let out = testkit::try_run(&["systemd-analyze", "verify", s(&path)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only complaints about units this machine lacks (kubelet, etcd...) are acceptable.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vxdp.service") && !l.contains("Cannot add dependency job"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{text}");
}
