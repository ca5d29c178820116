//! The Kubernetes store against the test kit's stand-in API server: real HTTPS, a bearer
//! token from a kubeconfig, real list/watch/patch requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use packet::wire::MacAddr;
use testkit::kube::{KubeApiServer, NodeSpec};

use super::annotations::DEFAULT_ANNOTATION_PREFIX;
use super::*;
use crate::lease::LeaseEvent;

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com";
const MY_MAC: MacAddr = MacAddr([0x0e, 0x00, 0x00, 0x00, 0x00, 0x07]);

struct Fixture {
    api: Arc<KubeApiServer>,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    net_conf: PathBuf,
}

fn fixture() -> Fixture {
    let api = Arc::new(KubeApiServer::start());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let net_conf = dir.path().join("net-conf.json");
    std::fs::write(&net_conf, NET_CONF).unwrap();
    Fixture {
        api,
        _dir: dir,
        kubeconfig,
        net_conf,
    }
}

impl Fixture {
    fn options(&self, node: &str) -> KubeOptions {
        KubeOptions {
            api_url: None,
            kubeconfig: Some(self.kubeconfig.clone()),
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.into(),
            node: NodeIdentity::Name(node.into()),
            net_config_path: self.net_conf.clone(),
            set_node_network_unavailable: true,
            event_queue_depth: DEFAULT_EVENT_QUEUE_DEPTH,
            continue_when_cache_not_ready: false,
            cache_sync_timeout: Duration::from_secs(10),
            node_wait: NODE_WAIT,
        }
    }

    async fn connect(&self, node: &str) -> KubeStore {
        KubeStore::connect(self.options(node)).await.unwrap()
    }
}

/// A node whose flanneld registered it: the annotations exactly as flanneld's AcquireLease
/// writes them.
fn flanneld_node(name: &str, cidr: &str, ip: &str, mac: &str) -> NodeSpec {
    NodeSpec::new(name, &[cidr])
        .annotation(
            &format!("{P}/backend-data"),
            &format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        )
        .annotation(&format!("{P}/backend-type"), "vxlan")
        .annotation(&format!("{P}/kube-subnet-manager"), "true")
        .annotation(&format!("{P}/public-ip"), ip)
}

fn config() -> NetworkConfig {
    crate::config::parse(NET_CONF).unwrap()
}

fn my_attrs() -> LeaseAttrs {
    LeaseAttrs::vxlan("192.0.2.7".parse().unwrap(), 1, MY_MAC)
}

/// The next `n` events (within 10 s).
async fn events(w: &mut KubeWatcher, n: usize) -> Vec<LeaseEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within 10 s: {out:?}", out.len()))
            .unwrap();
        out.extend(batch);
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

/// Waits (up to 10 s) until the informer has a watch open.
async fn wait_for_a_watch(api: &KubeApiServer) {
    for _ in 0..200 {
        if api.open_watches() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no watch open within 10 s: {:?}", api.requests());
}

fn added(e: &LeaseEvent) -> Option<(String, String)> {
    match e {
        LeaseEvent::Added(l) => Some((
            l.subnet.unwrap().to_string(),
            l.attrs
                .vxlan_data()
                .map(|d| d.vtep_mac.to_string())
                .unwrap_or_default(),
        )),
        LeaseEvent::Removed(_) => None,
    }
}

fn removed(e: &LeaseEvent) -> Option<String> {
    match e {
        LeaseEvent::Removed(l) => Some(l.subnet.unwrap().to_string()),
        LeaseEvent::Added(_) => None,
    }
}

#[tokio::test]
async fn the_pod_cidr_is_the_lease_and_the_node_is_published_as_flanneld_publishes_it() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    f.api.add_node(flanneld_node(
        "n2",
        "10.244.2.0/24",
        "192.0.2.2",
        "c6:d2:32:6f:8f:44",
    ));
    f.api.add_node(NodeSpec::new("plain", &["10.244.3.0/24"]));
    let store = f.connect("me").await;
    assert_eq!(store.node_name(), "me");
    assert_eq!(store.network_config().await.unwrap(), NET_CONF);

    // Only nodes annotated kube-subnet-manager=true are leases.
    let listing = store.list().await.unwrap();
    let subnets: Vec<String> = listing
        .leases
        .values()
        .map(|l| l.subnet.unwrap().to_string())
        .collect();
    assert_eq!(subnets, ["10.244.2.0/24"]);

    assert_eq!(store.node_hints().await, NodeHints::default());
    let lease = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap()
        .expect("the Kubernetes store assigns the lease");
    assert_eq!(lease.subnet.unwrap().to_string(), "10.244.7.0/24");
    assert_eq!(lease.expiration, None, "a pod CIDR does not lapse");
    assert_eq!(lease.attrs, my_attrs());

    let a = f.api.annotations("me");
    assert_eq!(
        a[&format!("{P}/backend-data")],
        r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:07"}"#
    );
    assert_eq!(a[&format!("{P}/backend-type")], "vxlan");
    assert_eq!(a[&format!("{P}/public-ip")], "192.0.2.7");
    assert_eq!(a[&format!("{P}/kube-subnet-manager")], "true");
    // Only the node's status is patched (the RBAC flannel's manifest grants), with flannel's
    // two-way merge patch of the annotations.
    let patches: Vec<_> = f
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].path, "/api/v1/nodes/me/status");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(
        patches[0].body,
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:07\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.0.2.7"}}}"#
    );
    assert!(patches.iter().all(|r| r.authorized));

    // Up to date: no second patch. A restart reuses the VtepMAC it published.
    store.assigned_lease(&config(), &my_attrs()).await.unwrap();
    assert_eq!(
        f.api
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count(),
        1
    );
    assert_eq!(
        store.node_hints().await,
        NodeHints {
            public_ip: None,
            vtep_mac: Some(MY_MAC)
        }
    );

    // Ready: NetworkUnavailable=False with flannel's reason and message, the kubelet's own
    // conditions untouched.
    f.api.clear_requests();
    store.node_ready(&lease).await.unwrap();
    let c = f.api.condition("me", "NetworkUnavailable").unwrap();
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "FlannelIsUp");
    assert_eq!(c["message"], "Flannel is running on this node");
    assert_eq!(f.api.condition("me", "Ready").unwrap()["status"], "True");
    let req = &f.api.requests()[0];
    assert_eq!(req.path, "/api/v1/nodes/me/status");
    let shape = regex::Regex::new(
        r#"^\{"status":\{"conditions":\[\{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)","lastTransitionTime":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)","reason":"FlannelIsUp","message":"Flannel is running on this node"\}\]\}\}$"#,
    )
    .unwrap();
    assert!(shape.is_match(&req.body), "{}", req.body);

    // Nothing is released at shutdown; leases are never written through the store.
    store.remove(&lease).await.unwrap();
    assert_eq!(f.api.annotations("me"), a);
    assert!(store.create(&lease).await.is_err());
}

#[tokio::test]
async fn dual_stack_pod_cidrs_are_both_halves_and_published_as_flanneld_does() {
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/48","Backend":{"Type":"vxlan"}}"#;
    let f = fixture();
    std::fs::write(&f.net_conf, DUAL).unwrap();
    f.api
        .add_node(NodeSpec::new("me", &["10.244.7.0/24", "fd00:244:0:7::/64"]));
    f.api.add_node(
        NodeSpec::new("n2", &["10.244.2.0/24", "fd00:244:0:2::/64"])
            .annotation(
                &format!("{P}/backend-data"),
                r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#,
            )
            .annotation(
                &format!("{P}/backend-v6-data"),
                r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}"#,
            )
            .annotation(&format!("{P}/backend-type"), "vxlan")
            .annotation(&format!("{P}/kube-subnet-manager"), "true")
            .annotation(&format!("{P}/public-ip"), "192.0.2.2")
            .annotation(&format!("{P}/public-ipv6"), "2001:db8::2"),
    );
    let store = f.connect("me").await;
    let cfg = crate::config::parse(DUAL).unwrap();
    // A peer's dual-stack node is a dual-stack lease.
    let listing = store.list().await.unwrap();
    let peer = listing.leases.values().next().expect("n2's lease");
    assert_eq!(peer.key().to_string(), "10.244.2.0-24&fd00:244:0:2::-64");
    assert_eq!(peer.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
    // This node's lease: both pod CIDRs; published with backend-v6-data and public-ipv6.
    let attrs = my_attrs().with_ipv6("2001:db8::7".parse().unwrap(), MY_MAC);
    let lease = store
        .assigned_lease(&cfg, &attrs)
        .await
        .unwrap()
        .expect("the Kubernetes store assigns the lease");
    assert_eq!(lease.key().to_string(), "10.244.7.0-24&fd00:244:0:7::-64");
    let a = f.api.annotations("me");
    assert_eq!(
        a[&format!("{P}/backend-v6-data")],
        r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:07"}"#
    );
    assert_eq!(a[&format!("{P}/public-ipv6")], "2001:db8::7");
    assert_eq!(a[&format!("{P}/public-ip")], "192.0.2.7");
    // Without an IPv6 underlay address there is nothing to publish: said, not guessed.
    let e = store.assigned_lease(&cfg, &my_attrs()).await.unwrap_err();
    assert!(e.to_string().contains("--public-ipv6"), "{e}");
}

#[tokio::test]
async fn operator_annotations_choose_the_public_ip() {
    let f = fixture();
    f.api.add_node(
        NodeSpec::new("me", &["10.244.7.0/24"])
            .annotation(&format!("{P}/public-ip-overwrite"), "198.51.100.7")
            .annotation(&format!("{P}/node-public-ip"), "192.0.2.70"),
    );
    let store = f.connect("me").await;
    let hints = store.node_hints().await;
    assert_eq!(hints.public_ip, Some("192.0.2.70".parse().unwrap()));
    assert_eq!(hints.vtep_mac, None);
    let lease = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap()
        .unwrap();
    // Peers are told the overwrite; the node itself keeps its own address.
    assert_eq!(
        f.api.annotations("me")[&format!("{P}/public-ip")],
        "198.51.100.7"
    );
    assert_eq!(lease.attrs.public_ip.to_string(), "192.0.2.7");
}

#[tokio::test]
async fn the_node_name_comes_from_the_pod() {
    let f = fixture();
    f.api
        .add_node(NodeSpec::new("worker-3", &["10.244.3.0/24"]));
    f.api.add_pod("kube-flannel", "kube-vxdp-x7k2p", "worker-3");
    let mut opts = f.options("unused");
    opts.node = NodeIdentity::Pod {
        namespace: "kube-flannel".into(),
        name: "kube-vxdp-x7k2p".into(),
    };
    let store = KubeStore::connect(opts.clone()).await.unwrap();
    assert_eq!(store.node_name(), "worker-3");
    assert!(f
        .api
        .requests()
        .iter()
        .any(|r| r.path == "/api/v1/namespaces/kube-flannel/pods/kube-vxdp-x7k2p"));

    opts.node = NodeIdentity::Pod {
        namespace: "kube-flannel".into(),
        name: "gone".into(),
    };
    let e = KubeStore::connect(opts).await.unwrap_err().to_string();
    assert!(
        e.contains("kube-flannel/gone") && e.contains("not found"),
        "{e}"
    );
}

#[tokio::test]
async fn the_environment_names_the_node_as_flanneld_reads_it() {
    let id = |n: Option<&str>, p: Option<&str>, ns: Option<&str>| {
        NodeIdentity::from_env_values(n.map(Into::into), p.map(Into::into), ns.map(Into::into))
    };
    assert_eq!(
        id(Some("n1"), Some("p"), Some("ns")).unwrap(),
        NodeIdentity::Name("n1".into())
    );
    assert_eq!(
        id(Some(""), Some("p"), Some("ns")).unwrap(),
        NodeIdentity::Pod {
            namespace: "ns".into(),
            name: "p".into()
        }
    );
    let e = id(None, Some("p"), None).unwrap_err().to_string();
    assert!(
        e.contains("POD_NAMESPACE") && e.contains("NODE_NAME"),
        "{e}"
    );

    assert_eq!(event_queue_depth(None).unwrap(), 5000);
    assert_eq!(event_queue_depth(Some("")).unwrap(), 5000);
    assert_eq!(event_queue_depth(Some("64")).unwrap(), 64);
    assert_eq!(event_queue_depth(Some("0")).unwrap(), 5000);
    assert_eq!(event_queue_depth(Some("-3")).unwrap(), 5000);
    let e = event_queue_depth(Some("lots")).unwrap_err().to_string();
    assert!(e.contains("EVENT_QUEUE_DEPTH=lots format error"), "{e}");
}

#[tokio::test]
async fn refused_credentials_and_bad_kubeconfigs_say_what_to_check() {
    let f = fixture();
    f.api.add_pod("ns", "p", "me");
    let text = std::fs::read_to_string(&f.kubeconfig).unwrap();
    std::fs::write(&f.kubeconfig, text.replace(f.api.token(), "wrong-token")).unwrap();
    let mut opts = f.options("me");
    opts.node = NodeIdentity::Pod {
        namespace: "ns".into(),
        name: "p".into(),
    };
    let e = KubeStore::connect(opts.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Other(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("HTTP 401") && e.contains("credentials"), "{e}");

    std::fs::write(&f.kubeconfig, "clusters: [").unwrap();
    let e = KubeStore::connect(opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--kubeconfig-file"), "{e}");

    opts.kubeconfig = None;
    opts.api_url = None;
    let e = KubeStore::connect(opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Kubernetes pod"), "{e}");

    f.api.write_kubeconfig(&f.kubeconfig);
    let mut opts = f.options("me");
    opts.net_config_path = "/nonexistent/net-conf.json".into();
    let e = KubeStore::connect(opts).await.unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/net-conf.json") && e.contains("--net-config-path"),
        "{e}"
    );
    let mut opts = f.options("me");
    opts.annotation_prefix = "Not.A/Prefix".into();
    let e = KubeStore::connect(opts).await.unwrap_err().to_string();
    assert!(e.contains("--kube-annotation-prefix"), "{e}");
}

#[tokio::test]
async fn the_pod_cidr_is_waited_for_then_checked() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &[]));
    let mut opts = f.options("me");
    opts.node_wait = Duration::from_secs(5);
    let store = KubeStore::connect(opts.clone()).await.unwrap();

    // Assigned a moment after start: taken.
    let api = Arc::clone(&f.api);
    let assign = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        api.set_pod_cidrs("me", &["10.244.9.0/24", "fd00:10:244:9::/64"]);
    });
    let lease = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap()
        .unwrap();
    assign.await.unwrap();
    assert_eq!(lease.subnet.unwrap().to_string(), "10.244.9.0/24");

    // Never assigned: a clear failure after the wait, and nothing published.
    f.api.add_node(NodeSpec::new("late", &[]));
    let store = KubeStore::connect(KubeOptions {
        node: NodeIdentity::Name("late".into()),
        ..opts.clone()
    })
    .await
    .unwrap();
    let e = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no pod CIDR assigned") && e.contains("--allocate-node-cidrs"),
        "{e}"
    );
    assert!(!f
        .api
        .annotations("late")
        .contains_key(&format!("{P}/kube-subnet-manager")));

    // Outside Network: refused before anything is published.
    f.api.add_node(NodeSpec::new("outside", &["10.99.1.0/24"]));
    let store = KubeStore::connect(KubeOptions {
        node: NodeIdentity::Name("outside".into()),
        ..opts.clone()
    })
    .await
    .unwrap();
    let e = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10.244.0.0/16") && e.contains("doesn't contain 10.99.1.0/24"),
        "{e}"
    );
    assert!(!f
        .api
        .annotations("outside")
        .contains_key(&format!("{P}/public-ip")));

    // No such node.
    let store = KubeStore::connect(KubeOptions {
        node: NodeIdentity::Name("ghost".into()),
        ..opts
    })
    .await
    .unwrap();
    let e = store
        .assigned_lease(&config(), &my_attrs())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"ghost\" was not found"), "{e}");
}

#[tokio::test]
async fn the_watch_follows_flannels_rules() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    f.api.add_node(flanneld_node(
        "n2",
        "10.244.2.0/24",
        "192.0.2.2",
        "02:00:00:00:00:02",
    ));
    let store = f.connect("me").await;
    store.assigned_lease(&config(), &my_attrs()).await.unwrap();
    let listing = store.list().await.unwrap();
    assert_eq!(listing.leases.len(), 2, "n2 and this node: {listing:?}");
    let mut w = store.watch(&listing).await.unwrap();
    assert!(store.watch(&listing).await.is_err(), "one watcher only");
    // The informer's events from its first list (n2; this node's own are never sent).
    let first = events(&mut w, 1).await;
    assert_eq!(
        added(&first[0]),
        Some(("10.244.2.0/24".into(), "02:00:00:00:00:02".into()))
    );

    // A new flanneld node: added.
    f.api.add_node(flanneld_node(
        "n3",
        "10.244.3.0/24",
        "192.0.2.3",
        "02:00:00:00:00:03",
    ));
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.3.0/24".into(), "02:00:00:00:00:03".into()))
    );

    // Changes that are not lease updates produce nothing: other annotations, the pod CIDR,
    // a node without the kube-subnet-manager annotation, and this node itself. The lease
    // update after them is the next event.
    f.api
        .set_annotations("n3", &[("node.alpha.kubernetes.io/ttl", Some("30"))]);
    f.api.set_pod_cidrs("n3", &["10.244.33.0/24"]);
    f.api.add_node(NodeSpec::new("plain", &["10.244.4.0/24"]));
    f.api.set_annotations(
        "me",
        &[(
            &format!("{P}/backend-data"),
            Some(r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}"#),
        )],
    );
    f.api.set_annotations(
        "n2",
        &[(
            &format!("{P}/backend-data"),
            Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:22"}"#),
        )],
    );
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.2.0/24".into(), "02:00:00:00:00:22".into()))
    );

    // A node that becomes a flannel node later is added then; public-ip changes are updates.
    f.api.set_annotations(
        "plain",
        &[
            (
                &format!("{P}/backend-data"),
                Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}"#),
            ),
            (&format!("{P}/backend-type"), Some("vxlan")),
            (&format!("{P}/public-ip"), Some("192.0.2.4")),
            (&format!("{P}/kube-subnet-manager"), Some("true")),
        ],
    );
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.4.0/24".into(), "02:00:00:00:00:04".into()))
    );
    f.api
        .set_annotations("plain", &[(&format!("{P}/public-ip"), Some("192.0.2.44"))]);
    let ev = events(&mut w, 1).await;
    match &ev[0] {
        LeaseEvent::Added(l) => assert_eq!(l.attrs.public_ip.to_string(), "192.0.2.44"),
        other => panic!("{other:?}"),
    }

    // Deleted: the lease reported for it is removed (the pod CIDR change above was no
    // update, so that is still 10.244.3.0/24).
    f.api.delete_node("n3");
    let ev = events(&mut w, 1).await;
    assert_eq!(removed(&ev[0]), Some("10.244.3.0/24".into()));

    // A lease update that moves a node to another subnet removes the old one first.
    f.api.set_pod_cidrs("n2", &["10.244.22.0/24"]);
    f.api
        .set_annotations("n2", &[(&format!("{P}/public-ip"), Some("192.0.2.22"))]);
    let ev = events(&mut w, 2).await;
    assert_eq!(removed(&ev[0]), Some("10.244.2.0/24".into()));
    assert_eq!(
        added(&ev[1]),
        Some(("10.244.22.0/24".into(), "02:00:00:00:00:22".into()))
    );

    // The watch asked for bookmarks, from the list's resource version.
    let watches: Vec<_> = f
        .api
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .collect();
    assert!(!watches.is_empty());
    assert_eq!(watches[0].param("allowWatchBookmarks"), Some("true"));
    assert_ne!(watches[0].param("resourceVersion"), Some("0"));
}

#[tokio::test]
async fn an_expired_watch_relists_and_reports_exactly_what_changed() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    for i in 2..=4 {
        f.api.add_node(flanneld_node(
            &format!("n{i}"),
            &format!("10.244.{i}.0/24"),
            &format!("192.0.2.{i}"),
            &format!("02:00:00:00:00:0{i}"),
        ));
    }
    let store = f.connect("me").await;
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();
    assert_eq!(events(&mut w, 3).await.len(), 3);

    // While vxdp cannot watch: n2 deleted, n3's MAC changed, n4 changed in ways that are no
    // update, n5 added; then the history is compacted away.
    f.api.go_down();
    f.api.delete_node("n2");
    f.api.set_annotations(
        "n3",
        &[(
            &format!("{P}/backend-data"),
            Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:33"}"#),
        )],
    );
    f.api
        .set_annotations("n4", &[("example.com/owner", Some("ops"))]);
    f.api.add_node(flanneld_node(
        "n5",
        "10.244.5.0/24",
        "192.0.2.5",
        "02:00:00:00:00:05",
    ));
    f.api.expire_watches();
    f.api.clear_requests();
    f.api.come_back();

    let mut ev = events(&mut w, 3).await;
    ev.sort_by_key(|e| e.lease().subnet);
    assert_eq!(removed(&ev[0]), Some("10.244.2.0/24".into()));
    assert_eq!(
        added(&ev[1]),
        Some(("10.244.3.0/24".into(), "02:00:00:00:00:33".into()))
    );
    assert_eq!(
        added(&ev[2]),
        Some(("10.244.5.0/24".into(), "02:00:00:00:00:05".into()))
    );
    // It tried the old resource version, got 410, and re-listed the latest state in pages.
    let reqs = f.api.requests();
    let relist = reqs
        .iter()
        .position(|r| r.method == "GET" && r.path == "/api/v1/nodes" && !r.is_watch())
        .expect("a re-list after the 410");
    assert!(reqs[..relist].iter().any(|r| r.is_watch()), "{reqs:?}");
    assert_eq!(reqs[relist].param("limit"), Some("500"));
    assert_eq!(reqs[relist].param("resourceVersion"), None);

    // A forced expiry of a healthy watch: re-listed, nothing new to report, and the watch
    // goes on (a later change arrives).
    wait_for_a_watch(&f.api).await;
    f.api.clear_requests();
    f.api.expire_watches();
    f.api.add_node(flanneld_node(
        "n6",
        "10.244.6.0/24",
        "192.0.2.6",
        "02:00:00:00:00:06",
    ));
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.6.0/24".into(), "02:00:00:00:00:06".into()))
    );
    assert!(f
        .api
        .requests()
        .iter()
        .any(|r| r.path == "/api/v1/nodes" && !r.is_watch()));
}

#[tokio::test]
async fn an_outage_resumes_the_watch_from_the_last_bookmark_without_a_relist() {
    let f = fixture();
    f.api.set_bookmark_interval(Duration::from_millis(200));
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    f.api.add_node(flanneld_node(
        "n2",
        "10.244.2.0/24",
        "192.0.2.2",
        "02:00:00:00:00:02",
    ));
    let store = f.connect("me").await;
    let listing = store.list().await.unwrap();
    let mut w = store.watch(&listing).await.unwrap();
    events(&mut w, 1).await;

    // Other objects changed: only a bookmark tells the node watch the new version.
    let bookmarked = f.api.bump_resource_version();
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.api.go_down();
    f.api.clear_requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.api.come_back();
    f.api.add_node(flanneld_node(
        "n3",
        "10.244.3.0/24",
        "192.0.2.3",
        "02:00:00:00:00:03",
    ));
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.3.0/24".into(), "02:00:00:00:00:03".into()))
    );
    let reqs = f.api.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| r.path == "/api/v1/nodes" && !r.is_watch()),
        "no re-list after an outage: {reqs:?}"
    );
    let resumed = reqs
        .iter()
        .find(|r| r.is_watch())
        .expect("a watch after the outage");
    assert_eq!(
        resumed.param("resourceVersion"),
        Some(bookmarked.to_string().as_str()),
        "resumed from the bookmark"
    );
}

#[tokio::test]
async fn a_full_event_queue_delays_events_without_losing_or_reordering_them() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    let mut opts = f.options("me");
    opts.event_queue_depth = 2;
    let store = KubeStore::connect(opts).await.unwrap();
    let listing = store.list().await.unwrap();
    for i in 10..40 {
        f.api.add_node(flanneld_node(
            &format!("n{i}"),
            &format!("10.244.{i}.0/24"),
            "192.0.2.9",
            &format!("02:00:00:00:00:{i}"),
        ));
    }
    // Nobody reads for a while: the informer waits with a full queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut w = store.watch(&listing).await.unwrap();
    let ev = events(&mut w, 30).await;
    let subnets: Vec<String> = ev.iter().filter_map(added).map(|(s, _)| s).collect();
    let expected: Vec<String> = (10..40).map(|i| format!("10.244.{i}.0/24")).collect();
    assert_eq!(subnets, expected);
}

#[tokio::test]
async fn an_unreachable_api_fails_the_start_unless_cont_when_cache_not_ready() {
    let f = fixture();
    f.api.add_node(NodeSpec::new("me", &["10.244.7.0/24"]));
    f.api.add_node(flanneld_node(
        "n2",
        "10.244.2.0/24",
        "192.0.2.2",
        "02:00:00:00:00:02",
    ));
    f.api.go_down();
    let mut opts = f.options("me");
    opts.cache_sync_timeout = Duration::from_secs(2);
    let e = KubeStore::connect(opts.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("CONT_WHEN_CACHE_NOT_READY"), "{e}");

    opts.continue_when_cache_not_ready = true;
    let store = KubeStore::connect(opts).await.unwrap();
    let listing = store.list().await.unwrap();
    assert!(listing.leases.is_empty());
    let mut w = store.watch(&listing).await.unwrap();
    f.api.come_back();
    let ev = events(&mut w, 1).await;
    assert_eq!(
        added(&ev[0]),
        Some(("10.244.2.0/24".into(), "02:00:00:00:00:02".into()))
    );
}

#[test]
fn annotation_changes_follow_flannels_acquire_lease() {
    let a = Annotations::new(DEFAULT_ANNOTATION_PREFIX).unwrap();
    let bd = r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:07"}"#;
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let mut node = NodeRecord {
        name: "me".into(),
        ..NodeRecord::default()
    };
    let all = annotation_changes(&node, &a, bd, ip);
    assert_eq!(all.len(), 4);
    node.annotations = all.clone();
    assert!(annotation_changes(&node, &a, bd, ip).is_empty());

    // A new MAC: only backend-data changes.
    let changes = annotation_changes(&node, &a, r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:08"}"#, ip);
    assert_eq!(changes.keys().collect::<Vec<_>>(), [&a.backend_data]);

    // An overwrite is published instead of the node's address, and stays published.
    node.annotations
        .insert(a.backend_public_ip_overwrite.clone(), "198.51.100.7".into());
    let changes = annotation_changes(&node, &a, bd, ip);
    assert_eq!(
        changes,
        [(a.backend_public_ip.clone(), "198.51.100.7".to_string())].into()
    );
    node.annotations.extend(changes);
    assert!(annotation_changes(&node, &a, bd, ip).is_empty());
}

#[test]
fn the_network_available_patch_is_flannels() {
    let t = OffsetDateTime::UNIX_EPOCH
        + time::Duration::seconds(1_767_225_600)
        + time::Duration::milliseconds(250);
    let body = serde_json::to_string(&network_available_patch(t)).unwrap();
    assert_eq!(
        body,
        r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z","reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}"#
    );
}
