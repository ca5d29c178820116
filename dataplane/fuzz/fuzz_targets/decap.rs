//! Arbitrary frames through `decapsulate`: it never panics, and a delivered range lies within
//! the frame, holds at least an Ethernet header addressed to us, and came from a known peer.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use packet::tunnel::{decapsulate, Decap, DecapPolicy, DropReason};
use packet::wire::{Ipv4Packet, MacAddr, Vni};
use libfuzzer_sys::fuzz_target;

const LOCAL_MAC: MacAddr = MacAddr([0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02]);

fn known(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        || ip == IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
}

fn check(frame: &[u8], policy: &DecapPolicy) {
    match decapsulate(frame, policy, known) {
        Decap::Deliver { inner, source } => {
            assert!(inner.start <= inner.end && inner.end <= frame.len());
            assert!(inner.len() >= 14);
            let dst = &frame[inner.start..inner.start + 6];
            assert!(dst == LOCAL_MAC.0 || dst == MacAddr::BROADCAST.0);
            assert!(policy.allow_unknown_peers || known(source));
        }
        Decap::Drop(reason) => assert!(reason.index() < DropReason::COUNT),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut policy = DecapPolicy {
        local_ip4: Some(Ipv4Addr::new(192, 0, 2, 2)),
        local_ip6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        port: 8472,
        vni: Vni::new(1).unwrap(),
        local_mac: LOCAL_MAC,
        allow_unknown_peers: false,
    };
    check(data, &policy);
    policy.allow_unknown_peers = true;
    check(data, &policy);

    // Mutations of the outer IPv4 header rarely keep its checksum right; fix it up so that the
    // checks behind it see those mutations too.
    if data.len() >= 34 && data[12..14] == [0x08, 0x00] {
        let mut fixed = data.to_vec();
        let header_len = usize::from(fixed[14] & 0x0f) * 4;
        if header_len >= 20 && 14 + header_len <= fixed.len() {
            Ipv4Packet::new_unchecked(&mut fixed[14..14 + header_len]).fill_checksum();
            check(&fixed, &policy);
        }
    }
});
