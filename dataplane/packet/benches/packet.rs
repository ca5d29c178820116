//! Per-frame costs of the packet code: encapsulation, decapsulation, the flow hash, cutting a
//! TCP super-frame into segments (copied into frames, or as headers for a gather send) and
//! coalescing received segments. Depends on the packet crate alone.
//!
//!   cargo bench -p vxdp-packet --bench packet          (or scripts/bench.sh --micro)

#![allow(
    clippy::cast_possible_truncation,
    reason = "benchmark frames are sized by the benchmark, far below 16-bit limits"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use packet::offload::{Coalescer, SegmentChecksum, TcpSegments, VnetHdr};
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

/// A 64 KB TCP super-frame as the kernel hands it to a TAP reader (partial checksum), and its
/// vnet header: 44 segments of 1398 bytes.
fn super_frame() -> (Vec<u8>, VnetHdr) {
    let mss = 1398usize;
    let payload = 44 * mss;
    let mut f = inner_frame(14 + 20 + 32 + payload);
    f[46] = 0x80; // data offset 8 words: 12 bytes of options
    f[47] = 0x10; // ACK
    (
        f,
        VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 66,
            gso_size: mss as u16,
            csum_start: 34,
            csum_offset: 16,
        },
    )
}

fn offload(c: &mut Criterion) {
    let (frame, hdr) = super_frame();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    let mut out = vec![0u8; 2048];
    g.bench_function("segment_64KB_copy", |b| {
        b.iter(|| {
            let segs = TcpSegments::new(black_box(&frame), &hdr).unwrap();
            for i in 0..segs.len() {
                black_box(segs.write(i, &mut out).unwrap());
            }
        })
    });
    let mut head = [0u8; 160];
    for (name, csum) in [
        ("segment_64KB_gather_full_csum", SegmentChecksum::Full),
        ("segment_64KB_gather_partial_csum", SegmentChecksum::Partial),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let segs = TcpSegments::new(black_box(&frame), &hdr).unwrap();
                for i in 0..segs.len() {
                    black_box(segs.write_headers(i, &mut head, csum).unwrap());
                }
            })
        });
    }
    // The segments a receiver coalesces back into one super-frame.
    let segs = TcpSegments::new(&frame, &hdr).unwrap();
    let received: Vec<Vec<u8>> = (0..segs.len())
        .map(|i| {
            let mut b = vec![0u8; segs.max_segment_len()];
            let n = segs.write(i, &mut b).unwrap();
            b.truncate(n);
            b
        })
        .collect();
    g.bench_function("coalesce_44_segments", |b| {
        b.iter(|| {
            let mut c = Coalescer::new();
            for s in &received {
                black_box(c.push(s));
            }
            black_box(c.flush().len())
        })
    });
    g.finish();
}

criterion_group!(benches, tunnel, offload);
criterion_main!(benches);
