//! flannel's node annotations (`pkg/subnet/kube/annotations.go`) and the `backend-data` value
//! its vxlan backend publishes in them (`pkg/backend/vxlan/vxlan.go`). Nothing here does I/O.

use packet::wire::MacAddr;

use crate::lease::LeaseAttrs;

/// flanneld's default `--kube-annotation-prefix`.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// Why an annotation prefix was refused (flannel's own two messages, with the prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationPrefixError {
    /// More than one `/`.
    #[error(
        "--kube-annotation-prefix {0:?}: the prefix can contain at most a single slash, e.g. \
         flannel.alpha.coreos.com or example.com/vxdp"
    )]
    TooManySlashes(String),
    /// Not `fqdn/[0-9a-z-_]*`.
    #[error(
        "--kube-annotation-prefix {0:?}: the prefix must be in the format fqdn/[0-9a-z-_]* \
         (lowercase letters, digits, '_' and '-'), e.g. flannel.alpha.coreos.com"
    )]
    Format(String),
}

/// The annotation keys under one prefix, as flannel names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `kube-subnet-manager`: `"true"` on nodes whose flannel uses the Kubernetes subnet
    /// manager; only those are peers.
    pub subnet_kube_managed: String,
    /// `backend-data`: the backend's data, `{"VNI":1,"VtepMAC":"..."}` for vxlan.
    pub backend_data: String,
    /// `backend-v6-data`: the same for the IPv6 half.
    pub backend_v6_data: String,
    /// `backend-type`: `vxlan`.
    pub backend_type: String,
    /// `public-ip`: where the node receives VXLAN.
    pub backend_public_ip: String,
    /// `public-ipv6`.
    pub backend_public_ipv6: String,
    /// `node-public-ip`: set by the operator, it replaces `--public-ip` on that node.
    pub backend_node_public_ip: String,
    /// `node-public-ipv6`.
    pub backend_node_public_ipv6: String,
    /// `public-ip-overwrite`: set by the operator, it is published as `public-ip` instead of
    /// the node's own address (a node behind NAT).
    pub backend_public_ip_overwrite: String,
    /// `public-ipv6-overwrite`.
    pub backend_public_ipv6_overwrite: String,
}

impl Annotations {
    /// The keys under `prefix`, normalised as flannel does: a prefix without a slash gets one
    /// (`example.com` -> `example.com/backend-type`), one with a name after the slash gets a
    /// dash (`example.com/x` -> `example.com/x-backend-type`).
    pub fn new(prefix: &str) -> Result<Annotations, AnnotationPrefixError> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => return Err(AnnotationPrefixError::TooManySlashes(prefix.into())),
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        // flannel's regexp, unanchored at the start as Go's MatchString is.
        let format = regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .map_err(|_| AnnotationPrefixError::Format(prefix.into()))?;
        if !format.is_match(&p) {
            return Err(AnnotationPrefixError::Format(prefix.into()));
        }
        let key = |name: &str| format!("{p}{name}");
        Ok(Annotations {
            subnet_kube_managed: key("kube-subnet-manager"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            backend_type: key("backend-type"),
            backend_public_ip: key("public-ip"),
            backend_public_ipv6: key("public-ipv6"),
            backend_node_public_ip: key("node-public-ip"),
            backend_node_public_ipv6: key("node-public-ipv6"),
            backend_public_ip_overwrite: key("public-ip-overwrite"),
            backend_public_ipv6_overwrite: key("public-ipv6-overwrite"),
        })
    }
}

/// The `backend-data` value of a vxlan node, byte for byte as flanneld writes it: Go's
/// `json.Marshal` of `vxlanLeaseAttrs{VNI uint32, VtepMAC hardwareAddr}`, whose MAC marshals
/// as `%q` of `net.HardwareAddr.String()` (lowercase, colons).
pub fn vxlan_backend_data(vni: u32, vtep_mac: MacAddr) -> String {
    format!(r#"{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}"#)
}

/// The VtepMAC in a `backend-data` value written by an earlier run (flanneld's or vxdp's), to
/// be reused so that peers' ARP and FDB entries for this node stay valid. Decoded as Go
/// decodes it (field names case-insensitive, `-` or `:` separators); `None` when it holds no
/// usable unicast MAC.
pub fn stored_vtep_mac(backend_data: &str) -> Option<MacAddr> {
    let value: serde_json::Value = serde_json::from_str(backend_data).ok()?;
    if !value.is_object() {
        return None;
    }
    let lease = serde_json::json!({"BackendType": "vxlan", "BackendData": value}).to_string();
    let mac = LeaseAttrs::from_json(&lease)
        .ok()?
        .vxlan_data()
        .ok()?
        .vtep_mac;
    mac.is_unicast().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flannel's `Test_newAnnotations` cases (annotations_test.go).
    #[test]
    fn prefixes_are_normalised_and_checked_like_flannel() {
        for (prefix, backend_type) in [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            ("org.com", "org.com/backend-type"),
            ("org9.com", "org9.com/backend-type"),
            ("org.com/9", "org.com/9-backend-type"),
        ] {
            let a = Annotations::new(prefix).unwrap();
            assert_eq!(a.backend_type, backend_type, "{prefix}");
        }
        for bad in ["org", "org/", "org/prefix", "org.COM", "org.com/PREFIX"] {
            assert!(
                matches!(Annotations::new(bad), Err(AnnotationPrefixError::Format(_))),
                "{bad}"
            );
        }
        let e = Annotations::new("a.b/c/d").unwrap_err();
        assert_eq!(e, AnnotationPrefixError::TooManySlashes("a.b/c/d".into()));
        assert!(e.to_string().contains("single slash"), "{e}");

        let a = Annotations::new(DEFAULT_ANNOTATION_PREFIX).unwrap();
        assert_eq!(
            [
                a.subnet_kube_managed.as_str(),
                &a.backend_data,
                &a.backend_v6_data,
                &a.backend_public_ip,
                &a.backend_public_ipv6,
                &a.backend_node_public_ip,
                &a.backend_node_public_ipv6,
                &a.backend_public_ip_overwrite,
                &a.backend_public_ipv6_overwrite,
            ],
            [
                "flannel.alpha.coreos.com/kube-subnet-manager",
                "flannel.alpha.coreos.com/backend-data",
                "flannel.alpha.coreos.com/backend-v6-data",
                "flannel.alpha.coreos.com/public-ip",
                "flannel.alpha.coreos.com/public-ipv6",
                "flannel.alpha.coreos.com/node-public-ip",
                "flannel.alpha.coreos.com/node-public-ipv6",
                "flannel.alpha.coreos.com/public-ip-overwrite",
                "flannel.alpha.coreos.com/public-ipv6-overwrite",
            ]
        );
    }

    /// What `json.Marshal(&vxlanLeaseAttrs{VNI: 1, VtepMAC: hardwareAddr(mac)})` returns, as
    /// seen on flannel nodes (`kubectl get node -o yaml`).
    #[test]
    fn backend_data_is_go_json_byte_for_byte() {
        let mac = MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]);
        assert_eq!(
            vxlan_backend_data(1, mac),
            r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#
        );
        // uint32: no truncation to 16 bits in the kube annotation, no leading zeros dropped.
        let mac = MacAddr([0x02, 0x00, 0x0a, 0x00, 0x00, 0x01]);
        assert_eq!(
            vxlan_backend_data(4_096_000, mac),
            r#"{"VNI":4096000,"VtepMAC":"02:00:0a:00:00:01"}"#
        );
    }

    #[test]
    fn a_stored_vtep_mac_is_read_back_as_go_reads_it() {
        let mac = MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]);
        assert_eq!(
            stored_vtep_mac(&vxlan_backend_data(1, mac)),
            Some(mac),
            "what vxdp and flanneld write"
        );
        assert_eq!(
            stored_vtep_mac(r#"{"vni":1,"vtepmac":"12-c6-65-89-b4-e3"}"#),
            Some(mac)
        );
        for unusable in [
            "",
            "null",
            "not json",
            r#"{"VNI":1}"#,
            r#"{"VNI":1,"VtepMAC":"zz:zz"}"#,
            r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#, // multicast
            r#"["12:c6:65:89:b4:e3"]"#,
        ] {
            assert_eq!(stored_vtep_mac(unusable), None, "{unusable}");
        }
    }
}
