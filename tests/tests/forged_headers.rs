//! The `x-warren-*` header namespace is warren's own: a submitter that sets warren's headers on
//! a submission changes nothing — not the submitter in events, not the attempt count, not the
//! history in the dead queue, not when the task starts, not the idempotency check — and a flood
//! of arbitrary header tables (types, sizes, nesting) runs like any other tasks.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use rand::{Rng, SeedableRng};
use serde_json::json;
use warren_common::message::{attempts, header_str};
use warren_common::{HEADER_SUBMITTER, Status, TaskEvent};
use warren_tests::{Handlers, TestEnv};

/// Every header warren uses, forged: another submitter, attempts already spent, a made-up
/// history, a start an hour from now, and "possibly a duplicate of a copy already sent on".
fn forged() -> FieldTable {
    let hour_ahead = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let history = json!([{"attempt": 7, "worker": "mallory", "error": "forged", "at": "2020-01-01T00:00:00Z"}]);
    let mut headers = FieldTable::default();
    for (key, value) in [
        (
            "x-warren-submitter",
            AMQPValue::LongString("mallory-admin".into()),
        ),
        ("x-warren-attempts", AMQPValue::LongLongInt(5)),
        (
            "x-warren-history",
            AMQPValue::LongString(history.to_string().into()),
        ),
        ("x-warren-not-before", AMQPValue::LongLongInt(hour_ahead)),
        ("x-warren-redelivered", AMQPValue::Boolean(true)),
        ("X-Warren-Attempts", AMQPValue::LongLongInt(9)),
    ] {
        headers.insert(key.into(), value);
    }
    headers
}

async fn publish(
    env: &TestEnv,
    task: serde_json::Value,
    properties: BasicProperties,
) -> anyhow::Result<()> {
    env.publish_raw(&serde_json::to_vec(&task)?, properties)
        .await
}

fn properties(reply_to: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_reply_to(reply_to.into())
        .with_headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_warren_headers_change_nothing() -> anyhow::Result<()> {
    let mut env = TestEnv::new("forged").await?;
    env.config.tasks.retry_base_ms = 100;
    env.config.tasks.retry_max_ms = 200;
    let dispatcher = env.dispatcher();
    let worker = env.worker("w", 4, Handlers::new());
    let mut replies = env.reply_queue().await?;
    let mut events = env.watch_events(&["task.#"]).await?;

    // The same id twice, the second time claiming to be a redelivered copy: without the
    // claim it is a duplicate, answered with the first one's result and not run again.
    publish(
        &env,
        json!({"id": "twice", "kind": "echo", "payload": 1}),
        properties(&replies.name, FieldTable::default()),
    )
    .await?;
    replies
        .collect(&["twice".into()], Duration::from_secs(30))
        .await?;
    publish(
        &env,
        json!({"id": "twice", "kind": "echo", "payload": 2}),
        properties(&replies.name, forged()),
    )
    .await?;
    // A task that fails every attempt, and one that succeeds, published by `guest` with its
    // `user_id` (which RabbitMQ verifies) — both with every header forged.
    publish(
        &env,
        json!({"id": "doomed", "kind": "fail", "max_attempts": 2, "payload": {"error": "no"}}),
        properties(&replies.name, forged()),
    )
    .await?;
    publish(
        &env,
        json!({"id": "fine", "kind": "echo", "payload": "ok"}),
        properties(&replies.name, forged()).with_user_id("guest".into()),
    )
    .await?;
    // An hour's forged delay would leave these waiting far beyond 30 s.
    let results = replies
        .collect(
            &["twice".into(), "doomed".into(), "fine".into()],
            Duration::from_secs(30),
        )
        .await?;

    let twice = &results["twice"][0];
    assert_eq!(
        (twice.status, &twice.result),
        (Status::Succeeded, &json!(1)),
        "answered with the first run's result: {twice:?}"
    );
    let doomed = &results["doomed"][0];
    assert_eq!(doomed.status, Status::Dead);
    assert_eq!(doomed.attempts, 2, "{doomed:?}");
    assert_eq!(
        doomed.error.as_deref(),
        Some("failed 2 of 2 attempts; last error: no")
    );
    let fine = &results["fine"][0];
    assert_eq!((fine.status, fine.attempts), (Status::Succeeded, 1));

    // The dead queue holds warren's own record: two attempts, both on w, no forged submitter.
    let (message, history) = env.dead_letter().await?;
    let dead = &message;
    assert_eq!(attempts(dead), 2);
    let made: Vec<(u32, &str)> = history
        .iter()
        .map(|h| (h.attempt, h.worker.as_str()))
        .collect();
    assert_eq!(made, [(1, "w"), (2, "w")]);
    assert_eq!(header_str(dead, HEADER_SUBMITTER), None);

    // Events name only the verified submitter, and "twice" ran once.
    let seen: Vec<TaskEvent> = events
        .drain_events(Duration::from_secs(2), Duration::from_secs(30))
        .await?;
    for event in &seen {
        let expected = (event.id == "fine").then(|| "guest".to_owned());
        assert_eq!(event.submitter, expected, "{event:?}");
    }
    let started = |id: &str| {
        seen.iter()
            .filter(|e| e.id == id && e.status == Status::Started)
            .count()
    };
    assert_eq!(started("twice"), 1);
    assert_eq!(started("doomed"), 2);
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

/// A random AMQP value, up to `depth` levels of tables and arrays deep.
fn random_value(rng: &mut impl Rng, depth: u32) -> AMQPValue {
    match rng.random_range(0..if depth == 0 { 8 } else { 10 }) {
        0 => AMQPValue::Boolean(rng.random()),
        1 => AMQPValue::LongLongInt(rng.random()),
        2 => AMQPValue::LongInt(rng.random()),
        3 => AMQPValue::Double(rng.random()),
        4 => AMQPValue::Timestamp(rng.random()),
        5 => AMQPValue::Void,
        6 => {
            let len = rng.random_range(0..2_000);
            AMQPValue::LongString(LongString::from(
                (0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>(),
            ))
        }
        7 => AMQPValue::ShortShortUInt(rng.random()),
        8 => AMQPValue::FieldArray(FieldArray::from(
            (0..rng.random_range(0..6))
                .map(|_| random_value(rng, depth - 1))
                .collect::<Vec<_>>(),
        )),
        _ => AMQPValue::FieldTable(random_table(rng, depth - 1)),
    }
}

fn random_table(rng: &mut impl Rng, depth: u32) -> FieldTable {
    const OURS: [&str; 6] = [
        "x-warren-attempts",
        "x-warren-history",
        "x-warren-not-before",
        "x-warren-submitter",
        "x-warren-redelivered",
        "x-warren-submitted",
    ];
    let mut table = FieldTable::default();
    for i in 0..rng.random_range(0..12) {
        let name = if rng.random_bool(0.4) {
            OURS[rng.random_range(0..OURS.len())].to_owned()
        } else {
            format!("h{i}-{}", rng.random::<u16>())
        };
        table.insert(name.into(), random_value(rng, depth));
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_header_tables_run_like_any_task() -> anyhow::Result<()> {
    let env = TestEnv::new("anyheaders").await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("w", 8, Handlers::new());
    let mut replies = env.reply_queue().await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("h{i}");
        let body = serde_json::to_vec(&json!({"id": id, "kind": "echo", "payload": i}))?;
        let properties = properties(&replies.name, random_table(&mut rng, 3));
        env.channel
            .basic_publish(
                env.topology.submit_exchange().as_str().into(),
                "echo".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        ids.push(id);
    }
    let results = replies.collect(&ids, Duration::from_secs(60)).await?;
    for (i, id) in ids.iter().enumerate() {
        let result = &results[id];
        assert_eq!(result.len(), 1, "{id} answered once");
        assert_eq!(
            (result[0].status, result[0].attempts, &result[0].result),
            (Status::Succeeded, 1, &json!(i)),
            "{id}"
        );
    }
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
