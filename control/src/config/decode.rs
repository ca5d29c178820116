//! The top-level fields of the config as Go's `json.Unmarshal` into flannel's `subnet.Config`
//! leaves them (see [`crate::go_json`]), the address fields parsed as flannel's `ip` package
//! parses them. Defaults and range rules come after, in [`super::check`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::ConfigError;
use crate::go_json::{self, GoObject, GoValue};

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

/// The top-level fields as flannel's `json.Unmarshal` into `subnet.Config` leaves them.
pub(super) struct RawConfig<'a> {
    pub(super) enable_ipv4: bool,
    pub(super) enable_ipv6: bool,
    pub(super) enable_nftables: bool,
    pub(super) network: Option<Ipv4Net>,
    pub(super) subnet_len: u64,
    pub(super) subnet_min: Option<Ipv4Addr>,
    pub(super) subnet_max: Option<Ipv4Addr>,
    pub(super) ipv6_network: Option<Ipv6Net>,
    pub(super) ipv6_subnet_len: u64,
    pub(super) ipv6_subnet_min: Option<Ipv6Addr>,
    pub(super) ipv6_subnet_max: Option<Ipv6Addr>,
    pub(super) backend: Option<&'a GoValue>,
    /// Keys that name none of [`TOP_LEVEL_FIELDS`], in document order.
    pub(super) ignored_fields: Vec<String>,
}

impl<'a> RawConfig<'a> {
    pub(super) fn decode(obj: &'a GoObject) -> Result<Self, ConfigError> {
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
            ignored_fields: obj.unknown_keys(TOP_LEVEL_FIELDS),
        })
    }
}

/// Parses an address or CIDR field as `T` (flannel's `ip` types), then keeps it if `family`
/// accepts it; either failure is a [`ConfigError::InvalidAddress`] saying what was `expected`.
fn parse_field<T, U>(
    field: &'static str,
    s: &str,
    expected: &'static str,
    family: impl FnOnce(T) -> Result<U, &'static str>,
) -> Result<U, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| e.to_string())
        .and_then(|v| family(v).map_err(String::from))
        .map_err(|reason| ConfigError::InvalidAddress {
            field,
            value: s.into(),
            expected,
            reason,
        })
}

fn parse_cidr_v4(field: &'static str, s: &str) -> Result<Ipv4Net, ConfigError> {
    parse_field(field, s, "an IPv4 CIDR like 10.5.0.0/16", |n| match n {
        IpNet::V4(n) => Ok(n.trunc()),
        IpNet::V6(_) => Err("it is an IPv6 CIDR (use IPv6Network)"),
    })
}

fn parse_cidr_v6(field: &'static str, s: &str) -> Result<Ipv6Net, ConfigError> {
    parse_field(field, s, "an IPv6 CIDR like fc00::/48", |n| match n {
        IpNet::V6(n) => Ok(n.trunc()),
        IpNet::V4(_) => Err("it is an IPv4 CIDR (use Network)"),
    })
}

fn parse_addr_v4(field: &'static str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    parse_field(field, s, "an IPv4 address like 10.5.1.0", |a| match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err("it is an IPv6 address"),
    })
}

fn parse_addr_v6(field: &'static str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    parse_field(field, s, "an IPv6 address like fc00:0:0:1::", |a| match a {
        IpAddr::V6(a) => Ok(a),
        IpAddr::V4(_) => Err("it is an IPv4 address"),
    })
}
