//! Go `encoding/json` decoding rules over an order-preserving JSON tree, shared by the network
//! config ([`crate::config`]) and lease ([`crate::lease`]) decoders.
//!
//! flannel writes and reads both documents with Go's `encoding/json`: a key names a struct field
//! case-insensitively, of several keys naming one field the last wins, and `null` leaves a plain
//! field unchanged. `serde_json` into a struct does none of this, so the decoders walk a
//! [`GoValue`] tree with the helpers here.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their keys in document order (and duplicates), which Go's
/// "last matching key wins" needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GoValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<GoValue>),
    Object(GoObject),
}

/// A JSON object's members in document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GoObject(pub(crate) Vec<(String, GoValue)>);

/// A value of the wrong JSON type for a field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mismatch {
    pub(crate) expected: &'static str,
    pub(crate) found: String,
}

pub(crate) enum ParseError {
    Json(serde_json::Error),
    NotAnObject(String),
}

impl GoValue {
    /// A short description for error messages: the type and (part of) the value.
    pub(crate) fn describe(&self) -> String {
        match self {
            GoValue::Null => "null".into(),
            GoValue::Bool(b) => format!("boolean {b}"),
            GoValue::Number(n) => format!("number {n}"),
            GoValue::String(s) if s.chars().count() > 64 => {
                let head: String = s.chars().take(64).collect();
                format!("string {head:?}...")
            }
            GoValue::String(s) => format!("string {s:?}"),
            GoValue::Array(a) => format!("an array of {} elements", a.len()),
            GoValue::Object(o) => format!("an object with {} members", o.0.len()),
        }
    }

    /// Converts to a `serde_json::Value` (object members end up sorted by key; of duplicate
    /// keys the last is kept).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            GoValue::Null => serde_json::Value::Null,
            GoValue::Bool(b) => serde_json::Value::Bool(*b),
            GoValue::Number(n) => serde_json::Value::Number(n.clone()),
            GoValue::String(s) => serde_json::Value::String(s.clone()),
            GoValue::Array(a) => serde_json::Value::Array(a.iter().map(GoValue::to_json).collect()),
            GoValue::Object(o) => serde_json::Value::Object(
                o.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect(),
            ),
        }
    }
}

impl GoObject {
    pub(crate) fn parse(text: &str) -> Result<GoObject, ParseError> {
        match serde_json::from_str::<GoValue>(text) {
            Ok(GoValue::Object(o)) => Ok(o),
            Ok(other) => Err(ParseError::NotAnObject(other.describe())),
            Err(e) => Err(ParseError::Json(e)),
        }
    }

    /// The values of every key that names `field` (Go's matching), in document order.
    pub(crate) fn matches<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a GoValue> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| fold_eq(k, field))
            .map(|(_, v)| v)
    }

    /// The value that ends up in `field`: that of the last key naming it.
    pub(crate) fn last(&self, field: &str) -> Option<&GoValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| fold_eq(k, field))
            .map(|(_, v)| v)
    }

    /// Keys that name none of `fields`, in document order.
    pub(crate) fn unknown_keys(&self, fields: &[&str]) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| !fields.iter().any(|f| fold_eq(k, f)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Whether a JSON key names a Go struct field. Go prefers an exact match, then accepts a
/// case-insensitive one (`foldName`: ASCII upper-casing, `ToUpper(ToLower(r))` for other
/// runes). The field names here are ASCII, and the only non-ASCII runes that fold onto ASCII
/// letters are K (Kelvin sign), ſ (long s), ı (dotless i) and İ (dotted capital I).
pub(crate) fn fold_eq(key: &str, field: &str) -> bool {
    fn fold(c: char) -> char {
        match c {
            '\u{212A}' => 'K',
            '\u{017F}' => 'S',
            '\u{0130}' | '\u{0131}' => 'I',
            c => c.to_ascii_uppercase(),
        }
    }
    key.chars().map(fold).eq(field.chars().map(fold))
}

/// What one JSON value does to the Go field its key names.
enum Decoded<T> {
    /// The field takes this value.
    Set(T),
    /// The field keeps what it had (`null` on a plain field).
    Unchanged,
    /// A value of the wrong JSON type: decoding stops.
    WrongType,
}

/// Go's decoding of one field: every key that names it, in document order, goes through
/// `decode`, so the last one that sets it wins; the first value of the wrong type is a
/// [`Mismatch`] with `expected`.
fn decode_field<T>(
    obj: &GoObject,
    field: &str,
    expected: &'static str,
    decode: impl Fn(&GoValue) -> Decoded<T>,
) -> Result<Option<T>, Mismatch> {
    let mut out = None;
    for v in obj.matches(field) {
        match decode(v) {
            Decoded::Set(x) => out = Some(x),
            Decoded::Unchanged => {}
            Decoded::WrongType => return Err(mismatch(expected, v)),
        }
    }
    Ok(out)
}

/// A Go `bool` field: `null` leaves it unchanged.
pub(crate) fn get_bool(obj: &GoObject, field: &str) -> Result<Option<bool>, Mismatch> {
    decode_field(obj, field, "a boolean (true or false)", |v| match v {
        GoValue::Null => Decoded::Unchanged,
        GoValue::Bool(b) => Decoded::Set(*b),
        _ => Decoded::WrongType,
    })
}

/// A Go `uint` field: a non-negative integer literal (no fraction or exponent).
pub(crate) fn get_u64(obj: &GoObject, field: &str) -> Result<Option<u64>, Mismatch> {
    decode_field(obj, field, "a non-negative integer", |v| match v {
        GoValue::Null => Decoded::Unchanged,
        GoValue::Number(n) => n.as_u64().map_or(Decoded::WrongType, Decoded::Set),
        _ => Decoded::WrongType,
    })
}

/// A Go `int` field: an integer literal that fits in 64 bits.
pub(crate) fn get_i64(obj: &GoObject, field: &str) -> Result<Option<i64>, Mismatch> {
    decode_field(obj, field, "an integer", |v| match v {
        GoValue::Null => Decoded::Unchanged,
        GoValue::Number(n) => n.as_i64().map_or(Decoded::WrongType, Decoded::Set),
        _ => Decoded::WrongType,
    })
}

/// A Go `string` field: `null` leaves it unchanged.
pub(crate) fn get_string(obj: &GoObject, field: &str) -> Result<Option<String>, Mismatch> {
    decode_field(obj, field, "a string", |v| match v {
        GoValue::Null => Decoded::Unchanged,
        GoValue::String(s) => Decoded::Set(s.clone()),
        _ => Decoded::WrongType,
    })
}

/// A value-typed field with its own `UnmarshalJSON` that parses a quoted string (flannel's
/// `ip.IP4`, `ip.IP4Net`, `ip.IP6Net`): `null` reaches the parser and fails.
pub(crate) fn get_text(obj: &GoObject, field: &str) -> Result<Option<String>, Mismatch> {
    decode_field(obj, field, "a string", |v| match v {
        GoValue::String(s) => Decoded::Set(s.clone()),
        _ => Decoded::WrongType,
    })
}

/// A pointer-typed such field (flannel's `*ip.IP6`): `null` sets it back to nil, which is the
/// inner `None`.
pub(crate) fn get_nullable_text(
    obj: &GoObject,
    field: &str,
) -> Result<Option<Option<String>>, Mismatch> {
    decode_field(obj, field, "a string or null", |v| match v {
        GoValue::Null => Decoded::Set(None),
        GoValue::String(s) => Decoded::Set(Some(s.clone())),
        _ => Decoded::WrongType,
    })
}

fn mismatch(expected: &'static str, found: &GoValue) -> Mismatch {
    Mismatch {
        expected,
        found: found.describe(),
    }
}

impl<'de> Deserialize<'de> for GoValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(GoValueVisitor)
    }
}

struct GoValueVisitor;

impl<'de> Visitor<'de> for GoValueVisitor {
    type Value = GoValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<GoValue, E> {
        Ok(GoValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoValue, E> {
        Ok(GoValue::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoValue, E> {
        Ok(GoValue::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoValue, E> {
        serde_json::Number::from_f64(v)
            .map(GoValue::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<GoValue, E> {
        Ok(GoValue::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<GoValue, E> {
        Ok(GoValue::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<GoValue, D::Error> {
        GoValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GoValue, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(GoValue::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoValue, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, GoValue>()? {
            out.push((k, v));
        }
        Ok(GoValue::Object(GoObject(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::fold_eq;

    #[test]
    fn go_field_matching() {
        assert!(fold_eq("network", "Network"));
        assert!(fold_eq("NETWORK", "Network"));
        assert!(fold_eq("\u{017F}ubnetLen", "SubnetLen"));
        assert!(fold_eq("enable\u{0131}pv4", "EnableIPv4"));
        assert!(!fold_eq("Networks", "Network"));
        assert!(!fold_eq("Net_work", "Network"));
        assert!(!fold_eq("n\u{00e9}twork", "Network"));
    }
}
