//! The task envelope of wire contract v1: decoding untrusted bytes, validating every field,
//! filling defaults, and keeping unknown fields so newer clients pass through older warrens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted `kind` and `id`, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A validated task, with every default filled in. This is what the dispatcher forwards
/// (serialized as JSON) to the priority queues and worker queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Task id, also the idempotency key.
    pub id: String,
    /// Which handler runs it.
    pub kind: String,
    /// Handed to the handler untouched.
    #[serde(default)]
    pub payload: Value,
    /// 0–9, 9 most urgent.
    pub priority: u8,
    /// Attempts before the task is dead.
    pub max_attempts: u32,
    /// One attempt's time limit in milliseconds.
    pub timeout_ms: u64,
    /// Expected run time in milliseconds, a hint for shortest-job-first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_ms: Option<u64>,
    /// A task not started by then is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Capability tags the worker must advertise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Capacity units one attempt occupies on a worker.
    #[serde(default = "one")]
    pub cost: u32,
    /// Fields this version does not know, passed through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Defaults applied to fields a submitter left out, from configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskDefaults {
    /// `max_attempts` when the task does not say.
    pub max_attempts: u32,
    /// `timeout_ms` when the task does not say.
    pub timeout_ms: u64,
    /// Bodies larger than this many bytes are rejected.
    pub max_body_bytes: usize,
    /// Bodies nested deeper than this (objects and arrays) are rejected.
    pub max_depth: usize,
    /// Tasks with more `requires` tags than this are rejected.
    pub max_requires: usize,
    /// Delay before the first retry, in milliseconds; it doubles with each failed attempt.
    pub retry_base_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl TaskDefaults {
    /// A retry's backoff, as `retry_base_ms` and `retry_max_ms` say.
    pub fn retry_policy(&self) -> warren_core::retry::RetryPolicy {
        warren_core::retry::RetryPolicy {
            base: std::time::Duration::from_millis(self.retry_base_ms),
            max: std::time::Duration::from_millis(self.retry_max_ms),
        }
    }
}

impl Default for TaskDefaults {
    fn default() -> Self {
        TaskDefaults {
            max_attempts: 3,
            timeout_ms: 300_000,
            max_body_bytes: 1024 * 1024,
            max_depth: 32,
            max_requires: 16,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

/// The AMQP properties of a submitted message that the envelope falls back on.
#[derive(Debug, Clone, Default)]
pub struct SubmitProperties<'a> {
    /// `message_id`: the id when the body has none.
    pub message_id: Option<&'a str>,
    /// `priority`: the priority when the body has none (clamped to 9).
    pub priority: Option<u8>,
}

/// Why a message is not a valid task. The text goes into `x-warren-reason`, so it names the
/// field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

fn one() -> u32 {
    1
}

fn reject<T>(reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection(reason.into()))
}

impl Task {
    /// Decodes and validates a submitted message body. Never panics on any input.
    pub fn decode(
        body: &[u8],
        properties: &SubmitProperties<'_>,
        defaults: &TaskDefaults,
    ) -> Result<Task, Rejection> {
        if body.len() > defaults.max_body_bytes {
            return reject(format!(
                "body: {} bytes is over the limit of {} bytes",
                body.len(),
                defaults.max_body_bytes
            ));
        }
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(err) => return reject(format!("body: not UTF-8 ({err})")),
        };
        let (value, duplicate) = match serde_json::from_str::<TopLevel>(text) {
            Ok(TopLevel(value, duplicate)) => (value, duplicate),
            Err(err) => return reject(format!("body: not valid JSON ({err})")),
        };
        if let Some(key) = duplicate {
            return reject(format!(
                "body: key {:?} appears more than once",
                truncate(&key, 64)
            ));
        }
        let nesting = depth(&value);
        if nesting > defaults.max_depth {
            return reject(format!(
                "body: nested {nesting} levels deep, over the limit of {}",
                defaults.max_depth
            ));
        }
        let Value::Object(mut fields) = value else {
            return reject(format!(
                "body: must be a JSON object, got {}",
                json_type(&value)
            ));
        };
        let kind = match fields.remove("kind") {
            None | Some(Value::Null) => return reject("field `kind`: required"),
            Some(value) => validate_kind(value)?,
        };
        let id = match fields.remove("id") {
            None | Some(Value::Null) => match properties.message_id {
                Some(id) => validate_id(Value::String(id.to_owned()))
                    .map_err(|Rejection(r)| Rejection(format!("{r} (from message_id)")))?,
                None => uuid::Uuid::now_v7().to_string(),
            },
            Some(value) => validate_id(value)?,
        };
        let priority = match fields.remove("priority") {
            None | Some(Value::Null) => properties.priority.map_or(5, |p| p.min(9)),
            Some(value) => u8::try_from(integer("priority", &value, 0, 9)?).unwrap_or(9),
        };
        let max_attempts = match fields.remove("max_attempts") {
            None | Some(Value::Null) => defaults.max_attempts,
            Some(value) => u32::try_from(integer("max_attempts", &value, 1, 1000)?).unwrap_or(1),
        };
        let timeout_ms = match fields.remove("timeout_ms") {
            None | Some(Value::Null) => defaults.timeout_ms,
            Some(value) => integer("timeout_ms", &value, 1, 7 * 24 * 3600 * 1000)?,
        };
        let estimated_ms = match fields.remove("estimated_ms") {
            None | Some(Value::Null) => None,
            Some(value) => Some(integer("estimated_ms", &value, 0, u64::MAX)?),
        };
        let deadline = match fields.remove("deadline") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match DateTime::parse_from_rfc3339(&text) {
                Ok(time) => Some(time.with_timezone(&Utc)),
                Err(err) => {
                    return reject(format!("field `deadline`: not an RFC 3339 time ({err})"));
                }
            },
            Some(other) => {
                return reject(format!(
                    "field `deadline`: must be an RFC 3339 string, got {}",
                    json_type(&other)
                ));
            }
        };
        let requires = match fields.remove("requires") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => validate_requires(value, defaults.max_requires)?,
        };
        let cost = match fields.remove("cost") {
            None | Some(Value::Null) => 1,
            Some(value) => u32::try_from(integer("cost", &value, 1, 1_000_000)?).unwrap_or(1),
        };
        let payload = fields.remove("payload").unwrap_or(Value::Null);
        Ok(Task {
            id,
            kind,
            payload,
            priority,
            max_attempts,
            timeout_ms,
            estimated_ms,
            deadline,
            requires,
            cost,
            extra: fields,
        })
    }

    /// The normalized JSON form forwarded between warren's own queues.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Task always serializes")
    }

    /// Reads a task that warren itself normalized earlier.
    pub fn from_json(body: &[u8]) -> Result<Task, Rejection> {
        serde_json::from_slice(body).map_err(|err| Rejection(format!("internal task form: {err}")))
    }
}

/// Whether `kind` is 1–128 characters of `A-Za-z0-9._:-`.
pub fn is_valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_NAME_CHARS
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn validate_kind(value: Value) -> Result<String, Rejection> {
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

fn validate_id(value: Value) -> Result<String, Rejection> {
    match value {
        Value::String(id) if !id.is_empty() && id.chars().count() <= MAX_NAME_CHARS => Ok(id),
        Value::String(_) => reject(format!("field `id`: must be 1–{MAX_NAME_CHARS} characters")),
        other => reject(format!(
            "field `id`: must be a string, got {}",
            json_type(&other)
        )),
    }
}

fn validate_requires(value: Value, max: usize) -> Result<Vec<String>, Rejection> {
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

fn integer(field: &str, value: &Value, min: u64, max: u64) -> Result<u64, Rejection> {
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
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A JSON document whose top-level object keys are checked for duplicates (which
/// `serde_json::Value` would silently collapse to the last one): the value, and the first
/// duplicated key if any.
struct TopLevel(Value, Option<String>);

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

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<Task, Rejection> {
        Task::decode(
            body.as_bytes(),
            &SubmitProperties::default(),
            &TaskDefaults::default(),
        )
    }

    #[test]
    fn fills_defaults_and_keeps_unknown_fields() {
        let task = decode(r#"{"kind":"echo","payload":{"a":1},"trace":"x"}"#).unwrap();
        assert_eq!(task.kind, "echo");
        assert_eq!(task.priority, 5);
        assert_eq!(task.max_attempts, 3);
        assert_eq!(task.payload, serde_json::json!({"a": 1}));
        assert_eq!(task.extra.get("trace"), Some(&Value::from("x")));
        assert!(uuid::Uuid::parse_str(&task.id).is_ok());
        let round_trip = Task::from_json(&task.to_json()).unwrap();
        assert_eq!(round_trip, task);
    }

    #[test]
    fn falls_back_on_properties() {
        let props = SubmitProperties {
            message_id: Some("m-1"),
            priority: Some(200),
        };
        let task = Task::decode(br#"{"kind":"a"}"#, &props, &TaskDefaults::default()).unwrap();
        assert_eq!(task.id, "m-1");
        assert_eq!(task.priority, 9);
        let task = Task::decode(
            br#"{"kind":"a","id":"b","priority":1}"#,
            &props,
            &TaskDefaults::default(),
        )
        .unwrap();
        assert_eq!((task.id.as_str(), task.priority), ("b", 1));
    }

    #[test]
    fn rejects_with_a_reason_naming_the_field() {
        let cases = [
            ("not json", "body: not valid JSON"),
            ("[1,2]", "body: must be a JSON object, got an array"),
            ("{}", "field `kind`: required"),
            (r#"{"kind":7}"#, "field `kind`: must be a string"),
            (r#"{"kind":"a b"}"#, "field `kind`: must be 1–128"),
            (r#"{"kind":"a","priority":10}"#, "field `priority`"),
            (r#"{"kind":"a","priority":"high"}"#, "field `priority`"),
            (r#"{"kind":"a","priority":-1}"#, "field `priority`"),
            (r#"{"kind":"a","max_attempts":0}"#, "field `max_attempts`"),
            (r#"{"kind":"a","timeout_ms":1.5}"#, "field `timeout_ms`"),
            (r#"{"kind":"a","deadline":"tomorrow"}"#, "field `deadline`"),
            (r#"{"kind":"a","requires":"gpu"}"#, "field `requires`"),
            (r#"{"kind":"a","requires":[1]}"#, "field `requires[0]`"),
            (r#"{"kind":"a","id":""}"#, "field `id`"),
            (r#"{"kind":"a","cost":0}"#, "field `cost`"),
            (
                r#"{"kind":"a","kind":"b"}"#,
                "body: key \"kind\" appears more than once",
            ),
            (
                r#"{"kind":"a","requires":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}"#,
                "field `requires`: 17 tags, over the limit of 16",
            ),
        ];
        for (body, expected) in cases {
            let Rejection(reason) = decode(body).expect_err(body);
            assert!(reason.starts_with(expected), "{body}: {reason}");
        }
        let Rejection(reason) = Task::decode(
            &[0xff, 0xfe],
            &SubmitProperties::default(),
            &TaskDefaults::default(),
        )
        .unwrap_err();
        assert!(reason.starts_with("body: not UTF-8"), "{reason}");
    }

    #[test]
    fn deep_nesting_is_rejected_before_serde_json_would_refuse_it() {
        let nested = |n: usize| {
            format!(
                r#"{{"kind":"a","payload":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(decode(&nested(30)).is_ok());
        let Rejection(reason) = decode(&nested(40)).unwrap_err();
        assert!(
            reason.starts_with("body: nested 41 levels deep"),
            "{reason}"
        );
        let Rejection(reason) = decode(&nested(500)).unwrap_err();
        assert!(
            reason.starts_with("body: not valid JSON (recursion limit"),
            "{reason}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes: a task or a rejection, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Task::decode(&body, &SubmitProperties::default(), &TaskDefaults::default());
        }

        /// JSON-shaped input with every field of the envelope, of every type: a valid task
        /// round-trips through its normalized form; anything else is rejected with a reason
        /// that names a field or the body.
        #[test]
        fn envelope_shaped_json_decodes_or_names_its_fault(
            fields in proptest::collection::btree_map(
                proptest::sample::select(vec!["kind", "payload", "id", "priority", "max_attempts",
                    "timeout_ms", "estimated_ms", "deadline", "requires", "cost", "extra"]),
                json_value(),
                0..8,
            ),
            message_id in proptest::option::of("[a-z0-9-]{0,8}"),
            priority in proptest::option::of(proptest::prelude::any::<u8>()),
        ) {
            let body = serde_json::to_vec(&fields).unwrap();
            let props = SubmitProperties { message_id: message_id.as_deref(), priority };
            match Task::decode(&body, &props, &TaskDefaults::default()) {
                Ok(task) => {
                    proptest::prop_assert!(is_valid_kind(&task.kind));
                    proptest::prop_assert!(task.priority <= 9 && task.max_attempts >= 1);
                    proptest::prop_assert_eq!(Task::from_json(&task.to_json()).unwrap(), task);
                }
                Err(Rejection(reason)) => {
                    proptest::prop_assert!(reason.starts_with("field `") || reason.starts_with("body:"), "{}", reason);
                }
            }
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..20).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z0-9._:-]{0,10}".prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            Just(Value::from("2030-01-01T00:00:00Z")),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn kind_alphabet() {
        assert!(is_valid_kind("img.resize:v2-fast_1"));
        assert!(!is_valid_kind(""));
        assert!(!is_valid_kind("a/b"));
        assert!(!is_valid_kind(&"a".repeat(129)));
    }
}
