//! flanneld's masquerade and forward rules, installed with the real `iptables`/`ip6tables` and
//! `nft` in network namespaces made for each test (firewall rules are per namespace), read back
//! with `iptables-save` and `nft list ruleset`, repaired after hand edits, removed without
//! touching anything else, and shown to rewrite the right packets' source addresses.
//!
//! These tests need root; without it they fail, never skip.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use control::masq::{BackendKind, MasqConfig, Masquerade};
use testkit::{require_root, unique_prefix, veth, Netns};

fn config(ipv6: bool, prefer_nftables: bool) -> MasqConfig {
    MasqConfig {
        ipv4: Some((
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
        )),
        ipv6: ipv6.then(|| {
            (
                "fc00::/48".parse().unwrap(),
                "fc00:0:0:1::/64".parse().unwrap(),
            )
        }),
        ip_masq: true,
        random_fully: true,
        forward_rules: true,
        prefer_nftables,
    }
}

fn install(ns: &Netns, cfg: MasqConfig) -> Masquerade {
    ns.enter(|| Masquerade::install(cfg))
        .unwrap_or_else(|e| panic!("install in {}: {e}", ns.name()))
}

fn ensure(ns: &Netns, m: &Masquerade) -> bool {
    ns.enter(|| m.ensure())
        .unwrap_or_else(|e| panic!("ensure in {}: {e}", ns.name()))
}

fn remove(ns: &Netns, m: Masquerade) {
    ns.enter(|| m.remove())
        .unwrap_or_else(|e| panic!("remove in {}: {e}", ns.name()));
}

/// `iptables-save -t <table>` (or ip6tables-save) without comments and counters.
fn save(ns: &Netns, tool: &str, table: &str) -> String {
    let out = ns.run(&[tool, "-t", table]);
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const NAT_V4: &str = r#"*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:FLANNEL-POSTRTG -
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.1.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT"#;

const FILTER_V4: &str = r#"*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:FLANNEL-FWD -
-A FORWARD -s 198.51.100.0/24 -j DROP
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT"#;

const NAT_V6: &str = r#"*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:FLANNEL-POSTRTG -
-A POSTROUTING -s 2001:db8::/32 -j MASQUERADE
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fc00:0:0:1::/64 -d fc00::/48 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fc00::/48 -d fc00:0:0:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00:0:0:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT"#;

const FILTER_V6: &str = r#"*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:FLANNEL-FWD -
-A FORWARD -s 2001:db8:1::/48 -j DROP
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s fc00::/48 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d fc00::/48 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT"#;

/// Unrelated rules in all four tables, which must survive install and remove.
fn add_unrelated_iptables_rules(ns: &Netns) {
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "192.0.2.0/24",
        "-j",
        "MASQUERADE",
    ]);
    ns.run(&[
        "iptables",
        "-A",
        "FORWARD",
        "-s",
        "198.51.100.0/24",
        "-j",
        "DROP",
    ]);
    ns.run(&[
        "ip6tables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "2001:db8::/32",
        "-j",
        "MASQUERADE",
    ]);
    ns.run(&[
        "ip6tables",
        "-A",
        "FORWARD",
        "-s",
        "2001:db8:1::/48",
        "-j",
        "DROP",
    ]);
}

fn all_iptables(ns: &Netns) -> [String; 4] {
    [
        save(ns, "iptables-save", "nat"),
        save(ns, "iptables-save", "filter"),
        save(ns, "ip6tables-save", "nat"),
        save(ns, "ip6tables-save", "filter"),
    ]
}

fn assert_flanneld_iptables(ns: &Netns) {
    let [nat4, filter4, nat6, filter6] = all_iptables(ns);
    assert_eq!(nat4, NAT_V4);
    assert_eq!(filter4, FILTER_V4);
    assert_eq!(nat6, NAT_V6);
    assert_eq!(filter6, FILTER_V6);
}

#[test]
fn iptables_rules_are_flanneds_repaired_and_removed() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "ipt");
    add_unrelated_iptables_rules(&ns);
    let before = all_iptables(&ns);

    let m = install(&ns, config(true, false));
    assert_eq!(m.backend(), BackendKind::Iptables);
    assert_eq!(m.backend_name(), "iptables");
    assert!(m.random_fully(), "iptables 1.8 supports --random-fully");
    assert_flanneld_iptables(&ns);

    // Intact: nothing to do, and nothing done.
    assert!(!ensure(&ns, &m));
    assert_flanneld_iptables(&ns);

    // A rule deleted by hand from the middle of the chain comes back in its place.
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "FLANNEL-POSTRTG",
        "-s",
        "10.5.0.0/16",
        "!",
        "-d",
        "224.0.0.0/4",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "MASQUERADE",
        "--random-fully",
    ]);
    assert_ne!(save(&ns, "iptables-save", "nat"), NAT_V4);
    assert!(ensure(&ns, &m));
    assert_flanneld_iptables(&ns);
    assert!(!ensure(&ns, &m));

    // The jump from POSTROUTING, deleted, is appended again.
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ]);
    assert!(ensure(&ns, &m));
    assert_flanneld_iptables(&ns);

    // IPv6 forward rules, and a foreign rule slipped into flannel's chain (which `-C` alone
    // would not notice).
    ns.run(&[
        "ip6tables",
        "-D",
        "FLANNEL-FWD",
        "-d",
        "fc00::/48",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "ACCEPT",
    ]);
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-I",
        "FLANNEL-POSTRTG",
        "-j",
        "ACCEPT",
    ]);
    assert!(ensure(&ns, &m));
    assert_flanneld_iptables(&ns);
    assert!(!ensure(&ns, &m));

    // Installing again over what is there (a restart after a crash) gives the same rules.
    let again = install(&ns, config(true, false));
    assert_flanneld_iptables(&ns);
    drop(again);

    remove(&ns, m);
    assert_eq!(all_iptables(&ns), before);
    for out in all_iptables(&ns) {
        assert!(
            !out.contains("FLANNEL") && !out.contains("flanneld"),
            "{out}"
        );
    }
}

#[test]
fn iptables_without_ip_masq_installs_only_forward_rules() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "fwd");
    let cfg = MasqConfig {
        ip_masq: false,
        ..config(false, false)
    };
    let m = install(&ns, cfg);
    assert!(!m.random_fully());
    let filter = save(&ns, "iptables-save", "filter");
    assert!(
        filter.contains("-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD"),
        "{filter}"
    );
    let nat = save(&ns, "iptables-save", "nat");
    assert!(!nat.contains("FLANNEL"), "{nat}");
    assert!(!save(&ns, "ip6tables-save", "filter").contains("FLANNEL"));
    assert!(!ensure(&ns, &m));
    remove(&ns, m);
    assert!(!save(&ns, "iptables-save", "filter").contains("FLANNEL"));
}

const UNRELATED_NFT: &str = "table inet keepme {
	chain c {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept
	}
}
";

const NFT_V4: &str = r#"table ip vxdp-flannel {
	comment "vxdp: flanneld --ip-masq and --iptables-forward-rules"
	chain postrtg {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
		ip saddr 10.5.1.0/24 ip daddr 10.5.0.0/16 return comment "flanneld masq"
		ip saddr 10.5.0.0/16 ip daddr 10.5.1.0/24 return comment "flanneld masq"
		ip saddr != 10.5.0.0/16 ip daddr 10.5.1.0/24 return comment "flanneld masq"
		ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
		ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random comment "flanneld masq"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.5.0.0/16 accept comment "flanneld forward"
		ip daddr 10.5.0.0/16 accept comment "flanneld forward"
	}
}
"#;

const NFT_V6: &str = r#"table ip6 vxdp-flannel {
	comment "vxdp: flanneld --ip-masq and --iptables-forward-rules"
	chain postrtg {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
		ip6 saddr fc00:0:0:1::/64 ip6 daddr fc00::/48 return comment "flanneld masq"
		ip6 saddr fc00::/48 ip6 daddr fc00:0:0:1::/64 return comment "flanneld masq"
		ip6 saddr != fc00::/48 ip6 daddr fc00:0:0:1::/64 return comment "flanneld masq"
		ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random comment "flanneld masq"
		ip6 saddr != fc00::/48 ip6 daddr fc00::/48 masquerade fully-random comment "flanneld masq"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		ip6 saddr fc00::/48 accept comment "flanneld forward"
		ip6 daddr fc00::/48 accept comment "flanneld forward"
	}
}
"#;

/// `nft list ruleset` as its tables, sorted: a table written again moves to the end of the
/// listing, and the order of tables means nothing to the kernel.
fn ruleset(ns: &Netns) -> Vec<String> {
    tables(&ns.run(&["nft", "list", "ruleset"]))
}

fn tables(ruleset: &str) -> Vec<String> {
    let mut tables: Vec<String> = Vec::new();
    for line in ruleset.lines() {
        match tables.last_mut() {
            Some(t) if !line.starts_with("table ") => {
                t.push_str(line);
                t.push('\n');
            }
            _ => tables.push(format!("{line}\n")),
        }
    }
    tables.sort();
    tables
}

/// The handle nft gave the rule in `chain` whose text contains `needle`.
fn nft_handle(ns: &Netns, family: &str, chain: &str, needle: &str) -> String {
    let out = ns.run(&["nft", "-a", "list", "chain", family, "vxdp-flannel", chain]);
    out.lines()
        .find(|l| l.contains(needle) && !l.contains(" chain "))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_owned())
        .unwrap_or_else(|| panic!("no rule containing {needle:?} in\n{out}"))
}

#[test]
fn nftables_tables_are_flanneds_repaired_and_removed() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "nft");
    ns.run(&["nft", "add", "table", "inet", "keepme"]);
    ns.run(&[
        "nft",
        "add chain inet keepme c { type filter hook input priority 0; policy accept; }",
    ]);
    ns.run(&["nft", "add rule inet keepme c tcp dport 22 accept"]);
    assert_eq!(ruleset(&ns), tables(UNRELATED_NFT));
    let expected = tables(&format!("{UNRELATED_NFT}{NFT_V4}{NFT_V6}"));

    let m = install(&ns, config(true, true));
    assert_eq!(m.backend(), BackendKind::Nftables);
    assert_eq!(m.backend_name(), "nftables");
    assert!(
        m.random_fully(),
        "this kernel supports masquerade fully-random"
    );
    assert_eq!(ruleset(&ns), expected);
    assert!(!ensure(&ns, &m));

    // A rule deleted by hand.
    let h = nft_handle(&ns, "ip", "postrtg", "224.0.0.0/4");
    ns.run(&[
        "nft",
        "delete",
        "rule",
        "ip",
        "vxdp-flannel",
        "postrtg",
        "handle",
        &h,
    ]);
    assert_ne!(ruleset(&ns), expected);
    assert!(ensure(&ns, &m));
    assert_eq!(ruleset(&ns), expected);
    assert!(!ensure(&ns, &m));

    // A rule added to our chain, and the IPv6 table deleted.
    ns.run(&[
        "nft",
        "add rule ip vxdp-flannel forward ip saddr 1.2.3.4 drop",
    ]);
    ns.run(&["nft", "delete", "table", "ip6", "vxdp-flannel"]);
    assert!(ensure(&ns, &m));
    assert_eq!(ruleset(&ns), expected);
    assert!(!ensure(&ns, &m));

    remove(&ns, m);
    assert_eq!(ruleset(&ns), tables(UNRELATED_NFT));
}

// ---------------------------------------------------------------------------------------------
// What the rules do to packets.

/// A node (`mid`) routing for its pod subnet 10.5.1.0/24 (`pod`, 10.5.1.2), another node's pod
/// subnet 10.5.2.0/24 (`rem`, 10.5.2.2, reached directly: the NAT rules do not care how) and the
/// world (`out`, 192.0.2.2).
struct Topology {
    pod: Netns,
    mid: Netns,
    out: Netns,
    rem: Netns,
}

const POD: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 2);
const REM: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 2);
const OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const MID_OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const MID_REM: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 1);

impl Topology {
    fn new() -> Topology {
        let prefix = unique_prefix();
        let t = Topology {
            pod: Netns::new(&prefix, "pod"),
            mid: Netns::new(&prefix, "mid"),
            out: Netns::new(&prefix, "out"),
            rem: Netns::new(&prefix, "rem"),
        };
        veth(&t.pod, "p0", &t.mid, "m-pod");
        veth(&t.out, "o0", &t.mid, "m-out");
        veth(&t.rem, "r0", &t.mid, "m-rem");
        t.pod
            .run(&["ip", "addr", "add", "10.5.1.2/24", "dev", "p0"]);
        t.pod
            .run(&["ip", "route", "add", "default", "via", "10.5.1.1"]);
        t.mid
            .run(&["ip", "addr", "add", "10.5.1.1/24", "dev", "m-pod"]);
        t.mid
            .run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "m-out"]);
        t.mid
            .run(&["ip", "addr", "add", "10.5.2.1/24", "dev", "m-rem"]);
        t.mid.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        t.out
            .run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "o0"]);
        t.out
            .run(&["ip", "route", "add", "10.5.0.0/16", "via", "192.0.2.1"]);
        t.rem
            .run(&["ip", "addr", "add", "10.5.2.2/24", "dev", "r0"]);
        t.rem
            .run(&["ip", "route", "add", "default", "via", "10.5.2.1"]);
        t
    }
}

/// Sends UDP from `from` to `dst` in `to` (a few tries, for ARP) and returns the source address
/// the receiver sees, or `None` if nothing arrived within about a second.
fn source_seen(from: &Netns, to: &Netns, dst: Ipv4Addr) -> Option<IpAddr> {
    let rx = to
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set timeout");
    let port = rx.local_addr().expect("receiver address").port();
    // A fresh socket, so a fresh source port: no conntrack entry from an earlier flow applies.
    let tx = from
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("bind sender");
    let mut buf = [0u8; 16];
    for _ in 0..5 {
        // An unreachable destination may report an error here; the receive below decides.
        let _ = tx.send_to(b"vxdp masq", (dst, port));
        if let Ok((_, src)) = rx.recv_from(&mut buf) {
            return Some(src.ip());
        }
    }
    None
}

fn assert_flannel_nat(t: &Topology) {
    // Pod to the world: masqueraded to the node's address.
    assert_eq!(source_seen(&t.pod, &t.out, OUT), Some(MID_OUT.into()));
    // Pod to another node's pod: within the cluster network, untouched.
    assert_eq!(source_seen(&t.pod, &t.rem, REM), Some(POD.into()));
    // The world to this node's pod: the client's address is kept.
    assert_eq!(source_seen(&t.out, &t.pod, POD), Some(OUT.into()));
    // The world (or the host) into another node's pod: masqueraded.
    assert_eq!(source_seen(&t.out, &t.rem, REM), Some(MID_REM.into()));

    // Traffic kube-proxy marked (bit 0x4000; other bits may be set too) is left to kube-proxy.
    t.mid.run(&["nft", "add table ip vxdp-test-mark"]);
    t.mid.run(&[
        "nft",
        "add chain ip vxdp-test-mark pre { type filter hook prerouting priority mangle; }",
    ]);
    t.mid.run(&[
        "nft",
        "add rule ip vxdp-test-mark pre ip saddr 10.5.1.2 meta mark set 0x4001",
    ]);
    assert_eq!(source_seen(&t.pod, &t.out, OUT), Some(POD.into()));
    t.mid.run(&["nft", "delete table ip vxdp-test-mark"]);
}

#[test]
fn iptables_masquerade_rewrites_only_traffic_leaving_the_cluster() {
    require_root();
    let t = Topology::new();
    // Docker's FORWARD policy: only FLANNEL-FWD lets the overlay's traffic through.
    t.mid.run(&["iptables", "-P", "FORWARD", "DROP"]);
    let m = install(&t.mid, config(false, false));
    assert_flannel_nat(&t);

    remove(&t.mid, m);
    assert_eq!(
        source_seen(&t.pod, &t.out, OUT),
        None,
        "without FLANNEL-FWD the DROP policy applies"
    );
    t.mid.run(&["iptables", "-P", "FORWARD", "ACCEPT"]);
    assert_eq!(
        source_seen(&t.pod, &t.out, OUT),
        Some(POD.into()),
        "no masquerading after remove()"
    );
}

#[test]
fn nftables_masquerade_rewrites_only_traffic_leaving_the_cluster() {
    require_root();
    let t = Topology::new();
    let m = install(&t.mid, config(false, true));
    assert_eq!(m.backend(), BackendKind::Nftables);
    assert_flannel_nat(&t);

    remove(&t.mid, m);
    assert_eq!(
        source_seen(&t.pod, &t.out, OUT),
        Some(POD.into()),
        "no masquerading after remove()"
    );
}

// ---------------------------------------------------------------------------------------------
// flanneld's --ip-masq-fully-random-disable, and the choice of backend by EnableNFTables.

#[test]
fn fully_random_disabled_masquerades_without_it() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "nrf");
    add_unrelated_iptables_rules(&ns);
    let plain = MasqConfig {
        random_fully: false,
        ..config(true, false)
    };
    let m = install(&ns, plain.clone());
    assert!(!m.random_fully());
    let [nat4, _, nat6, _] = all_iptables(&ns);
    for (nat, flannels) in [(nat4, NAT_V4), (nat6, NAT_V6)] {
        // flannel's rules, with plain MASQUERADE.
        assert!(flannels.contains(" --random-fully"));
        assert_eq!(nat, flannels.replace(" --random-fully", ""));
    }
    remove(&ns, m);

    let m = install(
        &ns,
        MasqConfig {
            prefer_nftables: true,
            ..plain
        },
    );
    assert_eq!(m.backend(), BackendKind::Nftables);
    assert!(!m.random_fully());
    let expected = tables(&format!("{NFT_V4}{NFT_V6}").replace(" fully-random", ""));
    assert_eq!(flannel_tables(&ns), expected);
    assert_eq!(expected.concat().matches(" masquerade comment").count(), 4);
    remove(&ns, m);
}

/// The nftables tables of flanneld and vxdp (iptables-nft's tables left out).
fn flannel_tables(ns: &Netns) -> Vec<String> {
    ruleset(ns)
        .into_iter()
        .filter(|t| t.contains(" flannel-ipv") || t.contains(" vxdp-flannel "))
        .collect()
}

/// flanneld's nftables tables, as its nftables traffic manager leaves them (knftables).
const FLANNELD_NFT: &str = "table ip flannel-ipv4 {
	comment \"rules for flannel-ipv4\"
	chain postrtg {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
	}
}
table ip6 flannel-ipv6 {
	comment \"rules for flannel-ipv6\"
}
";

#[test]
fn the_unused_backends_leftovers_are_removed_as_flanneld_does() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "swap");
    add_unrelated_iptables_rules(&ns);
    let unrelated_iptables = all_iptables(&ns);
    ns.enter(|| {
        use std::io::Write;
        let mut nft = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        nft.stdin
            .take()
            .unwrap()
            .write_all(FLANNELD_NFT.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success());
    });
    assert_eq!(flannel_tables(&ns), tables(FLANNELD_NFT));

    // iptables, left behind as after a crash (dropped, not removed): flanneld's nftables
    // tables go, since vxdp's rules replace them.
    drop(install(&ns, config(true, false)));
    assert_flanneld_iptables(&ns);
    assert!(flannel_tables(&ns).is_empty(), "{:?}", ruleset(&ns));

    // The network config turns to EnableNFTables: flannel's iptables chains and jumps go.
    let nft = install(&ns, config(true, true));
    assert_eq!(nft.backend(), BackendKind::Nftables);
    assert_eq!(all_iptables(&ns), unrelated_iptables);
    assert_eq!(flannel_tables(&ns), tables(&format!("{NFT_V4}{NFT_V6}")));
    drop(nft);

    // And back: vxdp's nftables tables go.
    let ipt = install(&ns, config(true, false));
    assert_eq!(ipt.backend(), BackendKind::Iptables);
    assert_flanneld_iptables(&ns);
    assert!(flannel_tables(&ns).is_empty(), "{:?}", ruleset(&ns));
    remove(&ns, ipt);
    assert_eq!(all_iptables(&ns), unrelated_iptables);
}
