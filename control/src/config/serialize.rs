//! The config written back as flannel JSON with every default spelled out
//! ([`NetworkConfig::to_json`], and the same document through `Serialize` and `Display`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::NetworkConfig;

impl NetworkConfig {
    /// The config as flannel JSON with every default written out; [`parse`](super::parse) reads it back to an
    /// equal config (less `ignored_fields`). Used for the local store's config and in tests.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and booleans cannot fail.
        serde_json::to_string(&self.out()).unwrap_or_default()
    }

    fn out(&self) -> ConfigOut<'_> {
        ConfigOut {
            network: self.ipv4.map(|v| v.network),
            subnet_len: self.ipv4.map(|v| v.subnet_len),
            subnet_min: self.ipv4.map(|v| v.subnet_min),
            subnet_max: self.ipv4.map(|v| v.subnet_max),
            enable_ipv4: self.ipv4.is_some(),
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
    #[serde(rename = "Network", skip_serializing_if = "Option::is_none")]
    network: Option<Ipv4Net>,
    #[serde(rename = "SubnetLen", skip_serializing_if = "Option::is_none")]
    subnet_len: Option<u8>,
    #[serde(rename = "SubnetMin", skip_serializing_if = "Option::is_none")]
    subnet_min: Option<Ipv4Addr>,
    #[serde(rename = "SubnetMax", skip_serializing_if = "Option::is_none")]
    subnet_max: Option<Ipv4Addr>,
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
