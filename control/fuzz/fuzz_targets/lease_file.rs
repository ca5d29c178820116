//! Arbitrary file contents through the two file parsers: neither panics.
//!
//! - The local store's lease files (`store::local::decode`): a file that decodes re-encodes
//!   (`encode`) to text that decodes to an equal lease and re-encodes to the same bytes (but for
//!   the one documented exception, see `lease_round_trip.rs`).
//! - The subnet file as `subnet_file::read_previous_subnet` reads it (the bytes made UTF-8
//!   lossily, then `parse_previous_subnet`; going through a real file per input ran at a few
//!   hundred inputs a second): the subnets it returns have no host bits, and the subnet file
//!   flanneld would write for them (`render`) reads back to the same subnets. That holds for
//!   every prefix but /32 and /128, where `FLANNEL_SUBNET`'s "base + 1" leaves the subnet;
//!   flannel's leases are /30 or shorter.
#![no_main]

use std::path::Path;

use control::config;
use control::lease::SubnetKey;
use control::store::local::{decode, encode};
use control::subnet_file::{parse_previous_subnet, render};
use libfuzzer_sys::fuzz_target;

#[path = "lease_round_trip.rs"]
mod lease_round_trip;

fn check_lease_file(text: &str) {
    let key: SubnetKey = "10.5.52.0-24&fc00:0:0:34::-64".parse().unwrap();
    let Ok(lease) = decode(&key, text) else {
        return;
    };
    assert_eq!(lease.key(), key);
    let encoded = encode(&lease);
    let again = decode(&key, &encoded).unwrap_or_else(|e| panic!("{encoded}: {e}"));
    assert_eq!(again.key(), key);
    assert_eq!(again.expiration, lease.expiration, "{encoded}");
    lease_round_trip::check(text, &lease.attrs, &again.attrs);
    if again == lease {
        assert_eq!(encode(&again), encoded);
    }
}

fn check_subnet_file(data: &[u8]) {
    let path = Path::new("/run/flannel/subnet.env");
    let text = String::from_utf8_lossy(data);
    let Ok(key) = parse_previous_subnet(&text, path) else {
        return;
    };
    let (subnet, ipv6_subnet) = (key.ipv4, key.ipv6);
    assert_eq!(subnet, subnet.map(|n| n.trunc()));
    assert_eq!(ipv6_subnet, ipv6_subnet.map(|n| n.trunc()));
    if subnet.is_some_and(|n| n.prefix_len() == 32)
        || ipv6_subnet.is_some_and(|n| n.prefix_len() == 128)
    {
        return;
    }
    // `render` writes FLANNEL_NETWORK lines from the config; any network does.
    let json = match (subnet, ipv6_subnet) {
        (_, None) => r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        (None, Some(_)) => {
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#
        }
        (Some(_), Some(_)) => {
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#
        }
    };
    let cfg = config::parse(json).unwrap();
    let text = render(&cfg, subnet, ipv6_subnet, 1450, false).unwrap();
    let again = parse_previous_subnet(&text, path).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(again, key, "{text}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_lease_file(text);
    }
    check_subnet_file(data);
});
