//! What flannel's Kubernetes subnet manager reads from a Node (`pkg/subnet/kube/kube.go`):
//! the lease it describes (`nodeToLease`), this node's own pod CIDR (`AcquireLease`), and which
//! changes count as lease updates (`handleUpdateLeaseEvent`). Nothing here does I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;

use super::annotations::Annotations;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// The parts of a Node the subnet manager looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.podCIDR` (empty when not assigned, as Go reads a missing string).
    pub pod_cidr: String,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
}

impl From<&Node> for NodeRecord {
    fn from(node: &Node) -> NodeRecord {
        let spec = node.spec.as_ref();
        NodeRecord {
            name: node.metadata.name.clone().unwrap_or_default(),
            annotations: node.metadata.annotations.clone().unwrap_or_default(),
            pod_cidr: spec.and_then(|s| s.pod_cidr.clone()).unwrap_or_default(),
            pod_cidrs: spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default(),
        }
    }
}

impl NodeRecord {
    /// An annotation's value, `""` when absent (Go's map lookup).
    pub fn annotation(&self, key: &str) -> &str {
        self.annotations.get(key).map_or("", String::as_str)
    }

    /// Whether the node's flannel runs the Kubernetes subnet manager (annotation
    /// `kube-subnet-manager: "true"`): only such nodes are peers.
    pub fn is_kube_managed(&self, a: &Annotations) -> bool {
        self.annotation(&a.subnet_kube_managed) == "true"
    }

    /// The lease this node describes to its peers (`nodeToLease`): the IPv4 half from
    /// `public-ip`, `backend-type` and `backend-data` and the first IPv4 pod CIDR; the IPv6 half
    /// (dual stack, IPv6-only) from `public-ipv6` and `backend-v6-data` and the IPv6 pod CIDR,
    /// when the node has all three. A node of an IPv6-only network (flanneld with `EnableIPv4`
    /// false writes neither `public-ip` nor `backend-data`, and its `spec.podCIDRs` holds one
    /// IPv6 CIDR) has only the IPv6 half. No expiration: a node's lease lasts as long as the
    /// node.
    pub fn to_lease(&self, a: &Annotations) -> Result<Lease, String> {
        let cidrs = self.pod_cidrs_parsed()?;
        let subnet = cidrs.iter().find_map(|c| match c {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        });
        // The raw JSON of the annotation, decoded as a lease's BackendData (Go's
        // json.RawMessage): what does not decode is kept raw and reported by the consumer.
        let mut lease_json = serde_json::json!({
            "BackendType": self.annotation(&a.backend_type),
        });
        if subnet.is_some() {
            let public_ip_text = self.annotation(&a.backend_public_ip);
            let not_v4 = || {
                format!(
                    "annotation {} is {public_ip_text:?}, not an IPv4 address",
                    a.backend_public_ip
                )
            };
            let public_ip = match public_ip_text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ip,
                Ok(IpAddr::V6(ip)) => ip.to_ipv4_mapped().ok_or_else(not_v4)?,
                Err(_) => return Err(not_v4()),
            };
            lease_json["PublicIP"] = public_ip.to_string().into();
            let data = self.annotation(&a.backend_data);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                lease_json["BackendData"] = v;
            }
        }
        let v6_cidr = cidrs.iter().find_map(|c| match c {
            IpNet::V6(v6) => Some(*v6),
            IpNet::V4(_) => None,
        });
        let public_ipv6 = self.annotation(&a.backend_public_ipv6);
        let v6_data = self.annotation(&a.backend_v6_data);
        let ipv6_subnet = match v6_cidr {
            Some(sn) if !public_ipv6.is_empty() && !v6_data.is_empty() => {
                lease_json["PublicIPv6"] = public_ipv6.into();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(v6_data) {
                    lease_json["BackendV6Data"] = v;
                }
                Some(sn)
            }
            _ => None,
        };
        let key = SubnetKey::from_parts(subnet, ipv6_subnet).ok_or_else(|| {
            format!(
                "node has no IPv4 pod CIDR, and no IPv6 pod CIDR with annotations {} and {} \
                 (spec.podCIDRs {:?})",
                a.backend_public_ipv6, a.backend_v6_data, self.pod_cidrs
            )
        })?;
        let attrs = LeaseAttrs::from_json(&lease_json.to_string()).map_err(|e| e.to_string())?;
        Ok(Lease::new(key, attrs, None))
    }

    /// `spec.podCIDRs` parsed (or `spec.podCIDR` when the list is empty), host bits cleared as
    /// Go's `net.ParseCIDR` does; at most two (one per address family), as flannel demands.
    fn pod_cidrs_parsed(&self) -> Result<Vec<IpNet>, String> {
        let texts: Vec<&str> = match self.pod_cidrs.len() {
            0 => vec![self.pod_cidr.as_str()],
            1 | 2 => self.pod_cidrs.iter().map(String::as_str).collect(),
            _ => {
                return Err(format!(
                    "node {:?} pod cidrs should be IPv4/IPv6 only or dualstack, found {:?}",
                    self.name, self.pod_cidrs
                ))
            }
        };
        texts
            .into_iter()
            .map(|t| {
                t.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|e| format!("pod CIDR {t:?} of node {:?}: {e}", self.name))
            })
            .collect()
    }
}

/// This node's own subnet (`AcquireLease`): its IPv4 pod CIDR, which must lie inside the
/// network config's `Network`. Errors say what to fix.
pub fn own_pod_cidr(node: &NodeRecord, network: Ipv4Net) -> Result<Ipv4Net, String> {
    if node.pod_cidr.is_empty() {
        return Err(format!(
            "node {:?} has no pod CIDR assigned (spec.podCIDR is empty): run \
             kube-controller-manager with --allocate-node-cidrs=true and \
             --cluster-cidr={network} (kubeadm: --pod-network-cidr={network}), or set the node's \
             spec.podCIDR",
            node.name
        ));
    }
    let cidrs = node.pod_cidrs_parsed()?;
    // As flannel: the last IPv4 CIDR of the list (there is at most one per family).
    let v4 = cidrs
        .iter()
        .rev()
        .find_map(|c| match c {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .ok_or_else(|| {
            format!(
                "node {:?} has no IPv4 pod CIDR (spec.podCIDRs {:?}), but the network config \
                 enables IPv4: give the cluster an IPv4 or dual-stack --cluster-cidr, or set \
                 EnableIPv4 to false for an IPv6-only network",
                node.name, node.pod_cidrs
            )
        })?;
    // containsCIDR: the network is at least as large and holds the subnet's base address.
    if !(network.prefix_len() <= v4.prefix_len() && network.contains(&v4.network())) {
        return Err(format!(
            "subnet {network} specified in the flannel net config doesn't contain {v4} PodCIDR of \
             the {:?} node: make Network in net-conf.json the cluster CIDR \
             (kube-controller-manager --cluster-cidr)",
            node.name
        ));
    }
    Ok(v4)
}

/// This node's own IPv6 subnet in a dual-stack or IPv6-only network: its IPv6 pod CIDR, which
/// must lie inside `IPv6Network`. Errors say what to fix.
pub fn own_pod_cidr_v6(node: &NodeRecord, network: Ipv6Net) -> Result<Ipv6Net, String> {
    let v6 = node
        .pod_cidrs_parsed()?
        .into_iter()
        .rev()
        .find_map(|c| match c {
            IpNet::V6(v6) => Some(v6),
            IpNet::V4(_) => None,
        })
        .ok_or_else(|| {
            format!(
                "node {:?} has no IPv6 pod CIDR (spec.podCIDRs {:?}), but the network config \
                 enables IPv6: give the cluster a dual-stack or IPv6 --cluster-cidr \
                 (kube-controller-manager) or set EnableIPv6 to false",
                node.name, node.pod_cidrs
            )
        })?;
    if !(network.prefix_len() <= v6.prefix_len() && network.contains(&v6.network())) {
        return Err(format!(
            "IPv6Network {network} in the flannel net config doesn't contain {v6}, the IPv6 \
             PodCIDR of the {:?} node: make IPv6Network the cluster's IPv6 CIDR",
            node.name
        ));
    }
    Ok(v6)
}

/// Whether an update of a node is a lease change for its peers (`handleUpdateLeaseEvent`):
/// only a change of `backend-data`, `backend-type` or `public-ip` (dual stack: also
/// `backend-v6-data` and `public-ipv6`) is. Anything else (status heartbeats, labels, other
/// annotations, even the pod CIDR) is not.
pub fn is_lease_update(old: &NodeRecord, new: &NodeRecord, a: &Annotations) -> bool {
    [
        &a.backend_data,
        &a.backend_type,
        &a.backend_public_ip,
        &a.backend_v6_data,
        &a.backend_public_ipv6,
    ]
    .into_iter()
    .any(|key| old.annotation(key) != new.annotation(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::BackendData;
    use packet::wire::MacAddr;

    fn annotations() -> Annotations {
        Annotations::new(super::super::annotations::DEFAULT_ANNOTATION_PREFIX).unwrap()
    }

    /// A node as flanneld leaves it (annotations from its AcquireLease).
    fn flannel_node(name: &str, cidrs: &[&str], ip: &str, mac: &str) -> NodeRecord {
        let a = annotations();
        NodeRecord {
            name: name.into(),
            annotations: [
                (
                    a.backend_data.clone(),
                    format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
                ),
                (a.backend_type.clone(), "vxlan".into()),
                (a.subnet_kube_managed.clone(), "true".into()),
                (a.backend_public_ip.clone(), ip.into()),
                ("node.alpha.kubernetes.io/ttl".into(), "0".into()),
            ]
            .into(),
            pod_cidr: cidrs.first().map(|c| c.to_string()).unwrap_or_default(),
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// A node of an IPv6-only network as flanneld (EnableIPv4 false) leaves it: one IPv6 pod
    /// CIDR, `backend-type`, `backend-v6-data`, `public-ipv6`, and no `backend-data` or
    /// `public-ip` (flanneld writes them only when its BackendData is not "null").
    #[test]
    fn a_flanneld_ipv6_only_node_is_an_ipv6_only_lease() {
        let a = annotations();
        let n = NodeRecord {
            name: "n6".into(),
            annotations: [
                (
                    a.backend_v6_data.clone(),
                    r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e6"}"#.to_string(),
                ),
                (a.backend_type.clone(), "vxlan".into()),
                (a.subnet_kube_managed.clone(), "true".into()),
                (a.backend_public_ipv6.clone(), "2001:db8::6".into()),
            ]
            .into(),
            pod_cidr: "fd00:10:244:6::/64".into(),
            pod_cidrs: vec!["fd00:10:244:6::/64".into()],
        };
        let lease = n.to_lease(&a).unwrap();
        assert_eq!(lease.key().to_string(), "0.0.0.0-0&fd00:10:244:6::-64");
        assert_eq!(lease.attrs.public_ip.to_string(), "0.0.0.0");
        assert_eq!(
            lease.attrs.public_ipv6,
            Some("2001:db8::6".parse().unwrap())
        );
        let peer = crate::backend::Peer::from_lease(&lease).unwrap();
        assert_eq!(peer.ipv4, None);
        assert_eq!(
            peer.ipv6.map(|v6| v6.vtep_mac),
            Some(MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe6]))
        );
        // The same node without its IPv6 annotations names no lease, and says why.
        let mut bare = n.clone();
        bare.annotations.remove(&a.backend_public_ipv6);
        let e = bare.to_lease(&a).unwrap_err();
        assert!(
            e.contains("no IPv4 pod CIDR") && e.contains("public-ipv6"),
            "{e}"
        );
        // This node's own IPv6 subnet in an IPv6-only network.
        assert_eq!(
            own_pod_cidr_v6(&n, "fd00:10:244::/48".parse().unwrap()),
            Ok("fd00:10:244:6::/64".parse().unwrap())
        );
    }

    #[test]
    fn a_flanneld_node_is_a_vxlan_lease() {
        let a = annotations();
        let n = flannel_node("n1", &["10.244.1.0/24"], "192.0.2.1", "12:c6:65:89:b4:e3");
        assert!(n.is_kube_managed(&a));
        let lease = n.to_lease(&a).unwrap();
        assert_eq!(
            lease.subnet,
            Some("10.244.1.0/24".parse::<Ipv4Net>().unwrap())
        );
        assert_eq!(lease.expiration, None);
        assert_eq!(lease.attrs.public_ip.to_string(), "192.0.2.1");
        let data = lease.attrs.vxlan_data().unwrap();
        assert_eq!(data.vni, 1);
        assert_eq!(data.vtep_mac, MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]));

        // Dual stack: the IPv4 CIDR wherever it is in the list; host bits cleared as Go does.
        let n = flannel_node(
            "n2",
            &["fd00:10:244:2::/64", "10.244.2.7/24"],
            "192.0.2.2",
            "02:00:00:00:00:02",
        );
        assert_eq!(
            n.to_lease(&a).unwrap().subnet.unwrap().to_string(),
            "10.244.2.0/24"
        );
        // Only podCIDR set (clusters before dual stack).
        let mut n = flannel_node("n3", &[], "192.0.2.3", "02:00:00:00:00:03");
        n.pod_cidr = "10.244.3.0/24".into();
        assert_eq!(
            n.to_lease(&a).unwrap().subnet.unwrap().to_string(),
            "10.244.3.0/24"
        );
    }

    #[test]
    fn a_dual_stack_flanneld_node_is_a_dual_stack_lease() {
        let a = annotations();
        let mut n = flannel_node(
            "n4",
            &["10.244.4.0/24", "fd00:10:244:4::/64"],
            "192.0.2.4",
            "02:00:00:00:00:04",
        );
        // Without the IPv6 annotations the IPv6 pod CIDR is not a lease half.
        assert_eq!(n.to_lease(&a).unwrap().ipv6_subnet, None);
        n.annotations
            .insert(a.backend_public_ipv6.clone(), "2001:db8::4".into());
        n.annotations.insert(
            a.backend_v6_data.clone(),
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:06:04"}"#.into(),
        );
        let lease = n.to_lease(&a).unwrap();
        assert_eq!(
            lease.ipv6_subnet,
            Some("fd00:10:244:4::/64".parse().unwrap())
        );
        assert_eq!(
            lease.attrs.public_ipv6,
            Some("2001:db8::4".parse().unwrap())
        );
        assert_eq!(
            lease.attrs.vxlan_v6_data().unwrap().vtep_mac,
            MacAddr([2, 0, 0, 0, 6, 4])
        );
        assert_eq!(
            own_pod_cidr_v6(&n, "fd00:10:244::/48".parse().unwrap()).unwrap(),
            "fd00:10:244:4::/64".parse::<Ipv6Net>().unwrap()
        );
        let e = own_pod_cidr_v6(&n, "fd00:99::/48".parse().unwrap()).unwrap_err();
        assert!(e.contains("IPv6Network fd00:99::/48"), "{e}");
        let v4_only = flannel_node("n5", &["10.244.5.0/24"], "192.0.2.5", "02:00:00:00:00:05");
        let e = own_pod_cidr_v6(&v4_only, "fd00:10:244::/48".parse().unwrap()).unwrap_err();
        assert!(e.contains("no IPv6 pod CIDR"), "{e}");
        // A changed public-ipv6 is a lease update for the peers.
        let mut moved = n.clone();
        moved
            .annotations
            .insert(a.backend_public_ipv6.clone(), "2001:db8::44".into());
        assert!(is_lease_update(&n, &moved, &a));
    }

    #[test]
    fn nodes_that_do_not_describe_a_lease_are_refused_with_the_reason() {
        let a = annotations();
        let ok = flannel_node("n1", &["10.244.1.0/24"], "192.0.2.1", "02:00:00:00:00:01");
        let mut no_ip = ok.clone();
        no_ip.annotations.remove(&a.backend_public_ip);
        assert!(no_ip.to_lease(&a).unwrap_err().contains("public-ip"));
        let mut v6_only = ok.clone();
        v6_only.pod_cidrs = vec!["fd00::/64".into()];
        assert!(v6_only
            .to_lease(&a)
            .unwrap_err()
            .contains("no IPv4 pod CIDR"));
        let mut three = ok.clone();
        three.pod_cidrs = vec![
            "10.0.0.0/24".into(),
            "10.0.1.0/24".into(),
            "fd00::/64".into(),
        ];
        assert!(three.to_lease(&a).unwrap_err().contains("dualstack"));
        let mut garbage = ok.clone();
        garbage.pod_cidrs = vec!["10.244.1.0".into()];
        assert!(garbage.to_lease(&a).unwrap_err().contains("pod CIDR"));
        // Backend data that is not JSON still gives a lease (its subnet is taken); the vxlan
        // data is reported unusable by the consumer, as flannel's backend does.
        let mut bad_data = ok.clone();
        bad_data
            .annotations
            .insert(a.backend_data.clone(), "{oops".into());
        let lease = bad_data.to_lease(&a).unwrap();
        assert!(lease.attrs.vxlan_data().is_err());
        let mut other = ok;
        other
            .annotations
            .insert(a.backend_type.clone(), "host-gw".into());
        other
            .annotations
            .insert(a.backend_data.clone(), "null".into());
        let lease = other.to_lease(&a).unwrap();
        assert_eq!(lease.attrs.backend_type, "host-gw");
        assert!(!matches!(
            lease.attrs.backend_data,
            Some(BackendData::Vxlan(_))
        ));
    }

    #[test]
    fn the_own_pod_cidr_must_be_assigned_and_inside_the_network() {
        let network: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let mut n = flannel_node("me", &["10.244.7.0/24"], "192.0.2.7", "02:00:00:00:00:07");
        assert_eq!(
            own_pod_cidr(&n, network).unwrap().to_string(),
            "10.244.7.0/24"
        );

        // The whole network as one node's subnet is allowed (same prefix length).
        n.pod_cidrs = vec!["10.244.0.0/16".into()];
        n.pod_cidr = "10.244.0.0/16".into();
        assert!(own_pod_cidr(&n, network).is_ok());

        for (cidrs, needle) in [
            (vec!["10.245.7.0/24"], "doesn't contain 10.245.7.0/24"),
            (vec!["10.244.0.0/15"], "doesn't contain 10.244.0.0/15"),
            (vec!["fd00::/64"], "no IPv4 pod CIDR"),
            (vec!["bogus"], "pod CIDR \"bogus\""),
        ] {
            n.pod_cidr = cidrs[0].into();
            n.pod_cidrs = cidrs.iter().map(|c| c.to_string()).collect();
            let e = own_pod_cidr(&n, network).unwrap_err();
            assert!(e.contains(needle), "{cidrs:?}: {e}");
        }

        n.pod_cidr = String::new();
        n.pod_cidrs.clear();
        let e = own_pod_cidr(&n, network).unwrap_err();
        assert!(
            e.contains("no pod CIDR assigned") && e.contains("--allocate-node-cidrs"),
            "{e}"
        );
    }

    #[test]
    fn only_backend_data_backend_type_and_public_ip_changes_of_either_family_are_lease_updates() {
        let a = annotations();
        let old = flannel_node("n1", &["10.244.1.0/24"], "192.0.2.1", "02:00:00:00:00:01");
        assert!(!is_lease_update(&old, &old.clone(), &a));

        for key in [&a.backend_data, &a.backend_type, &a.backend_public_ip] {
            let mut new = old.clone();
            new.annotations.insert(key.clone(), "changed".into());
            assert!(is_lease_update(&old, &new, &a), "{key}");
            let mut gone = old.clone();
            gone.annotations.remove(key);
            assert!(is_lease_update(&old, &gone, &a), "{key} removed");
        }

        // Dual stack: the IPv6 half's annotations are lease updates too (flanneld with
        // EnableIPv6 compares backend-v6-data and public-ipv6; in an IPv4-only network such a
        // change re-announces an unchanged lease, which is harmless).
        for key in [&a.backend_v6_data, &a.backend_public_ipv6] {
            let mut new = old.clone();
            new.annotations.insert(key.clone(), "changed".into());
            assert!(is_lease_update(&old, &new, &a), "{key}");
        }

        // Not updates: other annotations (also flannel's own), labels-only changes, pod CIDRs.
        let mut new = old.clone();
        new.annotations
            .insert("node.alpha.kubernetes.io/ttl".into(), "30".into());
        new.annotations
            .insert(a.backend_public_ip_overwrite.clone(), "198.51.100.1".into());
        new.pod_cidrs = vec!["10.244.9.0/24".into()];
        new.pod_cidr = "10.244.9.0/24".into();
        assert!(!is_lease_update(&old, &new, &a));
    }
}
