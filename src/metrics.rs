//! Prometheus text exposition of the status document (`/metrics` on the health endpoint): the
//! same typed [`StatusDoc`] `vxdp status` renders, so the two never disagree. Every worker
//! counter appears under the name and help text it is declared with
//! ([`WorkerCounters::FIELDS`]); nothing here names a counter a second time.

use std::fmt::Write as _;

use dataplane::backend::userspace::UnderlayStatus;
use dataplane::stats::WorkerCounters;

use crate::status::StatusDoc;

fn label(raw: &str) -> String {
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
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The frame and byte counters by path: (path label, frames counter, bytes counter).
const PATHS: [(&str, &str, &str); 4] = [
    ("underlay_rx", "underlay_rx_frames", "underlay_rx_bytes"),
    ("underlay_tx", "underlay_tx_frames", "underlay_tx_bytes"),
    ("tap_rx", "tap_rx_frames", "tap_rx_bytes"),
    ("tap_tx", "tap_tx_frames", "tap_tx_bytes"),
];

/// Renders the status document as Prometheus text.
pub fn render(doc: &StatusDoc) -> String {
    let mut o = Out(String::new());
    o.family(
        "vxdp_info",
        "gauge",
        "Backend and modes of this vxdp (always 1).",
    );
    o.sample(
        "vxdp_info",
        &[
            ("version", doc.version.clone()),
            ("backend", doc.backend.clone()),
            (
                "xdp_mode",
                doc.xdp_mode.map(|m| m.to_string()).unwrap_or_default(),
            ),
            ("iface", doc.iface.name.clone()),
            ("device", doc.device.name.clone()),
            (
                "subnet",
                doc.lease
                    .subnet
                    .clone()
                    .or_else(|| doc.lease.ipv6_subnet.clone())
                    .unwrap_or_default(),
            ),
        ],
        1,
    );
    o.family(
        "vxdp_ready",
        "gauge",
        "1 once the subnet file is written and the node forwards.",
    );
    o.sample("vxdp_ready", &[], u8::from(doc.ready));
    o.family(
        "vxdp_peers",
        "gauge",
        "Peers programmed into the dataplane.",
    );
    o.sample("vxdp_peers", &[], doc.peers.len());
    if doc.lease.ipv6_subnet.is_some() {
        o.family(
            "vxdp_peers_ipv6",
            "gauge",
            "Peers whose IPv6 half (IPv6 subnet and PublicIPv6) is programmed (dual stack).",
        );
        let v6 = doc
            .peers
            .iter()
            .filter(|p| p.ipv6_subnet.is_some() && p.public_ipv6.is_some())
            .count();
        o.sample("vxdp_peers_ipv6", &[], v6);
    }
    if let Some(exp) = doc.lease.expiration_unix {
        o.family(
            "vxdp_lease_expiration_timestamp_seconds",
            "gauge",
            "When this node's lease lapses unless renewed (Unix time).",
        );
        o.sample("vxdp_lease_expiration_timestamp_seconds", &[], exp);
    }
    o.family(
        "vxdp_last_watch_event_age_seconds",
        "gauge",
        "Seconds since the lease store last reported a change.",
    );
    o.sample(
        "vxdp_last_watch_event_age_seconds",
        &[],
        format!("{:.3}", doc.last_watch_event_age_seconds),
    );

    let values: Vec<(String, Vec<(&'static str, u64)>)> = doc
        .workers
        .iter()
        .map(|w| (w.queue.to_string(), w.counters.values()))
        .collect();
    let value = |v: &[(&'static str, u64)], name: &str| {
        v.iter().find(|(n, _)| *n == name).map_or(0, |(_, x)| *x)
    };
    for (family, unit, pick) in [
        ("vxdp_frames_total", "Frames", 1usize),
        ("vxdp_bytes_total", "Bytes", 2),
    ] {
        o.family(
            family,
            "counter",
            &format!(
                "{unit} moved by the workers, by path (underlay_rx/tx: VXLAN datagrams from/to \
                 the underlay; tap_rx/tx: frames read from/written to the TAP)."
            ),
        );
        for (queue, v) in &values {
            for path in PATHS {
                let counter = if pick == 1 { path.1 } else { path.2 };
                o.sample(
                    family,
                    &[("queue", queue.clone()), ("path", path.0.to_string())],
                    value(v, counter),
                );
            }
        }
    }
    // Every other worker counter, under its own name.
    for (name, help) in WorkerCounters::FIELDS {
        if PATHS.iter().any(|p| p.1 == *name || p.2 == *name) {
            continue;
        }
        let family = format!("vxdp_{name}_total");
        o.family(&family, "counter", help.trim());
        for (queue, v) in &values {
            o.sample(&family, &[("queue", queue.clone())], value(v, name));
        }
    }
    o.family(
        "vxdp_drops_total",
        "counter",
        "Frames dropped by the workers, by direction (rx: from the underlay, tx: from the TAP) and reason.",
    );
    for w in &doc.workers {
        for (dir, drops) in [("rx", &w.counters.rx_drops), ("tx", &w.counters.tx_drops)] {
            for (reason, n) in drops {
                o.sample(
                    "vxdp_drops_total",
                    &[
                        ("queue", w.queue.to_string()),
                        ("direction", dir.into()),
                        ("reason", reason.clone()),
                    ],
                    n,
                );
            }
        }
    }
    let sockets: Vec<_> = doc
        .workers
        .iter()
        .filter_map(|w| match &w.underlay {
            UnderlayStatus::AfXdp { socket, .. } => Some((w.queue, socket)),
            UnderlayStatus::Udp { .. } => None,
        })
        .collect();
    if !sockets.is_empty() {
        o.family(
            "vxdp_xsk_kernel_drops_total",
            "counter",
            "Frames the kernel dropped at an AF_XDP socket, by reason.",
        );
        for (queue, s) in sockets {
            for (reason, n) in [
                ("rx_dropped", s.rx_dropped),
                ("rx_ring_full", s.rx_ring_full),
                ("rx_fill_ring_empty", s.rx_fill_ring_empty),
                ("tx_invalid_descs", s.tx_invalid_descs),
            ] {
                o.sample(
                    "vxdp_xsk_kernel_drops_total",
                    &[("queue", queue.to_string()), ("reason", reason.into())],
                    n,
                );
            }
        }
    }
    if let Some(c) = doc.xdp_counters {
        o.family(
            "vxdp_xdp_frames_total",
            "counter",
            "Frames seen by the XDP steering program, by verdict.",
        );
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(c) {
            for (verdict, v) in m {
                o.sample(
                    "vxdp_xdp_frames_total",
                    &[("verdict", verdict)],
                    v.as_u64().unwrap_or(0),
                );
            }
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    #[test]
    fn renders_labelled_counters_from_the_document() {
        let text = render(&sample());
        for line in [
            "vxdp_peers 1",
            "vxdp_ready 1",
            "vxdp_frames_total{queue=\"0\",path=\"underlay_rx\"} 10",
            "vxdp_bytes_total{queue=\"0\",path=\"underlay_rx\"} 1000",
            "vxdp_drops_total{queue=\"0\",direction=\"rx\",reason=\"wrong_vni\"} 2",
            "vxdp_drops_total{queue=\"0\",direction=\"tx\",reason=\"no_fdb_entry\"} 1",
            "vxdp_lease_expiration_timestamp_seconds 1800000000",
            "vxdp_last_watch_event_age_seconds 1.500",
            "vxdp_arp_replies_total{queue=\"0\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("vxdp_info{version=\"0.1.0\",backend=\"udp\""));
    }

    #[test]
    fn bytes_read_from_the_tap_are_exported() {
        // This series was missing: /metrics looked up a tap_rx_bytes counter nobody kept.
        let text = render(&sample());
        assert!(
            text.lines()
                .any(|l| l == "vxdp_bytes_total{queue=\"0\",path=\"tap_rx\"} 700"),
            "{text}"
        );
    }

    #[test]
    fn every_declared_counter_is_exported_with_its_help() {
        let text = render(&sample());
        for (name, help) in WorkerCounters::FIELDS {
            let in_paths = PATHS.iter().any(|p| p.1 == *name || p.2 == *name);
            if in_paths {
                continue;
            }
            let family = format!("vxdp_{name}_total");
            assert!(
                text.contains(&format!("# HELP {family} {}", help.trim())),
                "{family}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
