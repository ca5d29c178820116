//! Arbitrary text through `config::parse`: it never panics, and a config it accepts keeps what
//! the type promises: `to_json` reads back to an equal config (less the ignored keys, which it
//! does not write), the lease range is non-empty, aligned to `SubnetLen` and inside the network,
//! and `subnets()`/`ipv6_subnets()` start at `SubnetMin` and end at `SubnetMax`.
#![no_main]

use control::config::{self, NetworkConfig, MAX_VNI};
use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;

/// Walk at most this many subnets to find the last one.
const WALK: u64 = 4096;

fn without_ignored(mut c: NetworkConfig) -> NetworkConfig {
    c.ignored_fields.clear();
    c.backend.ignored_fields.clear();
    c
}

fn check_v4(c: &NetworkConfig) {
    let prefix = c.network.prefix_len();
    assert_eq!(c.network, c.network.trunc(), "host bits cleared");
    assert!(prefix <= 28);
    assert!(u32::from(prefix) + 2 <= u32::from(c.subnet_len) && c.subnet_len <= 30);
    assert!(c.subnet_min <= c.subnet_max);
    let mask = u32::MAX << (32 - c.subnet_len);
    for a in [c.subnet_min, c.subnet_max] {
        assert_eq!(u32::from(a) & mask, u32::from(a), "{a} aligned");
        assert!(c.network.contains(&a), "{a} in {}", c.network);
    }
    assert_eq!(u64::from(c.subnet_size()), 1u64 << (32 - c.subnet_len));

    let first = Ipv4Net::new(c.subnet_min, c.subnet_len).unwrap();
    let last = Ipv4Net::new(c.subnet_max, c.subnet_len).unwrap();
    assert_eq!(c.subnets().next(), Some(first));
    let count = (u64::from(u32::from(c.subnet_max)) - u64::from(u32::from(c.subnet_min)))
        / u64::from(c.subnet_size())
        + 1;
    if count <= WALK {
        assert_eq!(c.subnets().count() as u64, count);
        assert_eq!(c.subnets().last(), Some(last));
    }
    let v6_first = c.ipv6_subnets().next();
    assert!(c.is_compatible(first, v6_first));
    assert!(c.is_compatible(last, v6_first));
}

fn check_v6(c: &NetworkConfig) {
    let Some(v6) = c.ipv6 else {
        assert_eq!(c.ipv6_subnets().next(), None);
        assert_eq!(c.ipv6_subnet_size(), None);
        return;
    };
    let prefix = v6.network.prefix_len();
    assert_eq!(v6.network, v6.network.trunc());
    assert!((1..=124).contains(&prefix));
    assert!(prefix + 2 <= v6.subnet_len && v6.subnet_len <= 126);
    assert!(v6.subnet_min <= v6.subnet_max);
    let mask = u128::MAX << (128 - v6.subnet_len);
    for a in [v6.subnet_min, v6.subnet_max] {
        assert_eq!(u128::from(a) & mask, u128::from(a), "{a} aligned");
        assert!(v6.network.contains(&a), "{a} in {}", v6.network);
    }
    assert_eq!(c.ipv6_subnet_size(), Some(1u128 << (128 - v6.subnet_len)));

    let first = Ipv6Net::new(v6.subnet_min, v6.subnet_len).unwrap();
    let last = Ipv6Net::new(v6.subnet_max, v6.subnet_len).unwrap();
    assert_eq!(c.ipv6_subnets().next(), Some(first));
    let step = 1u128 << (128 - v6.subnet_len);
    let count = (u128::from(v6.subnet_max) - u128::from(v6.subnet_min)) / step + 1;
    if count <= u128::from(WALK) {
        assert_eq!(c.ipv6_subnets().count() as u128, count);
        assert_eq!(c.ipv6_subnets().last(), Some(last));
    }
    let v4_first = Ipv4Net::new(c.subnet_min, c.subnet_len).unwrap();
    assert!(c.is_compatible(v4_first, Some(last)));
    assert!(
        !c.is_compatible(v4_first, None),
        "the IPv6 half is required"
    );
}

fn check_backend(c: &NetworkConfig) {
    let b = &c.backend;
    assert!(b.vni <= MAX_VNI);
    let min_mtu = if c.ipv6.is_some() { 1280 } else { 68 };
    assert!(
        b.mtu == 0 || (min_mtu..=65535).contains(&b.mtu),
        "MTU {}",
        b.mtu
    );
    assert_ne!(c.vxlan_port(), 0);
    if b.mtu != 0 {
        assert_eq!(c.mtu_for(1500, false), b.mtu);
    } else {
        assert_eq!(c.mtu_for(1500, true), 1430);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = config::parse(text) else {
        return;
    };
    check_v4(&c);
    check_v6(&c);
    check_backend(&c);

    let json = c.to_json();
    assert_eq!(c.to_string(), json);
    assert_eq!(serde_json::to_string(&c).unwrap(), json);
    let again = config::parse(&json).unwrap_or_else(|e| panic!("{json} does not parse: {e}"));
    assert!(again.ignored_fields.is_empty() && again.backend.ignored_fields.is_empty());
    assert_eq!(again.to_json(), json);
    assert_eq!(again, without_ignored(c), "{json}");
});
