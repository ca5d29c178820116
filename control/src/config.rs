//! flannel's network config: the JSON in etcd at `<prefix>/config` (or the file named by
//! `--net-config-path`), parsed and validated as flanneld does it.
//!
//! The rules follow flannel's `pkg/subnet/config.go` (`ParseConfig`, `CheckNetworkConfig`),
//! `pkg/backend/manager.go` (backend type lookup) and `pkg/backend/vxlan/vxlan.go` (the vxlan
//! options), with Go's `encoding/json` behaviour for field names (matched case-insensitively; of
//! several keys naming one field, the last wins; `null` leaves a plain field unchanged).
//!
//! Where vxdp is stricter than flanneld, the item says so:
//! - only the `vxlan` backend type is accepted (flanneld also has udp, host-gw, ...);
//! - `SubnetMin` must not be above `SubnetMax` (flanneld starts and then fails with
//!   "out of subnets");
//! - IPv4 must be enabled: flannel's etcd registry keys every lease by its IPv4 subnet, so an
//!   IPv6-only network cannot be stored there;
//! - `VNI`, `Port` and `MTU` are range-checked (flanneld hands them to the kernel unchecked).
//!
//! Nothing here does I/O.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::go_json::{self, GoObject, GoValue, Mismatch};

/// The UDP port flanneld's kernel vxlan device uses when `Backend.Port` is 0: the Linux default
/// (IANA later assigned 4789; the kernel kept 8472 for compatibility).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// The VNI flanneld uses when `Backend.VNI` is absent.
pub const DEFAULT_VNI: u32 = 1;
/// The largest VNI: the field is 24 bits wide (RFC 7348 section 5).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Bytes VXLAN adds in front of the inner frame over an IPv4 underlay:
/// outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_IPV4: u32 = 50;
/// The same over an IPv6 underlay (the outer IPv6 header is 40 bytes, not 20).
pub const VXLAN_OVERHEAD_IPV6: u32 = 70;

/// Top-level config fields vxdp reads. `Networks`/`IPv6Networks` exist in flannel's `Config`
/// struct but are overwritten after decoding (they come from the Kubernetes API), so they count as
/// ignored here.
const TOP_LEVEL_FIELDS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "EnableNFTables",
    "Backend",
];

const BACKEND_FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "GBP",
    "Learning",
    "DirectRouting",
    "MTU",
    "MacPrefix",
];

/// A validated flannel network config with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`: the IPv4 overlay network (host bits cleared, as Go's `net.ParseCIDR` does).
    pub network: Ipv4Net,
    /// `SubnetLen`: prefix length of each node's subnet.
    pub subnet_len: u8,
    /// `SubnetMin`: the lowest subnet base that may be leased.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the highest subnet base that may be leased.
    pub subnet_max: Ipv4Addr,
    /// The IPv6 half, present exactly when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6NetworkConfig>,
    /// `EnableNFTables`: program the `--ip-masq` and forward rules with nftables rather than
    /// iptables (see [`crate::masq`]).
    pub enable_nftables: bool,
    /// The `Backend` object.
    pub backend: VxlanBackendConfig,
    /// Top-level keys that flannel ignores and so does vxdp (in document order), for a warning.
    pub ignored_fields: Vec<String>,
}

/// The IPv6 half of the config (`EnableIPv6: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6NetworkConfig {
    /// `IPv6Network` (host bits cleared).
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`.
    pub subnet_max: Ipv6Addr,
}

/// The `Backend` object of a `vxlan` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanBackendConfig {
    /// `VNI` (default 1).
    pub vni: u32,
    /// `Port` as written: 0 means the kernel default, see [`NetworkConfig::vxlan_port`].
    pub port: u16,
    /// `GBP`: VXLAN Group Based Policy extension.
    pub gbp: bool,
    /// `Learning`: source MAC learning on the vxlan device.
    pub learning: bool,
    /// `DirectRouting`: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
    /// `MTU` of the overlay device; 0 means derived from the underlay, see
    /// [`NetworkConfig::mtu_for`].
    pub mtu: u32,
    /// `MacPrefix`: a Windows-only option of flannel, recorded and otherwise unused.
    pub mac_prefix: Option<String>,
    /// Keys of the `Backend` object that vxdp does not read (flanneld ignores them too).
    pub ignored_fields: Vec<String>,
}

/// Why a network config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON at all.
    #[error(
        "network config is not valid JSON: {source}; fix the JSON in the etcd key <prefix>/config \
         (or the --net-config-path file)"
    )]
    Json {
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// The JSON is not an object.
    #[error(
        "network config must be a JSON object like {{\"Network\":\"10.5.0.0/16\",\"Backend\":\
         {{\"Type\":\"vxlan\"}}}}, found {found}"
    )]
    NotAnObject {
        /// What was found instead.
        found: String,
    },
    /// A field has the wrong JSON type.
    #[error("config field {field} must be {expected}, found {found}; correct its value")]
    FieldType {
        /// The field, e.g. `SubnetLen` or `Backend.VNI`.
        field: String,
        /// The JSON type (and range) flannel decodes it as.
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// An address or CIDR field does not parse or has the wrong address family.
    #[error(
        "config field {field} is {value:?}, which is not {expected}: {reason}; correct its value"
    )]
    InvalidAddress {
        /// The field.
        field: &'static str,
        /// The value found.
        value: String,
        /// What it should be.
        expected: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Both address families are disabled.
    #[error(
        "EnableIPv4 and EnableIPv6 are both false, so there is nothing to lease; set EnableIPv4 \
         to true (and EnableIPv6 for dual stack)"
    )]
    NoAddressFamily,
    /// `EnableIPv4: false` with IPv6 on.
    #[error(
        "EnableIPv4 is false (an IPv6-only network), which vxdp does not support: flannel's etcd \
         lease keys are named after the IPv4 subnet (10.5.52.0-24&fc00::-64) and cannot be written \
         without one; set EnableIPv4 to true with a Network for dual stack"
    )]
    Ipv6OnlyUnsupported,
    /// `Network` absent, or `0.0.0.0/0` (which flannel treats as absent).
    #[error(
        "please define a correct Network parameter in the flannel config: Network is missing or \
         0.0.0.0/0; set it to the IPv4 overlay CIDR, e.g. \"Network\": \"10.5.0.0/16\""
    )]
    NetworkMissing,
    /// `IPv6Network` absent or `::/0` while `EnableIPv6` is true.
    #[error(
        "please define a correct IPv6Network parameter in the flannel config: EnableIPv6 is true \
         but IPv6Network is missing or ::/0; set it, e.g. \"IPv6Network\": \"fc00::/48\", or set \
         EnableIPv6 to false"
    )]
    Ipv6NetworkMissing,
    /// `Network` too small to hold four default-sized subnets.
    #[error(
        "network is too small. Minimum useful network prefix is /28: Network {network} leaves no \
         room for four subnets of at least 4 addresses; use a /28 or larger Network"
    )]
    NetworkTooSmall {
        /// The network.
        network: Ipv4Net,
    },
    /// `IPv6Network` too small.
    #[error(
        "IPv6Network is too small. Minimum useful network prefix is /124: IPv6Network {network} \
         leaves no room for four subnets; use a /124 or larger IPv6Network"
    )]
    Ipv6NetworkTooSmall {
        /// The network.
        network: Ipv6Net,
    },
    /// `SubnetLen` (or `IPv6SubnetLen`) longer than allowed.
    #[error(
        "{field} must be less than /{limit}: {field} is {subnet_len}, leaving fewer than 4 \
         addresses per node; use {field} {max} or shorter"
    )]
    SubnetLenTooLong {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The value given.
        subnet_len: u64,
        /// 31 for IPv4, 127 for IPv6.
        limit: u8,
        /// The longest allowed.
        max: u8,
    },
    /// The subnet length does not fit four subnets into the network.
    #[error(
        "network must be able to accommodate at least four subnets: {field} {subnet_len} is \
         shorter than {network}'s prefix + 2; use a {field} of at least {min} (or leave it out for \
         the default)"
    )]
    TooFewSubnets {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The value given.
        subnet_len: u64,
        /// The network it must fit into.
        network: String,
        /// The shortest allowed.
        min: u8,
    },
    /// `SubnetMin`/`SubnetMax` (or the IPv6 ones) outside the network.
    #[error(
        "{field} is not in the range of the {network_field}: {value} is outside {network}; \
         choose an address inside it or leave {field} out for the default"
    )]
    OutsideNetwork {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// `Network` or `IPv6Network`.
        network_field: &'static str,
        /// The network.
        network: String,
    },
    /// `SubnetMin`/`SubnetMax` (or the IPv6 ones) not on a subnet boundary.
    #[error(
        "{field} is not on a SubnetLen boundary: {value} is not the first address of a /{subnet_len} \
         subnet; use {aligned}"
    )]
    NotAligned {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The subnet length it must be aligned to.
        subnet_len: u8,
        /// The boundary below the value.
        aligned: String,
    },
    /// The lease range is empty.
    #[error(
        "{min_field} {min} is above {max_field} {max}, so no subnet can ever be leased; swap them \
         or leave them out for the defaults"
    )]
    MinAboveMax {
        /// `SubnetMin` or `IPv6SubnetMin`.
        min_field: &'static str,
        /// Its value.
        min: String,
        /// `SubnetMax` or `IPv6SubnetMax`.
        max_field: &'static str,
        /// Its value.
        max: String,
    },
    /// No `Backend` object: flannel would run its `udp` backend.
    #[error(
        "the config has no Backend, and flannel then defaults to the \"udp\" backend, which vxdp \
         does not implement; add \"Backend\": {{\"Type\": \"vxlan\"}} (vxdp supports only vxlan)"
    )]
    BackendMissing,
    /// A `Backend` object without `Type`.
    #[error(
        "Backend.Type is missing or empty (flannel fails with \"unknown backend type\"); set \
         \"Type\": \"vxlan\" (vxdp supports only vxlan)"
    )]
    BackendTypeMissing,
    /// Any backend type but vxlan.
    #[error(
        "Backend.Type is {backend_type:?}, which vxdp does not support: vxdp replaces flanneld's \
         \"vxlan\" backend only; set \"Type\": \"vxlan\" or run flanneld for this network"
    )]
    UnsupportedBackend {
        /// The type given.
        backend_type: String,
    },
    /// `Backend.VNI` outside 0..=2^24-1.
    #[error(
        "Backend.VNI is {vni}, but a VXLAN network identifier is 24 bits (0..=16777215); \
         choose a VNI in that range (flannel's default is 1)"
    )]
    VniOutOfRange {
        /// The value given.
        vni: String,
    },
    /// `Backend.Port` outside 0..=65535.
    #[error(
        "Backend.Port is {port}, which is not a UDP port (0..=65535); use 0 for the kernel \
         default 8472, or the port every node uses"
    )]
    PortOutOfRange {
        /// The value given.
        port: String,
    },
    /// `Backend.MTU` unusable.
    #[error(
        "Backend.MTU is {mtu}, outside {min}..=65535 ({why}); use 0 to derive it from the \
         underlay interface, or a value in range"
    )]
    MtuOutOfRange {
        /// The value given.
        mtu: String,
        /// The smallest allowed.
        min: u32,
        /// Where the minimum comes from.
        why: &'static str,
    },
}

impl ConfigError {
    fn field_type(field: impl Into<String>, m: Mismatch) -> Self {
        ConfigError::FieldType {
            field: field.into(),
            expected: m.expected,
            found: m.found,
        }
    }
}

/// Parses and validates a flannel network config, filling in flannel's defaults.
pub fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
    let obj = match GoObject::parse(json) {
        Ok(obj) => obj,
        Err(go_json::ParseError::Json(source)) => return Err(ConfigError::Json { source }),
        Err(go_json::ParseError::NotAnObject(found)) => {
            return Err(ConfigError::NotAnObject { found })
        }
    };
    let raw = RawConfig::decode(&obj)?;
    let backend_obj = backend_object(raw.backend)?;

    if !raw.enable_ipv4 && !raw.enable_ipv6 {
        return Err(ConfigError::NoAddressFamily);
    }
    if !raw.enable_ipv4 {
        return Err(ConfigError::Ipv6OnlyUnsupported);
    }
    let (network, subnet_len, subnet_min, subnet_max) = check_ipv4(&raw)?;
    let ipv6 = if raw.enable_ipv6 {
        Some(check_ipv6(&raw)?)
    } else {
        None
    };
    let backend = decode_vxlan_backend(&backend_obj, ipv6.is_some())?;

    Ok(NetworkConfig {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
        ipv6,
        enable_nftables: raw.enable_nftables,
        backend,
        ignored_fields: obj.unknown_keys(TOP_LEVEL_FIELDS),
    })
}

/// The top-level fields as flannel's `json.Unmarshal` into `subnet.Config` leaves them.
struct RawConfig<'a> {
    enable_ipv4: bool,
    enable_ipv6: bool,
    enable_nftables: bool,
    network: Option<Ipv4Net>,
    subnet_len: u64,
    subnet_min: Option<Ipv4Addr>,
    subnet_max: Option<Ipv4Addr>,
    ipv6_network: Option<Ipv6Net>,
    ipv6_subnet_len: u64,
    ipv6_subnet_min: Option<Ipv6Addr>,
    ipv6_subnet_max: Option<Ipv6Addr>,
    backend: Option<&'a GoValue>,
}

impl<'a> RawConfig<'a> {
    fn decode(obj: &'a GoObject) -> Result<Self, ConfigError> {
        let boolean = |field: &'static str, default: bool| {
            go_json::get_bool(obj, field)
                .map(|v| v.unwrap_or(default))
                .map_err(|m| ConfigError::field_type(field, m))
        };
        let uint = |field: &'static str| {
            go_json::get_u64(obj, field)
                .map(|v| v.unwrap_or(0))
                .map_err(|m| ConfigError::field_type(field, m))
        };
        // ip.IP4Net, ip.IP4 and ip.IP6Net are values with an UnmarshalJSON: null is handed to it
        // and fails. *ip.IP6 (IPv6SubnetMin/Max) is a pointer: null resets it.
        let text = |field: &'static str| {
            go_json::get_text(obj, field).map_err(|m| ConfigError::field_type(field, m))
        };
        let nullable_text = |field: &'static str| {
            go_json::get_nullable_text(obj, field).map_err(|m| ConfigError::field_type(field, m))
        };

        let network = text("Network")?
            .map(|s| parse_cidr_v4("Network", &s))
            .transpose()?;
        let subnet_min = text("SubnetMin")?
            .map(|s| parse_addr_v4("SubnetMin", &s))
            .transpose()?;
        let subnet_max = text("SubnetMax")?
            .map(|s| parse_addr_v4("SubnetMax", &s))
            .transpose()?;
        let ipv6_network = text("IPv6Network")?
            .map(|s| parse_cidr_v6("IPv6Network", &s))
            .transpose()?;
        let ipv6_subnet_min = nullable_text("IPv6SubnetMin")?
            .flatten()
            .map(|s| parse_addr_v6("IPv6SubnetMin", &s))
            .transpose()?;
        let ipv6_subnet_max = nullable_text("IPv6SubnetMax")?
            .flatten()
            .map(|s| parse_addr_v6("IPv6SubnetMax", &s))
            .transpose()?;

        Ok(RawConfig {
            enable_ipv4: boolean("EnableIPv4", true)?,
            enable_ipv6: boolean("EnableIPv6", false)?,
            enable_nftables: boolean("EnableNFTables", false)?,
            network,
            subnet_len: uint("SubnetLen")?,
            subnet_min,
            subnet_max,
            ipv6_network,
            ipv6_subnet_len: uint("IPv6SubnetLen")?,
            ipv6_subnet_min,
            ipv6_subnet_max,
            backend: obj.last("Backend"),
        })
    }
}

/// flannel's `parseBackendType` and `GetBackend`: resolves the backend type and returns the
/// `Backend` object for the vxlan decoder.
fn backend_object(backend: Option<&GoValue>) -> Result<GoObject, ConfigError> {
    let obj = match backend {
        None => return Err(ConfigError::BackendMissing),
        // A RawMessage holding `null` decodes into an empty struct: Type "".
        Some(GoValue::Null) => return Err(ConfigError::BackendTypeMissing),
        Some(GoValue::Object(obj)) => obj.clone(),
        Some(other) => {
            return Err(ConfigError::FieldType {
                field: "Backend".into(),
                expected: "a JSON object like {\"Type\": \"vxlan\"}",
                found: other.describe(),
            })
        }
    };
    let ty = go_json::get_string(&obj, "Type")
        .map_err(|m| ConfigError::field_type("Backend.Type", m))?
        .unwrap_or_default();
    // flannel's backend manager lower-cases the type before looking it up.
    match ty.to_lowercase().as_str() {
        "" => Err(ConfigError::BackendTypeMissing),
        "vxlan" => Ok(obj),
        _ => Err(ConfigError::UnsupportedBackend { backend_type: ty }),
    }
}

/// What differs between the IPv4 and IPv6 halves of `CheckNetworkConfig`: the width of the
/// address space and flannel's constants and field names. The rules themselves are one.
struct Family {
    bits: u32,
    len_field: &'static str,
    min_field: &'static str,
    max_field: &'static str,
    network_field: &'static str,
    /// SubnetLen when unset: this...
    default_len: u8,
    /// ...for networks up to this prefix, else prefix + 2.
    default_len_up_to: u8,
    /// The longest SubnetLen.
    max_len: u8,
}

const IPV4: Family = Family {
    bits: 32,
    len_field: "SubnetLen",
    min_field: "SubnetMin",
    max_field: "SubnetMax",
    network_field: "Network",
    default_len: 24,
    default_len_up_to: 22,
    max_len: 30,
};

const IPV6: Family = Family {
    bits: 128,
    len_field: "IPv6SubnetLen",
    min_field: "IPv6SubnetMin",
    max_field: "IPv6SubnetMax",
    network_field: "IPv6Network",
    default_len: 64,
    default_len_up_to: 62,
    max_len: 126,
};

impl Family {
    /// The subnet length: the configured one checked, or flannel's default. `None` when unset
    /// and the network is too small to split (the caller names the network in its error).
    fn subnet_len(
        &self,
        configured: u64,
        prefix: u8,
        network: &str,
    ) -> Result<Option<u8>, ConfigError> {
        Ok(Some(match configured {
            0 if prefix > self.max_len - 2 => return Ok(None),
            0 if prefix <= self.default_len_up_to => self.default_len,
            0 => prefix + 2,
            n if n > u64::from(self.max_len) => {
                return Err(ConfigError::SubnetLenTooLong {
                    field: self.len_field,
                    subnet_len: n,
                    limit: self.max_len + 1,
                    max: self.max_len,
                })
            }
            n if n < u64::from(prefix) + 2 => {
                return Err(ConfigError::TooFewSubnets {
                    field: self.len_field,
                    subnet_len: n,
                    network: network.to_string(),
                    min: prefix + 2,
                })
            }
            // n <= max_len here.
            n => n as u8,
        }))
    }

    /// SubnetMin and SubnetMax: defaults (the second subnet and the last one), inside the
    /// network, aligned, in order. Addresses are widened to u128; arithmetic wraps at the
    /// family's width, as Go's does (255.255.0.0/16's "next" network is 0.0.0.0).
    #[allow(clippy::too_many_arguments)]
    fn subnet_range(
        &self,
        base: u128,
        prefix: u8,
        subnet_len: u8,
        configured_min: Option<u128>,
        configured_max: Option<u128>,
        contains: impl Fn(u128) -> bool,
        show: impl Fn(u128) -> String,
        network: &str,
    ) -> Result<(u128, u128), ConfigError> {
        let width = if self.bits == 128 {
            u128::MAX
        } else {
            (1u128 << self.bits) - 1
        };
        let size = 1u128 << (self.bits - u32::from(subnet_len));
        // prefix >= 1 for IPv6 (::/0 is refused), so the shift stays below 128.
        let network_size = 1u128 << (self.bits - u32::from(prefix));
        let pick = |configured: Option<u128>, default: u128, field| match configured {
            // Unset, or the unspecified address: flannel's default.
            None | Some(0) => Ok(default & width),
            Some(a) if !contains(a) => Err(outside(field, show(a), self.network_field, network)),
            Some(a) => Ok(a),
        };
        let min = pick(configured_min, base.wrapping_add(size), self.min_field)?;
        let max = pick(
            configured_max,
            base.wrapping_add(network_size).wrapping_sub(size),
            self.max_field,
        )?;
        let mask = (u128::MAX << (self.bits - u32::from(subnet_len))) & width;
        for (field, a) in [(self.min_field, min), (self.max_field, max)] {
            if a & mask != a {
                return Err(ConfigError::NotAligned {
                    field,
                    value: show(a),
                    subnet_len,
                    aligned: show(a & mask),
                });
            }
        }
        if min > max {
            return Err(ConfigError::MinAboveMax {
                min_field: self.min_field,
                min: show(min),
                max_field: self.max_field,
                max: show(max),
            });
        }
        Ok((min, max))
    }
}

/// `CheckNetworkConfig`, IPv4 half.
fn check_ipv4(raw: &RawConfig<'_>) -> Result<(Ipv4Net, u8, Ipv4Addr, Ipv4Addr), ConfigError> {
    let network = raw
        .network
        .filter(|n| !(n.addr().is_unspecified() && n.prefix_len() == 0))
        .ok_or(ConfigError::NetworkMissing)?;
    let prefix = network.prefix_len();
    let subnet_len = IPV4
        .subnet_len(raw.subnet_len, prefix, &network.to_string())?
        .ok_or(ConfigError::NetworkTooSmall { network })?;
    let v4 = |a: u128| Ipv4Addr::from(a as u32);
    let (min, max) = IPV4.subnet_range(
        u128::from(u32::from(network.addr())),
        prefix,
        subnet_len,
        raw.subnet_min.map(|a| u128::from(u32::from(a))),
        raw.subnet_max.map(|a| u128::from(u32::from(a))),
        |a| network.contains(&v4(a)),
        |a| v4(a).to_string(),
        &network.to_string(),
    )?;
    Ok((network, subnet_len, v4(min), v4(max)))
}

/// `CheckNetworkConfig`, IPv6 half.
fn check_ipv6(raw: &RawConfig<'_>) -> Result<Ipv6NetworkConfig, ConfigError> {
    let network = raw
        .ipv6_network
        .filter(|n| !(n.addr().is_unspecified() && n.prefix_len() == 0))
        .ok_or(ConfigError::Ipv6NetworkMissing)?;
    let prefix = network.prefix_len();
    let subnet_len = IPV6
        .subnet_len(raw.ipv6_subnet_len, prefix, &network.to_string())?
        .ok_or(ConfigError::Ipv6NetworkTooSmall { network })?;
    let (min, max) = IPV6.subnet_range(
        u128::from(network.addr()),
        prefix,
        subnet_len,
        raw.ipv6_subnet_min.map(u128::from),
        raw.ipv6_subnet_max.map(u128::from),
        |a| network.contains(&Ipv6Addr::from(a)),
        |a| Ipv6Addr::from(a).to_string(),
        &network.to_string(),
    )?;
    Ok(Ipv6NetworkConfig {
        network,
        subnet_len,
        subnet_min: Ipv6Addr::from(min),
        subnet_max: Ipv6Addr::from(max),
    })
}

fn outside(
    field: &'static str,
    value: impl fmt::Display,
    network_field: &'static str,
    network: impl fmt::Display,
) -> ConfigError {
    ConfigError::OutsideNetwork {
        field,
        value: value.to_string(),
        network_field,
        network: network.to_string(),
    }
}

/// The vxlan backend's own decoding of `Backend` (flannel: `RegisterNetwork` in vxlan.go).
fn decode_vxlan_backend(obj: &GoObject, ipv6: bool) -> Result<VxlanBackendConfig, ConfigError> {
    let int = |field: &'static str| {
        go_json::get_i64(obj, field)
            .map_err(|m| ConfigError::field_type(format!("Backend.{field}"), m))
    };
    let boolean = |field: &'static str| {
        go_json::get_bool(obj, field)
            .map(|v| v.unwrap_or(false))
            .map_err(|m| ConfigError::field_type(format!("Backend.{field}"), m))
    };

    let vni = match int("VNI")? {
        None => DEFAULT_VNI,
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|v| *v <= MAX_VNI)
            .ok_or(ConfigError::VniOutOfRange { vni: v.to_string() })?,
    };
    let port = match int("Port")? {
        None => 0,
        Some(v) => u16::try_from(v).map_err(|_| ConfigError::PortOutOfRange {
            port: v.to_string(),
        })?,
    };
    // RFC 791 makes 68 the smallest IPv4 MTU; RFC 8200 makes 1280 the smallest for IPv6.
    let (min_mtu, why) = if ipv6 {
        (1280, "IPv6 needs at least 1280, RFC 8200")
    } else {
        (68, "IPv4 needs at least 68, RFC 791")
    };
    let mtu = match int("MTU")? {
        None | Some(0) => 0,
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|v| (min_mtu..=65535).contains(v))
            .ok_or(ConfigError::MtuOutOfRange {
                mtu: v.to_string(),
                min: min_mtu,
                why,
            })?,
    };
    // MacPrefix is a Windows option; Linux flanneld never decodes it, so a value of any type is
    // accepted and only a string is recorded.
    let mac_prefix = match obj.last("MacPrefix") {
        Some(GoValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(VxlanBackendConfig {
        vni,
        port,
        gbp: boolean("GBP")?,
        learning: boolean("Learning")?,
        direct_routing: boolean("DirectRouting")?,
        mtu,
        mac_prefix,
        ignored_fields: obj.unknown_keys(BACKEND_FIELDS),
    })
}

fn parse_cidr_v4(field: &'static str, s: &str) -> Result<Ipv4Net, ConfigError> {
    const EXPECTED: &str = "an IPv4 CIDR like 10.5.0.0/16";
    let invalid = |reason: String| ConfigError::InvalidAddress {
        field,
        value: s.into(),
        expected: EXPECTED,
        reason,
    };
    match s.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(n)) => Ok(n.trunc()),
        Ok(ipnet::IpNet::V6(_)) => Err(invalid("it is an IPv6 CIDR (use IPv6Network)".into())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

fn parse_cidr_v6(field: &'static str, s: &str) -> Result<Ipv6Net, ConfigError> {
    const EXPECTED: &str = "an IPv6 CIDR like fc00::/48";
    let invalid = |reason: String| ConfigError::InvalidAddress {
        field,
        value: s.into(),
        expected: EXPECTED,
        reason,
    };
    match s.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V6(n)) => Ok(n.trunc()),
        Ok(ipnet::IpNet::V4(_)) => Err(invalid("it is an IPv4 CIDR (use Network)".into())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

fn parse_addr_v4(field: &'static str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse::<std::net::IpAddr>()
        .map_err(|e| e.to_string())
        .and_then(|a| match a {
            std::net::IpAddr::V4(a) => Ok(a),
            std::net::IpAddr::V6(_) => Err("it is an IPv6 address".into()),
        })
        .map_err(|reason| ConfigError::InvalidAddress {
            field,
            value: s.into(),
            expected: "an IPv4 address like 10.5.1.0",
            reason,
        })
}

fn parse_addr_v6(field: &'static str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    s.parse::<std::net::IpAddr>()
        .map_err(|e| e.to_string())
        .and_then(|a| match a {
            std::net::IpAddr::V6(a) => Ok(a),
            std::net::IpAddr::V4(_) => Err("it is an IPv4 address".into()),
        })
        .map_err(|reason| ConfigError::InvalidAddress {
            field,
            value: s.into(),
            expected: "an IPv6 address like fc00:0:0:1::",
            reason,
        })
}

impl NetworkConfig {
    /// The UDP port VXLAN runs on: `Backend.Port`, or 8472 (the Linux kernel's default, which
    /// flanneld relies on) when that is 0. Not 4789.
    pub fn vxlan_port(&self) -> u16 {
        match self.backend.port {
            0 => DEFAULT_VXLAN_PORT,
            p => p,
        }
    }

    /// Addresses per IPv4 subnet (`2^(32 - SubnetLen)`).
    pub fn subnet_size(&self) -> u32 {
        1 << (32 - self.subnet_len)
    }

    /// Addresses per IPv6 subnet, when IPv6 is on.
    pub fn ipv6_subnet_size(&self) -> Option<u128> {
        self.ipv6.map(|v6| 1 << (128 - v6.subnet_len))
    }

    /// The IPv4 subnets that may be leased, from `SubnetMin` to `SubnetMax` in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = u64::from(self.subnet_size());
        let (min, max) = (
            u64::from(u32::from(self.subnet_min)),
            u64::from(u32::from(self.subnet_max)),
        );
        let len = self.subnet_len;
        (0..)
            .map(move |i: u64| min + i * step)
            .take_while(move |a| *a <= max)
            .filter_map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).ok())
    }

    /// The IPv6 subnets that may be leased, in order (none when IPv6 is off). There can be very
    /// many: iterate lazily.
    pub fn ipv6_subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let (min, max, len) = match self.ipv6 {
            Some(v6) => (
                u128::from(v6.subnet_min),
                u128::from(v6.subnet_max),
                v6.subnet_len,
            ),
            // An empty range: min > max.
            None => (1, 0, 128),
        };
        let step = 1u128.checked_shl(128 - u32::from(len)).unwrap_or(0).max(1);
        std::iter::successors(Some(min), move |a| a.checked_add(step))
            .take_while(move |a| *a <= max)
            .filter_map(move |a| Ipv6Net::new(Ipv6Addr::from(a), len).ok())
    }

    /// Whether a lease's subnets are usable under this config: flannel's `isSubnetConfigCompat`
    /// and `isIPv6SubnetConfigCompat` (base within `SubnetMin..=SubnetMax`, prefix equal to
    /// `SubnetLen`; an IPv6 subnet present exactly when IPv6 is on), plus that the base really is
    /// a base (no host bits).
    pub fn is_compatible(&self, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> bool {
        let v4 = subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && (self.subnet_min..=self.subnet_max).contains(&subnet.addr());
        let v6 = match (self.ipv6, ipv6_subnet) {
            (None, None) => true,
            (Some(cfg), Some(sn)) => {
                sn.prefix_len() == cfg.subnet_len
                    && sn.addr() == sn.network()
                    && (cfg.subnet_min..=cfg.subnet_max).contains(&sn.addr())
            }
            _ => false,
        };
        v4 && v6
    }

    /// The overlay MTU: `Backend.MTU` when set, else the underlay interface's MTU minus the VXLAN
    /// overhead, 50 bytes over IPv4 and 70 over IPv6.
    ///
    /// flanneld subtracts 50 for an IPv6 underlay too (`encapOverhead` in vxlan_network.go), a
    /// known bug: its full-sized frames then need fragmenting. vxdp uses the right figure, so on
    /// an IPv6 underlay its `FLANNEL_MTU` is 20 lower than flanneld's.
    pub fn mtu_for(&self, underlay_mtu: u32, underlay_is_ipv6: bool) -> u32 {
        if self.backend.mtu != 0 {
            return self.backend.mtu;
        }
        let overhead = if underlay_is_ipv6 {
            VXLAN_OVERHEAD_IPV6
        } else {
            VXLAN_OVERHEAD_IPV4
        };
        underlay_mtu.saturating_sub(overhead)
    }

    /// The config as flannel JSON with every default written out; [`parse`] reads it back to an
    /// equal config (less `ignored_fields`). Used for the local store's config and in tests.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and booleans cannot fail.
        serde_json::to_string(&self.out()).unwrap_or_default()
    }

    fn out(&self) -> ConfigOut<'_> {
        ConfigOut {
            network: self.network,
            subnet_len: self.subnet_len,
            subnet_min: self.subnet_min,
            subnet_max: self.subnet_max,
            enable_ipv4: true,
            enable_ipv6: self.ipv6.is_some(),
            ipv6_network: self.ipv6.map(|v| v.network),
            ipv6_subnet_len: self.ipv6.map(|v| v.subnet_len),
            ipv6_subnet_min: self.ipv6.map(|v| v.subnet_min),
            ipv6_subnet_max: self.ipv6.map(|v| v.subnet_max),
            enable_nftables: self.enable_nftables,
            backend: BackendOut {
                ty: "vxlan",
                vni: self.backend.vni,
                port: self.backend.port,
                gbp: self.backend.gbp,
                learning: self.backend.learning,
                direct_routing: self.backend.direct_routing,
                mtu: self.backend.mtu,
                mac_prefix: self.backend.mac_prefix.as_deref(),
            },
        }
    }
}

impl Serialize for NetworkConfig {
    /// The same document as [`NetworkConfig::to_json`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.out().serialize(s)
    }
}

impl fmt::Display for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[derive(Serialize)]
struct ConfigOut<'a> {
    #[serde(rename = "Network")]
    network: Ipv4Net,
    #[serde(rename = "SubnetLen")]
    subnet_len: u8,
    #[serde(rename = "SubnetMin")]
    subnet_min: Ipv4Addr,
    #[serde(rename = "SubnetMax")]
    subnet_max: Ipv4Addr,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPv6Network", skip_serializing_if = "Option::is_none")]
    ipv6_network: Option<Ipv6Net>,
    #[serde(rename = "IPv6SubnetLen", skip_serializing_if = "Option::is_none")]
    ipv6_subnet_len: Option<u8>,
    #[serde(rename = "IPv6SubnetMin", skip_serializing_if = "Option::is_none")]
    ipv6_subnet_min: Option<Ipv6Addr>,
    #[serde(rename = "IPv6SubnetMax", skip_serializing_if = "Option::is_none")]
    ipv6_subnet_max: Option<Ipv6Addr>,
    #[serde(rename = "EnableNFTables")]
    enable_nftables: bool,
    #[serde(rename = "Backend")]
    backend: BackendOut<'a>,
}

#[derive(Serialize)]
struct BackendOut<'a> {
    #[serde(rename = "Type")]
    ty: &'static str,
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "GBP")]
    gbp: bool,
    #[serde(rename = "Learning")]
    learning: bool,
    #[serde(rename = "DirectRouting")]
    direct_routing: bool,
    #[serde(rename = "MTU")]
    mtu: u32,
    #[serde(rename = "MacPrefix", skip_serializing_if = "Option::is_none")]
    mac_prefix: Option<&'a str>,
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.network, "10.5.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.backend.port, 0);
        assert_eq!(c.vxlan_port(), 8472);
        assert_eq!(c.backend.mtu, 0);
        assert!(!c.backend.gbp && !c.backend.learning && !c.backend.direct_routing);
        assert_eq!(c.ipv6, None);
        assert_eq!(c.subnet_size(), 256);
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
            let c = ok(json);
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
            (cfg(&format!(r#""EnableIPv4":false,{V6},{V}"#)), |e| matches!(e, E::Ipv6OnlyUnsupported), "IPv6-only"),
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
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(c.is_compatible(n("10.5.52.0/24"), None));
        assert!(!c.is_compatible(n("10.5.0.0/24"), None), "below SubnetMin");
        assert!(!c.is_compatible(n("10.6.0.0/24"), None), "outside Network");
        assert!(!c.is_compatible(n("10.5.52.0/25"), None), "wrong SubnetLen");
        assert!(!c.is_compatible(n("10.5.52.1/24"), None), "host bits");
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
}
