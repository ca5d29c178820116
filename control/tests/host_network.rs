//! flanneld's host-network flags against the real kernel, in namespaces made for each test:
//! the external interface chosen by `--iface-can-reach` (with `--iface`/`--iface-regex` before
//! it, as flanneld orders them), and the blackhole route of `--ip-blackhole-route`.
//!
//! The host under test has two underlay links, so that choosing the wrong one shows:
//! - `eth0` 192.0.2.1/24 towards `peer` (192.0.2.2),
//! - `eth1` 198.51.100.1/24 and 198.51.100.7/24 towards `gw` (198.51.100.2), which carries the
//!   default route, and a route to 10.98.0.0/16 whose preferred source is 198.51.100.7.
//!
//! Netlink sockets belong to the namespace of the thread that opens them: each query runs on a
//! thread that entered the host (`Netns::enter`), with its own single-threaded runtime.
//! These tests need root; without it they fail, never skip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use control::blackhole::BlackholeRoute;
use control::interface::{find_external_interface, ExternalInterface, InterfaceError};
use control::netlink::Netlink;
use ipnet::IpNet;
use testkit::{require_root, unique_prefix, veth, Netns};

struct Host {
    host: Netns,
    _peer: Netns,
    _gw: Netns,
}

fn host() -> Host {
    require_root();
    let prefix = unique_prefix();
    let host = Netns::new(&prefix, "host");
    let peer = Netns::new(&prefix, "peer");
    let gw = Netns::new(&prefix, "gw");
    veth(&host, "eth0", &peer, "eth0");
    veth(&host, "eth1", &gw, "eth0");
    host.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    host.run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "eth1"]);
    host.run(&["ip", "addr", "add", "198.51.100.7/24", "dev", "eth1"]);
    host.run(&["ip", "route", "add", "default", "via", "198.51.100.2"]);
    host.run(&[
        "ip",
        "route",
        "add",
        "10.98.0.0/16",
        "via",
        "198.51.100.2",
        "src",
        "198.51.100.7",
    ]);
    peer.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    gw.run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    Host {
        host,
        _peer: peer,
        _gw: gw,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `find_external_interface` inside `ns`, with `--iface`, `--iface-regex`, `--iface-can-reach`.
fn choose(
    ns: &Netns,
    ifaces: &[&str],
    regexes: &[&str],
    can_reach: Option<&str>,
) -> Result<ExternalInterface, InterfaceError> {
    let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
    let regexes: Vec<String> = regexes.iter().map(|s| s.to_string()).collect();
    let can_reach: Option<IpAddr> = can_reach.map(|a| a.parse().expect("test address"));
    ns.enter(|| {
        runtime().block_on(async {
            let nl = Netlink::connect().expect("netlink");
            find_external_interface(&nl, &ifaces, &regexes, can_reach, None, None, false).await
        })
    })
}

fn chosen(ns: &Netns, ifaces: &[&str], regexes: &[&str], reach: &str) -> (String, Ipv4Addr) {
    let ext = choose(ns, ifaces, regexes, Some(reach))
        .unwrap_or_else(|e| panic!("--iface-can-reach {reach}: {e}"));
    assert_eq!(ext.public_ip, ext.iface_addr, "no --public-ip given");
    (ext.link.name, ext.iface_addr.expect("an IPv4 address"))
}

#[test]
fn iface_can_reach_takes_the_kernels_interface_and_source() {
    let h = host();
    let ns = &h.host;
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    // Without any flag: the default route's interface.
    let ext = choose(ns, &[], &[], None).unwrap();
    assert_eq!(
        (ext.link.name.as_str(), ext.iface_addr),
        ("eth1", Some(ip("198.51.100.1")))
    );
    // A peer on eth0's link: eth0, although the default route leaves by eth1.
    assert_eq!(
        chosen(ns, &[], &[], "192.0.2.2"),
        ("eth0".into(), ip("192.0.2.1"))
    );
    // Through the default gateway: eth1 and its first address.
    assert_eq!(
        chosen(ns, &[], &[], "10.99.0.1"),
        ("eth1".into(), ip("198.51.100.1"))
    );
    // The source is the one the kernel would use (`ip route get` says src 198.51.100.7), not
    // the interface's first address.
    let get = ns.run(&["ip", "route", "get", "10.98.0.1"]);
    assert!(get.contains("src 198.51.100.7"), "{get}");
    assert_eq!(
        chosen(ns, &[], &[], "10.98.0.1"),
        ("eth1".into(), ip("198.51.100.7"))
    );
}

#[test]
fn iface_and_iface_regex_come_before_iface_can_reach() {
    let h = host();
    let ns = &h.host;
    // --iface matched: --iface-can-reach is not consulted.
    assert_eq!(chosen(ns, &["eth1"], &[], "192.0.2.2").0, "eth1");
    assert_eq!(chosen(ns, &["198.51.100.1"], &[], "192.0.2.2").0, "eth1");
    assert_eq!(chosen(ns, &[], &["^eth1$"], "192.0.2.2").0, "eth1");
    // Nothing matches them: flanneld goes on to --iface-can-reach.
    assert_eq!(
        chosen(ns, &["nosuch0"], &["^nomatch"], "192.0.2.2"),
        ("eth0".into(), "192.0.2.1".parse().unwrap())
    );
    // Without --iface-can-reach that is an error naming what was given.
    let e = choose(ns, &["nosuch0"], &[], None).unwrap_err().to_string();
    assert!(e.contains("nosuch0"), "{e}");
}

/// `find_external_interface` with `--public-ipv6` too.
fn choose_v6(
    ns: &Netns,
    ifaces: &[&str],
    regexes: &[&str],
    public_ipv6: Option<&str>,
) -> ExternalInterface {
    choose_family(ns, ifaces, regexes, public_ipv6, false).expect("an interface")
}

/// `find_external_interface` for a network with or without IPv4.
fn choose_family(
    ns: &Netns,
    ifaces: &[&str],
    regexes: &[&str],
    public_ipv6: Option<&str>,
    ipv6_only: bool,
) -> Result<ExternalInterface, InterfaceError> {
    let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
    let regexes: Vec<String> = regexes.iter().map(|s| s.to_string()).collect();
    let public_ipv6: Option<Ipv6Addr> = public_ipv6.map(|a| a.parse().expect("test address"));
    ns.enter(|| {
        runtime().block_on(async {
            let nl = Netlink::connect().expect("netlink");
            find_external_interface(&nl, &ifaces, &regexes, None, None, public_ipv6, ipv6_only)
                .await
        })
    })
}

#[test]
fn ipv6_underlay_address_is_chosen_as_flanneld_chooses_it() {
    let h = host();
    let ns = &h.host;
    let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
    // Link-local addresses exist on both links from the start and are never taken.
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "eth1",
        "nodad",
    ]);
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1::7/64",
        "dev",
        "eth1",
        "nodad",
    ]);
    // By name: the link's first global IPv6 address.
    let ext = choose_v6(ns, &["eth0"], &[], None);
    assert_eq!(
        (ext.iface_addr6, ext.public_ipv6),
        (v6("2001:db8::1"), v6("2001:db8::1"))
    );
    // By one of its IPv6 addresses: that link, and that address as the VTEP.
    let ext = choose_v6(ns, &["2001:db8:1::7"], &[], None);
    assert_eq!(ext.link.name, "eth1");
    assert_eq!(
        ext.iface_addr,
        Some("198.51.100.1".parse::<Ipv4Addr>().unwrap())
    );
    assert_eq!(ext.iface_addr6, v6("2001:db8:1::7"));
    // By a regex over IPv6 addresses.
    let ext = choose_v6(ns, &[], &["^2001:db8:1::7$"], None);
    assert_eq!(
        (ext.link.name.as_str(), ext.iface_addr6),
        ("eth1", v6("2001:db8:1::7"))
    );
    // --public-ipv6 is what peers are told; the interface address stays.
    let ext = choose_v6(ns, &["eth0"], &[], Some("2001:db8:ff::1"));
    assert_eq!(
        (ext.iface_addr6, ext.public_ipv6),
        (v6("2001:db8::1"), v6("2001:db8:ff::1"))
    );
    assert_eq!(
        ext.require_ipv6().unwrap(),
        "2001:db8:ff::1".parse::<Ipv6Addr>().unwrap()
    );
    // A link with only its link-local address has no IPv6 VTEP address, and says what to do.
    ns.run(&[
        "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global",
    ]);
    let ext = choose_v6(ns, &["eth0"], &[], None);
    assert_eq!(ext.iface_addr6, None);
    let e = ext.require_ipv6().unwrap_err().to_string();
    assert!(e.contains("eth0") && e.contains("--public-ipv6"), "{e}");
}

/// An IPv6-only network (`EnableIPv4` false, flanneld's `ipv6Stack`): an interface with no
/// IPv4 address at all is fine, the default interface is the one of the IPv6 default route, and
/// one without a global IPv6 address is refused with what to do.
#[test]
fn ipv6_only_underlay_needs_no_ipv4_address() {
    let h = host();
    let ns = &h.host;
    let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
    ns.run(&["ip", "addr", "flush", "dev", "eth0"]);
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "eth1",
        "nodad",
    ]);
    // eth0 has no IPv4 address: fine without IPv4, refused with it.
    let ext = choose_family(ns, &["eth0"], &[], None, true).expect("an IPv6-only interface");
    assert_eq!(ext.link.name, "eth0");
    assert_eq!((ext.iface_addr, ext.public_ip), (None, None));
    assert_eq!(
        (ext.iface_addr6, ext.public_ipv6),
        (v6("2001:db8::1"), v6("2001:db8::1"))
    );
    let e = choose_family(ns, &["eth0"], &[], None, false).unwrap_err();
    assert!(matches!(e, InterfaceError::NoAddress(_)), "{e}");
    assert!(e.to_string().contains("EnableIPv4 to false"), "{e}");
    // By address and by regex, as with IPv4.
    let ext = choose_family(ns, &["2001:db8::1"], &[], None, true).unwrap();
    assert_eq!(ext.link.name, "eth0");
    let ext = choose_family(ns, &[], &["^2001:db8:1::"], None, true).unwrap();
    assert_eq!(
        (ext.link.name.as_str(), ext.iface_addr6),
        ("eth1", v6("2001:db8:1::1"))
    );
    // No flag: the IPv6 default route's interface (the IPv4 default leaves by eth1).
    ns.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8::2",
        "dev",
        "eth0",
    ]);
    let ext = choose_family(ns, &[], &[], None, true).unwrap();
    assert_eq!(ext.link.name, "eth0");
    // --public-ipv6 is what peers are told.
    let ext = choose_family(ns, &["eth0"], &[], Some("2001:db8:ff::1"), true).unwrap();
    assert_eq!(ext.public_ipv6, v6("2001:db8:ff::1"));
    // Without a global IPv6 address: refused, saying what to do.
    ns.run(&[
        "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global",
    ]);
    let e = choose_family(ns, &["eth0"], &[], None, true).unwrap_err();
    assert!(matches!(e, InterfaceError::NoIpv6Address(_)), "{e}");
    assert!(e.to_string().contains("--public-ipv6"), "{e}");
}

#[test]
fn iface_can_reach_refuses_what_cannot_be_an_underlay() {
    let h = host();
    let ns = &h.host;
    // An address of this host: the kernel answers with `lo`.
    let e = choose(ns, &[], &[], Some("198.51.100.7")).unwrap_err();
    assert!(matches!(e, InterfaceError::CanReachLocal(_)), "{e}");
    assert!(e.to_string().contains("address of this host"), "{e}");
    let e = choose(ns, &[], &[], Some("2001:db8::1")).unwrap_err();
    assert!(matches!(e, InterfaceError::CanReachNotV4(_)), "{e}");
    // No route at all.
    ns.run(&["ip", "route", "del", "default"]);
    let e = choose(ns, &[], &[], Some("10.99.0.1")).unwrap_err();
    assert!(matches!(e, InterfaceError::CanReachNoRoute { .. }), "{e}");
    assert!(e.to_string().contains("ip route get 10.99.0.1"), "{e}");
}

/// `ip -d route show type blackhole` lines, without trailing spaces.
fn blackholes(ns: &Netns) -> Vec<String> {
    ns.run(&[
        "ip",
        "-d",
        "route",
        "show",
        "table",
        "main",
        "type",
        "blackhole",
    ])
    .lines()
    .map(|l| l.trim_end().to_string())
    .collect()
}

fn on<T: Send>(ns: &Netns, f: impl AsyncFnOnce(BlackholeRoute) -> T + Send) -> T {
    ns.enter(|| {
        runtime().block_on(async {
            let nl = Netlink::connect().expect("netlink");
            f(BlackholeRoute::new(
                nl,
                "10.5.7.0/24".parse::<IpNet>().unwrap(),
            ))
            .await
        })
    })
}

#[test]
fn blackhole_route_is_flannels_kept_and_removed_alone() {
    let h = host();
    let ns = &h.host;
    assert!(blackholes(ns).is_empty());
    // Before: an address of the subnet leaves by the default route.
    assert!(ns
        .run(&["ip", "route", "get", "10.5.7.9"])
        .contains("dev eth1"));

    assert!(on(ns, async |b| b.ensure().await).expect("add"));
    // flannel's AddBlackholeV4Route: main table, universe scope, proto boot, metric 0.
    assert_eq!(
        blackholes(ns),
        ["blackhole 10.5.7.0/24 proto boot scope global"]
    );
    // The kernel's route lookup for an address of the subnet now ends in the blackhole: the
    // lookup fails with EINVAL, as a send does.
    let get = ns.try_run(&["ip", "route", "get", "10.5.7.9"]);
    assert!(!get.status.success());
    assert!(
        String::from_utf8_lossy(&get.stderr).contains("Invalid argument"),
        "{get:?}"
    );
    // Present: nothing to do.
    assert!(!on(ns, async |b| b.ensure().await).expect("check"));
    assert_eq!(blackholes(ns).len(), 1);

    // Deleted by someone else: put back.
    ns.run(&["ip", "route", "del", "blackhole", "10.5.7.0/24"]);
    assert!(on(ns, async |b| b.ensure().await).expect("re-add"));
    assert_eq!(blackholes(ns).len(), 1);

    // One left by flanneld (same route, made with ip) is taken as present.
    on(ns, async |b| b.remove().await).expect("remove");
    ns.run(&[
        "ip",
        "route",
        "add",
        "blackhole",
        "10.5.7.0/24",
        "proto",
        "boot",
    ]);
    assert!(!on(ns, async |b| b.ensure().await).expect("adopt"));

    // Removing takes the blackhole route and nothing else to the subnet; twice is fine.
    ns.run(&[
        "ip",
        "route",
        "add",
        "10.5.7.0/24",
        "via",
        "198.51.100.2",
        "metric",
        "5",
    ]);
    on(ns, async |b| b.remove().await).expect("remove");
    on(ns, async |b| b.remove().await).expect("remove again");
    assert!(blackholes(ns).is_empty());
    let left = ns.run(&["ip", "route", "show", "10.5.7.0/24"]);
    assert!(left.contains("via 198.51.100.2"), "{left}");
}

#[test]
fn blackhole_route_next_to_a_bridge_route_is_explained() {
    let h = host();
    let ns = &h.host;
    // The bridge CNI plugin's cni0 carries the subnet: the kernel refuses a second metric-0
    // route to it, as it refuses flannel's.
    ns.run(&["ip", "link", "add", "cni0", "type", "bridge"]);
    ns.run(&["ip", "addr", "add", "10.5.7.1/24", "dev", "cni0"]);
    ns.run(&["ip", "link", "set", "cni0", "up"]);
    let (err, explained) = on(ns, async |b| {
        let e = b.ensure().await.expect_err("EEXIST");
        let explained = b.explain(&e);
        (e, explained)
    });
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    assert!(explained.contains("cni0"), "{explained}");
    assert!(blackholes(ns).is_empty());
}
