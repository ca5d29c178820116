//! The status document: one typed value that the daemon fills, the control socket serves as
//! JSON, `vxdp status` renders as tidy columns like `ip -s`, and `/metrics` renders for
//! Prometheus ([`crate::metrics`]). The three can never disagree on a field's name or meaning,
//! because there is one definition of each.

use std::fmt::Write as _;

use dataplane::backend::userspace::WorkerStatus;
use dataplane::stats::WorkerCounters;
use dataplane::steering::{XdpCounters, XdpMode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::StatusArgs;
use crate::control_socket;

/// Everything `vxdp status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// vxdp's version.
    pub version: String,
    /// Whether the subnet file is written and the node forwards.
    pub ready: bool,
    /// `xdp`, `udp` or `kernel`.
    pub backend: String,
    /// The backend's one-line description: modes, and why it was chosen.
    pub summary: String,
    /// The XDP attach mode, with AF_XDP.
    pub xdp_mode: Option<XdpMode>,
    /// The external interface.
    pub iface: IfaceStatus,
    /// The overlay device.
    pub device: DeviceStatus,
    /// flannel's network config, as far as it shows.
    pub network: NetworkStatus,
    /// This node's lease.
    pub lease: LeaseStatus,
    /// Seconds since the lease store last reported a change.
    pub last_watch_event_age_seconds: f64,
    /// The peers the dataplane forwards to.
    pub peers: Vec<PeerStatus>,
    /// Every lease the store reported, this node's included.
    pub leases: Vec<LeaseRow>,
    /// The workers of the userspace dataplane (none with the kernel backend).
    pub workers: Vec<WorkerStatus>,
    /// The workers' counters, summed.
    pub totals: WorkerCounters,
    /// The XDP steering program's counters, with AF_XDP.
    pub xdp_counters: Option<XdpCounters>,
}

/// The external interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IfaceStatus {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// The VTEP address peers send to (none in an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Its MTU.
    pub mtu: u32,
    /// The IPv6 VTEP address peers send the IPv6 overlay to (dual stack, IPv6-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
}

/// The overlay device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its name (`vxdp.<VNI>`).
    pub name: String,
    /// The overlay MTU.
    pub mtu: u32,
    /// This node's VtepMAC.
    pub vtep_mac: String,
    /// The IPv6 overlay's link (`vxdp-v6.<VNI>`, kernel backend, dual stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6_name: Option<String>,
}

/// flannel's network config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The IPv4 overlay network (`Network`; none in an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The IPv6 overlay network (`IPv6Network`), with `EnableIPv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<String>,
}

/// This node's lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The IPv4 subnet (none in an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Its PublicIP (none in an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Its VtepMAC (`BackendData`; none in an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// When it lapses unless renewed (RFC 3339); none for a reservation or a Kubernetes lease.
    pub expiration: Option<String>,
    /// The same as Unix time.
    pub expiration_unix: Option<i64>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<String>,
    /// Its PublicIPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    /// Its IPv6 VtepMAC (`BackendV6Data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac_v6: Option<String>,
}

/// One peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its IPv4 subnet (none for an IPv6-only peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Its PublicIP (none for an IPv6-only peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Its VtepMAC (none for an IPv6-only peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// The underlay next hop's MAC (AF_XDP resolves it).
    pub next_hop_mac: Option<String>,
    /// `resolved`, `resolving`, `kernel-routed`, `direct-routing`, `programmed` or a problem.
    pub state: String,
    /// Its IPv6 subnet (dual stack, IPv6-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<String>,
    /// Its PublicIPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    /// Its IPv6 VtepMAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac_v6: Option<String>,
    /// The state of the underlay path to its PublicIPv6, where vxdp resolves it (AF_XDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_v6: Option<String>,
}

/// One lease in the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// Its key.
    pub subnet: String,
    /// Its PublicIP.
    pub public_ip: String,
    /// Its BackendType.
    pub backend_type: String,
    /// Its VtepMAC, if it has vxlan data.
    pub vtep_mac: Option<String>,
    /// When it lapses (RFC 3339).
    pub expiration: Option<String>,
    /// A reservation never lapses.
    pub reservation: bool,
    /// `this node`, `peer`, or `ignored: why`.
    pub role: String,
}

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
    let raw = control_socket::query(&args.control_socket, "status")?;
    if let Some(err) = raw.get("error").and_then(Value::as_str) {
        anyhow::bail!("the daemon answered: {err}");
    }
    let doc: StatusDoc = serde_json::from_value(raw).map_err(|e| {
        anyhow::anyhow!(
            "the daemon's status does not read as this vxdp's ({e}): is `vxdp status` of another \
             version than the running daemon?"
        )
    })?;
    let out = match (view, args.json) {
        (View::Status, true) => serde_json::to_string_pretty(&doc)? + "\n",
        (View::Peers, true) => serde_json::to_string_pretty(&doc.peers)? + "\n",
        (View::Leases, true) => serde_json::to_string_pretty(&doc.leases)? + "\n",
        (View::Status, false) => render(&doc),
        (View::Peers, false) => render_peers(&doc),
        (View::Leases, false) => render_leases(&doc),
    };
    print!("{out}");
    Ok(())
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// The peer table.
pub fn render_peers(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<18} {:<18} STATE",
        "PEER SUBNET", "PUBLIC IP", "VTEP MAC", "NEXT-HOP MAC"
    );
    for p in &doc.peers {
        if let Some(subnet) = &p.subnet {
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:<18} {:<18} {}",
                subnet,
                or_dash(&p.public_ip),
                or_dash(&p.vtep_mac),
                or_dash(&p.next_hop_mac),
                p.state,
            );
        }
        // The IPv6 half of a dual-stack peer, on a line of its own (an IPv6-only peer's only
        // line).
        if let Some(sn6) = &p.ipv6_subnet {
            let ipv6_only = p.subnet.is_none();
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:<18} {:<18} {}",
                sn6,
                or_dash(&p.public_ipv6),
                or_dash(&p.vtep_mac_v6),
                if ipv6_only {
                    or_dash(&p.next_hop_mac)
                } else {
                    "-"
                },
                match (&p.public_ipv6, ipv6_only) {
                    (Some(_), _) => p.state_v6.as_deref().unwrap_or(&p.state),
                    (None, false) => "no PublicIPv6: IPv4 only",
                    (None, true) => "no PublicIPv6: unreachable",
                },
            );
        }
    }
    out
}

/// The lease table.
pub fn render_leases(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<9} {:<18} {:<31} ROLE",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES"
    );
    for l in &doc.leases {
        let expires = if l.reservation {
            "never (reservation)"
        } else {
            or_dash(&l.expiration)
        };
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<9} {:<18} {:<31} {}",
            l.subnet,
            l.public_ip,
            l.backend_type,
            or_dash(&l.vtep_mac),
            expires,
            l.role,
        );
    }
    out
}

/// How a worker's underlay reads in one column.
fn underlay_mode(w: &WorkerStatus) -> String {
    use dataplane::backend::userspace::UnderlayStatus;
    match &w.underlay {
        UnderlayStatus::AfXdp { socket_mode, .. } => socket_mode.to_string(),
        UnderlayStatus::Udp { gso, gro, .. } => {
            let gso = serde_json::to_value(gso)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("udp gso:{gso} gro:{}", if *gro { "on" } else { "off" })
        }
    }
}

/// Renders the status document for people.
pub fn render(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", doc.summary);
    let ipv6_only = doc.network.network.is_none();
    let _ = writeln!(
        out,
        "network {}  vni {}  port {}  iface {} ({})  device {} mtu {}",
        match &doc.network.network {
            Some(n) => n.as_str(),
            None => "none (IPv6-only)",
        },
        doc.network.vni,
        doc.network.port,
        doc.iface.name,
        if ipv6_only {
            or_dash(&doc.iface.public_ipv6)
        } else {
            or_dash(&doc.iface.public_ip)
        },
        doc.device.name,
        doc.device.mtu,
    );
    if let Some(subnet) = &doc.lease.subnet {
        let _ = writeln!(
            out,
            "lease {}  public-ip {}  vtep-mac {}  expires {}",
            subnet,
            or_dash(&doc.lease.public_ip),
            or_dash(&doc.lease.vtep_mac),
            or_dash(&doc.lease.expiration),
        );
    }
    if let Some(sn6) = &doc.lease.ipv6_subnet {
        let _ = writeln!(
            out,
            "lease6 {}  network6 {}  public-ipv6 {}  vtep-mac {}  device {}{}",
            sn6,
            or_dash(&doc.network.ipv6_network),
            or_dash(&doc.lease.public_ipv6),
            or_dash(&doc.lease.vtep_mac_v6),
            doc.device.v6_name.as_deref().unwrap_or(&doc.device.name),
            if doc.lease.subnet.is_none() {
                format!("  expires {}", or_dash(&doc.lease.expiration))
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(out);
    out.push_str(&render_peers(doc));
    if !doc.workers.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:<22} {:>12} {:>14} {:>12} {:>14} {:>10}",
            "QUEUE", "CORE", "UNDERLAY", "RX FRAMES", "RX BYTES", "TX FRAMES", "TX BYTES", "DROPS"
        );
    }
    for w in &doc.workers {
        let c = &w.counters;
        let drops: u64 = c.rx_drops.values().chain(c.tx_drops.values()).sum();
        let core = w.core.map_or_else(|| "-".to_string(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:<22} {:>12} {:>14} {:>12} {:>14} {:>10}",
            w.queue,
            core,
            underlay_mode(w),
            c.underlay_rx_frames,
            c.underlay_rx_bytes,
            c.underlay_tx_frames,
            c.underlay_tx_bytes,
            drops,
        );
    }
    let mut reasons: Vec<(&String, &u64)> = doc
        .totals
        .rx_drops
        .iter()
        .chain(doc.totals.tx_drops.iter())
        .filter(|(_, n)| **n > 0)
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
pub(crate) mod tests {
    use super::*;
    use dataplane::backend::userspace::UnderlayStatus;
    use dataplane::stats::{TxDrop, WorkerStats};
    use dataplane::underlay::udp::GsoStatus;
    use packet::tunnel::DropReason;

    pub(crate) fn sample() -> StatusDoc {
        let stats = WorkerStats::default();
        stats.underlay_rx_frames.add(10);
        stats.underlay_rx_bytes.add(1000);
        stats.underlay_tx_frames.add(5);
        stats.underlay_tx_bytes.add(500);
        stats.tap_rx_frames.add(7);
        stats.tap_rx_bytes.add(700);
        stats.rx_drop(DropReason::WrongVni);
        stats.rx_drop(DropReason::WrongVni);
        stats.tx_drop(TxDrop::NoFdbEntry);
        let counters = stats.snapshot();
        StatusDoc {
            version: "0.1.0".into(),
            ready: true,
            backend: "udp".into(),
            summary: "backend udp: UDP sockets on eth0".into(),
            xdp_mode: None,
            iface: IfaceStatus {
                name: "eth0".into(),
                index: 2,
                public_ip: Some("192.0.2.1".into()),
                mtu: 1500,
                public_ipv6: None,
            },
            device: DeviceStatus {
                name: "vxdp.1".into(),
                mtu: 1450,
                vtep_mac: "02:00:00:00:00:01".into(),
                v6_name: None,
            },
            network: NetworkStatus {
                network: Some("10.244.0.0/16".into()),
                vni: 1,
                port: 8472,
                ipv6_network: None,
            },
            lease: LeaseStatus {
                subnet: Some("10.244.3.0/24".into()),
                public_ip: Some("192.0.2.1".into()),
                vtep_mac: Some("02:00:00:00:00:01".into()),
                expiration: Some("2026-11-22T00:00:00Z".into()),
                expiration_unix: Some(1_800_000_000),
                ..LeaseStatus::default()
            },
            last_watch_event_age_seconds: 1.5,
            peers: vec![PeerStatus {
                subnet: Some("10.244.7.0/24".into()),
                public_ip: Some("192.0.2.2".into()),
                vtep_mac: Some("02:00:00:00:00:02".into()),
                next_hop_mac: Some("aa:bb:cc:dd:ee:ff".into()),
                state: "resolved".into(),
                ..PeerStatus::default()
            }],
            leases: vec![
                LeaseRow {
                    subnet: "10.244.3.0-24".into(),
                    public_ip: "192.0.2.1".into(),
                    backend_type: "vxlan".into(),
                    vtep_mac: Some("02:00:00:00:00:01".into()),
                    expiration: Some("2026-11-22T00:00:00Z".into()),
                    reservation: false,
                    role: "this node".into(),
                },
                LeaseRow {
                    subnet: "10.244.9.0-24".into(),
                    public_ip: "192.0.2.9".into(),
                    backend_type: "host-gw".into(),
                    vtep_mac: None,
                    expiration: None,
                    reservation: true,
                    role: "ignored: not vxlan".into(),
                },
            ],
            workers: vec![WorkerStatus {
                queue: 0,
                core: Some(1),
                underlay: UnderlayStatus::Udp {
                    gso: GsoStatus::On,
                    gro: true,
                    source_ports: vec![40000, 40001],
                },
                counters: counters.clone(),
            }],
            totals: counters,
            xdp_counters: None,
        }
    }

    #[test]
    fn the_document_round_trips_through_its_json() {
        let doc = sample();
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<StatusDoc>(&json).unwrap(), doc);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["workers"][0]["underlay"]["kind"], "udp");
        assert_eq!(v["totals"]["tap_rx_bytes"], 700);
    }

    #[test]
    fn renders_leases_with_roles_and_reservations() {
        let text = render_leases(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains("this node") && lines[1].contains("2026-11-22T00:00:00Z"));
        assert!(lines[2].contains("never (reservation)") && lines[2].contains("host-gw"));
    }

    /// A dual-stack kernel-backend node's document.
    fn dual_stack_sample() -> StatusDoc {
        let mut doc = sample();
        doc.backend = "kernel".into();
        doc.workers.clear();
        doc.iface.public_ipv6 = Some("2001:db8::1".into());
        doc.device.v6_name = Some("vxdp-v6.1".into());
        doc.network.ipv6_network = Some("fd00:5::/48".into());
        doc.lease.ipv6_subnet = Some("fd00:5:0:3::/64".into());
        doc.lease.public_ipv6 = Some("2001:db8::1".into());
        doc.lease.vtep_mac_v6 = Some("02:00:00:00:06:01".into());
        doc.peers[0].ipv6_subnet = Some("fd00:5:0:7::/64".into());
        doc.peers[0].public_ipv6 = Some("2001:db8::2".into());
        doc.peers[0].vtep_mac_v6 = Some("02:00:00:00:06:02".into());
        doc.peers[0].state = "programmed".into();
        doc
    }

    #[test]
    fn dual_stack_fields_show_and_are_absent_without_ipv6() {
        let json = serde_json::to_value(sample()).unwrap();
        assert!(json["lease"].get("ipv6_subnet").is_none(), "{json:#}");
        assert!(json["peers"][0].get("public_ipv6").is_none(), "{json:#}");
        let doc = dual_stack_sample();
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<StatusDoc>(&json).unwrap(), doc);
        let text = render(&doc);
        assert!(
            text.contains("lease6 fd00:5:0:3::/64  network6 fd00:5::/48  public-ipv6 2001:db8::1  vtep-mac 02:00:00:00:06:01  device vxdp-v6.1"),
            "{text}"
        );
        let v6_row = text
            .lines()
            .find(|l| l.starts_with("fd00:5:0:7::/64"))
            .unwrap_or_else(|| panic!("the peer's IPv6 row: {text}"));
        assert!(
            v6_row.contains("2001:db8::2")
                && v6_row.contains("02:00:00:00:06:02")
                && v6_row.ends_with("programmed"),
            "{v6_row}"
        );
        let metrics = crate::metrics::render(&doc);
        assert!(metrics.contains("\nvxdp_peers_ipv6 1\n"), "{metrics}");
        assert!(!crate::metrics::render(&sample()).contains("vxdp_peers_ipv6"));
    }

    /// An IPv6-only node: no IPv4 network, lease or peer half is printed or assumed.
    #[test]
    fn ipv6_only_shows_no_ipv4_lease() {
        let mut doc = dual_stack_sample();
        doc.iface.public_ip = None;
        doc.network.network = None;
        doc.lease.subnet = None;
        doc.lease.public_ip = None;
        doc.lease.vtep_mac = None;
        doc.peers[0].subnet = None;
        doc.peers[0].public_ip = None;
        doc.peers[0].vtep_mac = None;
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<StatusDoc>(&json).unwrap(), doc);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert!(v["lease"].get("subnet").is_none(), "{v:#}");
        assert!(v["network"].get("network").is_none(), "{v:#}");
        let text = render(&doc);
        assert!(
            !text.contains("10.244.") && !text.contains("192.0.2."),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("lease ")), "{text}");
        assert!(text.contains("network none (IPv6-only)"), "{text}");
        assert!(text.contains("iface eth0 (2001:db8::1)"), "{text}");
        assert!(text.contains("lease6 fd00:5:0:3::/64"), "{text}");
        assert!(text.contains("expires 2026-11-22T00:00:00Z"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("fd00:5:0:7::/64"))
            .unwrap_or_else(|| panic!("the peer's row: {text}"));
        assert!(
            row.contains("2001:db8::2") && row.contains("aa:bb:cc:dd:ee:ff"),
            "{row}"
        );
        let metrics = crate::metrics::render(&doc);
        assert!(metrics.contains("subnet=\"fd00:5:0:3::/64\""), "{metrics}");
        assert!(metrics.contains("\nvxdp_peers_ipv6 1\n"), "{metrics}");
    }

    #[test]
    fn renders_peers_workers_and_nonzero_drops() {
        let text = render(&sample());
        assert!(text.contains("10.244.7.0/24"), "{text}");
        assert!(text.contains("aa:bb:cc:dd:ee:ff"));
        assert!(text.contains("wrong_vni"));
        assert!(
            !text.contains("unknown_peer"),
            "zero counters are not listed: {text}"
        );
        let worker_line = text.lines().find(|l| l.starts_with("0 ")).unwrap();
        assert!(
            worker_line.contains("udp gso:on gro:on") && worker_line.trim_end().ends_with('3'),
            "{worker_line}"
        );
    }
}
