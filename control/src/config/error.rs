//! Why a network config was refused: one variant per rule, each message saying what is wrong
//! and what the operator can write instead.

use ipnet::{Ipv4Net, Ipv6Net};

use crate::go_json::Mismatch;

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
         to true (with a Network), or EnableIPv6 to true (with an IPv6Network) for an IPv6-only \
         network, or both for dual stack"
    )]
    NoAddressFamily,
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
    /// A [`ConfigError::FieldType`] for `field` from the decoder's [`Mismatch`].
    pub(super) fn field_type(field: impl Into<String>, m: Mismatch) -> Self {
        ConfigError::FieldType {
            field: field.into(),
            expected: m.expected,
            found: m.found,
        }
    }
}
