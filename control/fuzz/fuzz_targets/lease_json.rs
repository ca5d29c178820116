//! Arbitrary bytes as a lease value and as a subnet key: neither parser panics.
//!
//! - `LeaseAttrs::from_json`: an accepted value re-encodes (`to_json`) to text that decodes to
//!   an equal value and re-encodes to the same bytes (but for the one documented exception, see
//!   `lease_round_trip.rs`); serde's `Deserialize` agrees with it.
//! - `SubnetKey`: a key that parses is in flannel's canonical form (it displays as the text it
//!   came from), and so does one reached through `from_etcd_key`.
//! - The other way round, a key built from the first 22 bytes (IPv4 address and length, IPv6
//!   address and length, host bits cleared) displays as text that parses back to it, also as a
//!   full etcd key under a prefix taken from the remaining bytes.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use control::lease::{LeaseAttrs, SubnetKey, DEFAULT_ETCD_PREFIX};
use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;

#[path = "lease_round_trip.rs"]
mod lease_round_trip;

fn check_attrs(text: &str) {
    let decoded = LeaseAttrs::from_json(text);
    let via_serde = serde_json::from_str::<LeaseAttrs>(text);
    assert_eq!(decoded.as_ref().ok(), via_serde.as_ref().ok());
    let Ok(attrs) = decoded else {
        return;
    };
    let json = attrs.to_json();
    let again = LeaseAttrs::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    lease_round_trip::check(text, &attrs, &again);
    // Whatever the data, asking for it never panics.
    let _ = (attrs.vxlan_data(), attrs.vxlan_v6_data());
}

fn check_key_text(text: &str) {
    if let Ok(key) = text.parse::<SubnetKey>() {
        assert_eq!(key.to_string(), text);
        assert_eq!(key.ipv4, key.ipv4.map(|n| n.trunc()));
        assert_eq!(key.ipv6, key.ipv6.map(|n| n.trunc()));
    }
    if let Ok(key) = SubnetKey::from_etcd_key(DEFAULT_ETCD_PREFIX, text) {
        assert_eq!(key.etcd_key(DEFAULT_ETCD_PREFIX), text);
    }
}

fn check_key_display(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<22>() else {
        return;
    };
    let v4_addr = Ipv4Addr::from([head[0], head[1], head[2], head[3]]);
    let mut v6_octets = [0u8; 16];
    v6_octets.copy_from_slice(&head[5..21]);
    let ipv4 = Ipv4Net::new(v4_addr, head[4] % 33).unwrap().trunc();
    // The top bit of the IPv6 length byte says whether there is an IPv6 half.
    let ipv6 = (head[21] & 0x80 != 0)
        .then(|| Ipv6Net::new(Ipv6Addr::from(v6_octets), (head[21] & 0x7f) % 129).unwrap())
        .map(|n| n.trunc());
    let key = SubnetKey::new(ipv4, ipv6);
    let text = key.to_string();
    assert_eq!(text.parse::<SubnetKey>().ok(), Some(key), "{text}");

    let prefix = String::from_utf8_lossy(rest);
    let full = key.etcd_key(&prefix);
    assert_eq!(
        SubnetKey::from_etcd_key(&prefix, &full).ok(),
        Some(key),
        "{full} under {prefix:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_attrs(text);
        check_key_text(text);
    }
    check_key_display(data);
});
