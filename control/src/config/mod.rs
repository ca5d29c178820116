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
//! - `EnableIPv4` and `EnableIPv6` may not both be false (flanneld fails later, finding no IP
//!   family to run).
//!
//! An IPv6-only network (`EnableIPv4: false`, `EnableIPv6: true`) has no IPv4 half at all:
//! `Network` and the IPv4 subnet fields are ignored, as flanneld's `CheckNetworkConfig` skips them,
//! and [`NetworkConfig::ipv4`] is `None`.
//! - `VNI`, `Port` and `MTU` are range-checked (flanneld hands them to the kernel unchecked).
//!
//! The parts: `decode` reads the top-level fields as Go decodes them, `backend` the `Backend`
//! object, `check` applies `CheckNetworkConfig` (defaults and ranges, IPv4 and IPv6 alike),
//! `serialize` writes the config back as flannel JSON, and `error` says why a config was refused.
//! Go's `encoding/json` rules themselves are in `crate::go_json`, shared with the lease decoder.
//!
//! Nothing here does I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use self::decode::RawConfig;
use crate::go_json::{self, GoObject};

mod backend;
mod check;
mod decode;
mod error;
mod serialize;
#[cfg(test)]
mod tests;

pub use self::error::ConfigError;

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

/// A validated flannel network config with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The IPv4 half, present exactly when `EnableIPv4` is true (the default).
    pub ipv4: Option<Ipv4NetworkConfig>,
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

/// The IPv4 half of the config (`EnableIPv4: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4NetworkConfig {
    /// `Network`: the IPv4 overlay network (host bits cleared, as Go's `net.ParseCIDR` does).
    pub network: Ipv4Net,
    /// `SubnetLen`: prefix length of each node's subnet.
    pub subnet_len: u8,
    /// `SubnetMin`: the lowest subnet base that may be leased.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the highest subnet base that may be leased.
    pub subnet_max: Ipv4Addr,
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
    let backend_obj = backend::backend_object(raw.backend)?;

    if !raw.enable_ipv4 && !raw.enable_ipv6 {
        return Err(ConfigError::NoAddressFamily);
    }
    let ipv4 = if raw.enable_ipv4 {
        let (network, subnet_len, subnet_min, subnet_max) = check::check_ipv4(&raw)?;
        Some(Ipv4NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    } else {
        None
    };
    let ipv6 = if raw.enable_ipv6 {
        Some(check::check_ipv6(&raw)?)
    } else {
        None
    };
    let backend = backend::decode_vxlan_backend(&backend_obj, ipv6.is_some())?;

    Ok(NetworkConfig {
        ipv4,
        ipv6,
        enable_nftables: raw.enable_nftables,
        backend,
        ignored_fields: raw.ignored_fields,
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

    /// Whether this is an IPv6-only network (`EnableIPv4: false`).
    pub fn is_ipv6_only(&self) -> bool {
        self.ipv4.is_none()
    }

    /// Addresses per IPv4 subnet (`2^(32 - SubnetLen)`), when IPv4 is on.
    pub fn subnet_size(&self) -> Option<u32> {
        self.ipv4.map(|v4| 1 << (32 - v4.subnet_len))
    }

    /// Addresses per IPv6 subnet, when IPv6 is on.
    pub fn ipv6_subnet_size(&self) -> Option<u128> {
        self.ipv6.map(|v6| 1 << (128 - v6.subnet_len))
    }

    /// The IPv4 subnets that may be leased, from `SubnetMin` to `SubnetMax` in order (none
    /// when IPv4 is off).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let (step, min, max, len) = match self.ipv4 {
            Some(v4) => (
                1u64 << (32 - v4.subnet_len),
                u64::from(u32::from(v4.subnet_min)),
                u64::from(u32::from(v4.subnet_max)),
                v4.subnet_len,
            ),
            // An empty range: min > max.
            None => (1, 1, 0, 32),
        };
        (0..)
            .map(move |i: u64| min + i * step)
            .take_while(move |a| *a <= max)
            .filter_map(move |a| Ipv4Net::new(Ipv4Addr::from(u32::try_from(a).ok()?), len).ok())
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
    /// `SubnetLen`; each half present exactly when its family is on), plus that the base really
    /// is a base (no host bits).
    pub fn is_compatible(&self, subnet: Option<Ipv4Net>, ipv6_subnet: Option<Ipv6Net>) -> bool {
        let v4 = match (self.ipv4, subnet) {
            (None, None) => true,
            (Some(cfg), Some(sn)) => {
                sn.prefix_len() == cfg.subnet_len
                    && sn.addr() == sn.network()
                    && (cfg.subnet_min..=cfg.subnet_max).contains(&sn.addr())
            }
            _ => false,
        };
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
}
