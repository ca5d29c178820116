//! Shared by the lease targets: what a decoded lease value may become when it is re-encoded and
//! decoded again.

use std::collections::HashSet;
use std::fmt;

use control::lease::{BackendData, LeaseAttrs};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// `after` is `before` (decoded from `text`) re-encoded and decoded again. It must be equal and
/// re-encode to the same bytes, with one documented exception (`BackendData::Raw`): vxlan data
/// refused because of a duplicate key collapses into data that decodes, when `text` has
/// duplicate keys. From there the value is stable.
pub fn check(text: &str, before: &LeaseAttrs, after: &LeaseAttrs) {
    if before == after {
        assert_eq!(before.to_json(), after.to_json());
        return;
    }
    assert!(
        has_duplicate_keys(text),
        "{before:?} became {after:?} without duplicate keys"
    );
    let collapsed = |b: &Option<BackendData>, a: &Option<BackendData>| {
        b == a
            || matches!(
                (b, a),
                (Some(BackendData::Raw(_)), Some(BackendData::Vxlan(_)))
            )
    };
    assert!(
        before.public_ip == after.public_ip
            && before.public_ipv6 == after.public_ipv6
            && before.backend_type == after.backend_type
            && collapsed(&before.backend_data, &after.backend_data)
            && collapsed(&before.backend_v6_data, &after.backend_v6_data),
        "{before:?} became {after:?}"
    );
    let json = after.to_json();
    let again = LeaseAttrs::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&again, after, "{json}");
    assert_eq!(again.to_json(), json);
}

/// Whether some object in the JSON `text` has two keys naming one Go struct field (Go's case
/// folding: ASCII case, and K, ſ, ı, İ onto k, s, i, i). `BackendData::Raw` keeps only the last
/// of them when it re-encodes, as its documentation says.
pub fn has_duplicate_keys(text: &str) -> bool {
    serde_json::from_str::<Dups>(text).is_ok_and(|d| d.0)
}

struct Dups(bool);

fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            '\u{0130}' | '\u{0131}' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl<'de> Deserialize<'de> for Dups {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DupsVisitor)
    }
}

struct DupsVisitor;

impl<'de> Visitor<'de> for DupsVisitor {
    type Value = Dups;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_str<E>(self, _: &str) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_unit<E>(self) -> Result<Dups, E> {
        Ok(Dups(false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dups, A::Error> {
        let mut any = false;
        while let Some(Dups(d)) = seq.next_element()? {
            any |= d;
        }
        Ok(Dups(any))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dups, A::Error> {
        let mut keys = HashSet::new();
        let mut any = false;
        while let Some(key) = map.next_key::<String>()? {
            let Dups(d) = map.next_value()?;
            any |= d | !keys.insert(fold(&key));
        }
        Ok(Dups(any))
    }
}
