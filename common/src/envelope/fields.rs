//! Checking each field of an untrusted envelope: names, ids, tags, integers in range, nesting
//! depth, and a top level read without losing a key given twice.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{MAX_NAME_CHARS, Rejection, reject};

/// Whether `kind` is 1–128 characters of `A-Za-z0-9._:-`.
pub fn is_valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_NAME_CHARS
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub(super) fn validate_kind(value: Value) -> Result<String, Rejection> {
    match value {
        Value::String(kind) if is_valid_kind(&kind) => Ok(kind),
        Value::String(kind) => reject(format!(
            "field `kind`: must be 1–{MAX_NAME_CHARS} characters of A-Za-z0-9._:-, got {:?}",
            truncate(&kind, 64)
        )),
        other => reject(format!(
            "field `kind`: must be a string, got {}",
            json_type(&other)
        )),
    }
}

pub(super) fn validate_id(value: Value) -> Result<String, Rejection> {
    match value {
        Value::String(id) if !id.is_empty() && id.chars().count() <= MAX_NAME_CHARS => Ok(id),
        Value::String(_) => reject(format!("field `id`: must be 1–{MAX_NAME_CHARS} characters")),
        other => reject(format!(
            "field `id`: must be a string, got {}",
            json_type(&other)
        )),
    }
}

pub(super) fn validate_requires(value: Value, max: usize) -> Result<Vec<String>, Rejection> {
    let Value::Array(items) = value else {
        return reject(format!(
            "field `requires`: must be an array of strings, got {}",
            json_type(&value)
        ));
    };
    if items.len() > max {
        return reject(format!(
            "field `requires`: {} tags, over the limit of {max}",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(tag) if !tag.is_empty() && tag.chars().count() <= MAX_NAME_CHARS => {
                Ok(tag)
            }
            Value::String(_) => reject(format!(
                "field `requires[{index}]`: must be 1–{MAX_NAME_CHARS} characters"
            )),
            other => reject(format!(
                "field `requires[{index}]`: must be a string, got {}",
                json_type(&other)
            )),
        })
        .collect()
}

pub(super) fn integer(field: &str, value: &Value, min: u64, max: u64) -> Result<u64, Rejection> {
    let range = if max == u64::MAX {
        format!("an integer ≥ {min}")
    } else {
        format!("an integer {min}–{max}")
    };
    // JSON has one number type: `2.0` is the integer 2 (as JSON Schema's "integer" says).
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => reject(format!("field `{field}`: must be {range}, got {n}")),
        None => reject(format!(
            "field `{field}`: must be {range}, got {}",
            match value {
                Value::Number(n) => n.to_string(),
                other => json_type(other).to_owned(),
            }
        )),
    }
}

/// How deeply objects and arrays nest in `value` (a scalar is 0). serde_json already refuses
/// input nested more than 128 levels, so the recursion is bounded.
pub(super) fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A JSON document whose top-level object keys are checked for duplicates (which
/// `serde_json::Value` would silently collapse to the last one): the value, and the first
/// duplicated key if any.
pub(super) struct TopLevel(pub(super) Value, pub(super) Option<String>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TopLevel;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields = Map::new();
                let mut duplicate = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if fields.insert(key.clone(), value).is_some() && duplicate.is_none() {
                        duplicate = Some(key);
                    }
                }
                Ok(TopLevel(Value::Object(fields), duplicate))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TopLevel, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(TopLevel(Value::Array(items), None))
            }

            fn visit_bool<E>(self, v: bool) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::Bool(v), None))
            }

            fn visit_i64<E>(self, v: i64) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::from(v), None))
            }

            fn visit_u64<E>(self, v: u64) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::from(v), None))
            }

            fn visit_f64<E>(self, v: f64) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::from(v), None))
            }

            fn visit_str<E>(self, v: &str) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::from(v), None))
            }

            fn visit_unit<E>(self) -> Result<TopLevel, E> {
                Ok(TopLevel(Value::Null, None))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
