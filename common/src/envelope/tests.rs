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
