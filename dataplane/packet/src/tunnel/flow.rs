//! The outer UDP source port: a hash of the inner flow, so that ECMP routers and RSS on the
//! receiving NIC spread flows while each flow keeps one path (RFC 7348 section 5, "Source Port").

use std::ops::RangeInclusive;

use crate::wire::ethernet;

// Multipliers from wyhash; any odd constants with well-spread bits would do.
const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// 64x64 -> 128-bit multiply folded back to 64 bits: every input bit reaches every output bit.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "folding the halves together is the point"
)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Mixes one pair of key words into the state.
#[inline(always)]
fn round(state: u64, a: u64, b: u64) -> u64 {
    fold_mul(a ^ state ^ P0, b ^ P1)
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "folding the halves together is the point"
)]
fn finish(state: u64, tag: u64) -> u32 {
    let h = fold_mul(state ^ tag, P2);
    (h ^ (h >> 32)) as u32
}

#[inline(always)]
fn be_u32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

#[inline(always)]
fn be_u64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes([
        d[at],
        d[at + 1],
        d[at + 2],
        d[at + 3],
        d[at + 4],
        d[at + 5],
        d[at + 6],
        d[at + 7],
    ])
}

/// Whether the protocol has 16-bit source and destination ports in its first four bytes
/// (TCP, UDP, SCTP, UDP-Lite).
#[inline(always)]
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 136)
}

/// A fast, well-mixed hash of the inner frame's flow: for IPv4 and IPv6 the addresses, the
/// protocol and, for TCP/UDP/SCTP, the ports; otherwise the Ethernet addresses and EtherType.
///
/// Fragments (IPv4 MF or offset, an IPv6 fragment header) are hashed without ports, first
/// fragment included, as Linux's flow dissector does for `skb_get_hash`: only the first fragment
/// carries ports, and hashing it differently from the rest would send one datagram's fragments
/// down different ECMP paths. The hash is deterministic (no per-process key), so a flow keeps its
/// source port across restarts.
#[inline]
pub fn flow_hash(inner_frame: &[u8]) -> u32 {
    if inner_frame.len() >= ethernet::HEADER_LEN {
        let l3 = &inner_frame[ethernet::HEADER_LEN..];
        let hash = match u16::from_be_bytes([inner_frame[12], inner_frame[13]]) {
            0x0800 => hash_ipv4(l3),
            0x86dd => hash_ipv6(l3),
            _ => None,
        };
        if let Some(hash) = hash {
            return hash;
        }
    }
    hash_ethernet(inner_frame)
}

#[inline]
fn hash_ethernet(frame: &[u8]) -> u32 {
    // Destination, source and EtherType; a frame shorter than that is padded with zeroes.
    let mut key = [0u8; 16];
    let n = frame.len().min(ethernet::HEADER_LEN);
    key[..n].copy_from_slice(&frame[..n]);
    finish(round(0, be_u64(&key, 0), be_u64(&key, 8)), 1)
}

#[inline]
fn hash_ipv4(ip: &[u8]) -> Option<u32> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let protocol = ip[9];
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let ports = if has_ports(protocol) && !fragment && ip.len() >= header_len + 4 {
        be_u32(ip, header_len)
    } else {
        0
    };
    let addrs = be_u64(ip, 12);
    let rest = u64::from(protocol) << 32 | u64::from(ports);
    Some(finish(round(0, addrs, rest), 4))
}

#[inline]
fn hash_ipv6(ip: &[u8]) -> Option<u32> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    // Skip the extension headers that may come before the ports (bounded: a crafted chain of
    // options cannot make this loop long).
    let mut next = ip[6];
    let mut at = 40;
    let mut ports = 0u32;
    for _ in 0..4 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units after the first 8.
            0 | 43 | 60 if ip.len() >= at + 2 => {
                next = ip[at];
                at += (usize::from(ip[at + 1]) + 1) * 8;
            }
            // Fragment header: no ports, whichever fragment this is (see `flow_hash`).
            44 if ip.len() > at => {
                next = ip[at];
                break;
            }
            p if has_ports(p) && ip.len() >= at + 4 => {
                ports = be_u32(ip, at);
                break;
            }
            _ => break,
        }
    }
    let s = round(0, be_u64(ip, 8), be_u64(ip, 16));
    let s = round(s, be_u64(ip, 24), be_u64(ip, 32));
    let rest = u64::from(next) << 32 | u64::from(ports);
    Some(finish(round(s, rest, 0), 6))
}

/// Maps a flow hash onto a port range the way Linux's `udp_flow_src_port` does: the low half is
/// folded into the high half (which the multiply keeps), then scaled onto the range without a
/// division. Unlike Linux, which scales by `max - min` and never picks `max`, every port of the
/// inclusive range is reachable. An empty range yields its start.
#[inline]
pub fn source_port(hash: u32, range: &RangeInclusive<u16>) -> u16 {
    let (min, max) = (*range.start(), *range.end());
    if max <= min {
        return min;
    }
    let span = u64::from(max - min) + 1;
    let hash = hash ^ (hash << 16);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "(hash * span) >> 32 < span <= 65536, and min + it <= max"
    )]
    let offset = ((u64::from(hash) * span) >> 32) as u16;
    min + offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::captured;

    /// An Ethernet + IPv4 + TCP/UDP header with the given flow fields.
    fn v4_frame(src: [u8; 4], dst: [u8; 4], protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..6].copy_from_slice(&[0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02]);
        f[6..12].copy_from_slice(&[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = protocol;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn v6_frame(src_last: u16, next: u8, sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[14 + 6] = next;
        f[14 + 8] = 0xfd;
        f[14 + 22..14 + 24].copy_from_slice(&src_last.to_be_bytes());
        f[14 + 24] = 0xfd;
        f[14 + 39] = 1;
        f[54..56].copy_from_slice(&sport.to_be_bytes());
        f[56..58].copy_from_slice(&443u16.to_be_bytes());
        f
    }

    #[test]
    fn same_flow_same_hash_in_real_traffic() {
        // Three segments of one TCP connection from the capture hash alike (the kernel gave them
        // one source port too), the payload and the TCP flags notwithstanding.
        let a = flow_hash(&captured::V4_CSUM_TCP_SYN[50..]);
        let mut later = captured::V4_CSUM_TCP_SYN[50..].to_vec();
        later[14 + 20 + 13] = 0x18; // PSH|ACK
        later[14 + 4] ^= 0xff; // another IP ident
        assert_eq!(a, flow_hash(&later));
        // The reverse direction and other flows differ.
        assert_ne!(a, flow_hash(&captured::V4_NOCSUM_TCP_SYNACK[50..]));
        assert_ne!(a, flow_hash(&captured::V4_CSUM_UDP[50..]));
        assert_ne!(a, flow_hash(&captured::V4_CSUM_ICMP[50..]));
    }

    #[test]
    fn ports_count_only_for_port_protocols_and_unfragmented() {
        let base = v4_frame([10, 1, 1, 0], [10, 1, 2, 0], 6, 1000, 80);
        let other_port = v4_frame([10, 1, 1, 0], [10, 1, 2, 0], 6, 1001, 80);
        assert_ne!(flow_hash(&base), flow_hash(&other_port));
        // ICMP: bytes where ports would be are ignored.
        let icmp_a = v4_frame([10, 1, 1, 0], [10, 1, 2, 0], 1, 1000, 80);
        let icmp_b = v4_frame([10, 1, 1, 0], [10, 1, 2, 0], 1, 1001, 80);
        assert_eq!(flow_hash(&icmp_a), flow_hash(&icmp_b));
        // Fragments, first (MF) and later (offset), hash without ports: one path per datagram.
        let mut first = base.clone();
        first[14 + 6] = 0x20;
        let mut later = other_port.clone();
        later[14 + 7] = 0xb9;
        assert_eq!(flow_hash(&first), flow_hash(&later));
        assert_ne!(flow_hash(&first), flow_hash(&base));
        // DF alone is not a fragment.
        let mut df = base.clone();
        df[14 + 6] = 0x40;
        assert_eq!(flow_hash(&df), flow_hash(&base));
    }

    #[test]
    fn ipv6_ports_extension_headers_and_fragments() {
        let a = v6_frame(1, 6, 1000);
        let b = v6_frame(1, 6, 1001);
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_ne!(flow_hash(&a), flow_hash(&v6_frame(2, 6, 1000)));
        // Hop-by-hop options (8 bytes) in front of TCP: ports still found.
        let mut hbh = vec![0u8; 14 + 40 + 8 + 4];
        hbh[..54].copy_from_slice(&a[..54]);
        hbh[14 + 6] = 0;
        hbh[54] = 6; // next: TCP
        hbh[62..66].copy_from_slice(&a[54..58]);
        assert_eq!(flow_hash(&hbh), flow_hash(&a));
        // Fragment header: no ports.
        let mut frag_a = a.clone();
        frag_a[14 + 6] = 44;
        frag_a[54] = 6;
        let mut frag_b = b.clone();
        frag_b[14 + 6] = 44;
        frag_b[54] = 6;
        assert_eq!(flow_hash(&frag_a), flow_hash(&frag_b));
        // Real IPv6-underlay traffic carries IPv4 inside; its hash is the IPv4 one.
        assert_eq!(
            flow_hash(&captured::V6_ICMP[70..]),
            flow_hash(&captured::V4_CSUM_ICMP[50..])
        );
    }

    #[test]
    fn non_ip_uses_ethernet_header() {
        let arp = &captured::OVERLAY_ARP_REQUEST;
        let mut other_target = *arp;
        other_target[41] ^= 1;
        assert_eq!(flow_hash(arp), flow_hash(&other_target));
        let mut other_src = *arp;
        other_src[11] ^= 1;
        assert_ne!(flow_hash(arp), flow_hash(&other_src));
        // Short or broken input hashes without panicking.
        for len in 0..arp.len() {
            flow_hash(&arp[..len]);
            flow_hash(&captured::V6_UDP[70..70 + len]);
            flow_hash(&captured::V4_CSUM_UDP[50..50 + len]);
        }
    }

    #[test]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the expected values are computed as the kernel does, by truncation"
    )]
    fn source_port_follows_linux_formula_and_range() {
        let range = 32768..=60999u16;
        assert_eq!(source_port(0, &range), 32768);
        // 0x0000ffff folds to 0xffffffff, the largest product.
        assert_eq!(source_port(0x0000_ffff, &range), 60999);
        for h in [1u32, 0x1234_5678, 0x8000_0000, 0xdead_beef] {
            let folded = h ^ (h << 16);
            let want = 32768 + ((u64::from(folded) * 28232) >> 32) as u16;
            assert_eq!(source_port(h, &range), want);
        }
        // Both ends reachable, nothing outside.
        let full = 0..=u16::MAX;
        assert_eq!(source_port(0x0000_ffff, &full), 0xffff);
        assert_eq!(source_port(0, &full), 0);
        assert_eq!(source_port(0xdead_beef, &(5000..=5000)), 5000);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 6000..=5000;
        assert_eq!(source_port(0xdead_beef, &empty), 6000);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = source_port(x as u32, &range);
            assert!(range.contains(&p));
        }
    }

    /// Chi-squared statistic of `ports` over `buckets` equal slices of `range`.
    fn chi_squared(ports: &[u16], range: &RangeInclusive<u16>, buckets: usize) -> f64 {
        let span = usize::from(range.end() - range.start()) + 1;
        let mut counts = vec![0usize; buckets];
        for &p in ports {
            counts[usize::from(p - range.start()) * buckets / span] += 1;
        }
        let expected = ports.len() as f64 / buckets as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn many_flows_spread_uniformly_over_the_port_range() {
        let range = crate::tunnel::OuterParams::DEFAULT_SRC_PORT_RANGE;
        let mut ports = Vec::new();
        // Typical overlay traffic: few hosts, sequential ephemeral source ports.
        for host in 0..4u8 {
            for sport in 40000..45000u16 {
                let f = v4_frame([10, 1, 1, host], [10, 1, 2, 5], 6, sport, 443);
                ports.push(source_port(flow_hash(&f), &range));
            }
        }
        // Many hosts, one service.
        for host in 0..20_000u32 {
            let b = host.to_be_bytes();
            let f = v4_frame([10, b[1], b[2], b[3]], [10, 1, 2, 5], 17, 53, 53);
            ports.push(source_port(flow_hash(&f), &range));
        }
        for sport in 0..10_000u16 {
            ports.push(source_port(flow_hash(&v6_frame(7, 17, sport)), &range));
        }
        // 64 buckets: 63 degrees of freedom, p = 0.001 critical value is 103.4.
        let chi2 = chi_squared(&ports, &range, 64);
        assert!(chi2 < 103.4, "chi squared {chi2}");
        // And few collisions: 50k flows over 28232 ports leave e^-1.77 = 17% of the ports unused
        // with ideal hashing; require at least 75% of them used.
        let mut seen = vec![false; 65536];
        for &p in &ports {
            seen[usize::from(p)] = true;
        }
        let used = seen.iter().filter(|&&s| s).count();
        assert!(used * 100 >= 28232 * 75, "{used} ports used");
    }
}
