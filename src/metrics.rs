//! Prometheus text exposition of the status document (`/metrics` on the health endpoint), so
//! `vxdp status` and the metrics can never disagree: both render the same JSON.

use std::fmt::Write as _;

use serde_json::Value;

fn label(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    raw.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Renders the status document as Prometheus text.
pub fn render(doc: &Value) -> String {
    let mut o = Out(String::new());
    o.family(
        "vxdp_info",
        "gauge",
        "Backend and modes of this vxdp (always 1).",
    );
    o.sample(
        "vxdp_info",
        &[
            ("version", label(&doc["version"])),
            ("backend", label(&doc["backend"])),
            ("xdp_mode", label(&doc["xdp_mode"])),
            ("iface", label(&doc["iface"]["name"])),
            ("device", label(&doc["device"]["name"])),
            ("subnet", label(&doc["lease"]["subnet"])),
        ],
        1,
    );
    o.family(
        "vxdp_peers",
        "gauge",
        "Peers programmed into the dataplane.",
    );
    o.sample(
        "vxdp_peers",
        &[],
        doc["peers"].as_array().map_or(0, Vec::len),
    );
    if let Some(exp) = doc["lease"]["expiration_unix"].as_i64() {
        o.family(
            "vxdp_lease_expiration_timestamp_seconds",
            "gauge",
            "When this node's lease lapses unless renewed (Unix time).",
        );
        o.sample("vxdp_lease_expiration_timestamp_seconds", &[], exp);
    }
    if let Some(age) = doc["last_watch_event_age_seconds"].as_f64() {
        o.family(
            "vxdp_last_watch_event_age_seconds",
            "gauge",
            "Seconds since the lease store last reported a change.",
        );
        o.sample(
            "vxdp_last_watch_event_age_seconds",
            &[],
            format!("{age:.3}"),
        );
    }

    let workers = doc["workers"].as_array().cloned().unwrap_or_default();
    let counters = [
        (
            "vxdp_frames_total",
            "frames",
            "Frames moved by the workers, by path.",
        ),
        (
            "vxdp_bytes_total",
            "bytes",
            "Bytes moved by the workers, by path.",
        ),
    ];
    for (name, unit, help) in counters {
        o.family(name, "counter", help);
        for w in &workers {
            for path in ["underlay_rx", "underlay_tx", "tap_rx", "tap_tx"] {
                if let Some(v) = w["counters"][format!("{path}_{unit}")].as_u64() {
                    o.sample(
                        name,
                        &[("queue", label(&w["queue"])), ("path", path.into())],
                        v,
                    );
                }
            }
        }
    }
    o.family(
        "vxdp_drops_total",
        "counter",
        "Frames dropped by the workers, by direction (rx: from the NIC, tx: from the TAP) and reason.",
    );
    for w in &workers {
        for (dir, key) in [("rx", "rx_drops"), ("tx", "tx_drops")] {
            if let Some(m) = w["counters"][key].as_object() {
                for (reason, v) in m {
                    o.sample(
                        "vxdp_drops_total",
                        &[
                            ("queue", label(&w["queue"])),
                            ("direction", dir.into()),
                            ("reason", reason.clone()),
                        ],
                        v.as_u64().unwrap_or(0),
                    );
                }
            }
        }
    }
    o.family(
        "vxdp_arp_replies_total",
        "counter",
        "ARP requests answered from the ARP table.",
    );
    for w in &workers {
        o.sample(
            "vxdp_arp_replies_total",
            &[("queue", label(&w["queue"]))],
            w["counters"]["arp_replies"].as_u64().unwrap_or(0),
        );
    }
    o.family(
        "vxdp_xsk_kernel_drops_total",
        "counter",
        "Frames the kernel dropped at an AF_XDP socket, by reason.",
    );
    for w in &workers {
        if let Some(m) = w["underlay"]["socket"].as_object() {
            for (reason, v) in m {
                o.sample(
                    "vxdp_xsk_kernel_drops_total",
                    &[("queue", label(&w["queue"])), ("reason", reason.clone())],
                    v.as_u64().unwrap_or(0),
                );
            }
        }
    }
    if let Some(m) = doc["xdp_counters"].as_object() {
        o.family(
            "vxdp_xdp_frames_total",
            "counter",
            "Frames seen by the XDP steering program, by verdict.",
        );
        for (verdict, v) in m {
            o.sample(
                "vxdp_xdp_frames_total",
                &[("verdict", verdict.clone())],
                v.as_u64().unwrap_or(0),
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_labelled_counters() {
        let doc = json!({
            "version": "0.1.0", "backend": "xdp", "xdp_mode": "native",
            "iface": {"name": "eth0"}, "device": {"name": "vxdp.1"},
            "lease": {"subnet": "10.244.3.0/24", "expiration_unix": 1_800_000_000},
            "last_watch_event_age_seconds": 1.5,
            "peers": [{}, {}],
            "workers": [{"queue": 0, "counters": {"underlay_rx_frames": 5, "underlay_rx_bytes": 700,
                "rx_drops": {"wrong_vni": 2}, "tx_drops": {"no_fdb_entry": 1}, "arp_replies": 3},
                "underlay": {"socket": {"rx_ring_full": 4}}}],
            "xdp_counters": {"redirected": 9, "passed": 1},
        });
        let text = render(&doc);
        for line in [
            "vxdp_peers 2",
            "vxdp_frames_total{queue=\"0\",path=\"underlay_rx\"} 5",
            "vxdp_bytes_total{queue=\"0\",path=\"underlay_rx\"} 700",
            "vxdp_drops_total{queue=\"0\",direction=\"rx\",reason=\"wrong_vni\"} 2",
            "vxdp_drops_total{queue=\"0\",direction=\"tx\",reason=\"no_fdb_entry\"} 1",
            "vxdp_xsk_kernel_drops_total{queue=\"0\",reason=\"rx_ring_full\"} 4",
            "vxdp_xdp_frames_total{verdict=\"redirected\"} 9",
            "vxdp_lease_expiration_timestamp_seconds 1800000000",
            "vxdp_last_watch_event_age_seconds 1.500",
            "vxdp_arp_replies_total{queue=\"0\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("vxdp_info{version=\"0.1.0\",backend=\"xdp\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(&json!("a\"b\\c")), "a\\\"b\\\\c");
    }
}
