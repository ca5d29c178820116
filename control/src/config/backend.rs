//! The `Backend` object: flannel's backend type lookup (`pkg/backend/manager.go`) and the vxlan
//! backend's own options (`RegisterNetwork` in `pkg/backend/vxlan/vxlan.go`).

use super::{ConfigError, VxlanBackendConfig, DEFAULT_VNI, MAX_VNI};
use crate::go_json::{self, GoObject, GoValue};

/// `Backend` fields vxdp reads; other keys end up in [`VxlanBackendConfig::ignored_fields`].
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

/// flannel's `parseBackendType` and `GetBackend`: resolves the backend type and returns the
/// `Backend` object for the vxlan decoder.
pub(super) fn backend_object(backend: Option<&GoValue>) -> Result<GoObject, ConfigError> {
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

/// The vxlan backend's own decoding of `Backend` (flannel: `RegisterNetwork` in vxlan.go).
pub(super) fn decode_vxlan_backend(
    obj: &GoObject,
    ipv6: bool,
) -> Result<VxlanBackendConfig, ConfigError> {
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
