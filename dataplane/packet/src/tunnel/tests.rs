//! Encapsulation against captured kernel vxlan frames, decapsulation of them, round trips, and
//! every drop reason.

#![allow(
    clippy::cast_possible_truncation,
    reason = "test inputs and expected idents are made from counters by truncation"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use testkit::checksum::{internet_checksum, pseudo_header_v4};

use super::*;
use crate::wire::{captured, checksum, Ipv4Packet, MacAddr, UdpPacket, Vni};

const NIC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0a, 0x01]);
const NIC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x01]);
const VTEP_A: MacAddr = MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
const VTEP_B: MacAddr = MacAddr([0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02]);
const IP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}

/// Node A's view of its peer B, as in the captures.
fn params_a_to_b(src_ip: IpAddr, dst_ip: IpAddr, udp_checksum: bool) -> OuterParams {
    OuterParams {
        src_mac: NIC_A,
        dst_mac: NIC_B,
        src_ip,
        dst_ip,
        dst_port: 8472,
        vni: vni(1),
        udp_checksum,
        src_port_range: OuterParams::DEFAULT_SRC_PORT_RANGE,
        ttl: OuterParams::DEFAULT_TTL,
    }
}

/// Node B receiving from A.
fn policy_b() -> DecapPolicy {
    DecapPolicy {
        local_ip4: Some(IP_B),
        local_ip6: Some(ip6("fd00::2")),
        port: 8472,
        vni: vni(1),
        local_mac: VTEP_B,
        allow_unknown_peers: false,
    }
}

fn known_a(ip: IpAddr) -> bool {
    ip == IpAddr::V4(IP_A) || ip == IpAddr::V6(ip6("fd00::1"))
}

/// Encapsulates `inner` with `MAX_OUTER_LEN` bytes of headroom; returns the finished packet.
fn encap(inner: &[u8], outer: &OuterHeader, ident: u16) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_OUTER_LEN + inner.len()];
    buf[MAX_OUTER_LEN..].copy_from_slice(inner);
    let start = encapsulate(&mut buf, MAX_OUTER_LEN, inner.len(), outer, ident).unwrap();
    assert_eq!(start, MAX_OUTER_LEN - outer.len());
    buf.drain(..start);
    buf
}

/// Compares an encapsulation of a captured frame's inner frame with the capture: all bytes equal
/// but the UDP source port (the kernel's flow hash is keyed per boot) and, with it, the UDP
/// checksum, which must equal the kernel's once the port difference is accounted for (RFC 1624).
fn assert_matches_kernel(captured: &[u8], params: &OuterParams, ident: u16) {
    let outer = OuterHeader::new(params).unwrap();
    let ours = encap(&captured[outer.len()..], &outer, ident);
    assert_eq!(ours.len(), captured.len());
    let udp = outer.len() - 16;
    let (sport, csum) = (udp..udp + 2, udp + 6..udp + 8);
    for (i, (a, b)) in ours.iter().zip(captured).enumerate() {
        if !sport.contains(&i) && !csum.contains(&i) {
            assert_eq!(a, b, "byte {i} differs: ours {a:#04x}, kernel {b:#04x}");
        }
    }
    let be = |d: &[u8], at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
    let (our_port, kernel_port) = (be(&ours, udp), be(captured, udp));
    assert!(params.src_port_range.contains(&our_port));
    let (our_csum, kernel_csum) = (be(&ours, udp + 6), be(captured, udp + 6));
    if kernel_csum == 0 {
        assert_eq!(our_csum, 0);
    } else {
        assert_eq!(
            checksum::update(our_csum, our_port, kernel_port),
            kernel_csum,
            "UDP checksum"
        );
    }
}

#[test]
fn encap_matches_kernel_ipv4_with_udp_checksum() {
    let p = params_a_to_b(IP_A.into(), IP_B.into(), true);
    assert_matches_kernel(&captured::V4_CSUM_ICMP, &p, 0x3814);
    assert_matches_kernel(&captured::V4_CSUM_TCP_SYN, &p, 0x3858);
    assert_matches_kernel(&captured::V4_CSUM_UDP, &p, 0x385e);
}

#[test]
fn encap_matches_kernel_ipv4_without_udp_checksum() {
    let p = params_a_to_b(IP_A.into(), IP_B.into(), false);
    let ident = u16::from_be_bytes([captured::V4_NOCSUM_ICMP[18], captured::V4_NOCSUM_ICMP[19]]);
    assert_matches_kernel(&captured::V4_NOCSUM_ICMP, &p, ident);
    // B to A.
    let p = OuterParams {
        src_mac: NIC_B,
        dst_mac: NIC_A,
        src_ip: IP_B.into(),
        dst_ip: IP_A.into(),
        ..p
    };
    let f = &captured::V4_NOCSUM_TCP_SYNACK;
    assert_matches_kernel(f, &p, u16::from_be_bytes([f[18], f[19]]));
}

#[test]
fn encap_matches_kernel_vni42_port_4789() {
    let p = OuterParams {
        vni: vni(42),
        dst_port: 4789,
        ..params_a_to_b(IP_A.into(), IP_B.into(), false)
    };
    let f = &captured::V4_VNI42_ICMP;
    assert_matches_kernel(f, &p, u16::from_be_bytes([f[18], f[19]]));
}

#[test]
fn encap_matches_kernel_ipv6() {
    // udp_checksum false is overridden: IPv6 always computes it, as the kernel did.
    let p = params_a_to_b(ip6("fd00::1").into(), ip6("fd00::2").into(), false);
    assert_matches_kernel(&captured::V6_ICMP, &p, 0);
    assert_matches_kernel(&captured::V6_UDP, &p, 0);
}

#[test]
fn decap_delivers_captured_frames() {
    let inner = |f: &[u8], outer_len: usize| outer_len..f.len();
    let cases: [(&[u8], usize, IpAddr); 4] = [
        (&captured::V4_CSUM_ICMP, 50, IP_A.into()),
        (&captured::V4_NOCSUM_ICMP, 50, IP_A.into()),
        (&captured::V4_PARTIAL_ICMP, 50, IP_A.into()),
        (&captured::V6_ICMP, 70, ip6("fd00::1").into()),
    ];
    for (f, outer_len, source) in cases {
        assert_eq!(
            decapsulate(f, &policy_b(), known_a),
            Decap::Deliver {
                inner: inner(f, outer_len),
                source
            }
        );
    }
    assert!(matches!(
        decapsulate(&captured::V6_UDP, &policy_b(), known_a),
        Decap::Deliver { .. }
    ));
    // The other direction, at node A.
    let policy_a = DecapPolicy {
        local_ip4: Some(IP_A),
        local_mac: VTEP_A,
        ..policy_b()
    };
    let f = &captured::V4_NOCSUM_TCP_SYNACK;
    assert_eq!(
        decapsulate(f, &policy_a, |ip| ip == IpAddr::V4(IP_B)),
        Decap::Deliver {
            inner: 50..f.len(),
            source: IP_B.into()
        }
    );
    // VNI 42 on port 4789.
    let policy42 = DecapPolicy {
        port: 4789,
        vni: vni(42),
        ..policy_b()
    };
    assert!(matches!(
        decapsulate(&captured::V4_VNI42_ICMP, &policy42, known_a),
        Decap::Deliver { .. }
    ));
}

#[test]
fn decap_accepts_partial_udp_checksum() {
    // The kernel peer's checksum is only CHECKSUM_PARTIAL on this veth capture: not valid, and
    // still delivered (see the decap module documentation).
    let f = &captured::V4_PARTIAL_ICMP;
    let udp = UdpPacket::new_checked(&f[34..]).unwrap();
    assert!(!udp.verify_checksum(&IP_A.into(), &IP_B.into()));
    assert!(matches!(
        decapsulate(f, &policy_b(), known_a),
        Decap::Deliver { .. }
    ));
}

#[test]
fn round_trips() {
    let inners: [&[u8]; 5] = [
        &captured::V4_CSUM_ICMP[50..],
        &captured::V4_CSUM_TCP_SYN[50..],
        &captured::V6_UDP[70..],
        &captured::OVERLAY_ARP_REQUEST, // broadcast
        &captured::V4_CSUM_UDP[50..64], // a bare Ethernet header
    ];
    let families: [(IpAddr, IpAddr); 2] = [
        (IP_A.into(), IP_B.into()),
        (ip6("fd00::1").into(), ip6("fd00::2").into()),
    ];
    for (src, dst) in families {
        for udp_checksum in [false, true] {
            let outer = OuterHeader::new(&params_a_to_b(src, dst, udp_checksum)).unwrap();
            for (n, inner) in inners.iter().enumerate() {
                let packet = encap(inner, &outer, n as u16 * 7919);
                let Decap::Deliver { inner: r, source } =
                    decapsulate(&packet, &policy_b(), known_a)
                else {
                    panic!("dropped: {:?}", decapsulate(&packet, &policy_b(), known_a));
                };
                assert_eq!(&packet[r], *inner);
                assert_eq!(source, src);
                let udp_at = outer.len() - 16;
                let udp = UdpPacket::new_checked(&packet[udp_at..]).unwrap();
                assert!(udp.verify_checksum(&src, &dst));
                assert_eq!(udp.checksum() != 0, udp_checksum || src.is_ipv6());
                if src.is_ipv4() {
                    let ip = Ipv4Packet::new_checked(&packet[14..]).unwrap();
                    assert!(ip.verify_checksum());
                    assert!(!ip.dont_frag());
                    assert_eq!(ip.ident(), n as u16 * 7919);
                }
            }
        }
    }
}

#[test]
fn encap_errors() {
    let outer = OuterHeader::new(&params_a_to_b(IP_A.into(), IP_B.into(), true)).unwrap();
    let mut buf = vec![0u8; 200];
    assert_eq!(
        encapsulate(&mut buf, 49, 60, &outer, 0),
        Err(EncapError::NoHeadroom)
    );
    assert_eq!(encapsulate(&mut buf, 50, 60, &outer, 0), Ok(0));
    assert_eq!(
        encapsulate(&mut buf, 50, 13, &outer, 0),
        Err(EncapError::InnerTooShort)
    );
    assert_eq!(
        encapsulate(&mut buf, 50, 151, &outer, 0),
        Err(EncapError::InnerOutOfBounds)
    );
    assert_eq!(
        encapsulate(&mut buf, usize::MAX, 2, &outer, 0),
        Err(EncapError::InnerOutOfBounds)
    );
    // The longest inner frames that fit: 65535 - 20 - 16 (IPv4), 65535 - 16 (IPv6 payload).
    let mut big = vec![0u8; 70 + 65535];
    assert_eq!(encapsulate(&mut big, 70, 65499, &outer, 0), Ok(20));
    assert_eq!(
        encapsulate(&mut big, 70, 65500, &outer, 0),
        Err(EncapError::TooLong)
    );
    let outer6 = OuterHeader::new(&params_a_to_b(
        ip6("fd00::1").into(),
        ip6("fd00::2").into(),
        true,
    ))
    .unwrap();
    assert_eq!(encapsulate(&mut big, 70, 65519, &outer6, 0), Ok(0));
    assert_eq!(
        encapsulate(&mut big, 70, 65520, &outer6, 0),
        Err(EncapError::TooLong)
    );
    let packet = big[..70 + 65519].to_vec();
    assert!(matches!(
        decapsulate(&packet, &policy_b(), known_a),
        Decap::Drop(DropReason::InnerNotForUs)
    ));

    assert_eq!(
        OuterHeader::new(&params_a_to_b(IP_A.into(), ip6("fd00::2").into(), false)).err(),
        Some(EncapError::MixedFamilies)
    );
    #[allow(clippy::reversed_empty_ranges)]
    let empty = OuterParams {
        src_port_range: 2..=1,
        ..params_a_to_b(IP_A.into(), IP_B.into(), false)
    };
    assert_eq!(
        OuterHeader::new(&empty).err(),
        Some(EncapError::EmptyPortRange)
    );
}

#[test]
fn outer_header_accessors() {
    let outer = OuterHeader::new(&params_a_to_b(IP_A.into(), IP_B.into(), false)).unwrap();
    assert_eq!(outer.len(), OUTER_LEN_V4);
    assert_eq!(outer.dst_ip(), IpAddr::V4(IP_B));
    assert_eq!(outer.src_ip(), IpAddr::V4(IP_A));
    assert!(!outer.udp_checksum());
    assert_eq!(outer.params().vni, vni(1));
    assert_eq!(outer.template().len(), 50);
    let outer6 = OuterHeader::new(&params_a_to_b(
        ip6("fd00::1").into(),
        ip6("fd00::2").into(),
        false,
    ))
    .unwrap();
    assert_eq!(outer6.len(), OUTER_LEN_V6);
    assert!(outer6.udp_checksum());
}

#[test]
fn encap_checksum_matches_independent_computation() {
    // Odd-length inner frames exercise the padding of the last byte.
    let outer = OuterHeader::new(&params_a_to_b(IP_A.into(), IP_B.into(), true)).unwrap();
    for len in 14..120 {
        let inner: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        let packet = encap(&inner, &outer, len as u16);
        // RFC 768: pseudo header + UDP header + data, a computed 0 sent as 0xffff.
        let pseudo = pseudo_header_v4(IP_A, IP_B, 17, (16 + len) as u16);
        let mut udp = packet[34..].to_vec();
        udp[6] = 0;
        udp[7] = 0;
        let want = match internet_checksum(&[&pseudo, &udp]) {
            0 => 0xffff,
            c => c,
        };
        assert_eq!(
            u16::from_be_bytes([packet[40], packet[41]]),
            want,
            "len {len}"
        );
    }
}

/// A crafted frame for each drop reason, starting from a valid captured one.
fn drop_cases() -> Vec<(DropReason, Vec<u8>, DecapPolicy)> {
    use DropReason::*;
    let v4 = || captured::V4_CSUM_ICMP.to_vec();
    let v6 = || captured::V6_ICMP.to_vec();
    // Rewrites the outer IPv4 header checksum after a change.
    let fix = |mut f: Vec<u8>| {
        let hl = usize::from(f[14] & 0x0f) * 4;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..14 + hl.max(20)]);
        ip.fill_checksum();
        f
    };
    let p = policy_b();
    vec![
        (EthernetTruncated, v4()[..13].to_vec(), p.clone()),
        (
            NotIp,
            {
                let mut f = v4();
                f[12..14].copy_from_slice(&[0x08, 0x06]);
                f
            },
            p.clone(),
        ),
        (Ipv4Truncated, v4()[..33].to_vec(), p.clone()),
        (
            Ipv4Truncated,
            {
                // IHL 15 (60 bytes) in a 50-byte IP packet.
                let mut f = v4()[..64].to_vec();
                f[14] = 0x4f;
                f
            },
            p.clone(),
        ),
        (
            Ipv4BadVersion,
            {
                let mut f = v4();
                f[14] = 0x65;
                f
            },
            p.clone(),
        ),
        (
            Ipv4BadHeaderLen,
            {
                let mut f = v4();
                f[14] = 0x44;
                f
            },
            p.clone(),
        ),
        (
            Ipv4BadChecksum,
            {
                let mut f = v4();
                f[22] -= 1; // TTL 63, checksum unchanged
                f
            },
            p.clone(),
        ),
        (
            Ipv4BadTotalLen,
            fix({
                let mut f = v4();
                f[16..18].copy_from_slice(&135u16.to_be_bytes());
                f
            }),
            p.clone(),
        ),
        (
            Ipv4BadTotalLen,
            fix({
                let mut f = v4();
                f[16..18].copy_from_slice(&19u16.to_be_bytes());
                f
            }),
            p.clone(),
        ),
        (
            Ipv4Fragment,
            fix({
                let mut f = v4();
                f[20] = 0x20; // MF
                f
            }),
            p.clone(),
        ),
        (
            Ipv4Fragment,
            fix({
                let mut f = v4();
                f[21] = 0x01; // offset 8
                f
            }),
            p.clone(),
        ),
        (Ipv6Truncated, v6()[..53].to_vec(), p.clone()),
        (
            Ipv6BadVersion,
            {
                let mut f = v6();
                f[14] = 0x40;
                f
            },
            p.clone(),
        ),
        (Ipv6BadPayloadLen, v6()[..167].to_vec(), p.clone()),
        (
            NotUdp,
            fix({
                let mut f = v4();
                f[23] = 6;
                f
            }),
            p.clone(),
        ),
        (
            NotUdp,
            {
                let mut f = v6();
                f[20] = 0; // hop-by-hop options before UDP
                f
            },
            p.clone(),
        ),
        (
            NotLocalDestination,
            v4(),
            DecapPolicy {
                local_ip4: Some(IP_A),
                ..p.clone()
            },
        ),
        (
            NotLocalDestination,
            v6(),
            DecapPolicy {
                local_ip6: None,
                ..p.clone()
            },
        ),
        (
            UdpTruncated,
            fix({
                let mut f = v4()[..41].to_vec();
                f[16..18].copy_from_slice(&27u16.to_be_bytes());
                f
            }),
            p.clone(),
        ),
        (
            UdpBadLength,
            {
                let mut f = v4();
                f[38..40].copy_from_slice(&7u16.to_be_bytes());
                f
            },
            p.clone(),
        ),
        (
            UdpBadLength,
            {
                let mut f = v4();
                f[38..40].copy_from_slice(&115u16.to_be_bytes());
                f
            },
            p.clone(),
        ),
        (
            WrongPort,
            v4(),
            DecapPolicy {
                port: 4789,
                ..p.clone()
            },
        ),
        (
            VxlanTruncated,
            {
                let mut f = v4();
                f[38..40].copy_from_slice(&15u16.to_be_bytes());
                f
            },
            p.clone(),
        ),
        (
            VxlanNoIFlag,
            {
                let mut f = v4();
                f[42] = 0;
                f
            },
            p.clone(),
        ),
        (
            WrongVni,
            v4(),
            DecapPolicy {
                vni: vni(2),
                ..p.clone()
            },
        ),
        (
            UnknownPeer,
            captured::V4_NOCSUM_TCP_SYNACK.to_vec(),
            DecapPolicy {
                local_ip4: Some(IP_A),
                local_mac: VTEP_A,
                ..p.clone()
            },
        ),
        (
            InnerTruncated,
            {
                let mut f = v4();
                f[38..40].copy_from_slice(&(16u16 + 13).to_be_bytes());
                f
            },
            p.clone(),
        ),
        (
            InnerNotForUs,
            v4(),
            DecapPolicy {
                local_mac: VTEP_A,
                ..p.clone()
            },
        ),
        (
            InnerNotForUs,
            {
                // Multicast (IPv6 neighbour discovery) is not broadcast.
                let mut f = v4();
                f[50..56].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 1]);
                f
            },
            p.clone(),
        ),
    ]
}

#[test]
fn every_drop_reason_is_reachable() {
    let mut seen = [false; DropReason::COUNT];
    for (want, frame, policy) in drop_cases() {
        // UnknownPeer needs the check to run: nobody is known here.
        let got = decapsulate(&frame, &policy, |ip| {
            want != DropReason::UnknownPeer && known_a(ip)
        });
        assert_eq!(got, Decap::Drop(want), "{want}");
        seen[want.index()] = true;
    }
    for r in DropReason::ALL {
        assert!(seen[r.index()], "no case for {r}");
    }
}

#[test]
fn unknown_peers_allowed_when_configured() {
    let policy = DecapPolicy {
        allow_unknown_peers: true,
        ..policy_b()
    };
    let asked = std::cell::Cell::new(false);
    let got = decapsulate(&captured::V4_CSUM_ICMP, &policy, |_| {
        asked.set(true);
        false
    });
    assert!(matches!(got, Decap::Deliver { .. }));
    assert!(!asked.get(), "the peer table is not consulted");
}

#[test]
fn broadcast_and_padding_are_delivered() {
    let outer = OuterHeader::new(&params_a_to_b(IP_A.into(), IP_B.into(), false)).unwrap();
    let mut packet = encap(&captured::OVERLAY_ARP_REQUEST, &outer, 1);
    let len = packet.len();
    packet.extend_from_slice(&[0; 10]); // Ethernet padding after the IP packet
    assert_eq!(
        decapsulate(&packet, &policy_b(), known_a),
        Decap::Deliver {
            inner: 50..len,
            source: IP_A.into()
        }
    );
    // A UDP length shorter than the IP payload bounds the inner frame.
    let mut f = captured::V4_CSUM_ICMP.to_vec();
    f[38..40].copy_from_slice(&(114u16 - 4).to_be_bytes());
    assert_eq!(
        decapsulate(&f, &policy_b(), known_a),
        Decap::Deliver {
            inner: 50..144,
            source: IP_A.into()
        }
    );
}

#[test]
fn drop_reason_table() {
    assert_eq!(DropReason::COUNT, DropReason::ALL.len());
    let mut names = std::collections::HashSet::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(r.to_string(), r.as_str());
        let s = r.as_str();
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert!(names.insert(s), "duplicate {s}");
    }
    assert_eq!(DropReason::EthernetTruncated.as_str(), "ethernet_truncated");
    assert_eq!(DropReason::InnerNotForUs.as_str(), "inner_not_for_us");
}

/// A deterministic xorshift stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn assert_in_bounds(frame: &[u8], d: &Decap) {
    if let Decap::Deliver { inner, .. } = d {
        assert!(inner.start <= inner.end && inner.end <= frame.len());
        assert!(inner.len() >= 14);
    }
}

#[test]
fn truncation_at_every_length_never_panics() {
    let policy = policy_b();
    let frames: [&[u8]; 6] = [
        &captured::V4_CSUM_ICMP,
        &captured::V4_NOCSUM_ICMP,
        &captured::V4_PARTIAL_ICMP,
        &captured::V6_ICMP,
        &captured::V6_UDP,
        &captured::UNDERLAY_ARP_REQUEST,
    ];
    for f in frames {
        for len in 0..f.len() {
            let d = decapsulate(&f[..len], &policy, known_a);
            assert!(matches!(d, Decap::Drop(_)), "len {len} delivered");
        }
        assert_in_bounds(f, &decapsulate(f, &policy, known_a));
    }
}

#[test]
fn mutated_frames_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let policy = DecapPolicy {
        allow_unknown_peers: true,
        ..policy_b()
    };
    for base in [&captured::V4_CSUM_ICMP[..], &captured::V6_UDP[..]] {
        for _ in 0..20_000 {
            let mut f = base.to_vec();
            for _ in 0..(rng.next() % 4 + 1) {
                let at = (rng.next() as usize) % f.len();
                f[at] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (f.len() + 1);
            f.truncate(cut.max(f.len() - 8));
            let d = decapsulate(&f, &policy, known_a);
            assert_in_bounds(&f, &d);
        }
    }
}
