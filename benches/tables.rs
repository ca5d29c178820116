//! Per-frame cost of the peer-table lookups the workers make, also while another thread keeps
//! publishing new snapshots (the control side updating leases).
//!
//!   cargo bench --bench tables          (or scripts/bench.sh --micro)

#![allow(
    clippy::cast_possible_truncation,
    reason = "benchmark addresses are made from small counters"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use control::lease::SubnetKey;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::tables::{PeerEntry, PeerTables};
use ipnet::Ipv4Net;
use packet::tunnel::{OuterHeader, OuterParams};
use packet::wire::{MacAddr, Vni};

/// The outer headers towards one peer: entries carry them, so a lookup clones nothing.
fn outer(peer: Ipv4Addr) -> OuterHeader {
    OuterHeader::new(&OuterParams {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0xaa]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0xbb]),
        src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst_ip: IpAddr::V4(peer),
        dst_port: 8472,
        vni: Vni::new(1).unwrap(),
        udp_checksum: false,
        src_port_range: OuterParams::DEFAULT_SRC_PORT_RANGE,
        ttl: 64,
    })
    .unwrap()
}

fn peer_entry(i: u32) -> (SubnetKey, PeerEntry) {
    let b = i.to_be_bytes();
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, b[3], 0), 24).unwrap();
    let vtep_ip = Ipv4Addr::new(192, 0, b[2], b[3]);
    (
        SubnetKey::new(subnet, None),
        PeerEntry {
            vtep_mac: MacAddr([0x02, 0, 0, b[1], b[2], b[3]]),
            vtep_ip: IpAddr::V4(vtep_ip),
            gateway_v4: Some(subnet.network()),
            outer: Some(outer(vtep_ip)),
            v6: None,
        },
    )
}

fn tables(c: &mut Criterion) {
    let mut g = c.benchmark_group("tables");
    g.throughput(Throughput::Elements(1));
    for peers in [10u32, 250] {
        let tables = Arc::new(PeerTables::new());
        tables.update(|w| {
            for i in 0..peers {
                let (s, e) = peer_entry(i);
                w.upsert(s, e);
            }
        });
        let probe = MacAddr([0x02, 0, 0, 0, 0, (peers / 2) as u8]);
        let gw = Ipv4Addr::new(10, 244, (peers / 2) as u8, 0);
        let src = IpAddr::V4(Ipv4Addr::new(192, 0, 0, (peers / 2) as u8));

        let mut reader = tables.reader();
        g.bench_function(format!("lookup_{peers}_peers"), |b| {
            b.iter(|| {
                let snap = reader.load();
                black_box((
                    snap.fdb(&probe).is_some(),
                    snap.arp(gw),
                    snap.is_known_vtep(src),
                ))
            })
        });

        // The same lookups while another thread publishes a new snapshot continuously
        // (a peer's VtepMAC flapping): readers must not slow down or block.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (tables, stop) = (Arc::clone(&tables), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (s, mut e) = peer_entry(peers / 2);
                    e.vtep_mac.0[1] = (n & 1) as u8;
                    tables.update(|w| w.upsert(s, e));
                    n += 1;
                }
                n
            })
        };
        let mut reader = tables.reader();
        g.bench_function(format!("lookup_{peers}_peers_during_updates"), |b| {
            b.iter(|| {
                let snap = reader.load();
                black_box((
                    snap.arp(gw).and_then(|m| snap.fdb(&m).map(|v| v.vtep_ip)),
                    snap.is_known_vtep(src),
                ))
            })
        });
        stop.store(true, Ordering::Relaxed);
        let updates = writer.join().unwrap();
        eprintln!("tables/{peers} peers: the writer published {updates} snapshots meanwhile");
    }
    g.finish();
}

criterion_group!(benches, tables);
criterion_main!(benches);
