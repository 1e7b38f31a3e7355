//! Retries on the real broker: backoff, attempt counts, the dead queue with its history,
//! timeouts and panics.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::{Value, json};
use warren_common::message::{attempts, header_str};
use warren_common::{HEADER_HISTORY, HEADER_REASON, Status};
use warren_core::retry::AttemptRecord;
use warren_tests::{HandlerError, Handlers, Process, TaskContext, TestEnv};

fn flaky_handlers() -> Handlers {
    let mut registry = Handlers::new();
    registry
        .register("flaky", |task: TaskContext| async move {
            if task.attempt < 3 {
                Err(HandlerError::failed(format!(
                    "attempt {} fails",
                    task.attempt
                )))
            } else {
                Ok(json!("third time lucky"))
            }
        })
        .register("slow-first", |task: TaskContext| async move {
            if task.attempt == 1 {
                // Would take far longer than the timeout; must be cancelled.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    () = task.cancelled.cancelled() => {}
                }
                Err(HandlerError::failed("cancelled"))
            } else {
                Ok(json!("fast now"))
            }
        })
        .register("panicky", |task: TaskContext| async move {
            if task.attempt == 1 {
                panic!("handler bug on attempt 1");
            }
            Ok::<_, HandlerError>(json!("recovered"))
        });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_backoff_until_success_or_death() -> anyhow::Result<()> {
    let mut env = TestEnv::new("retries").await?;
    env.config.tasks.retry_base_ms = 100;
    env.config.tasks.retry_max_ms = 400;
    let dispatcher = env.dispatcher();
    let worker = env.worker("r", 4, flaky_handlers());
    let mut replies = env.reply_queue().await?;
    let mut events = env.watch_events(&["task.retrying", "task.started"]).await?;
    env.submit(json!({"id": "flaky", "kind": "flaky"}), &replies.name)
        .await?;
    env.submit(
        json!({"id": "doomed", "kind": "fail", "max_attempts": 3, "payload": {"error": "always"}}),
        &replies.name,
    )
    .await?;
    env.submit(
        json!({"id": "slow", "kind": "slow-first", "timeout_ms": 300}),
        &replies.name,
    )
    .await?;
    env.submit(json!({"id": "panic", "kind": "panicky"}), &replies.name)
        .await?;
    let ids: Vec<String> = ["flaky", "doomed", "slow", "panic"]
        .map(String::from)
        .into();
    let results = replies.collect(&ids, Duration::from_secs(60)).await?;

    let flaky = &results["flaky"];
    assert_eq!(flaky.len(), 1, "only the final outcome is reported");
    assert_eq!(flaky[0].status, Status::Succeeded);
    assert_eq!(flaky[0].attempts, 3);
    assert_eq!(flaky[0].result, json!("third time lucky"));
    // Two backoffs of at least half of 100 and 200 ms: from each failed attempt's
    // `task.retrying` to the next attempt's `task.started` (less 5 ms: the backoff is carried
    // in whole milliseconds).
    let mut at = std::collections::BTreeMap::new();
    while at.len() < 5 {
        let event = events.next_event(Duration::from_secs(10)).await?;
        if event.id == "flaky" {
            at.insert((event.attempt, event.status.as_str()), event.at);
        }
    }
    for (failed, half_step) in [(1, 50), (2, 100)] {
        let gap = at[&(failed + 1, "started")] - at[&(failed, "retrying")];
        assert!(
            gap >= chrono::Duration::milliseconds(half_step - 5),
            "attempt {} started {gap:?} after attempt {failed} failed",
            failed + 1
        );
    }

    let doomed = &results["doomed"][0];
    assert_eq!(doomed.status, Status::Dead);
    assert_eq!(doomed.attempts, 3);
    assert_eq!(
        doomed.error.as_deref(),
        Some("failed 3 of 3 attempts; last error: always")
    );

    let slow = &results["slow"][0];
    assert_eq!(slow.status, Status::Succeeded, "{slow:?}");
    assert_eq!(slow.attempts, 2);
    assert_eq!(slow.result, json!("fast now"));

    let panicked = &results["panic"][0];
    assert_eq!(panicked.status, Status::Succeeded, "{panicked:?}");
    assert_eq!(panicked.attempts, 2);

    // The dead task sits in the dead queue with its reason and every attempt's history.
    let message = env
        .channel
        .basic_get(
            env.topology.dead_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await?
        .expect("the dead task is in the dead queue");
    let properties = &message.delivery.properties;
    assert_eq!(
        header_str(properties, HEADER_REASON).as_deref(),
        doomed.error.as_deref()
    );
    assert_eq!(attempts(properties), 3);
    let history: Vec<AttemptRecord> =
        serde_json::from_str(&header_str(properties, HEADER_HISTORY).unwrap())?;
    assert_eq!(
        history.iter().map(|h| h.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        history
            .iter()
            .all(|h| h.worker == "r" && h.error == "always")
    );
    let task: Value = serde_json::from_slice(&message.delivery.data)?;
    assert_eq!(task["id"], "doomed");
    message.delivery.ack(BasicAckOptions::default()).await?;

    // The worker that saw a panic still works.
    env.submit(
        json!({"id": "after", "kind": "echo", "payload": 1}),
        &replies.name,
    )
    .await?;
    let after = replies
        .collect(&["after".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(after["after"][0].worker.as_deref(), Some("r"));
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborting_handler_fails_without_retry_and_stays_findable() -> anyhow::Result<()> {
    let env = TestEnv::new("abort").await?;
    let mut handlers = Handlers::new();
    handlers.register("strict", |_: TaskContext| async {
        Err::<Value, _>(HandlerError::abort("payload can never work"))
    });
    let dispatcher = env.dispatcher();
    let worker = env.worker("a", 2, handlers);
    let mut replies = env.reply_queue().await?;
    env.submit(
        json!({"id": "x", "kind": "strict", "max_attempts": 5}),
        &replies.name,
    )
    .await?;
    let results = replies
        .collect(&["x".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(results["x"][0].status, Status::Failed);
    assert_eq!(results["x"][0].attempts, 1);
    // No silent end: it waits in the dead queue, found by id, with why, and can be requeued.
    let (code, listing) = Process::output(&env, "warren", &["dead", "list"]).await?;
    assert_eq!(code, 0);
    let line = listing
        .lines()
        .find(|l| l.starts_with("x "))
        .unwrap_or_else(|| panic!("x not in the dead queue:\n{listing}"));
    assert!(
        line.contains("aborted by its handler: payload can never work"),
        "{line}"
    );
    let (code, out) = Process::output(&env, "warren", &["dead", "requeue", "x"]).await?;
    assert_eq!(code, 0, "{out}");
    let again = replies
        .collect(&["x".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(again["x"][0].status, Status::Failed);
    assert_eq!(
        again["x"][0].attempts, 1,
        "requeued for a fresh set of attempts"
    );
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
