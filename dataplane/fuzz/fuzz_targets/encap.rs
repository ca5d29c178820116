//! Arbitrary inner frames and outer parameters through `encapsulate`, then `decapsulate` with
//! the matching policy: the same inner bytes must come back, from the right source.
//!
//! Input: 14 control bytes, then the inner frame.
//!   0: bit 0 IPv6 underlay, bit 1 UDP checksum     1..4: VNI      4..6: destination port
//!   6..10: two ends of the source port range       10: TTL        11..13: IPv4 ident
//!   13: extra headroom in front of the outer headers
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use packet::tunnel::{
    decapsulate, encapsulate, Decap, DecapPolicy, EncapError, OuterHeader, OuterParams,
    MAX_OUTER_LEN,
};
use packet::wire::{Ipv4Packet, MacAddr, UdpPacket, Vni};
use libfuzzer_sys::fuzz_target;

const CONTROL_LEN: usize = 14;

fuzz_target!(|data: &[u8]| {
    if data.len() < CONTROL_LEN {
        return;
    }
    let (c, inner) = data.split_at(CONTROL_LEN);
    let be16 = |at: usize| u16::from_be_bytes([c[at], c[at + 1]]);
    let ipv6 = c[0] & 1 != 0;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = if ipv6 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
        )
    } else {
        (
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
        )
    };
    let vni = Vni::new(u32::from_be_bytes([0, c[1], c[2], c[3]])).unwrap();
    let (a, b) = (be16(6), be16(8));
    let params = OuterParams {
        src_mac: MacAddr([2, 0, 0, 0, 0x0a, 1]),
        dst_mac: MacAddr([2, 0, 0, 0, 0x0b, 1]),
        src_ip,
        dst_ip,
        dst_port: be16(4),
        vni,
        udp_checksum: c[0] & 2 != 0,
        src_port_range: a.min(b)..=a.max(b),
        ttl: c[10],
    };
    let ident = be16(11);
    let outer = OuterHeader::new(&params).expect("valid parameters");

    let inner_start = MAX_OUTER_LEN + usize::from(c[13]);
    let mut buf = vec![0u8; inner_start + inner.len() + 3];
    buf[inner_start..inner_start + inner.len()].copy_from_slice(inner);
    let start = match encapsulate(&mut buf, inner_start, inner.len(), &outer, ident) {
        Ok(start) => start,
        Err(EncapError::InnerTooShort) if inner.len() < 14 => return,
        Err(EncapError::TooLong) if inner.len() > 65535 - 36 => return,
        Err(e) => panic!("unexpected {e:?}"),
    };
    assert_eq!(start, inner_start - outer.len());
    let packet = &buf[start..inner_start + inner.len()];

    let udp_at = outer.len() - 16;
    let udp = UdpPacket::new_checked(&packet[udp_at..]).unwrap();
    assert!(params.src_port_range.contains(&udp.src_port()));
    assert!(udp.verify_checksum(&src_ip, &dst_ip));
    assert_eq!(udp.checksum() != 0, ipv6 || params.udp_checksum);
    if !ipv6 {
        let ip = Ipv4Packet::new_checked(&packet[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ident(), ident);
    }

    let mut local_mac = [0u8; 6];
    local_mac.copy_from_slice(&inner[..6]);
    let policy = DecapPolicy {
        local_ip4: if ipv6 {
            None
        } else {
            Some(Ipv4Addr::new(192, 0, 2, 2))
        },
        local_ip6: if ipv6 {
            Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2))
        } else {
            None
        },
        port: params.dst_port,
        vni,
        local_mac: MacAddr(local_mac),
        allow_unknown_peers: false,
    };
    match decapsulate(packet, &policy, |ip| ip == src_ip) {
        Decap::Deliver { inner: r, source } => {
            assert_eq!(&packet[r], inner);
            assert_eq!(source, src_ip);
        }
        Decap::Drop(reason) => panic!("own encapsulation dropped: {reason}"),
    }
});
