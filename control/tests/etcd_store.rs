//! The etcd lease store against a real etcd (`/usr/bin/etcd`), written to and read from with
//! `etcdctl` the way flanneld nodes and operators do. Each test starts its own etcd.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use control::config;
use control::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey, DEFAULT_ETCD_PREFIX};
use control::store::etcd::{EtcdOptions, EtcdStore, EtcdWatcher};
use control::store::{acquire, renew, LeaseStore, LeaseWatcher, StoreError};
use packet::wire::MacAddr;
use testkit::etcd::EtcdServer;
use time::OffsetDateTime;

/// What flanneld writes for a vxlan node (flannel's Documentation/running.md).
const FLANNELD_V4: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn key(subnet: &str) -> String {
    format!("{DEFAULT_ETCD_PREFIX}/subnets/{subnet}")
}

fn subnet(s: &str) -> SubnetKey {
    s.parse().unwrap()
}

fn vxlan(ip: [u8; 4], mac_last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::from(ip), 1, MacAddr([2, 0, 0, 0, 0, mac_last]))
}

fn flanneld_attrs() -> LeaseAttrs {
    LeaseAttrs::vxlan(
        Ipv4Addr::new(192, 168, 64, 3),
        1,
        "c6:d2:32:6f:8f:44".parse().unwrap(),
    )
}

async fn connect(etcd: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("connecting to {}: {e}", etcd.endpoint()))
}

fn in_secs(s: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(s)
}

/// Whether `t` is `expected` give or take `slack_s` seconds.
fn near(t: Option<OffsetDateTime>, expected: OffsetDateTime, slack_s: i64) -> bool {
    t.is_some_and(|t| (t - expected).abs() <= time::Duration::seconds(slack_s))
}

/// The next batch of events, which must come within `secs`.
async fn next_within(w: &mut EtcdWatcher, secs: u64) -> Vec<LeaseEvent> {
    tokio::time::timeout(Duration::from_secs(secs), w.next())
        .await
        .unwrap_or_else(|_| panic!("no lease event within {secs} s"))
        .unwrap_or_else(|e| panic!("watcher failed: {e}"))
}

/// Calls `next` (tolerating errors, as the daemon does) until `done` holds for all events
/// gathered, or `secs` pass.
async fn gather(
    w: &mut EtcdWatcher,
    secs: u64,
    done: impl Fn(&[LeaseEvent]) -> bool,
) -> (Vec<LeaseEvent>, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut events = Vec::new();
    let mut errors = 0;
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the changes did not arrive within {secs} s; got {events:#?}"
        );
        match tokio::time::timeout(left, w.next()).await {
            Ok(Ok(batch)) => events.extend(batch),
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("watcher error (retried): {e}");
            }
            Err(_) => {}
        }
    }
    (events, errors)
}

fn added(events: &[LeaseEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match e {
            LeaseEvent::Added(l) => Some(l.key().to_string()),
            LeaseEvent::Removed(_) => None,
        })
        .collect()
}

fn removed(events: &[LeaseEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match e {
            LeaseEvent::Removed(l) => Some(l.key().to_string()),
            LeaseEvent::Added(_) => None,
        })
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn flanneld_leases_are_listed_with_their_expiration() {
    let etcd = EtcdServer::start();
    // flanneld's default endpoint list names a dead :4001 first: the live one must be used.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![dead, etcd.endpoint()],
        ..EtcdOptions::default()
    })
    .await
    .unwrap();

    match store.network_config().await {
        Err(StoreError::NoConfig { where_, hint }) => {
            assert!(where_.contains("/coreos.com/network/config"), "{where_}");
            assert!(hint.contains("etcdctl") && hint.contains("put"), "{hint}");
            // The example in the hint is a config vxdp accepts.
            let example = hint.rsplit('\'').nth(1).unwrap();
            config::parse(example).unwrap();
        }
        other => panic!("expected NoConfig, got {other:?}"),
    }
    etcd.put(&format!("{DEFAULT_ETCD_PREFIX}/config"), CONFIG);
    assert_eq!(store.network_config().await.unwrap(), CONFIG);

    let id = etcd.grant(3600);
    etcd.put_with_lease(&key("10.5.52.0-24"), FLANNELD_V4, &id);
    let reservation = r#"{"PublicIP":"192.168.64.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:49"}}"#;
    etcd.put(&key("10.5.9.0-24"), reservation);
    // Dual stack, another backend (still occupies its subnet), and what must be skipped.
    let dual = r#"{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#;
    etcd.put(&key("10.5.53.0-24&fc00::-64"), dual);
    etcd.put(
        &key("10.5.54.0-24"),
        r#"{"PublicIP":"192.168.64.5","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    etcd.put(&key("10.5.55.0-24"), "{garbage");
    etcd.put(&key("10.5.56.1-24"), FLANNELD_V4);
    etcd.put(
        &format!("{DEFAULT_ETCD_PREFIX}/subnets2/10.5.57.0-24"),
        FLANNELD_V4,
    );

    let listing = store.list().await.unwrap();
    assert_eq!(listing.revision, etcd.revision());
    let keys: Vec<String> = listing.leases.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "10.5.9.0-24",
            "10.5.52.0-24",
            "10.5.53.0-24&fc00::-64",
            "10.5.54.0-24"
        ]
    );
    let lease = &listing.leases[&subnet("10.5.52.0-24")];
    assert_eq!(lease.attrs, flanneld_attrs());
    assert!(
        near(lease.expiration, in_secs(3600), 3),
        "{:?}",
        lease.expiration
    );
    let res = &listing.leases[&subnet("10.5.9.0-24")];
    assert!(res.is_reservation());
    assert_eq!(res.attrs.to_json(), reservation);
    let dual_lease = &listing.leases[&subnet("10.5.53.0-24&fc00::-64")];
    assert_eq!(dual_lease.attrs.to_json(), dual);
    assert!(!listing.leases[&subnet("10.5.54.0-24")].attrs.is_vxlan());
}

#[tokio::test]
async fn acquire_writes_what_flanneld_writes() {
    let etcd = EtcdServer::start();
    etcd.put(&format!("{DEFAULT_ETCD_PREFIX}/config"), CONFIG);
    let store = connect(&etcd).await;
    let cfg = config::parse(&store.network_config().await.unwrap()).unwrap();
    let day = Duration::from_secs(24 * 3600);

    let mine = acquire(
        &store,
        &cfg,
        &flanneld_attrs(),
        None,
        day,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let my_key = mine.lease.key().etcd_key(DEFAULT_ETCD_PREFIX);
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_V4));
    let (granted, remaining) = etcd.key_lease(&my_key).expect("an etcd lease on the key");
    assert_eq!(granted, 86400);
    assert!(remaining > 86390, "{remaining}");

    // Another node gets another subnet.
    let theirs_attrs = vxlan([192, 168, 64, 4], 4);
    let theirs = acquire(
        &store,
        &cfg,
        &theirs_attrs,
        None,
        day,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_ne!(theirs.lease.subnet, mine.lease.subnet);

    // Create on a taken key fails, and leaves no etcd lease behind.
    let leases_before = etcd.etcdctl(&["lease", "list"]);
    let grab = Lease::new(mine.lease.key(), theirs_attrs.clone(), Some(in_secs(3600)));
    assert!(!store.create(&grab).await.unwrap());
    assert_eq!(etcd.etcdctl(&["lease", "list"]), leases_before);
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_V4));

    // Renewal puts the key again with a new etcd lease of the new TTL.
    let short = renew(
        &store,
        &mine.lease,
        Duration::from_secs(600),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!(etcd.key_lease(&my_key).unwrap().0, 600);
    let renewed = renew(
        &store,
        &short,
        Duration::from_secs(7200),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!(etcd.key_lease(&my_key).unwrap().0, 7200);
    assert!(near(renewed.expiration, in_secs(7200), 3));
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_V4));

    // On restart the node finds and renews its own lease.
    let again = acquire(
        &store,
        &cfg,
        &flanneld_attrs(),
        None,
        day,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!(again.lease.key(), mine.lease.key());
    assert_eq!(etcd.key_lease(&my_key).unwrap().0, 86400);

    // remove deletes only our own: not with another node's PublicIP.
    store.remove(&grab).await.unwrap();
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_V4));
    store.remove(&again.lease).await.unwrap();
    assert_eq!(etcd.get(&my_key), None);
    // Removing what is gone is fine.
    store.remove(&again.lease).await.unwrap();

    // A reservation (no etcd lease) of this node stays one.
    let reserved = key("10.5.200.0-24");
    etcd.put(&reserved, FLANNELD_V4);
    let res = acquire(
        &store,
        &cfg,
        &flanneld_attrs(),
        None,
        day,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!(res.lease.subnet, Some("10.5.200.0/24".parse().unwrap()));
    assert!(res.lease.is_reservation());
    assert_eq!(etcd.get(&reserved).as_deref(), Some(FLANNELD_V4));
    assert_eq!(etcd.key_lease(&reserved), None);
}

/// A dual-stack flanneld node's lease (flannel's `MakeSubnetKey` with an IPv6 subnet, and
/// `LeaseAttrs` with `PublicIPv6` and `BackendV6Data`).
const FLANNELD_DUAL: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
const CONFIG_DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;

#[tokio::test]
async fn dual_stack_leases_are_flannels_keys_and_json() {
    let etcd = EtcdServer::start();
    etcd.put(&format!("{DEFAULT_ETCD_PREFIX}/config"), CONFIG_DUAL);
    let store = connect(&etcd).await;
    let cfg = config::parse(&store.network_config().await.unwrap()).unwrap();
    let day = Duration::from_secs(24 * 3600);
    let attrs = flanneld_attrs().with_ipv6(
        "2001:db8::3".parse().unwrap(),
        "c6:d2:32:6f:8f:45".parse().unwrap(),
    );

    let mine = acquire(&store, &cfg, &attrs, None, day, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let v6 = mine
        .lease
        .ipv6_subnet
        .expect("an IPv6 subnet in a dual-stack lease");
    assert_eq!(v6.prefix_len(), 64);
    assert!(cfg.is_compatible(mine.lease.subnet, Some(v6)));
    let my_key = mine.lease.key().etcd_key(DEFAULT_ETCD_PREFIX);
    // flannel's key: `<v4>-<len>&<v6>-<len>`.
    assert_eq!(
        my_key,
        format!(
            "{DEFAULT_ETCD_PREFIX}/subnets/{}-24&{}-64",
            mine.lease.subnet.unwrap().network(),
            v6.network()
        )
    );
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_DUAL));
    assert_eq!(etcd.key_lease(&my_key).expect("an etcd lease").0, 86400);

    // A dual-stack lease written by flanneld is listed and watched with both halves.
    let listing = store.list().await.unwrap();
    let mut watcher = store.watch(&listing).await.unwrap();
    let theirs = key("10.5.77.0-24&fd00:5:0:77::-64");
    let theirs_json = r#"{"PublicIP":"192.168.64.4","PublicIPv6":"2001:db8::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:47"}}"#;
    etcd.put(&theirs, theirs_json);
    let events = next_within(&mut watcher, 10).await;
    let l = match events.as_slice() {
        [LeaseEvent::Added(l)] => l.clone(),
        other => panic!("expected one addition, got {other:#?}"),
    };
    assert_eq!(l.ipv6_subnet, Some("fd00:5:0:77::/64".parse().unwrap()));
    assert_eq!(l.attrs.public_ipv6, Some("2001:db8::4".parse().unwrap()));
    assert_eq!(
        l.attrs.vxlan_v6_data().unwrap().vtep_mac,
        "c6:d2:32:6f:8f:47".parse::<MacAddr>().unwrap()
    );
    let peer = control::backend::Peer::from_lease(&l).unwrap();
    let peer6 = peer.ipv6.expect("the peer's IPv6 half");
    assert_eq!(peer6.public_ip, Some("2001:db8::4".parse().unwrap()));

    // Removal by etcdctl is a removal of the dual-stack lease.
    etcd.del(&theirs);
    let events = next_within(&mut watcher, 10).await;
    assert_eq!(removed(&events), set(&["10.5.77.0-24&fd00:5:0:77::-64"]));

    // Renewal keeps both halves; on restart the node finds its own dual-stack lease again.
    let renewed = renew(&store, &mine.lease, day, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(renewed.key(), mine.lease.key());
    assert_eq!(etcd.get(&my_key).as_deref(), Some(FLANNELD_DUAL));
    let again = acquire(&store, &cfg, &attrs, None, day, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(again.lease.key(), mine.lease.key());
}

#[tokio::test]
async fn watch_reports_etcdctl_changes() {
    let etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    etcd.put(&key("10.5.1.0-24"), &vxlan([192, 0, 2, 1], 1).to_json());
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();

    // A flanneld node joins.
    let id = etcd.grant(3600);
    etcd.put_with_lease(&key("10.5.52.0-24"), FLANNELD_V4, &id);
    let ev = next_within(&mut w, 2).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    let LeaseEvent::Added(l) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(l.key(), subnet("10.5.52.0-24"));
    assert_eq!(l.attrs, flanneld_attrs());
    assert!(near(l.expiration, in_secs(3600), 3), "{:?}", l.expiration);

    // It comes back with a new VTEP MAC.
    let new_mac = FLANNELD_V4.replace("c6:d2:32:6f:8f:44", "c6:d2:32:6f:8f:99");
    etcd.put_with_lease(&key("10.5.52.0-24"), &new_mac, &id);
    let ev = next_within(&mut w, 2).await;
    match &ev[..] {
        [LeaseEvent::Added(l)] => assert_eq!(l.attrs.to_json(), new_mac),
        _ => panic!("{ev:?}"),
    }

    // Other backends, garbage and foreign keys are skipped; the watcher keeps going.
    etcd.put(
        &key("10.5.60.0-24"),
        r#"{"PublicIP":"192.168.64.5","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    etcd.put(&key("10.5.61.0-24"), "{garbage");
    etcd.put(&key("not-a-subnet"), FLANNELD_V4);
    let dual = r#"{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#;
    etcd.put(&key("10.5.62.0-24&fc00::-64"), dual);
    let ev = next_within(&mut w, 2).await;
    match &ev[..] {
        [LeaseEvent::Added(l)] => {
            assert_eq!(l.key(), subnet("10.5.62.0-24&fc00::-64"));
            assert_eq!(l.ipv6_subnet, Some("fc00::/64".parse().unwrap()));
            assert_eq!(l.attrs.to_json(), dual);
            assert!(l.is_reservation());
        }
        _ => panic!("{ev:?}"),
    }

    // A known lease overwritten with garbage is no longer usable: reported removed.
    etcd.put(&key("10.5.1.0-24"), "garbage");
    let ev = next_within(&mut w, 2).await;
    assert_eq!(removed(&ev), set(&["10.5.1.0-24"]), "{ev:?}");

    // Deletion.
    etcd.del(&key("10.5.52.0-24"));
    let ev = next_within(&mut w, 2).await;
    assert_eq!(removed(&ev), set(&["10.5.52.0-24"]), "{ev:?}");
    assert!(added(&ev).is_empty());
    assert_eq!(
        w.known().keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["10.5.62.0-24&fc00::-64"]
    );
}

#[tokio::test]
async fn compaction_is_recovered_by_relisting() {
    let etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    etcd.put(&key("10.5.1.0-24"), &vxlan([192, 0, 2, 1], 1).to_json());
    etcd.put(&key("10.5.2.0-24"), &vxlan([192, 0, 2, 2], 2).to_json());
    let id = etcd.grant(3600);
    etcd.put_with_lease(
        &key("10.5.3.0-24"),
        &vxlan([192, 0, 2, 3], 3).to_json(),
        &id,
    );
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();

    // Changes the watcher never saw, then their history is compacted away.
    etcd.del(&key("10.5.1.0-24"));
    let b2 = vxlan([192, 0, 2, 2], 22);
    etcd.put(&key("10.5.2.0-24"), &b2.to_json());
    etcd.put(&key("10.5.4.0-24"), &vxlan([192, 0, 2, 4], 4).to_json());
    etcd.put(&key("10.5.5.0-24"), &vxlan([192, 0, 2, 5], 5).to_json());
    etcd.del(&key("10.5.5.0-24"));
    let compacted = etcd.compact_to_latest();
    assert!(compacted > listing.revision + 1);

    let ev = next_within(&mut w, 3).await;
    assert_eq!(removed(&ev), set(&["10.5.1.0-24"]), "{ev:?}");
    // 10.5.3.0-24 is unchanged (its expiration read again is not a change).
    assert_eq!(added(&ev), set(&["10.5.2.0-24", "10.5.4.0-24"]), "{ev:?}");
    let b = ev
        .iter()
        .find(|e| e.lease().key() == subnet("10.5.2.0-24"))
        .unwrap();
    assert_eq!(b.lease().attrs, b2);

    // Watching resumed after the re-list, without replaying anything.
    etcd.put(&key("10.5.6.0-24"), &vxlan([192, 0, 2, 6], 6).to_json());
    let ev = next_within(&mut w, 2).await;
    assert_eq!(added(&ev), set(&["10.5.6.0-24"]), "{ev:?}");
    assert!(removed(&ev).is_empty());
}

#[tokio::test]
async fn etcd_outage_is_bridged_by_relisting() {
    let mut etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    etcd.put(&key("10.5.1.0-24"), &vxlan([192, 0, 2, 1], 1).to_json());
    let id = etcd.grant(3600);
    etcd.put_with_lease(
        &key("10.5.2.0-24"),
        &vxlan([192, 0, 2, 2], 2).to_json(),
        &id,
    );
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();
    etcd.put(&key("10.5.3.0-24"), &vxlan([192, 0, 2, 3], 3).to_json());
    assert_eq!(added(&next_within(&mut w, 2).await), set(&["10.5.3.0-24"]));

    etcd.stop();
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(8), w.next()).await {
        Ok(Err(StoreError::Unavailable(msg))) => {
            assert!(msg.contains(&etcd.endpoint()), "{msg}")
        }
        other => panic!("expected the watcher to report etcd unavailable, got {other:?}"),
    }
    // While etcd is down (3 s), next keeps failing, after its backoff, instead of ending.
    let mut errors = 1;
    while started.elapsed() < Duration::from_secs(3) {
        let res = tokio::time::timeout(Duration::from_secs(8), w.next()).await;
        assert!(
            matches!(res, Ok(Err(StoreError::Unavailable(_)))),
            "{res:?}"
        );
        errors += 1;
    }
    assert!(store.list().await.is_err());
    eprintln!(
        "{errors} errors while etcd was down for {:?}",
        started.elapsed()
    );

    etcd.restart();
    // Changes made before the watcher is back.
    etcd.del(&key("10.5.1.0-24"));
    let c2 = vxlan([192, 0, 2, 3], 33);
    etcd.put(&key("10.5.3.0-24"), &c2.to_json());
    etcd.put(&key("10.5.4.0-24"), &vxlan([192, 0, 2, 4], 4).to_json());

    let (ev, _) = gather(&mut w, 15, |ev| {
        removed(ev).contains("10.5.1.0-24") && added(ev).len() >= 2
    })
    .await;
    assert_eq!(removed(&ev), set(&["10.5.1.0-24"]), "{ev:?}");
    assert_eq!(added(&ev), set(&["10.5.3.0-24", "10.5.4.0-24"]), "{ev:?}");
    let c = ev
        .iter()
        .find(|e| e.lease().key() == subnet("10.5.3.0-24"))
        .unwrap();
    assert_eq!(c.lease().attrs, c2);

    // And it watches again.
    etcd.put(&key("10.5.5.0-24"), &vxlan([192, 0, 2, 5], 5).to_json());
    let ev = next_within(&mut w, 3).await;
    assert_eq!(added(&ev), set(&["10.5.5.0-24"]), "{ev:?}");
    assert!(store.list().await.is_ok());
}

#[tokio::test]
async fn a_lapsing_lease_is_reported_removed() {
    let etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();
    let short = Lease::new(
        subnet("10.5.7.0-24"),
        vxlan([192, 0, 2, 7], 7),
        Some(in_secs(2)),
    );
    assert!(store.create(&short).await.unwrap());
    let ev = next_within(&mut w, 2).await;
    match &ev[..] {
        [LeaseEvent::Added(l)] => {
            assert_eq!(l.attrs, short.attrs);
            assert!(near(l.expiration, in_secs(2), 2), "{:?}", l.expiration);
        }
        _ => panic!("{ev:?}"),
    }
    let started = Instant::now();
    let ev = next_within(&mut w, 6).await;
    assert_eq!(removed(&ev), set(&["10.5.7.0-24"]), "{ev:?}");
    eprintln!("lapse noticed after {:?}", started.elapsed());
    assert_eq!(etcd.get(&key("10.5.7.0-24")), None);
}

#[tokio::test]
async fn unreachable_etcd_is_reported_with_the_endpoint() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let started = Instant::now();
    let err = EtcdStore::connect(EtcdOptions {
        endpoints: vec![dead.clone()],
        ..EtcdOptions::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dead) && msg.contains("check"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(8));
    eprintln!("{msg} (after {:?})", started.elapsed());

    let err = EtcdStore::connect(EtcdOptions {
        endpoints: vec!["https://127.0.0.1:2379".into()],
        ca_file: Some("/nonexistent/etcd-ca.pem".into()),
        ..EtcdOptions::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/etcd-ca.pem")
            && err.to_string().contains("--etcd-cafile"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap().clone();
    etcd.put(&format!("{DEFAULT_ETCD_PREFIX}/config"), CONFIG);
    let opts = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(opts.clone()).await.unwrap();
    assert_eq!(store.network_config().await.unwrap(), CONFIG);
    let lease = Lease::new(subnet("10.5.8.0-24"), flanneld_attrs(), Some(in_secs(3600)));
    assert!(store.create(&lease).await.unwrap());
    assert_eq!(etcd.get(&key("10.5.8.0-24")).as_deref(), Some(FLANNELD_V4));
    let listing = store.list().await.unwrap();
    assert_eq!(listing.to_vec().len(), 1);

    // Without a client certificate etcd refuses the connection: said, with the endpoint.
    let err = EtcdStore::connect(EtcdOptions {
        cert_file: None,
        key_file: None,
        ..opts
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
    eprintln!("{err}");
}
