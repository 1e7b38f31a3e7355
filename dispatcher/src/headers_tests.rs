use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use proptest::prelude::*;
use warren_common::message::{attempts, header_str, header_u64, submitter};
use warren_common::{HEADER_HISTORY, HEADER_NOT_BEFORE, HEADER_REDELIVERED, HEADER_SUBMITTED};

use super::*;

/// Header names: warren's own (in any case, known or not), lookalikes, and anything else.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "x-warren-attempts",
            "x-warren-history",
            "x-warren-not-before",
            "x-warren-submitter",
            "x-warren-submitted",
            "x-warren-redelivered",
            "x-warren-reason",
            "x-warren-epoch",
            "X-Warren-Attempts",
            "X-WARREN-NOT-BEFORE",
            "x-warren-",
            "x-warren",
            "x-warrenattempts",
            "traceparent",
            "x-death",
        ])
        .prop_map(str::to_owned),
        "x-warren-[a-z-]{0,12}",
        "[a-zA-Z0-9._-]{0,40}",
    ]
}

/// Any AMQP value, nested up to four levels of tables and arrays.
fn value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        any::<String>().prop_map(|s| AMQPValue::LongString(LongString::from(s))),
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::vec((name(), inner), 0..8)
                .prop_map(|entries| AMQPValue::FieldTable(table(entries))),
        ]
    })
}

fn table(entries: Vec<(String, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(key.into(), value);
    }
    table
}

fn headers() -> impl Strategy<Value = FieldTable> {
    prop::collection::vec((name(), value()), 0..16).prop_map(table)
}

proptest! {
    /// Whatever headers a client sends, the task it becomes has no attempts, no history, no
    /// backoff, the verified submitter (or none) and warren's own markers only; every other
    /// header is kept as it was.
    #[test]
    fn a_clients_headers_never_set_warrens_bookkeeping(
        headers in headers(),
        user in proptest::option::of("[a-z]{1,12}"),
        redelivered in any::<bool>(),
    ) {
        let mut properties = BasicProperties::default().with_headers(headers.clone());
        if let Some(user) = &user {
            properties = properties.with_user_id(user.as_str().into());
        }
        let arrival = Arrival { from_client: true, redelivered, now_ms: 42 };
        let (forwarded, removed) = arrival.forward(&properties, "t1");
        prop_assert_eq!(attempts(&forwarded), 0);
        prop_assert!(header_str(&forwarded, HEADER_HISTORY).is_none());
        prop_assert!(header_u64(&forwarded, HEADER_NOT_BEFORE).is_none());
        prop_assert_eq!(submitter(&forwarded), user);
        prop_assert_eq!(header_u64(&forwarded, HEADER_SUBMITTED), Some(42));
        let table = forwarded.headers().clone().unwrap_or_default();
        prop_assert_eq!(table.inner().contains_key(HEADER_REDELIVERED), redelivered);
        let expected: std::collections::BTreeSet<&str> =
            [HEADER_SUBMITTED, HEADER_SUBMITTER, HEADER_REDELIVERED].into();
        for (key, value) in table.inner() {
            if warren_common::message::is_warren_header(key.as_str()) {
                prop_assert!(expected.contains(key.as_str()), "{} kept", key);
            } else {
                prop_assert_eq!(Some(value), headers.inner().get(key));
            }
        }
        for key in headers.inner().keys() {
            let ours = warren_common::message::is_warren_header(key.as_str());
            prop_assert_eq!(ours, removed.contains(&key.to_string()));
            if !ours {
                prop_assert!(table.inner().contains_key(key));
            }
        }
    }
}

#[test]
fn warrens_own_reentries_keep_their_bookkeeping() {
    let properties = warren_common::message::with_attempts(BasicProperties::default(), 2);
    let arrival = Arrival {
        from_client: false,
        redelivered: false,
        now_ms: 42,
    };
    let (forwarded, removed) = arrival.forward(&properties, "t1");
    assert_eq!(attempts(&forwarded), 2);
    assert!(removed.is_empty());
    assert!(header_u64(&forwarded, HEADER_SUBMITTED).is_none());
}
