//! The published JSON Schema of the envelope (`schema/task-v1.json`) and the Rust decoder agree:
//! a document within the body limits that a schema cannot express (size, depth, duplicate
//! keys) is valid under the schema exactly when the decoder accepts it.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use warren_common::Task;
use warren_common::envelope::SubmitProperties;

fn schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/task-v1.json");
    let text = std::fs::read_to_string(path).expect("schema/task-v1.json is readable");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

fn decodes(document: &Value) -> Result<Task, String> {
    Task::decode(
        &serde_json::to_vec(document).expect("serializes"),
        &SubmitProperties::default(),
        &Default::default(),
    )
    .map_err(|r| r.to_string())
}

fn check(validator: &jsonschema::Validator, document: &Value) {
    let by_schema = validator.is_valid(document);
    let by_decoder = decodes(document);
    assert_eq!(
        by_schema,
        by_decoder.is_ok(),
        "schema says {by_schema}, decoder says {by_decoder:?} for {document}"
    );
}

#[test]
fn hand_picked_documents_agree() {
    let validator = schema();
    let long = "x".repeat(129);
    let documents = [
        json!({"kind": "echo"}),
        json!({"kind": "echo", "payload": {"any": ["thing", 1, null]}, "trace": "kept"}),
        json!({"kind": "a.b:c-d_9", "id": "é".repeat(128), "priority": 9, "max_attempts": 1000,
               "timeout_ms": 604_800_000u64, "estimated_ms": 0, "requires": ["gpu"], "cost": 3,
               "deadline": "2026-11-24T10:00:00Z"}),
        json!({"kind": "echo", "priority": 2.0}),
        json!({"kind": "echo", "priority": 2.5}),
        json!({"kind": "echo", "id": null, "priority": null, "requires": null, "deadline": null}),
        json!({}),
        json!([]),
        json!("echo"),
        json!({"kind": null}),
        json!({"kind": ""}),
        json!({"kind": "a b"}),
        json!({"kind": long}),
        json!({"kind": "echo", "id": ""}),
        json!({"kind": "echo", "id": "é".repeat(129)}),
        json!({"kind": "echo", "priority": 10}),
        json!({"kind": "echo", "priority": -1}),
        json!({"kind": "echo", "priority": "9"}),
        json!({"kind": "echo", "max_attempts": 0}),
        json!({"kind": "echo", "max_attempts": 1001}),
        json!({"kind": "echo", "timeout_ms": 0}),
        json!({"kind": "echo", "timeout_ms": 604_800_001u64}),
        json!({"kind": "echo", "estimated_ms": -5}),
        json!({"kind": "echo", "deadline": "tomorrow"}),
        json!({"kind": "echo", "deadline": "2026-11-24"}),
        json!({"kind": "echo", "deadline": 1_700_000_000}),
        json!({"kind": "echo", "requires": "gpu"}),
        json!({"kind": "echo", "requires": [""]}),
        json!({"kind": "echo", "requires": [7]}),
        json!({"kind": "echo", "requires": vec!["t"; 17]}),
        json!({"kind": "echo", "requires": vec!["t"; 16]}),
        json!({"kind": "echo", "cost": 0}),
        json!({"kind": "echo", "cost": 1_000_001}),
    ];
    for document in &documents {
        check(&validator, document);
    }
}

/// A value for a known field: often right, often subtly wrong, sometimes of another type.
fn field_value(name: &'static str) -> BoxedStrategy<Value> {
    let other = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z ]{0,6}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    let around = |lo: i64, hi: i64| {
        prop_oneof![
            6 => (lo..=hi).prop_map(Value::from),
            1 => Just(Value::from(lo)),
            1 => Just(Value::from(hi)),
            1 => Just(Value::from(lo - 1)),
            1 => Just(Value::from(hi + 1)),
            1 => (lo..=hi).prop_map(|n| Value::from(n as f64)),
            1 => Just(Value::from(lo as f64 + 0.5)),
        ]
    };
    let specific: BoxedStrategy<Value> = match name {
        "kind" => prop_oneof![
            4 => "[A-Za-z0-9._:-]{1,130}".prop_map(Value::from),
            1 => "[A-Za-z0-9 /é]{0,8}".prop_map(Value::from),
        ]
        .boxed(),
        "id" => "\\PC{0,130}".prop_map(Value::from).boxed(),
        "priority" => around(0, 9).boxed(),
        "max_attempts" => around(1, 1000).boxed(),
        "timeout_ms" => around(1, 604_800_000).boxed(),
        "estimated_ms" => around(0, i64::MAX - 1).boxed(),
        "cost" => around(1, 1_000_000).boxed(),
        "deadline" => prop_oneof![
            Just(json!("2026-11-24T10:00:00Z")),
            Just(json!("2026-11-24T10:00:00.123+02:00")),
            Just(json!("2026-11-24")),
            Just(json!("2026-13-24T10:00:00Z")),
            Just(json!("soon")),
        ]
        .boxed(),
        "requires" => prop_oneof![
            proptest::collection::vec("[a-z]{1,4}".prop_map(Value::from), 0..20)
                .prop_map(Value::from),
            proptest::collection::vec(
                prop_oneof![Just(json!("")), Just(json!(1)), Just(json!("ok"))],
                1..3
            )
            .prop_map(Value::from),
        ]
        .boxed(),
        _ => other.clone().boxed(),
    };
    prop_oneof![9 => specific, 1 => other].boxed()
}

fn envelope() -> impl Strategy<Value = Value> {
    const FIELDS: [&str; 11] = [
        "kind",
        "id",
        "payload",
        "priority",
        "max_attempts",
        "timeout_ms",
        "estimated_ms",
        "deadline",
        "requires",
        "cost",
        "unknown_extra",
    ];
    let entries: Vec<_> = FIELDS
        .iter()
        .map(|name: &'static &str| {
            let name: &'static str = name;
            proptest::option::weighted(0.5, field_value(name))
                .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
        })
        .collect();
    entries.prop_map(|entries| Value::Object(entries.into_iter().flatten().collect::<Map<_, _>>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn generated_documents_agree(document in envelope()) {
        let validator = schema();
        check(&validator, &document);
    }
}
