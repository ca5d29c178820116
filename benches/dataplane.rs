//! Per-frame costs of the dataplane's core operations: encapsulation, decapsulation, the flow
//! hash, and peer-table lookups, the latter also while another thread keeps publishing new
//! snapshots (the control side updating leases).
//!
//!   cargo bench --bench dataplane          (or scripts/bench.sh)

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::tables::{PeerEntry, PeerTables};
use ipnet::Ipv4Net;
use packet::tunnel::{
    decapsulate, encapsulate, flow_hash, Decap, DecapPolicy, OuterHeader, OuterParams,
};
use packet::wire::{MacAddr, Vni};

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const HEADROOM: usize = 128;

fn outer(udp_checksum: bool) -> OuterHeader {
    OuterHeader::new(&OuterParams {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0xaa]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0xbb]),
        src_ip: IpAddr::V4(PEER),
        dst_ip: IpAddr::V4(LOCAL),
        dst_port: 8472,
        vni: Vni::new(1).unwrap(),
        udp_checksum,
        src_port_range: OuterParams::DEFAULT_SRC_PORT_RANGE,
        ttl: 64,
    })
    .unwrap()
}

/// An inner Ethernet/IPv4/TCP frame of `len` bytes addressed to LOCAL_MAC.
fn inner_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&LOCAL_MAC.0);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 244, 2, 5]);
    f[30..34].copy_from_slice(&[10, 244, 1, 7]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f
}

fn policy() -> DecapPolicy {
    DecapPolicy {
        local_ip4: Some(LOCAL),
        local_ip6: None,
        port: 8472,
        vni: Vni::new(1).unwrap(),
        local_mac: LOCAL_MAC,
        allow_unknown_peers: false,
    }
}

fn tunnel(c: &mut Criterion) {
    let inner = inner_frame(1464);
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(1));
    for (name, csum) in [("encap_1464B", false), ("encap_1464B_udp_csum", true)] {
        let outer = outer(csum);
        let mut buf = vec![0u8; HEADROOM + inner.len()];
        buf[HEADROOM..].copy_from_slice(&inner);
        let mut ident = 0u16;
        g.bench_function(name, |b| {
            b.iter(|| {
                ident = ident.wrapping_add(1);
                black_box(encapsulate(
                    black_box(&mut buf),
                    HEADROOM,
                    inner.len(),
                    &outer,
                    ident,
                ))
            })
        });
    }

    let outer = outer(false);
    let mut packet = vec![0u8; HEADROOM + inner.len()];
    packet[HEADROOM..].copy_from_slice(&inner);
    let start = encapsulate(&mut packet, HEADROOM, inner.len(), &outer, 1).unwrap();
    let packet = packet[start..].to_vec();
    let policy = policy();
    assert!(matches!(
        decapsulate(&packet, &policy, |ip| ip == IpAddr::V4(PEER)),
        Decap::Deliver { .. }
    ));
    g.bench_function("decap_1514B", |b| {
        b.iter(|| {
            black_box(decapsulate(black_box(&packet), &policy, |ip| {
                ip == IpAddr::V4(PEER)
            }))
        })
    });

    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(&inner);
    g.bench_function("encap_then_decap_1464B", |b| {
        b.iter(|| {
            let start = encapsulate(&mut buf, HEADROOM, inner.len(), &outer, 7).unwrap();
            black_box(decapsulate(&buf[start..], &policy, |ip| {
                ip == IpAddr::V4(PEER)
            }))
        })
    });
    g.bench_function("flow_hash", |b| {
        b.iter(|| black_box(flow_hash(black_box(&inner))))
    });
    g.finish();
}

fn peer_entry(i: u32) -> (Ipv4Net, PeerEntry) {
    let b = i.to_be_bytes();
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, b[3], 0), 24).unwrap();
    let vtep_ip = Ipv4Addr::new(192, 0, b[2], b[3]);
    (
        subnet,
        PeerEntry {
            vtep_mac: MacAddr([0x02, 0, 0, b[1], b[2], b[3]]),
            vtep_ip: IpAddr::V4(vtep_ip),
            gateway_v4: Some(subnet.network()),
            outer: Some(outer(false)),
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

criterion_group!(benches, tunnel, tables);
criterion_main!(benches);
