//! flannel's `CheckNetworkConfig`: the subnet length and the `SubnetMin`/`SubnetMax` defaults
//! and range rules, for the IPv4 network and the IPv6 one. The two families follow one set of
//! rules, written once over [`Family`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

use super::decode::RawConfig;
use super::{ConfigError, Ipv6NetworkConfig};

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
            #[expect(
                clippy::cast_possible_truncation,
                reason = "n <= max_len (at most 128) here"
            )]
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
pub(super) fn check_ipv4(
    raw: &RawConfig<'_>,
) -> Result<(Ipv4Net, u8, Ipv4Addr, Ipv4Addr), ConfigError> {
    let network = raw
        .network
        .filter(|n| !(n.addr().is_unspecified() && n.prefix_len() == 0))
        .ok_or(ConfigError::NetworkMissing)?;
    let prefix = network.prefix_len();
    let subnet_len = IPV4
        .subnet_len(raw.subnet_len, prefix, &network.to_string())?
        .ok_or(ConfigError::NetworkTooSmall { network })?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "subnet_range works in the IPv4 network's range, below 2^32"
    )]
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
pub(super) fn check_ipv6(raw: &RawConfig<'_>) -> Result<Ipv6NetworkConfig, ConfigError> {
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
