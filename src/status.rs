//! `vxdp status`: the running daemon's state, as JSON or as tidy columns like `ip -s`.

use std::fmt::Write as _;

use serde_json::Value;

use crate::cli::StatusArgs;
use crate::control_socket;

/// Which view to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Everything.
    Status,
    /// The peer table.
    Peers,
    /// The leases.
    Leases,
}

/// Queries the daemon and prints the view.
pub fn print(args: &StatusArgs, view: View) -> anyhow::Result<()> {
    let doc = control_socket::query(&args.control_socket, "status")?;
    if let Some(err) = doc.get("error").and_then(Value::as_str) {
        anyhow::bail!("the daemon answered: {err}");
    }
    let out = match (view, args.json) {
        (View::Status, true) => serde_json::to_string_pretty(&doc)? + "\n",
        (View::Peers, true) => serde_json::to_string_pretty(&doc["peers"])? + "\n",
        (View::Leases, true) => serde_json::to_string_pretty(&doc["leases"])? + "\n",
        (View::Status, false) => render(&doc),
        (View::Peers, false) => render_peers(&doc),
        (View::Leases, false) => render_leases(&doc),
    };
    print!("{out}");
    Ok(())
}

/// The peer table.
pub fn render_peers(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<18} {:<18} STATE",
        "PEER SUBNET", "PUBLIC IP", "VTEP MAC", "NEXT-HOP MAC"
    );
    for p in doc["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<18} {:<18} {}",
            s(&p["subnet"]),
            s(&p["public_ip"]),
            s(&p["vtep_mac"]),
            s(&p["next_hop_mac"]),
            s(&p["state"]),
        );
    }
    out
}

/// The lease table.
pub fn render_leases(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<9} {:<18} {:<31} ROLE",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES"
    );
    for l in doc["leases"].as_array().into_iter().flatten() {
        let expires = if l["reservation"] == true {
            "never (reservation)".to_string()
        } else {
            s(&l["expiration"])
        };
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<9} {:<18} {:<31} {}",
            s(&l["subnet"]),
            s(&l["public_ip"]),
            s(&l["backend_type"]),
            s(&l["vtep_mac"]),
            expires,
            s(&l["role"]),
        );
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Renders the status document for people.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", s(&doc["summary"]));
    let _ = writeln!(
        out,
        "network {}  vni {}  port {}  iface {} ({})  device {} mtu {}",
        s(&doc["network"]["network"]),
        s(&doc["network"]["vni"]),
        s(&doc["network"]["port"]),
        s(&doc["iface"]["name"]),
        s(&doc["iface"]["public_ip"]),
        s(&doc["device"]["name"]),
        s(&doc["device"]["mtu"]),
    );
    let _ = writeln!(
        out,
        "lease {}  public-ip {}  vtep-mac {}  expires {}",
        s(&doc["lease"]["subnet"]),
        s(&doc["lease"]["public_ip"]),
        s(&doc["lease"]["vtep_mac"]),
        s(&doc["lease"]["expiration"]),
    );
    let _ = writeln!(out);
    out.push_str(&render_peers(doc));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:<5} {:<10} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "QUEUE", "CORE", "MODE", "RX FRAMES", "RX BYTES", "TX FRAMES", "TX BYTES", "DROPS"
    );
    let drops = |c: &Value| -> u64 {
        ["rx_drops", "tx_drops"]
            .iter()
            .filter_map(|k| c[k].as_object())
            .flat_map(|m| m.values().filter_map(Value::as_u64))
            .sum()
    };
    for w in doc["workers"].as_array().cloned().unwrap_or_default() {
        let c = &w["counters"];
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:<10} {:>12} {:>14} {:>12} {:>14} {:>10}",
            s(&w["queue"]),
            s(&w["core"]),
            s(&w["underlay"]["socket_mode"]),
            s(&c["underlay_rx_frames"]),
            s(&c["underlay_rx_bytes"]),
            s(&c["underlay_tx_frames"]),
            s(&c["underlay_tx_bytes"]),
            drops(c),
        );
    }
    let mut reasons: Vec<(String, u64)> = ["rx_drops", "tx_drops"]
        .iter()
        .filter_map(|k| doc["totals"][k].as_object())
        .flat_map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k.clone(), n)))
        })
        .collect();
    reasons.sort();
    if !reasons.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "drops by reason:");
        for (reason, n) in reasons {
            let _ = writeln!(out, "  {reason:<24} {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_leases_with_roles_and_reservations() {
        let doc = json!({"leases": [
            {"subnet": "10.244.3.0-24", "public_ip": "192.0.2.1", "backend_type": "vxlan", "vtep_mac": "02:00:00:00:00:01", "expiration": "2026-11-22T00:00:00Z", "reservation": false, "role": "this node"},
            {"subnet": "10.244.9.0-24", "public_ip": "192.0.2.9", "backend_type": "host-gw", "vtep_mac": null, "expiration": null, "reservation": true, "role": "ignored: not vxlan"},
        ]});
        let text = render_leases(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains("this node") && lines[1].contains("2026-11-22T00:00:00Z"));
        assert!(lines[2].contains("never (reservation)") && lines[2].contains("host-gw"));
    }

    #[test]
    fn renders_peers_workers_and_nonzero_drops() {
        let doc = json!({
            "summary": "backend xdp: XDP native on eth0",
            "network": {"network": "10.244.0.0/16", "vni": 1, "port": 8472},
            "iface": {"name": "eth0", "public_ip": "192.0.2.1"},
            "device": {"name": "vxdp.1", "mtu": 1450},
            "lease": {"subnet": "10.244.3.0/24", "public_ip": "192.0.2.1", "vtep_mac": "02:00:00:00:00:01", "expiration": null},
            "peers": [{"subnet": "10.244.7.0/24", "public_ip": "192.0.2.2", "vtep_mac": "02:00:00:00:00:02", "next_hop_mac": "aa:bb:cc:dd:ee:ff", "state": "resolved"}],
            "workers": [{"queue": 0, "core": 1, "underlay": {"kind": "af-xdp", "socket_mode": "copy"}, "counters": {"underlay_rx_frames": 10, "underlay_rx_bytes": 1000, "underlay_tx_frames": 5, "underlay_tx_bytes": 500, "rx_drops": {"wrong_vni": 2}, "tx_drops": {"no_fdb_entry": 1}}}],
            "totals": {"rx_drops": {"wrong_vni": 2, "unknown_peer": 0}, "tx_drops": {"no_fdb_entry": 1}},
        });
        let text = render(&doc);
        assert!(text.contains("10.244.7.0/24"), "{text}");
        assert!(text.contains("aa:bb:cc:dd:ee:ff"));
        assert!(text.contains("wrong_vni"));
        assert!(
            !text.contains("unknown_peer"),
            "zero counters are not listed: {text}"
        );
        let worker_line = text.lines().find(|l| l.starts_with("0 ")).unwrap();
        assert!(
            worker_line.contains("copy") && worker_line.trim_end().ends_with('3'),
            "{worker_line}"
        );
    }
}
