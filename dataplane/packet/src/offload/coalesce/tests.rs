//! Coalescing: round trips through `TcpSegments`, every rule that ends a super-frame, and
//! garbage.

use testkit::checksum::{ones_complement_sum, tcp_pseudo_header};
use testkit::pseudo_random_bytes;

use super::*;
use crate::offload::testutil::*;
use crate::offload::{complete_checksum, TcpSegments};

/// A stream of `n` segments from `o` on (each `next()` of the previous).
fn stream_of(o: &TcpOpts, n: usize) -> Vec<TcpOpts> {
    let mut v = vec![o.clone()];
    while v.len() < n {
        let next = v[v.len() - 1].next();
        v.push(next);
    }
    v
}

fn frames(opts: &[TcpOpts], v6: bool) -> Vec<Vec<u8>> {
    opts.iter()
        .map(|o| {
            if v6 {
                tcp_v6_segment(o)
            } else {
                tcp_v4_segment(o)
            }
        })
        .collect()
}

/// Feeds `input` through a coalescer the way the worker does and returns what would be written
/// to the TAP: vnet header + frame each.
fn drive<'f>(c: &mut Coalescer<'f>, input: &'f [Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in input {
        if c.is_pending() && !c.can_append(f) {
            out.push(c.flush().to_vec());
        }
        let was = c.is_pending();
        let takes = c.takes(f);
        match c.push(f) {
            Push::NotEligible => {
                let mut alone = vec![0u8; VNET_HDR_LEN];
                alone.extend_from_slice(f);
                out.push(alone);
                assert_eq!(c.is_pending(), was);
            }
            Push::Started => assert!(takes && !was && c.is_pending()),
            Push::Coalesced => assert!(takes && was && c.is_pending()),
        }
    }
    if c.is_pending() {
        out.push(c.flush().to_vec());
    }
    assert!(!c.is_pending());
    out
}

/// Undoes what the kernel would: segments every written frame (after completing its partial
/// checksum), so the result can be compared with what went in.
fn resegment(written: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for w in written {
        let hdr = VnetHdr::parse(w).unwrap();
        let mut frame = w[VNET_HDR_LEN..].to_vec();
        if !hdr.is_gso() {
            assert_eq!(hdr, VnetHdr::default());
            out.push(frame);
            continue;
        }
        complete_checksum(
            &mut frame,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        )
        .unwrap();
        assert!(tcp_checksum_ok(&frame), "completed super-frame checksum");
        let segs = TcpSegments::new(&frame, &hdr).unwrap();
        let mut buf = vec![0u8; segs.max_segment_len()];
        for i in 0..segs.len() {
            let n = segs.write(i, &mut buf).unwrap();
            out.push(buf[..n].to_vec());
        }
    }
    out
}

/// Whether the written frames are exactly: one super-frame of `n` segments, alone.
fn one_super_frame(written: &[Vec<u8>], n: usize) -> bool {
    written.len() == 1 && {
        let hdr = VnetHdr::parse(&written[0]).unwrap();
        let f = &written[0][VNET_HDR_LEN..];
        hdr.is_gso() && TcpSegments::new(f, &hdr).is_ok_and(|s| s.len() == n)
    }
}

/// How many frames went to the TAP, and how many segments each held.
fn shape(written: &[Vec<u8>]) -> Vec<usize> {
    written
        .iter()
        .map(|w| {
            let hdr = VnetHdr::parse(w).unwrap();
            if hdr.is_gso() {
                TcpSegments::new(&w[VNET_HDR_LEN..], &hdr).unwrap().len()
            } else {
                1
            }
        })
        .collect()
}

/// Like `assert_eq!` on frame lists, but says where they differ instead of printing them.
fn assert_same_frames(got: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "number of frames");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "frame {i} length");
        if let Some(at) = g.iter().zip(w.iter()).position(|(a, b)| a != b) {
            panic!(
                "frame {i} differs at byte {at}: {:#04x} != {:#04x}",
                g[at], w[at]
            );
        }
    }
}

fn check_round_trip(input: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new();
    let written = drive(&mut c, input);
    assert_same_frames(&resegment(&written), input);
    written
}

#[test]
fn merges_in_order_v4_segments_and_resegments_to_the_originals() {
    let mut opts = stream_of(&TcpOpts::default(), 20);
    opts[19].payload_len = 600;
    opts[19].flags = ACK | PSH;
    let input = frames(&opts, false);
    let written = check_round_trip(&input);
    assert!(one_super_frame(&written, 20));

    let w = &written[0];
    let hdr = VnetHdr::parse(w).unwrap();
    assert_eq!(
        hdr,
        VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    );
    let f = &w[VNET_HDR_LEN..];
    assert_eq!(f.len(), 66 + 19 * 1448 + 600);
    assert_eq!(
        usize::from(u16::from_be_bytes([f[16], f[17]])),
        f.len() - 14
    );
    assert!(ipv4_checksum_ok(f));
    assert_eq!(f[18..20], input[0][18..20], "first segment's ident");
    assert_eq!(f[34 + 13], ACK | PSH, "the last segment's PSH");
    // The partial checksum is the pseudo header sum over the whole TCP length.
    let pseudo = ones_complement_sum(&[&tcp_pseudo_header(f, f.len() - 34)]);
    assert_eq!(u16::from_be_bytes([f[50], f[51]]), pseudo);
    assert_eq!(f[66..], stream(opts[0].seq, 19 * 1448 + 600)[..]);
}

#[test]
fn merges_in_order_v6_segments_and_resegments_to_the_originals() {
    let o = TcpOpts {
        payload_len: 1428,
        ..TcpOpts::default()
    };
    let input = frames(&stream_of(&o, 30), true);
    let written = check_round_trip(&input);
    assert!(one_super_frame(&written, 30));
    let hdr = VnetHdr::parse(&written[0]).unwrap();
    assert_eq!(
        (hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.hdr_len),
        (VnetHdr::GSO_TCPV6, 1428, 54, 86)
    );
    let f = &written[0][VNET_HDR_LEN..];
    assert_eq!(
        usize::from(u16::from_be_bytes([f[18], f[19]])),
        f.len() - 54
    );
}

#[test]
fn real_kernel_super_frames_come_back_byte_for_byte() {
    // The kernel's own super-frames, cut into segments and coalesced again, give the same
    // bytes, vnet header included: hdr_len, csum_start, the partial checksum and PSH as the
    // kernel writes them.
    for raw in [KERNEL_TSO_V4, KERNEL_TSO_V6] {
        let hdr = VnetHdr::parse(raw).unwrap();
        let segs = TcpSegments::new(&raw[VNET_HDR_LEN..], &hdr).unwrap();
        let mut buf = vec![0u8; segs.max_segment_len()];
        let input: Vec<Vec<u8>> = (0..segs.len())
            .map(|i| {
                let n = segs.write(i, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        let mut c = Coalescer::new();
        let written = drive(&mut c, &input);
        assert_eq!(written.len(), 1);
        assert_same_frames(&written, &[raw.to_vec()]);
    }
}

#[test]
fn single_segment_goes_out_as_it_came() {
    let input = frames(&[TcpOpts::default()], false);
    let mut c = Coalescer::new();
    assert_eq!(c.push(&input[0]), Push::Started);
    assert_eq!(c.pending_segments(), 1);
    let out = c.flush().to_vec();
    assert_eq!(out[..VNET_HDR_LEN], [0u8; VNET_HDR_LEN]);
    assert_eq!(out[VNET_HDR_LEN..], input[0][..]);
    assert!(c.flush().is_empty(), "nothing left");
}

#[test]
fn gso_size_is_the_first_payload_and_a_short_segment_closes() {
    let mut opts = stream_of(&TcpOpts::default(), 5);
    opts[2].payload_len = 1000; // short: ends the super-frame
    for i in 3..5 {
        opts[i].seq = tcp::seq_add(opts[i - 1].seq, opts[i - 1].payload_len);
    }
    let input = frames(&opts, false);
    let written = check_round_trip(&input);
    assert_eq!(shape(&written), [3, 2]);
}

#[test]
fn a_larger_segment_cannot_follow() {
    let mut opts = stream_of(
        &TcpOpts {
            payload_len: 1000,
            ..TcpOpts::default()
        },
        4,
    );
    opts[2].payload_len = 1448;
    opts[3].seq = opts[2].seq.wrapping_add(1448);
    let written = check_round_trip(&frames(&opts, false));
    assert_eq!(shape(&written), [2, 2]);
}

#[test]
fn psh_ends_the_super_frame_and_is_not_started_alone() {
    let mut opts = stream_of(&TcpOpts::default(), 6);
    opts[2].flags = ACK | PSH;
    opts[3].flags = ACK | PSH;
    let input = frames(&opts, false);
    let mut c = Coalescer::new();
    assert_eq!(c.push(&input[0]), Push::Started);
    assert_eq!(c.push(&input[1]), Push::Coalesced);
    assert_eq!(c.push(&input[2]), Push::Coalesced);
    assert!(!c.can_append(&input[3]), "nothing after PSH");
    c.flush();
    assert_eq!(c.push(&input[3]), Push::NotEligible, "PSH cannot start");
    let written = check_round_trip(&input);
    assert_eq!(shape(&written), [3, 1, 2]);
}

#[test]
fn each_mismatch_ends_the_super_frame() {
    let base = TcpOpts::default();
    // (what, change to the third segment); the third and fourth are consistent with each
    // other, so the output is 2 + 2 segments.
    type Edit = fn(&mut TcpOpts);
    let cases: &[(&str, Edit)] = &[
        ("source port", |o| o.src_port += 1),
        ("destination port", |o| o.dst_port += 1),
        ("source address", |o| o.src4 = "10.1.1.9".parse().unwrap()),
        ("destination address", |o| {
            o.dst4 = "10.1.2.9".parse().unwrap()
        }),
        ("source MAC", |o| o.src_mac.0[5] ^= 1),
        ("destination MAC", |o| o.dst_mac.0[5] ^= 1),
        ("acknowledgment", |o| o.ack += 1448),
        ("window", |o| o.window += 1),
        ("urgent pointer without URG", |o| o.urgent = 0xff),
        ("option bytes", |o| o.options[11] ^= 1),
        ("TOS", |o| o.tos = 0x10),
        ("ECN CE mark", |o| o.tos = 0x03),
        ("TTL", |o| o.ttl -= 1),
        ("DF", |o| o.df = false),
        ("ident jump", |o| o.ident += 7),
    ];
    for (what, edit) in cases {
        let mut opts = stream_of(&base, 4);
        edit(&mut opts[2]);
        edit(&mut opts[3]);
        let input = frames(&opts, false);
        let mut c = Coalescer::new();
        assert_eq!(c.push(&input[0]), Push::Started);
        assert_eq!(c.push(&input[1]), Push::Coalesced);
        assert!(!c.can_append(&input[2]), "{what}");
        assert_eq!(
            c.push(&input[2]),
            Push::NotEligible,
            "{what}: push without flush"
        );
        assert_eq!(c.pending_segments(), 2, "{what}: state kept");
        let written = check_round_trip(&input);
        assert_eq!(shape(&written), [2, 2], "{what}");
    }
}

#[test]
fn each_v6_mismatch_ends_the_super_frame() {
    type Edit = fn(&mut TcpOpts);
    let cases: &[(&str, Edit)] = &[
        ("source address", |o| o.src6 = "fd01::9".parse().unwrap()),
        ("destination address", |o| {
            o.dst6 = "fd02::9".parse().unwrap()
        }),
        ("traffic class", |o| o.tos = 0x20),
        ("flow label", |o| o.flow_label += 1),
        ("hop limit", |o| o.ttl += 1),
        ("acknowledgment", |o| o.ack ^= 0x100),
    ];
    for (what, edit) in cases {
        let mut opts = stream_of(&TcpOpts::default(), 4);
        edit(&mut opts[2]);
        edit(&mut opts[3]);
        let written = check_round_trip(&frames(&opts, true));
        assert_eq!(shape(&written), [2, 2], "{what}");
    }
}

#[test]
fn out_of_order_and_retransmitted_segments_end_it() {
    let opts = stream_of(&TcpOpts::default(), 6);
    let input = frames(&opts, false);
    // A gap (segment 2 missing), then 2 arriving late, then a retransmission of 1.
    let order = [0usize, 1, 3, 4, 2, 1];
    let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| input[i].clone()).collect();
    let mut c = Coalescer::new();
    let written = drive(&mut c, &shuffled);
    assert_same_frames(&resegment(&written), &shuffled);
    // 3 and 4 have idents 2 and 3 after the first: they merge with each other only.
    assert_eq!(shape(&written), [2, 2, 1, 1]);
}

#[test]
fn ident_rules_follow_linux() {
    // Incrementing IDs, fixed IDs with DF, and fixed IDs without DF (not merged).
    let inc = stream_of(&TcpOpts::default(), 4);
    assert_eq!(shape(&check_round_trip(&frames(&inc, false))), [4]);

    let mut fixed = inc.clone();
    for o in &mut fixed {
        o.ident = 0;
    }
    let input = frames(&fixed, false);
    let mut c = Coalescer::new();
    let written = drive(&mut c, &input);
    assert_eq!(shape(&written), [4]);
    // The kernel segments a fixed-ID super-frame with incrementing IDs (no FIXEDID in the vnet
    // header): everything else is as it came.
    for (i, (got, want)) in resegment(&written).iter().zip(&input).enumerate() {
        assert_eq!(usize::from(u16::from_be_bytes([got[18], got[19]])), i);
        assert_eq!(got[..18], want[..18]);
        assert_eq!(got[26..], want[26..]);
        assert!(ipv4_checksum_ok(got));
    }

    let mut no_df = fixed.clone();
    for o in &mut no_df {
        o.df = false;
    }
    assert_eq!(
        shape(&check_round_trip(&frames(&no_df, false))),
        [1, 1, 1, 1]
    );

    // Fixed on the second segment, then an increment: ends it.
    let mut mixed = fixed.clone();
    mixed[2].ident = 2;
    mixed[3].ident = 3;
    assert_eq!(shape(&drive(&mut c, &frames(&mixed, false))), [2, 2]);

    // IDs wrap.
    let mut wrap = inc.clone();
    for (i, o) in wrap.iter_mut().enumerate() {
        o.ident = ipv4::ident_add(u16::MAX, i);
    }
    assert_eq!(shape(&check_round_trip(&frames(&wrap, false))), [4]);
}

#[test]
fn bad_checksum_is_not_merged_and_the_flow_continues() {
    let opts = stream_of(&TcpOpts::default(), 4);
    let input = frames(&opts, false);
    let mut bad = input[1].clone();
    bad[100] ^= 0x40; // payload corrupted in flight
    let mut c = Coalescer::new();
    assert_eq!(c.push(&input[0]), Push::Started);
    assert!(
        c.can_append(&bad),
        "headers are fine: only push sees the checksum"
    );
    assert_eq!(c.push(&bad), Push::NotEligible);
    assert_eq!(c.pending_segments(), 1);
    // The good copy (a retransmission) still extends it.
    assert_eq!(c.push(&input[1]), Push::Coalesced);
    c.flush();

    // A corrupt first segment starts nothing.
    assert_eq!(c.push(&bad), Push::NotEligible);
    assert!(!c.is_pending());

    // Corrupt TCP header, corrupt IPv4 header.
    let mut bad_hdr = input[2].clone();
    bad_hdr[34 + 14] ^= 1;
    assert_eq!(c.push(&bad_hdr), Push::NotEligible);
    let mut ttl = input[2].clone();
    ttl[22] -= 1; // TTL changed, header checksum not
    assert_eq!(c.push(&ttl), Push::NotEligible);

    // Checksum field 0xffff instead of 0x0000 is the same number: still valid. The urgent
    // pointer (ignored without URG) is chosen so that the checksum comes out 0.
    let mut o = TcpOpts::default();
    let f0 = tcp_v4_segment(&o);
    o.urgent = u16::from_be_bytes([f0[50], f0[51]]);
    let mut f = tcp_v4_segment(&o);
    assert_eq!(f[50..52], [0, 0]);
    f[50..52].copy_from_slice(&[0xff, 0xff]);
    assert!(!c.is_pending());
    assert_eq!(c.push(&f), Push::Started);
}

#[test]
fn stops_at_64k() {
    let o = TcpOpts {
        payload_len: 8948,
        ..TcpOpts::default()
    };
    // 66 + 7 * 8948 = 62702 fits; an eighth would not.
    let input = frames(&stream_of(&o, 9), false);
    let written = check_round_trip(&input);
    assert_eq!(shape(&written), [7, 2]);
    let len = written[0].len() - VNET_HDR_LEN - 14;
    assert!(len <= 65535 && len + 8948 > 65535);

    // Up to exactly 65535 bytes of IP packet: 52 + 65483 bytes of payload.
    let mut opts = stream_of(
        &TcpOpts {
            payload_len: 9000,
            ..TcpOpts::default()
        },
        8,
    );
    opts[7].payload_len = 65483 - 7 * 9000;
    let input = frames(&opts, false);
    let written = check_round_trip(&input);
    assert_eq!(shape(&written), [8]);
    assert_eq!(written[0].len(), COALESCE_BUF_LEN);

    // IPv6: the 40-byte header counts too.
    let mut opts = stream_of(
        &TcpOpts {
            payload_len: 9000,
            ..TcpOpts::default()
        },
        8,
    );
    opts[7].payload_len = 65535 - 72 - 7 * 9000 + 1;
    let written = check_round_trip(&frames(&opts, true));
    assert_eq!(shape(&written), [7, 1]);
}

#[test]
fn never_eligible_frames() {
    let o = TcpOpts::default();
    let good4 = tcp_v4_segment(&o);
    let good6 = tcp_v6_segment(&o);
    let refuse = |f: &[u8], what: &str| {
        let mut c = Coalescer::new();
        assert_eq!(c.push(f), Push::NotEligible, "{what}");
        assert!(!c.is_pending(), "{what}");
    };
    for flags in [
        0x02, 0x12, 0x04, 0x14, 0x01, 0x11, 0x19, 0x30, 0x50, 0x90, 0x00, 0x08,
    ] {
        let f = tcp_v4_segment(&TcpOpts { flags, ..o.clone() });
        refuse(&f, &format!("flags {flags:#04x}"));
    }
    refuse(
        &tcp_v4_segment(&TcpOpts {
            payload_len: 0,
            ..o.clone()
        }),
        "pure ACK",
    );
    refuse(
        &tcp_v6_segment(&TcpOpts {
            payload_len: 0,
            ..o.clone()
        }),
        "pure ACK v6",
    );
    let mut f = good4.clone();
    f.extend_from_slice(&[0; 4]);
    refuse(&f, "Ethernet padding");
    let mut f = good4.clone();
    f[20] |= 0x20;
    refresh_checksums(&mut f);
    refuse(&f, "MF");
    let mut f = good4.clone();
    f[21] = 0x10;
    refresh_checksums(&mut f);
    refuse(&f, "fragment offset");
    let mut f = good4.clone();
    f[20] |= 0x80;
    refresh_checksums(&mut f);
    refuse(&f, "reserved IPv4 flag");
    // IPv4 options: a NOP word inserted after the fixed header.
    let mut f = good4[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&good4[34..]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    refresh_checksums(&mut f);
    assert!(tcp_checksum_ok(&f) && ipv4_checksum_ok(&f));
    refuse(&f, "IPv4 options");
    // IPv6 with a hop-by-hop header in front of TCP.
    let mut f = good6[..54].to_vec();
    f[20] = 0;
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&good6[54..]);
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    refuse(&f, "IPv6 extension header");
    // Not TCP at all.
    refuse(&crate::wire::captured::V4_CSUM_ICMP[50..], "ICMP");
    refuse(&crate::wire::captured::V4_CSUM_UDP[50..], "UDP");
    refuse(&crate::wire::captured::V6_UDP[70..], "UDP v6");
    refuse(&crate::wire::captured::OVERLAY_ARP_REQUEST, "ARP");
    refuse(&crate::wire::captured::V4_CSUM_TCP_SYN[50..], "real SYN");
    let mut f = good4.clone();
    f[12] = 0x81;
    refuse(&f, "VLAN tag");
    let mut f = good4.clone();
    f[46] = 0x40;
    refuse(&f, "TCP data offset 4");
    let mut f = tcp_v4_segment(&TcpOpts {
        payload_len: 20,
        ..o.clone()
    });
    f[46] = 0xf0;
    refuse(&f, "options past the end");
    refuse(&[], "empty");
}

#[test]
fn interleaved_flows_and_other_traffic_keep_their_order() {
    let a = stream_of(&TcpOpts::default(), 8);
    let b = stream_of(
        &TcpOpts {
            src_port: 40001,
            seq: 5,
            ..TcpOpts::default()
        },
        8,
    );
    let fa = frames(&a, false);
    let fb = frames(&b, true);
    let ack = tcp_v4_segment(&TcpOpts {
        payload_len: 0,
        ..TcpOpts::default()
    });
    let udp = crate::wire::captured::V4_CSUM_UDP[50..].to_vec();
    let mut input = Vec::new();
    for i in 0..8 {
        input.push(fa[i].clone());
        if i % 3 == 2 {
            input.push(fb[i].clone());
        }
        if i == 4 {
            input.push(ack.clone());
            input.push(udp.clone());
        }
    }
    input.extend(fb[..3].iter().cloned());
    let written = check_round_trip(&input);
    // Each interruption flushes: a is cut at every b segment and at the ACK.
    assert_eq!(shape(&written), [3, 1, 2, 1, 1, 1, 1, 2, 3]);
}

#[test]
fn long_run_of_full_super_frames() {
    // 200 segments of one flow: super-frames of as many as fit, back to back.
    let input = frames(&stream_of(&TcpOpts::default(), 200), false);
    let written = check_round_trip(&input);
    let per = (65535 - 52) / 1448;
    assert!(written[..written.len() - 1]
        .iter()
        .all(|w| shape(std::slice::from_ref(w)) == [per]));
}

#[test]
fn garbage_never_panics() {
    let opts = stream_of(&TcpOpts::default(), 3);
    let input = frames(&opts, false);
    let input6 = frames(&opts, true);
    let mut c = Coalescer::new();
    for (i, good) in input.iter().chain(&input6).enumerate() {
        for len in 0..good.len() {
            c.flush();
            c.push(&input[0]);
            let cut = &good[..len];
            let _ = c.can_append(cut);
            assert_ne!(c.push(cut), Push::Coalesced, "frame {i} cut at {len}");
            let _ = c.push(cut);
            assert!(c.flush().len() >= VNET_HDR_LEN);
        }
    }
    // The frames are made first: a coalescer borrows what it is given until it flushes.
    let mutated: Vec<(Vec<u8>, Vec<u8>, [u8; 4])> = (0..20_000u64)
        .map(|seed| {
            let n = pseudo_random_bytes(seed, 4);
            let mut f = if n[0] & 1 == 0 {
                input[1].clone()
            } else {
                input6[1].clone()
            };
            for k in 0..usize::from(n[1] % 6) {
                let m = pseudo_random_bytes(seed.wrapping_mul(31).wrapping_add(k as u64), 2);
                let at = usize::from(m[0]) % 90;
                f[at] = m[1];
            }
            if n[2] & 1 == 0 {
                refresh_checksums_if_plausible(&mut f);
            }
            let junk = pseudo_random_bytes(seed ^ 0xabcdef, usize::from(n[3]) * 2);
            (f, junk, [n[0], n[1], n[2], n[3]])
        })
        .collect();
    let mut c = Coalescer::new();
    for (f, junk, n) in &mutated {
        let _ = c.can_append(f);
        let before = c.pending_segments();
        match c.push(f) {
            Push::Coalesced => assert_eq!(c.pending_segments(), before + 1),
            Push::Started => assert_eq!((before, c.pending_segments()), (0, 1)),
            Push::NotEligible => assert_eq!(c.pending_segments(), before),
        }
        if n[3] % 5 == 0 {
            let out = c.flush().to_vec();
            if !out.is_empty() {
                let hdr = VnetHdr::parse(&out).unwrap();
                if hdr.is_gso() {
                    let mut frame = out[VNET_HDR_LEN..].to_vec();
                    complete_checksum(&mut frame, usize::from(hdr.csum_start), 16).unwrap();
                    let segs = TcpSegments::new(&frame, &hdr).unwrap();
                    assert!(segs.len() >= 2);
                }
            }
        }
        let _ = c.can_append(junk);
        let _ = c.push(junk);
    }
}

/// `refresh_checksums` for frames whose headers still look like TCP over IP with sane lengths.
fn refresh_checksums_if_plausible(f: &mut [u8]) {
    let ok = match (f[12], f[13]) {
        (0x08, 0x00) => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            ihl >= 20 && 14 + total <= f.len() && total >= ihl + 20
        }
        (0x86, 0xdd) => 54 + usize::from(u16::from_be_bytes([f[18], f[19]])) <= f.len(),
        _ => false,
    };
    if ok {
        refresh_checksums(f);
    }
}

/// The checksum field set to the pseudo header sum, as a kernel sender with checksum offload
/// leaves it on a virtual NIC.
fn make_partial(f: &mut [u8]) {
    let t = tcp_start(f);
    let pseudo = ones_complement_sum(&[&tcp_pseudo_header(f, f.len() - t)]);
    f[t + 16..t + 18].copy_from_slice(&pseudo.to_be_bytes());
}

#[test]
fn partial_checksums_from_kernel_senders_are_merged_unverified() {
    for v6 in [false, true] {
        let mut input = frames(&stream_of(&TcpOpts::default(), 4), v6);
        for f in &mut input {
            make_partial(f);
        }
        let mut c = Coalescer::new();
        let written = drive(&mut c, &input);
        assert!(
            one_super_frame(&written, 4),
            "v6 {v6}: {:?}",
            shape(&written)
        );
        // Completed, the super-frame is the stream the partial segments carried.
        let full = frames(&stream_of(&TcpOpts::default(), 4), v6);
        assert_same_frames(&resegment(&written), &full);
    }
    // A damaged segment whose field is a finished checksum is still refused.
    let input = frames(&stream_of(&TcpOpts::default(), 2), false);
    let mut bad = input[1].clone();
    bad[200] ^= 1;
    let mut c = Coalescer::new();
    assert_eq!(c.push(&input[0]), Push::Started);
    assert_eq!(c.push(&bad), Push::NotEligible);
}

#[test]
fn holds_at_most_max_segments() {
    let o = TcpOpts {
        payload_len: 100,
        ..TcpOpts::default()
    };
    let input = frames(&stream_of(&o, MAX_SEGMENTS + 6), false);
    let written = check_round_trip(&input);
    assert_eq!(shape(&written), [MAX_SEGMENTS, 6]);
}
