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
    let Some(v4) = c.ipv4 else {
        // IPv6-only (EnableIPv4 false): nothing IPv4 to lease.
        assert_eq!(c.subnets().next(), None);
        assert_eq!(c.subnet_size(), None);
        assert!(c.ipv6.is_some(), "one family is always on");
        return;
    };
    let prefix = v4.network.prefix_len();
    assert_eq!(v4.network, v4.network.trunc(), "host bits cleared");
    assert!(prefix <= 28);
    assert!(u32::from(prefix) + 2 <= u32::from(v4.subnet_len) && v4.subnet_len <= 30);
    assert!(v4.subnet_min <= v4.subnet_max);
    let mask = u32::MAX << (32 - v4.subnet_len);
    for a in [v4.subnet_min, v4.subnet_max] {
        assert_eq!(u32::from(a) & mask, u32::from(a), "{a} aligned");
        assert!(v4.network.contains(&a), "{a} in {}", v4.network);
    }
    let size = 1u64 << (32 - v4.subnet_len);
    assert_eq!(c.subnet_size().map(u64::from), Some(size));

    let first = Ipv4Net::new(v4.subnet_min, v4.subnet_len).unwrap();
    let last = Ipv4Net::new(v4.subnet_max, v4.subnet_len).unwrap();
    assert_eq!(c.subnets().next(), Some(first));
    let count =
        (u64::from(u32::from(v4.subnet_max)) - u64::from(u32::from(v4.subnet_min))) / size + 1;
    if count <= WALK {
        assert_eq!(c.subnets().count() as u64, count);
        assert_eq!(c.subnets().last(), Some(last));
    }
    let v6_first = c.ipv6_subnets().next();
    assert!(c.is_compatible(Some(first), v6_first));
    assert!(c.is_compatible(Some(last), v6_first));
    assert!(
        !c.is_compatible(None, v6_first),
        "the IPv4 half is required"
    );
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
    let v4_first = c.subnets().next();
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
