//! flannel's lease records, byte-compatible with what flanneld writes to and reads from etcd.
//!
//! - Keys: `<prefix>/subnets/10.5.52.0-24`, dual stack `<prefix>/subnets/10.5.52.0-24&fc00::-64`,
//!   IPv6-only `<prefix>/subnets/0.0.0.0-0&fc00::-64` (flannel's `MakeSubnetKey`/`ParseSubnetKey`
//!   in `pkg/subnet/subnet.go`: with IPv4 off the IPv4 half is Go's zero `IP4Net`, written
//!   `0.0.0.0-0`; keys joined with Go's `path.Join` as in `pkg/subnet/etcd/registry.go`).
//! - Values: the JSON of flannel's `LeaseAttrs` (`pkg/lease/lease.go`), fields in struct order,
//!   `PublicIPv6` without `omitempty` (so `null` when absent), `BackendType`, `BackendData` and
//!   `BackendV6Data` with `omitempty`. The vxlan backend's data is `vxlanLeaseAttrs`
//!   (`pkg/backend/vxlan/vxlan_network.go`): `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
//!
//! Decoding follows Go's `encoding/json` (field names case-insensitive, unknown fields ignored) so
//! that whatever flanneld accepts, vxdp accepts. Nothing here does I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use packet::wire::MacAddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::go_json::{self, GoObject, GoValue, Mismatch};

/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";

/// The `BackendType` of leases vxdp can peer with. flannel compares it case-sensitively.
pub const VXLAN_BACKEND_TYPE: &str = "vxlan";

/// Why a lease key or value was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A key under `<prefix>/subnets/` that is not a subnet key.
    #[error(
        "lease key {key:?} is not a flannel subnet key like 10.5.52.0-24, \
         10.5.52.0-24&fc00::-64 or 0.0.0.0-0&fc00::-64: {reason}; the lease is skipped (delete the \
         key if nothing owns it)"
    )]
    InvalidKey {
        /// The key, as found.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An etcd key outside `<prefix>/subnets/`.
    #[error(
        "etcd key {key:?} is not under {dir}/: it is not a lease of this network; check \
         --etcd-prefix"
    )]
    NotUnderPrefix {
        /// The key.
        key: String,
        /// `<prefix>/subnets`.
        dir: String,
    },
    /// The value is not JSON.
    #[error("lease value is not valid JSON: {cause}; the lease is skipped")]
    Json {
        /// The parser's complaint (in the message, not chained: the chain would print it twice).
        cause: serde_json::Error,
    },
    /// The value is JSON but not an object.
    #[error(
        "lease value must be a JSON object like {{\"PublicIP\":\"192.168.64.3\",...}}, found \
         {found}; the lease is skipped"
    )]
    NotAnObject {
        /// What was found.
        found: String,
    },
    /// A lease field has the wrong JSON type.
    #[error("lease field {field} must be {expected}, found {found}; the lease is skipped")]
    FieldType {
        /// The field, e.g. `PublicIP` or `BackendData.VNI`.
        field: String,
        /// What flannel decodes it as.
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// An address field that does not parse.
    #[error(
        "lease field {field} is {value:?}, which is not {expected}: {reason}; the lease is skipped"
    )]
    InvalidAddress {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// What it should be.
        expected: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The lease is of another backend: vxdp cannot reach that node.
    #[error(
        "lease of {node} has BackendType {backend_type:?}, not \"vxlan\": that node runs \
         another flannel backend and cannot be reached over VXLAN; ignoring it (all nodes of a \
         network must use the same backend)"
    )]
    NotVxlan {
        /// The lease's `PublicIP` (its `PublicIPv6` when it has no IPv4 address).
        node: IpAddr,
        /// Its `BackendType`.
        backend_type: String,
    },
    /// A vxlan lease without the data needed to reach it.
    #[error(
        "vxlan lease of {node} has no {field}: its VTEP MAC is unknown, so it cannot be \
         reached; the node that wrote it must re-register (restart its flanneld or vxdp)"
    )]
    MissingBackendData {
        /// The lease's `PublicIP` (its `PublicIPv6` when it has no IPv4 address).
        node: IpAddr,
        /// `BackendData` or `BackendV6Data`.
        field: &'static str,
    },
    /// A vxlan lease whose data does not decode.
    #[error(
        "vxlan lease of {node} has an unusable {field}: {reason}; expected \
         {{\"VNI\":1,\"VtepMAC\":\"c6:d2:32:6f:8f:44\"}}, so the node cannot be reached until \
         it re-registers"
    )]
    BadVxlanData {
        /// The lease's `PublicIP` (its `PublicIPv6` when it has no IPv4 address).
        node: IpAddr,
        /// `BackendData` or `BackendV6Data`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Keys

/// The subnet(s) a lease is for, which is also the last element of its etcd key.
///
/// Displays and parses as flannel writes it: `10.5.52.0-24`, `10.5.52.0-24&fc00::-64` for dual
/// stack, `0.0.0.0-0&fc00::-64` for an IPv6-only network (flannel's empty `IP4Net`, which vxdp
/// holds as `ipv4: None`). Parsing accepts only that canonical form (host bits clear, IPv6 in
/// RFC 5952 form, which is what Go's `net.IP.String` writes): flanneld re-creates the key from
/// the parsed subnets when it renews, so any other spelling would name a different key.
///
/// At least one half is present; [`SubnetKey::from_parts`] and parsing guarantee it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet; `None` in an IPv6-only network.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub ipv6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// A key for an IPv4 subnet and, dual stack, an IPv6 one.
    pub fn new(ipv4: Ipv4Net, ipv6: Option<Ipv6Net>) -> Self {
        SubnetKey {
            ipv4: Some(ipv4),
            ipv6,
        }
    }

    /// The key of an IPv6-only lease (`0.0.0.0-0&<ipv6>`).
    pub fn ipv6_only(ipv6: Ipv6Net) -> Self {
        SubnetKey {
            ipv4: None,
            ipv6: Some(ipv6),
        }
    }

    /// A key from its halves; `None` when both are absent (such a lease would name no subnet).
    pub fn from_parts(ipv4: Option<Ipv4Net>, ipv6: Option<Ipv6Net>) -> Option<Self> {
        (ipv4.is_some() || ipv6.is_some()).then_some(SubnetKey { ipv4, ipv6 })
    }

    /// The full etcd key: `<prefix>/subnets/<key>`, joined like Go's `path.Join`.
    pub fn etcd_key(&self, prefix: &str) -> String {
        go_path_join(&[prefix, "subnets", &self.to_string()])
    }

    /// Parses a full etcd key below [`subnets_dir`]`(prefix)`.
    pub fn from_etcd_key(prefix: &str, key: &str) -> Result<Self, LeaseError> {
        let dir = subnets_dir(prefix);
        key.strip_prefix(dir.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| LeaseError::NotUnderPrefix {
                key: key.into(),
                dir,
            })?
            .parse()
    }
}

/// A lease's subnets as an operator reads them (`10.5.52.0/24`, `fc00::/64`, or both with a
/// space), for logs: the key's own form (`10.5.52.0-24&fc00::-64`) is etcd's.
#[derive(Debug, Clone, Copy)]
pub struct SubnetCidrs<'a>(&'a SubnetKey);

impl fmt::Display for SubnetCidrs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.ipv4, self.0.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4} {v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => f.write_str("-"),
        }
    }
}

impl SubnetKey {
    /// The subnets in CIDR notation, for logs.
    pub fn cidrs(&self) -> SubnetCidrs<'_> {
        SubnetCidrs(self)
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // flannel's MakeSubnetKey writes the zero IP4Net of an IPv6-only lease as 0.0.0.0-0.
        let v4 = self.ipv4.unwrap_or_default();
        write!(f, "{}-{}", v4.addr(), v4.prefix_len())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, LeaseError> {
        let invalid = |reason: String| LeaseError::InvalidKey {
            key: s.into(),
            reason,
        };
        let (v4, v6) = match s.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (s, None),
        };
        let ipv4 = match parse_key_part(v4, 32).map_err(&invalid)? {
            (IpAddr::V4(a), len) => Ipv4Net::new(a, len).map_err(|e| invalid(e.to_string()))?,
            (IpAddr::V6(_), _) => return Err(invalid(format!("{v4:?} must be an IPv4 subnet"))),
        };
        let ipv6 = match v6 {
            None => None,
            Some(v6) => match parse_key_part(v6, 128).map_err(&invalid)? {
                (IpAddr::V6(a), len) => {
                    Some(Ipv6Net::new(a, len).map_err(|e| invalid(e.to_string()))?)
                }
                (IpAddr::V4(_), _) => {
                    return Err(invalid(format!("{v6:?} after '&' must be an IPv6 subnet")))
                }
            },
        };
        if ipv4.addr() != ipv4.network() {
            return Err(invalid(format!("{ipv4} has host bits set")));
        }
        if let Some(v6) = ipv6 {
            if v6.addr() != v6.network() {
                return Err(invalid(format!("{v6} has host bits set")));
            }
        }
        // 0.0.0.0/0 is flannel's empty IP4Net: the lease of an IPv6-only network. Alone it names
        // no subnet at all (flanneld would route everything to that node).
        let ipv4 = (ipv4 != Ipv4Net::default()).then_some(ipv4);
        let key = SubnetKey::from_parts(ipv4, ipv6)
            .ok_or_else(|| invalid("0.0.0.0-0 without an IPv6 subnet names no subnet".into()))?;
        let canonical = key.to_string();
        if canonical != s {
            return Err(invalid(format!(
                "flannel writes this subnet as {canonical:?}"
            )));
        }
        Ok(key)
    }
}

/// `<addr>-<prefix length>`.
fn parse_key_part(part: &str, max_len: u8) -> Result<(IpAddr, u8), String> {
    let (addr, len) = part
        .rsplit_once('-')
        .ok_or_else(|| format!("{part:?} lacks the '-<prefix length>' part"))?;
    let len = Some(len)
        .filter(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|l| l.parse::<u8>().ok())
        .filter(|l| *l <= max_len)
        .ok_or_else(|| format!("prefix length {len:?} is not a number from 0 to {max_len}"))?;
    let addr = addr
        .parse::<IpAddr>()
        .map_err(|e| format!("{addr:?} is not an IP address ({e})"))?;
    Ok((addr, len))
}

/// The etcd key of the network config: `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    go_path_join(&[prefix, "config"])
}

/// The directory of the lease keys: `<prefix>/subnets`, with no trailing slash. flanneld lists
/// and watches exactly this string as a key prefix; add a `/` to avoid matching siblings such as
/// `<prefix>/subnets2` (keys there would not parse anyway).
pub fn subnets_dir(prefix: &str) -> String {
    go_path_join(&[prefix, "subnets"])
}

/// Go's `path.Join`: joins the non-empty elements with `/` and cleans the result (`path.Clean`:
/// no repeated or trailing slashes, `.` and `..` resolved).
fn go_path_join(elems: &[&str]) -> String {
    let joined = elems
        .iter()
        .filter(|e| !e.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return joined;
    }
    let rooted = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|s| *s != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// The value of a lease key: flannel's `LeaseAttrs`.
///
/// [`LeaseAttrs::to_json`] writes exactly the bytes Go's `json.Marshal` writes for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseAttrs {
    /// `PublicIP`: where the node receives VXLAN traffic (0.0.0.0 when absent, as in Go).
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: its IPv6 underlay address on dual-stack and IPv6-only nodes; written as
    /// `null` when absent.
    #[serde(rename = "PublicIPv6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`, e.g. `vxlan`; empty when absent (and then not written).
    #[serde(rename = "BackendType", skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    /// `BackendData`: the backend's data for the IPv4 half.
    #[serde(rename = "BackendData", skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<BackendData>,
    /// `BackendV6Data`: the backend's data for the IPv6 half of a dual-stack lease.
    #[serde(rename = "BackendV6Data", skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<BackendData>,
}

/// A lease's `BackendData` (or `BackendV6Data`).
#[derive(Debug, Clone, PartialEq)]
pub enum BackendData {
    /// The data of a `vxlan` lease.
    Vxlan(VxlanBackendData),
    /// Anything else, kept as found: another backend's data, or vxlan data that does not decode
    /// ([`LeaseAttrs::vxlan_data`] says why). Re-encoding sorts object keys and keeps only the
    /// last of duplicate keys, so vxlan data refused because of an earlier duplicate (Go's
    /// decoder reports the first bad value, `{"VNI":-1,"VNI":1,...}`) decodes once re-encoded.
    /// vxdp re-encodes only its own leases, which never hold such data.
    Raw(serde_json::Value),
}

/// flannel's `vxlanLeaseAttrs`: what a peer needs to reach a node's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct VxlanBackendData {
    /// `VNI`. flanneld writes its configured VNI truncated to 16 bits (the field is a Go
    /// `uint16`); no one programs anything from it.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// `VtepMAC`: the MAC of the node's VXLAN device, the inner destination MAC towards it.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

impl Serialize for BackendData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BackendData::Vxlan(d) => d.serialize(s),
            BackendData::Raw(v) => v.serialize(s),
        }
    }
}

impl Default for LeaseAttrs {
    /// What Go decodes `{}` to: `PublicIP` 0.0.0.0 and nothing else. Also what an etcd delete
    /// event carries, which has no value.
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

impl LeaseAttrs {
    /// The attrs of a vxlan node as flanneld writes them (`newSubnetAttrs` in vxlan.go).
    ///
    /// The VNI is stored truncated to 16 bits as flanneld does (`uint16(cfg.VNI)`), because
    /// flanneld peers decode it into a `uint16` and would drop the whole lease for a larger
    /// number.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: VXLAN_BACKEND_TYPE.into(),
            backend_data: Some(BackendData::Vxlan(VxlanBackendData {
                vni: vni & 0xffff,
                vtep_mac,
            })),
            backend_v6_data: None,
        }
    }

    /// Adds the IPv6 half of a dual-stack vxlan node (flanneld gives the IPv6 device its own
    /// MAC); the VNI is the IPv4 half's.
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, vtep_mac: MacAddr) -> Self {
        let vni = match &self.backend_data {
            Some(BackendData::Vxlan(d)) => d.vni,
            _ => 0,
        };
        self.public_ipv6 = Some(public_ipv6);
        self.backend_v6_data = Some(BackendData::Vxlan(VxlanBackendData { vni, vtep_mac }));
        self
    }

    /// The attrs of a vxlan node in an IPv6-only network, as flanneld writes them
    /// (`newSubnetAttrs` with no IPv4 device): `PublicIP` stays Go's zero `0.0.0.0`, there is no
    /// `BackendData`, and `BackendV6Data` carries the VNI (truncated to 16 bits, see
    /// [`LeaseAttrs::vxlan`]) and the IPv6 device's MAC.
    pub fn vxlan_v6_only(public_ipv6: Ipv6Addr, vni: u32, vtep_mac: MacAddr) -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(public_ipv6),
            backend_type: VXLAN_BACKEND_TYPE.into(),
            backend_data: None,
            backend_v6_data: Some(BackendData::Vxlan(VxlanBackendData {
                vni: vni & 0xffff,
                vtep_mac,
            })),
        }
    }

    /// The address that names the node in messages: its `PublicIP`, or its `PublicIPv6` when
    /// it has no IPv4 address (an IPv6-only network).
    pub fn node_addr(&self) -> IpAddr {
        match self.public_ipv6 {
            Some(v6) if self.public_ip.is_unspecified() => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }

    /// Whether these are the attrs of the node whose underlay address is `node`: its `PublicIP`
    /// for an IPv4 address (flanneld's `findLeaseByIP`), its `PublicIPv6` for an IPv6 one.
    ///
    /// In an IPv6-only network every lease's `PublicIP` is 0.0.0.0, so flanneld's etcd manager,
    /// which matches `PublicIP` alone, takes the first IPv6-only lease it finds for its own; vxdp
    /// names its node by `PublicIPv6` there.
    pub fn is_of(&self, node: IpAddr) -> bool {
        match node {
            IpAddr::V4(a) => self.public_ip == a,
            IpAddr::V6(a) => self.public_ipv6 == Some(a),
        }
    }

    /// Whether this is a lease of flannel's vxlan backend (`BackendType` exactly `vxlan`).
    pub fn is_vxlan(&self) -> bool {
        self.backend_type == VXLAN_BACKEND_TYPE
    }

    /// The vxlan data of the IPv4 half, or why this lease cannot be used by a vxlan node.
    pub fn vxlan_data(&self) -> Result<VxlanBackendData, LeaseError> {
        self.vxlan_data_of("BackendData", self.backend_data.as_ref())
    }

    /// The vxlan data of the IPv6 half, or why it cannot be used.
    pub fn vxlan_v6_data(&self) -> Result<VxlanBackendData, LeaseError> {
        self.vxlan_data_of("BackendV6Data", self.backend_v6_data.as_ref())
    }

    fn vxlan_data_of(
        &self,
        field: &'static str,
        data: Option<&BackendData>,
    ) -> Result<VxlanBackendData, LeaseError> {
        if !self.is_vxlan() {
            return Err(LeaseError::NotVxlan {
                node: self.node_addr(),
                backend_type: self.backend_type.clone(),
            });
        }
        match data {
            Some(BackendData::Vxlan(d)) => Ok(*d),
            None => Err(LeaseError::MissingBackendData {
                node: self.node_addr(),
                field,
            }),
            Some(BackendData::Raw(v)) => {
                // Decode again for the reason (this is the rare, broken case).
                let reason = match serde_json::from_value::<GoValue>(v.clone()) {
                    Ok(v) => decode_vxlan_data(&v)
                        .err()
                        .unwrap_or_else(|| "it did not decode".into()),
                    Err(e) => e.to_string(),
                };
                Err(LeaseError::BadVxlanData {
                    node: self.node_addr(),
                    field,
                    reason,
                })
            }
        }
    }

    /// The JSON flanneld would write for these attrs, byte for byte (Go's `json.Marshal`: compact,
    /// struct field order, and `<`, `>`, `&`, U+2028, U+2029 escaped as `\u003c` etc.).
    pub fn to_json(&self) -> String {
        // Addresses, strings, numbers and JSON values always serialize.
        let text = serde_json::to_string(self).unwrap_or_default();
        go_html_escape(&text)
    }

    /// Decodes a lease value as flanneld does (field names case-insensitive, unknown fields
    /// ignored). vxlan data that does not decode is kept as [`BackendData::Raw`], so the lease
    /// still marks its subnet as taken.
    pub fn from_json(text: &str) -> Result<Self, LeaseError> {
        match GoObject::parse(text) {
            Ok(obj) => Self::from_go(&obj),
            Err(go_json::ParseError::Json(cause)) => Err(LeaseError::Json { cause }),
            Err(go_json::ParseError::NotAnObject(found)) => Err(LeaseError::NotAnObject { found }),
        }
    }

    fn from_go(obj: &GoObject) -> Result<Self, LeaseError> {
        let field_type = |field: &str, m: Mismatch| LeaseError::FieldType {
            field: field.into(),
            expected: m.expected,
            found: m.found,
        };
        let public_ip =
            match go_json::get_text(obj, "PublicIP").map_err(|m| field_type("PublicIP", m))? {
                None => Ipv4Addr::UNSPECIFIED,
                Some(s) => match s.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) => a,
                    Ok(IpAddr::V6(_)) => {
                        return Err(bad_address("PublicIP", &s, "an IPv6 address".into()))
                    }
                    Err(e) => return Err(bad_address("PublicIP", &s, e.to_string())),
                },
            };
        let public_ipv6 = match go_json::get_nullable_text(obj, "PublicIPv6")
            .map_err(|m| field_type("PublicIPv6", m))?
            .flatten()
        {
            None => None,
            // Go's net.ParseIP takes IPv4 text too and maps it into IPv6.
            Some(s) => match s.parse::<IpAddr>() {
                Ok(IpAddr::V6(a)) => Some(a),
                Ok(IpAddr::V4(a)) => Some(a.to_ipv6_mapped()),
                Err(e) => return Err(bad_address("PublicIPv6", &s, e.to_string())),
            },
        };
        let backend_type = go_json::get_string(obj, "BackendType")
            .map_err(|m| field_type("BackendType", m))?
            .unwrap_or_default();
        let is_vxlan = backend_type == VXLAN_BACKEND_TYPE;
        let data = |field: &str| match obj.last(field) {
            None | Some(GoValue::Null) => None,
            Some(v) if is_vxlan => Some(match decode_vxlan_data(v) {
                Ok(d) => BackendData::Vxlan(d),
                Err(_) => BackendData::Raw(v.to_json()),
            }),
            Some(v) => Some(BackendData::Raw(v.to_json())),
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_data: data("BackendData"),
            backend_v6_data: data("BackendV6Data"),
            backend_type,
        })
    }
}

impl<'de> Deserialize<'de> for LeaseAttrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match GoValue::deserialize(d)? {
            GoValue::Object(obj) => Self::from_go(&obj).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(LeaseError::NotAnObject {
                found: other.describe(),
            })),
        }
    }
}

fn bad_address(field: &'static str, value: &str, reason: String) -> LeaseError {
    LeaseError::InvalidAddress {
        field,
        value: value.into(),
        expected: if field == "PublicIP" {
            "an IPv4 address"
        } else {
            "an IPv6 address"
        },
        reason,
    }
}

/// `vxlanLeaseAttrs` as Go decodes it, with the reason when it cannot be used.
fn decode_vxlan_data(v: &GoValue) -> Result<VxlanBackendData, String> {
    let GoValue::Object(obj) = v else {
        return Err(format!("it is {}, not an object", v.describe()));
    };
    let vni = go_json::get_u64(obj, "VNI")
        .map_err(|m| format!("VNI must be {}, found {}", m.expected, m.found))?
        .unwrap_or(0);
    let vni = u32::try_from(vni).map_err(|_| format!("VNI {vni} does not fit in 32 bits"))?;
    let mac = go_json::get_text(obj, "VtepMAC")
        .map_err(|m| format!("VtepMAC must be {}, found {}", m.expected, m.found))?
        .ok_or("VtepMAC is missing")?;
    let vtep_mac = mac
        .parse::<MacAddr>()
        .map_err(|e| format!("VtepMAC: {e}"))?;
    Ok(VxlanBackendData { vni, vtep_mac })
}

/// Go's `json.Marshal` escapes these for embedding in HTML; serde_json does not. In compact JSON
/// they can only occur inside strings, so replacing them everywhere is exact.
fn go_html_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Leases

/// A lease: a node's claim on a subnet (and, dual stack, an IPv6 subnet; IPv6-only, only an
/// IPv6 subnet).
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The IPv4 subnet; `None` in an IPv6-only network.
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The key's value.
    pub attrs: LeaseAttrs,
    /// When it lapses unless renewed; `None` for a reservation (an etcd key without an etcd
    /// lease), which never expires and which only a node with its `PublicIP` may take.
    pub expiration: Option<OffsetDateTime>,
}

impl Lease {
    /// A lease for the subnets of `key`.
    pub fn new(key: SubnetKey, attrs: LeaseAttrs, expiration: Option<OffsetDateTime>) -> Self {
        Lease {
            subnet: key.ipv4,
            ipv6_subnet: key.ipv6,
            attrs,
            expiration,
        }
    }

    /// Its key.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.subnet,
            ipv6: self.ipv6_subnet,
        }
    }

    /// Whether it is a reservation (no expiration).
    pub fn is_reservation(&self) -> bool {
        self.expiration.is_none()
    }

    /// Whether it has lapsed at `now` (reservations never do).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expiration.is_some_and(|exp| exp <= now)
    }

    /// The IPv4 subnet's base address: the address the node's VXLAN device carries as a /32,
    /// and the next hop (and ARP entry) peers use for this subnet; `None` when IPv6-only.
    pub fn vtep_addr(&self) -> Option<Ipv4Addr> {
        self.subnet.map(|n| n.network())
    }

    /// The IPv6 base address (carried as a /128), on dual-stack and IPv6-only leases.
    pub fn vtep_addr_v6(&self) -> Option<Ipv6Addr> {
        self.ipv6_subnet.map(|n| n.network())
    }
}

/// The first address after the subnet's base, which flanneld hands to the container bridge
/// (`FLANNEL_SUBNET=10.5.52.1/24`).
pub fn first_usable_v4(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// The IPv6 counterpart of [`first_usable_v4`] (`FLANNEL_IPV6_SUBNET`).
pub fn first_usable_v6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1))
}

/// A change in the set of leases, as a lease store reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A lease appeared, or an existing key got a new value (a renewal, or a node that came back
    /// with a new VTEP MAC or PublicIP). Consumers must replace whatever they programmed for this
    /// key, not add to it.
    Added(Lease),
    /// A lease went away (deleted, expired or revoked). Its attrs may be empty (an etcd delete
    /// carries only the key): consumers must find what to undo by [`Lease::key`].
    Removed(Lease),
}

impl LeaseEvent {
    /// The lease the event is about.
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_keys_as_flannel_writes_them() {
        let k: SubnetKey = "10.5.52.0-24".parse().unwrap();
        assert_eq!(k.ipv4, Some("10.5.52.0/24".parse().unwrap()));
        assert_eq!(k.ipv6, None);
        assert_eq!(k.to_string(), "10.5.52.0-24");

        let k: SubnetKey = "10.5.52.0-24&fc00::-64".parse().unwrap();
        assert_eq!(k.ipv6, Some("fc00::/64".parse().unwrap()));
        assert_eq!(k.to_string(), "10.5.52.0-24&fc00::-64");

        let k = SubnetKey::new(
            "10.244.3.0/24".parse().unwrap(),
            Some("fd00:0:0:3::/64".parse().unwrap()),
        );
        assert_eq!(k.to_string(), "10.244.3.0-24&fd00:0:0:3::-64");
        assert_eq!(k.to_string().parse::<SubnetKey>().unwrap(), k);
    }

    /// IPv6-only leases as flanneld keys them: `MakeSubnetKey(ip.IP4Net{}, sn6)` writes the zero
    /// IPv4 half as `0.0.0.0-0` (`IP4Net.StringSep(".", "-")`), and `ParseSubnetKey` reads it
    /// back with its regex `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`.
    #[test]
    fn ipv6_only_keys_as_flannel_writes_them() {
        let k: SubnetKey = "0.0.0.0-0&fd00:5:0:64::-64".parse().unwrap();
        assert_eq!(k.ipv4, None);
        assert_eq!(k.ipv6, Some("fd00:5:0:64::/64".parse().unwrap()));
        assert_eq!(k.to_string(), "0.0.0.0-0&fd00:5:0:64::-64");
        assert_eq!(k, SubnetKey::ipv6_only("fd00:5:0:64::/64".parse().unwrap()));
        let full = "/coreos.com/network/subnets/0.0.0.0-0&2001:db8:42::-64";
        let k = SubnetKey::from_etcd_key(DEFAULT_ETCD_PREFIX, full).unwrap();
        assert_eq!(k.ipv6, Some("2001:db8:42::/64".parse().unwrap()));
        assert_eq!(k.etcd_key(DEFAULT_ETCD_PREFIX), full);
        let k: SubnetKey = "0.0.0.0-0&fd00::8000:0:0:0-65".parse().unwrap();
        assert_eq!(k.to_string(), "0.0.0.0-0&fd00::8000:0:0:0-65");
        // A lease with an IPv6 subnet and no IPv4 one is the same key from the parts.
        let lease = Lease::new(k, LeaseAttrs::default(), None);
        assert_eq!(lease.subnet, None);
        assert_eq!(lease.vtep_addr(), None);
        assert_eq!(
            lease.vtep_addr_v6(),
            Some("fd00::8000:0:0:0".parse().unwrap())
        );
        assert_eq!(lease.key(), k);
        assert_eq!(SubnetKey::from_parts(None, None), None);
        // 0.0.0.0/0 alone names no subnet; other spellings of the empty half are not flannel's.
        for bad in [
            "0.0.0.0-0",
            "0.0.0.0-00&fd00::-64",
            "0.0.0.0-0&",
            "0.0.0.0-0&fd00::1-64",
            "0.0.0.0-0&0.0.0.0-0",
        ] {
            match bad.parse::<SubnetKey>() {
                Ok(k) => panic!("{bad:?} parsed as {k:?}"),
                Err(e) => assert!(e.to_string().contains("is not a flannel subnet key"), "{e}"),
            }
        }
    }

    /// The value flanneld writes for an IPv6-only vxlan node: `newSubnetAttrs` with no IPv4
    /// device leaves `PublicIP` the zero `ip.IP4` (marshalled "0.0.0.0") and `BackendData`
    /// empty (omitted).
    #[test]
    fn ipv6_only_value_as_flanneld_writes_it() {
        let flanneld = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
        let attrs =
            LeaseAttrs::vxlan_v6_only("2001:db8::2".parse().unwrap(), 1, mac("c6:d2:32:6f:8f:45"));
        assert_eq!(attrs.to_json(), flanneld);
        let read = LeaseAttrs::from_json(flanneld).unwrap();
        assert_eq!(read, attrs);
        assert_eq!(read.node_addr().to_string(), "2001:db8::2");
        assert_eq!(
            read.vxlan_v6_data().unwrap().vtep_mac,
            mac("c6:d2:32:6f:8f:45")
        );
        let e = read.vxlan_data().unwrap_err().to_string();
        assert!(
            e.contains("2001:db8::2") && e.contains("BackendData"),
            "{e}"
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        for bad in [
            "",
            "10.5.52.0",
            "10.5.52.0-",
            "10.5.52.0-33",
            "10.5.52.0-+24",
            "10.5.52.0-024",
            "010.5.52.0-24",
            "10.5.52.1-24",
            "10.5.52-24",
            "fc00::-64",
            "10.5.52.0-24&",
            "10.5.52.0-24&fc00::",
            "10.5.52.0-24&fc00::-129",
            "10.5.52.0-24&FC00::-64",
            "10.5.52.0-24&fc00:0::-64",
            "10.5.52.0-24&fc00::1-64",
            "10.5.52.0-24&10.0.0.0-8",
            "10.5.52.0-24&fc00::-64&fd00::-64",
            " 10.5.52.0-24",
            "config",
        ] {
            match bad.parse::<SubnetKey>() {
                Ok(k) => panic!("{bad:?} parsed as {k:?}"),
                Err(e) => assert!(e.to_string().contains("is not a flannel subnet key"), "{e}"),
            }
        }
        let e = "10.5.52.0-24&fc00:0::-64".parse::<SubnetKey>().unwrap_err();
        assert!(e.to_string().contains("\"10.5.52.0-24&fc00::-64\""), "{e}");
    }

    #[test]
    fn etcd_keys() {
        let k: SubnetKey = "10.5.52.0-24".parse().unwrap();
        assert_eq!(
            k.etcd_key(DEFAULT_ETCD_PREFIX),
            "/coreos.com/network/subnets/10.5.52.0-24"
        );
        assert_eq!(
            k.etcd_key("/coreos.com/network/"),
            "/coreos.com/network/subnets/10.5.52.0-24"
        );
        assert_eq!(k.etcd_key("//a//b/./c/.."), "/a/b/subnets/10.5.52.0-24");
        assert_eq!(k.etcd_key("rel"), "rel/subnets/10.5.52.0-24");
        assert_eq!(
            config_key(DEFAULT_ETCD_PREFIX),
            "/coreos.com/network/config"
        );
        assert_eq!(
            subnets_dir(DEFAULT_ETCD_PREFIX),
            "/coreos.com/network/subnets"
        );

        let full = "/coreos.com/network/subnets/10.5.52.0-24&fc00::-64";
        let k = SubnetKey::from_etcd_key(DEFAULT_ETCD_PREFIX, full).unwrap();
        assert_eq!(k.etcd_key(DEFAULT_ETCD_PREFIX), full);
        assert!(matches!(
            SubnetKey::from_etcd_key("/other", full),
            Err(LeaseError::NotUnderPrefix { .. })
        ));
        assert!(matches!(
            SubnetKey::from_etcd_key(
                DEFAULT_ETCD_PREFIX,
                "/coreos.com/network/subnets2/10.5.52.0-24"
            ),
            Err(LeaseError::NotUnderPrefix { .. })
        ));
        assert!(matches!(
            SubnetKey::from_etcd_key(
                DEFAULT_ETCD_PREFIX,
                "/coreos.com/network/subnets/x/10.5.52.0-24"
            ),
            Err(LeaseError::InvalidKey { .. })
        ));
    }

    /// The value flanneld writes, as shown by `etcdctl get` in flannel's documentation
    /// (Documentation/running.md).
    const FLANNELD_V4: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn encodes_exactly_like_flanneld() {
        let attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, 3), 1, mac("c6:d2:32:6f:8f:44"));
        assert_eq!(attrs.to_json(), FLANNELD_V4);

        // Dual stack: PublicIPv6 set and BackendV6Data appended, in LeaseAttrs field order.
        let attrs = attrs.with_ipv6("fd00::3".parse().unwrap(), mac("c6:d2:32:6f:8f:45"));
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#
        );

        // A VNI over 16 bits is written truncated, as flanneld's uint16 field does.
        let attrs = LeaseAttrs::vxlan(Ipv4Addr::new(10, 0, 0, 1), 70000, mac("02:00:00:00:00:01"));
        assert_eq!(attrs.vxlan_data().unwrap().vni, 70000 - 65536);

        // Go's HTML escaping.
        let attrs = LeaseAttrs {
            backend_type: "<a&b>".into(),
            ..LeaseAttrs::default()
        };
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null,"BackendType":"\u003ca\u0026b\u003e"}"#
        );
    }

    #[test]
    fn decodes_what_flanneld_writes() {
        // Values seen in etcd on flanneld clusters: vxlan, a non-default VNI, and an old or
        // backend-less lease with only the addresses.
        for text in [
            FLANNELD_V4,
            r#"{"PublicIP":"192.168.65.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":88,"VtepMAC":"ba:a9:8c:00:1a:69"}}"#,
            r#"{"PublicIP":"10.168.0.95","PublicIPv6":null}"#,
            r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"host-gw"}"#,
        ] {
            let attrs = LeaseAttrs::from_json(text).unwrap();
            assert_eq!(attrs.to_json(), text, "re-encoding changed the bytes");
            let via_serde: LeaseAttrs = serde_json::from_str(text).unwrap();
            assert_eq!(via_serde, attrs);
        }
        let attrs = LeaseAttrs::from_json(FLANNELD_V4).unwrap();
        assert!(attrs.is_vxlan());
        assert_eq!(
            attrs.vxlan_data().unwrap(),
            VxlanBackendData {
                vni: 1,
                vtep_mac: mac("c6:d2:32:6f:8f:44")
            }
        );
        assert!(matches!(
            attrs.vxlan_v6_data(),
            Err(LeaseError::MissingBackendData {
                field: "BackendV6Data",
                ..
            })
        ));
    }

    #[test]
    fn decodes_like_go() {
        // Case-insensitive names, unknown fields ignored, last duplicate wins, dash MACs.
        let attrs = LeaseAttrs::from_json(
            r#"{"publicip":"1.1.1.1","PUBLICIP":"10.0.0.7","publicIPv6":"fd00::7","backendtype":"vxlan",
                "backenddata":{"vni":3,"vtepmac":"02-00-00-00-00-07","Extra":true},"Other":[1]}"#,
        )
        .unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(attrs.public_ipv6, Some("fd00::7".parse().unwrap()));
        assert_eq!(
            attrs.vxlan_data().unwrap(),
            VxlanBackendData {
                vni: 3,
                vtep_mac: mac("02:00:00:00:00:07")
            }
        );
        // Empty object: PublicIP 0.0.0.0, nothing else.
        assert_eq!(LeaseAttrs::from_json("{}").unwrap(), LeaseAttrs::default());
    }

    #[test]
    fn other_backends_and_broken_vxlan_data_are_kept_raw() {
        let attrs = LeaseAttrs::from_json(
            r#"{"PublicIP":"10.0.0.9","PublicIPv6":null,"BackendType":"ipip","BackendData":{"Z":1,"A":2}}"#,
        )
        .unwrap();
        assert_eq!(
            attrs.backend_data,
            Some(BackendData::Raw(serde_json::json!({"Z": 1, "A": 2})))
        );
        let e = attrs.vxlan_data().unwrap_err();
        assert!(matches!(e, LeaseError::NotVxlan { .. }));
        assert!(e.to_string().contains("\"ipip\""), "{e}");

        for (data, reason) in [
            (r#"{"VNI":1}"#, "VtepMAC is missing"),
            (r#"{"VNI":1,"VtepMAC":"zz"}"#, "invalid MAC"),
            (r#"{"VNI":-1,"VtepMAC":"02:00:00:00:00:01"}"#, "VNI must be"),
            (r#"{"VNI":1,"VtepMAC":null}"#, "VtepMAC must be"),
            (r#""02:00:00:00:00:01""#, "not an object"),
        ] {
            let text =
                format!(r#"{{"PublicIP":"10.0.0.9","BackendType":"vxlan","BackendData":{data}}}"#);
            let attrs = LeaseAttrs::from_json(&text).unwrap();
            assert!(
                matches!(attrs.backend_data, Some(BackendData::Raw(_))),
                "{text}"
            );
            let e = attrs.vxlan_data().unwrap_err();
            assert!(
                matches!(e, LeaseError::BadVxlanData { .. }),
                "{text}: {e:?}"
            );
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }

    /// The documented limit of `BackendData::Raw` (the lease fuzz targets allow for it).
    #[test]
    fn raw_data_re_encodes_without_duplicate_keys() {
        let text = r#"{"PublicIP":"10.0.0.9","BackendType":"vxlan","BackendData":{"VNI":-1,"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#;
        let attrs = LeaseAttrs::from_json(text).unwrap();
        assert!(matches!(
            attrs.vxlan_data(),
            Err(LeaseError::BadVxlanData { .. })
        ));
        let again = LeaseAttrs::from_json(&attrs.to_json()).unwrap();
        assert_eq!(
            again.vxlan_data().unwrap(),
            VxlanBackendData {
                vni: 1,
                vtep_mac: mac("02:00:00:00:00:01")
            }
        );
        assert_eq!(again.to_json(), attrs.to_json());
    }

    /// Found by the `lease_file` and `lease_json` fuzz targets (minimized): numbers in data kept
    /// raw changed when re-encoded, because serde_json's default float parsing is not correctly
    /// rounded (Go's `strconv.ParseFloat` is); `float_roundtrip` makes it so.
    #[test]
    fn raw_numbers_survive_re_encoding() {
        let long = format!("1{}", "3".repeat(128)); // beyond u64: a float, as in Go
        for (text, number) in [
            (r#"{"BackendData":{"":66600e60}}"#.to_string(), 6.66e64),
            (
                format!(r#"{{"BackendType":"vxlan","BackendData":{{"VNI":{long}}}}}"#),
                1.3333333333333332e128,
            ),
        ] {
            let attrs = LeaseAttrs::from_json(&text).unwrap();
            let Some(BackendData::Raw(data)) = &attrs.backend_data else {
                panic!("{text}: {attrs:?}");
            };
            let value = data.as_object().unwrap().values().next().unwrap();
            assert_eq!(value.as_f64(), Some(number), "{text}");
            let again = LeaseAttrs::from_json(&attrs.to_json()).unwrap();
            assert_eq!(again, attrs, "{text}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("", "not valid JSON"),
            ("[]", "JSON object"),
            (r#"{"PublicIP":"garbage"}"#, "PublicIP"),
            (r#"{"PublicIP":null}"#, "PublicIP must be a string"),
            (r#"{"PublicIP":"fd00::1"}"#, "IPv6"),
            (r#"{"PublicIP":"1.2.3.4","PublicIPv6":"x"}"#, "PublicIPv6"),
            (r#"{"PublicIP":"1.2.3.4","BackendType":5}"#, "BackendType"),
        ] {
            match LeaseAttrs::from_json(text) {
                Ok(a) => panic!("{text:?} decoded as {a:?}"),
                Err(e) => assert!(e.to_string().contains(needle), "{text}: {e}"),
            }
        }
        assert!(serde_json::from_str::<LeaseAttrs>("[1]").is_err());
    }

    #[test]
    fn lease_helpers() {
        let key: SubnetKey = "10.5.52.0-24&fc00:0:0:34::-64".parse().unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let lease = Lease::new(
            key,
            LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, 3), 1, mac("c6:d2:32:6f:8f:44")),
            Some(now + time::Duration::hours(24)),
        );
        assert_eq!(lease.key(), key);
        assert_eq!(lease.vtep_addr(), Some(Ipv4Addr::new(10, 5, 52, 0)));
        assert_eq!(lease.vtep_addr_v6(), Some("fc00:0:0:34::".parse().unwrap()));
        assert_eq!(
            first_usable_v4(lease.subnet.unwrap()),
            Ipv4Addr::new(10, 5, 52, 1)
        );
        assert_eq!(
            first_usable_v6("fc00:0:0:34::/64".parse().unwrap()),
            "fc00:0:0:34::1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(!lease.is_reservation());
        assert!(!lease.is_expired(now));
        assert!(lease.is_expired(now + time::Duration::hours(24)));
        let reservation = Lease {
            expiration: None,
            ..lease.clone()
        };
        assert!(reservation.is_reservation());
        assert!(!reservation.is_expired(now + time::Duration::days(10_000)));
        assert_eq!(LeaseEvent::Removed(lease.clone()).lease(), &lease);
    }
}
