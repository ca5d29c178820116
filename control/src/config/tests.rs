use super::*;

fn ok(json: &str) -> NetworkConfig {
    match parse(json) {
        Ok(c) => c,
        Err(e) => panic!("{json} was refused: {e}"),
    }
}

#[test]
fn defaults_for_a_slash_16() {
    let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let v4 = c.ipv4.expect("IPv4 is on by default");
    assert_eq!(v4.network, "10.5.0.0/16".parse::<Ipv4Net>().unwrap());
    assert_eq!(v4.subnet_len, 24);
    assert_eq!(v4.subnet_min, Ipv4Addr::new(10, 5, 1, 0));
    assert_eq!(v4.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
    assert_eq!(c.backend.vni, 1);
    assert_eq!(c.backend.port, 0);
    assert_eq!(c.vxlan_port(), 8472);
    assert_eq!(c.backend.mtu, 0);
    assert!(!c.backend.gbp && !c.backend.learning && !c.backend.direct_routing);
    assert_eq!(c.ipv6, None);
    assert_eq!(c.subnet_size(), Some(256));
    assert!(!c.is_ipv6_only());
    assert!(c.ignored_fields.is_empty());
}

/// Good configs and the defaults flannel computes for them.
#[test]
fn good_configs() {
    // (config, SubnetLen, SubnetMin, SubnetMax)
    #[rustfmt::skip]
    let rows: &[(&str, u8, &str, &str)] = &[
        // flannel's own TestConfigDefaults and TestConfigOverrides, plus a backend.
        (r#"{ "network": "10.3.0.0/16", "backend": {"type": "vxlan"} }"#, 24, "10.3.1.0", "10.3.255.0"),
        (r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28, "Backend": {"Type": "vxlan"} }"#,
            28, "10.3.5.0", "10.3.8.0"),
        // /22 still gets /24 subnets; /23 gets prefix + 2.
        (r#"{"Network":"10.0.0.0/22","Backend":{"Type":"vxlan"}}"#, 24, "10.0.1.0", "10.0.3.0"),
        (r#"{"Network":"10.0.0.0/23","Backend":{"Type":"vxlan"}}"#, 25, "10.0.0.128", "10.0.1.128"),
        (r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#, 30, "10.0.0.4", "10.0.0.12"),
        // Host bits are cleared, as Go's net.ParseCIDR does.
        (r#"{"Network":"10.5.7.9/16","Backend":{"Type":"vxlan"}}"#, 24, "10.5.1.0", "10.5.255.0"),
        // 0.0.0.0 for SubnetMin/SubnetMax means "default".
        (r#"{"Network":"10.5.0.0/16","SubnetMin":"0.0.0.0","SubnetMax":"0.0.0.0","Backend":{"Type":"vxlan"}}"#,
            24, "10.5.1.0", "10.5.255.0"),
        // The top of the address space wraps like Go's uint32 arithmetic.
        (r#"{"Network":"255.255.0.0/16","Backend":{"Type":"vxlan"}}"#, 24, "255.255.1.0", "255.255.255.0"),
        // Type is lower-cased by flannel's backend manager; null fields leave defaults.
        (r#"{"Network":"10.5.0.0/16","SubnetLen":null,"Backend":{"Type":"VXLAN"}}"#, 24, "10.5.1.0", "10.5.255.0"),
        // Of two keys naming one field, the last wins.
        (r#"{"Network":"10.1.0.0/16","network":"10.9.0.0/16","Backend":{"Type":"vxlan"}}"#, 24, "10.9.1.0", "10.9.255.0"),
        // Go's case folding maps the Kelvin sign onto K.
        ("{\"Networ\u{212A}\":\"10.2.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}", 24, "10.2.1.0", "10.2.255.0"),
    ];
    for (json, len, min, max) in rows {
        let c = ok(json).ipv4.expect("IPv4 is on");
        assert_eq!(c.subnet_len, *len, "{json}");
        assert_eq!(c.subnet_min.to_string(), *min, "{json}");
        assert_eq!(c.subnet_max.to_string(), *max, "{json}");
    }
}

#[test]
fn backend_options() {
    let c = ok(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"GBP":true,
        "Learning":true,"DirectRouting":true,"MTU":1400,"MacPrefix":"0E-2A","Extra":1}}"#,
    );
    assert_eq!(c.backend.vni, 42);
    assert_eq!(c.backend.port, 4789);
    assert_eq!(c.vxlan_port(), 4789);
    assert!(c.backend.gbp && c.backend.learning && c.backend.direct_routing);
    assert_eq!(c.backend.mtu, 1400);
    assert_eq!(c.backend.mac_prefix.as_deref(), Some("0E-2A"));
    assert_eq!(c.backend.ignored_fields, vec!["Extra".to_string()]);
    // VNI 0 is a valid VNI for the kernel; flannel passes it through.
    assert_eq!(
        ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#)
            .backend
            .vni,
        0
    );
    assert_eq!(
        ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777215}}"#)
            .backend
            .vni,
        MAX_VNI
    );
}

#[test]
fn ignored_and_recorded_fields() {
    let c = ok(
        r#"{"Network":"10.5.0.0/16","EnableNFTables":true,"Networks":["x"],"BackendType":"udp",
        "Foo":{"a":1},"Backend":{"Type":"vxlan"}}"#,
    );
    assert!(c.enable_nftables);
    assert_eq!(c.ignored_fields, vec!["Networks", "BackendType", "Foo"]);
}

#[test]
fn ipv6_defaults_and_overrides() {
    // flannel's TestIPv6ConfigDefaults, dual stack.
    let c = ok(
        r#"{ "network": "10.3.0.0/16", "enableIPv6": true, "ipv6Network": "fc00::/48",
        "Backend": {"Type": "vxlan"} }"#,
    );
    let v6 = c.ipv6.unwrap();
    assert_eq!(v6.network.to_string(), "fc00::/48");
    assert_eq!(v6.subnet_len, 64);
    assert_eq!(v6.subnet_min.to_string(), "fc00:0:0:1::");
    assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:ffff::");
    assert_eq!(c.ipv6_subnet_size(), Some(1 << 64));

    // flannel's TestIPv6ConfigOverrides.
    let c = ok(
        r#"{ "Network": "10.3.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",
        "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124,
        "Backend": {"Type": "vxlan"} }"#,
    );
    let v6 = c.ipv6.unwrap();
    assert_eq!(v6.subnet_len, 124);
    assert_eq!(v6.subnet_min.to_string(), "fc00:0:0:1::");
    assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:f::");

    // /63 gets prefix + 2; null resets the pointer-typed IPv6SubnetMin to its default.
    let c = ok(
        r#"{ "Network": "10.3.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/63",
        "IPv6SubnetMin": "fd00::", "ipv6subnetmin": null, "Backend": {"Type": "vxlan"} }"#,
    );
    let v6 = c.ipv6.unwrap();
    assert_eq!(v6.subnet_len, 65);
    assert_eq!(v6.subnet_min.to_string(), "fd00::8000:0:0:0");
    assert_eq!(v6.subnet_max.to_string(), "fd00:0:0:1:8000::");
    assert_eq!(c.ipv6_subnets().count(), 3);
}

type Check = fn(&ConfigError) -> bool;

/// Bad configs, each with the error it must produce and a word its message must contain.
#[test]
fn bad_configs() {
    use ConfigError as E;
    const V: &str = r#""Backend":{"Type":"vxlan"}"#;
    const N: &str = r#""Network":"10.5.0.0/16""#;
    const V6: &str = r#""EnableIPv6":true,"IPv6Network":"fc00::/48""#;
    let cfg = |fields: &str| format!("{{{fields}}}");
    #[rustfmt::skip]
    let rows: Vec<(String, Check, &str)> = vec![
        ("".into(), |e| matches!(e, E::Json { .. }), "not valid JSON"),
        ("{\"Network\":".into(), |e| matches!(e, E::Json { .. }), "not valid JSON"),
        ("[1,2]".into(), |e| matches!(e, E::NotAnObject { .. }), "JSON object"),
        ("null".into(), |e| matches!(e, E::NotAnObject { .. }), "JSON object"),
        (cfg(V), |e| matches!(e, E::NetworkMissing), "Network"),
        (cfg(&format!(r#""Network":"0.0.0.0/0",{V}"#)), |e| matches!(e, E::NetworkMissing), "Network"),
        (cfg(&format!(r#""Network":"10.5.0.0",{V}"#)), |e| matches!(e, E::InvalidAddress { field: "Network", .. }), "10.5.0.0"),
        (cfg(&format!(r#""Network":"fc00::/48",{V}"#)), |e| matches!(e, E::InvalidAddress { field: "Network", .. }), "IPv6"),
        (cfg(&format!(r#""Network":null,{V}"#)), |e| matches!(e, E::FieldType { .. }), "Network"),
        (cfg(&format!(r#""Network":10,{V}"#)), |e| matches!(e, E::FieldType { .. }), "number 10"),
        (cfg(&format!(r#""Network":"10.0.0.0/29",{V}"#)), |e| matches!(e, E::NetworkTooSmall { .. }), "/28"),
        (cfg(&format!(r#"{N},"SubnetLen":31,{V}"#)), |e| matches!(e, E::SubnetLenTooLong { subnet_len: 31, .. }), "less than /31"),
        (cfg(&format!(r#"{N},"SubnetLen":17,{V}"#)), |e| matches!(e, E::TooFewSubnets { min: 18, .. }), "at least 18"),
        (cfg(&format!(r#"{N},"SubnetLen":"24",{V}"#)), |e| matches!(e, E::FieldType { .. }), "SubnetLen"),
        (cfg(&format!(r#"{N},"SubnetLen":-1,{V}"#)), |e| matches!(e, E::FieldType { .. }), "non-negative integer"),
        (cfg(&format!(r#"{N},"SubnetLen":24.0,{V}"#)), |e| matches!(e, E::FieldType { .. }), "SubnetLen"),
        (cfg(&format!(r#"{N},"SubnetMin":"10.6.0.0",{V}"#)), |e| matches!(e, E::OutsideNetwork { field: "SubnetMin", .. }), "10.6.0.0"),
        (cfg(&format!(r#"{N},"SubnetMax":"10.4.255.0",{V}"#)), |e| matches!(e, E::OutsideNetwork { field: "SubnetMax", .. }), "SubnetMax"),
        (cfg(&format!(r#"{N},"SubnetMin":"10.5.1.5",{V}"#)), |e| matches!(e, E::NotAligned { field: "SubnetMin", .. }), "use 10.5.1.0"),
        (cfg(&format!(r#"{N},"SubnetMax":"10.5.9.128",{V}"#)), |e| matches!(e, E::NotAligned { field: "SubnetMax", .. }), "SubnetLen boundary"),
        (cfg(&format!(r#"{N},"SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0",{V}"#)), |e| matches!(e, E::MinAboveMax { .. }), "10.5.9.0"),
        (cfg(&format!(r#"{N},"SubnetMin":"fc00::",{V}"#)), |e| matches!(e, E::InvalidAddress { field: "SubnetMin", .. }), "IPv6"),
        (cfg(&format!(r#"{N},"EnableIPv4":"yes",{V}"#)), |e| matches!(e, E::FieldType { .. }), "boolean"),
        (cfg(&format!(r#"{N},"EnableIPv4":false,{V}"#)), |e| matches!(e, E::NoAddressFamily), "both false"),
        (cfg(&format!(r#""EnableIPv4":false,"EnableIPv6":true,{V}"#)), |e| matches!(e, E::Ipv6NetworkMissing), "IPv6Network"),
        (cfg(&format!(r#""EnableIPv4":false,"EnableIPv6":false,{V}"#)), |e| matches!(e, E::NoAddressFamily), "IPv6-only"),
        (cfg(&format!(r#"{N},"EnableIPv6":true,{V}"#)), |e| matches!(e, E::Ipv6NetworkMissing), "IPv6Network"),
        (cfg(&format!(r#"{N},"EnableIPv6":true,"IPv6Network":"10.0.0.0/8",{V}"#)), |e| matches!(e, E::InvalidAddress { field: "IPv6Network", .. }), "IPv4 CIDR"),
        (cfg(&format!(r#"{N},"EnableIPv6":true,"IPv6Network":"fc00::/125",{V}"#)), |e| matches!(e, E::Ipv6NetworkTooSmall { .. }), "/124"),
        (cfg(&format!(r#"{N},{V6},"IPv6SubnetLen":127,{V}"#)), |e| matches!(e, E::SubnetLenTooLong { field: "IPv6SubnetLen", .. }), "less than /127"),
        (cfg(&format!(r#"{N},{V6},"IPv6SubnetLen":49,{V}"#)), |e| matches!(e, E::TooFewSubnets { field: "IPv6SubnetLen", .. }), "four subnets"),
        (cfg(&format!(r#"{N},{V6},"IPv6SubnetMin":"fc01::",{V}"#)), |e| matches!(e, E::OutsideNetwork { field: "IPv6SubnetMin", .. }), "fc01::"),
        (cfg(&format!(r#"{N},{V6},"IPv6SubnetMax":"fc00:0:0:5::1",{V}"#)), |e| matches!(e, E::NotAligned { field: "IPv6SubnetMax", .. }), "fc00:0:0:5::"),
        (cfg(&format!(r#"{N},{V6},"IPv6SubnetMin":7,{V}"#)), |e| matches!(e, E::FieldType { .. }), "IPv6SubnetMin"),
        (cfg(N), |e| matches!(e, E::BackendMissing), "udp"),
        (cfg(&format!(r#"{N},"Backend":{{}}"#)), |e| matches!(e, E::BackendTypeMissing), "Type"),
        (cfg(&format!(r#"{N},"Backend":null"#)), |e| matches!(e, E::BackendTypeMissing), "vxlan"),
        (cfg(&format!(r#"{N},"Backend":"vxlan""#)), |e| matches!(e, E::FieldType { .. }), "Backend"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"host-gw"}}"#)), |e| matches!(e, E::UnsupportedBackend { .. }), "host-gw"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":1}}"#)), |e| matches!(e, E::FieldType { .. }), "Backend.Type"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","VNI":16777216}}"#)), |e| matches!(e, E::VniOutOfRange { .. }), "16777216"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","VNI":-1}}"#)), |e| matches!(e, E::VniOutOfRange { .. }), "24 bits"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","VNI":1.5}}"#)), |e| matches!(e, E::FieldType { .. }), "Backend.VNI"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","Port":65536}}"#)), |e| matches!(e, E::PortOutOfRange { .. }), "65536"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","MTU":40}}"#)), |e| matches!(e, E::MtuOutOfRange { .. }), "68"),
        (cfg(&format!(r#"{N},{V6},"Backend":{{"Type":"vxlan","MTU":1000}}"#)), |e| matches!(e, E::MtuOutOfRange { min: 1280, .. }), "1280"),
        (cfg(&format!(r#"{N},"Backend":{{"Type":"vxlan","GBP":1}}"#)), |e| matches!(e, E::FieldType { .. }), "Backend.GBP"),
    ];
    assert!(rows.len() >= 15);
    for (json, check, needle) in &rows {
        match parse(json) {
            Ok(c) => panic!("{json} was accepted: {c:?}"),
            Err(e) => {
                assert!(check(&e), "{json}: unexpected error {e:?}");
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{json}: message {msg:?} lacks {needle:?}"
                );
            }
        }
    }
}

#[test]
fn round_trips_through_json() {
    let inputs = [
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.5.0","SubnetMax":"10.3.8.0","SubnetLen":28,
            "EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":true,
            "Backend":{"Type":"vxlan","VNI":7,"Port":4789,"DirectRouting":true,"MTU":1400,"MacPrefix":"0E-2A"}}"#,
    ];
    for input in inputs {
        let c = ok(input);
        let text = c.to_string();
        assert_eq!(ok(&text), c, "{text}");
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
    }
    assert_eq!(
        ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).to_json(),
        r#"{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.255.0","EnableIPv4":true,"EnableIPv6":false,"EnableNFTables":false,"Backend":{"Type":"vxlan","VNI":1,"Port":0,"GBP":false,"Learning":false,"DirectRouting":false,"MTU":0}}"#
    );
}

#[test]
fn candidate_subnets() {
    let c = ok(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#);
    let all: Vec<String> = c.subnets().map(|n| n.to_string()).collect();
    assert_eq!(all, ["10.0.0.4/30", "10.0.0.8/30", "10.0.0.12/30"]);
    let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.subnets().count(), 255);
    assert_eq!(c.ipv6_subnets().count(), 0);
    // The top of the address space does not wrap around.
    let c = ok(r#"{"Network":"255.255.255.0/24","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(
        c.subnets().last().map(|n| n.to_string()).as_deref(),
        Some("255.255.255.192/26")
    );
}

#[test]
fn compatibility() {
    let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let n = |s: &str| Some(s.parse::<Ipv4Net>().unwrap());
    assert!(c.is_compatible(n("10.5.52.0/24"), None));
    assert!(!c.is_compatible(n("10.5.0.0/24"), None), "below SubnetMin");
    assert!(!c.is_compatible(n("10.6.0.0/24"), None), "outside Network");
    assert!(!c.is_compatible(n("10.5.52.0/25"), None), "wrong SubnetLen");
    assert!(!c.is_compatible(n("10.5.52.1/24"), None), "host bits");
    assert!(
        !c.is_compatible(None, Some("fc00::/64".parse().unwrap())),
        "an IPv6-only lease in an IPv4 network"
    );
    assert!(
        !c.is_compatible(n("10.5.52.0/24"), Some("fc00::/64".parse().unwrap())),
        "IPv6 is off"
    );
    let c = ok(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    );
    assert!(
        !c.is_compatible(n("10.5.52.0/24"), None),
        "IPv6 part missing"
    );
    assert!(c.is_compatible(n("10.5.52.0/24"), Some("fc00:0:0:7::/64".parse().unwrap())));
    assert!(!c.is_compatible(n("10.5.52.0/24"), Some("fc00::/64".parse().unwrap())));
}

#[test]
fn mtu() {
    let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.mtu_for(1500, false), 1450);
    assert_eq!(c.mtu_for(1500, true), 1430);
    assert_eq!(c.mtu_for(9000, false), 8950);
    assert_eq!(c.mtu_for(20, false), 0);
    let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#);
    assert_eq!(c.mtu_for(9000, true), 1400);
}

/// `EnableIPv4: false`: flanneld's `CheckNetworkConfig` skips every IPv4 field, so `Network` may
/// be absent (or anything that decodes), and the config has no IPv4 half at all.
#[test]
fn ipv6_only_networks() {
    let c = ok(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#,
    );
    assert!(c.is_ipv6_only());
    assert_eq!(c.ipv4, None);
    assert_eq!(c.subnet_size(), None);
    assert_eq!(c.subnets().count(), 0);
    let v6 = c.ipv6.expect("IPv6 is on");
    assert_eq!(v6.network.to_string(), "fd00:5::/48");
    assert_eq!(v6.subnet_len, 64);
    assert_eq!(
        c.ipv6_subnets().next().map(|n| n.to_string()).as_deref(),
        Some("fd00:5:0:1::/64")
    );
    // The IPv4 fields are ignored, as flanneld ignores them (even a Network too small to use).
    let with_v4_fields = ok(
        r#"{"EnableIPv4":false,"Network":"10.0.0.0/30","SubnetLen":31,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(with_v4_fields.ipv4, None);
    // Leases: only an IPv6 subnet fits.
    let sn6 = |s: &str| Some(s.parse::<Ipv6Net>().unwrap());
    assert!(c.is_compatible(None, sn6("fd00:5:0:64::/64")));
    assert!(!c.is_compatible(None, None));
    assert!(!c.is_compatible(
        Some("10.5.52.0/24".parse().unwrap()),
        sn6("fd00:5:0:64::/64")
    ));
    assert!(!c.is_compatible(None, sn6("fd00:6:0:64::/64")));
    // Written back without the IPv4 fields, and read back equal.
    let text = c.to_json();
    assert_eq!(
        text,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:5:0:1::","IPv6SubnetMax":"fd00:5:0:ffff::","EnableNFTables":false,"Backend":{"Type":"vxlan","VNI":1,"Port":0,"GBP":false,"Learning":false,"DirectRouting":false,"MTU":0}}"#
    );
    assert_eq!(ok(&text), c);
    // The MTU comes from the IPv6 underlay: 70 bytes of outer headers.
    assert_eq!(c.mtu_for(1500, true), 1430);
}
