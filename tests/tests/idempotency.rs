//! Idempotency: a task id submitted again within the window runs once, and every submitter
//! gets the result — whether the second copy arrives while the first waits, while it runs, or
//! after it finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use warren_common::Status;
use warren_tests::{HandlerError, Handlers, TaskContext, TestEnv};

/// A handler `count` that sleeps `ms`, counts its runs per task id, and returns its payload.
fn counting(ms: u64) -> (Handlers, Arc<Mutex<HashMap<String, usize>>>) {
    let runs = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut registry = Handlers::new();
    let counter = runs.clone();
    registry.register("count", move |task: TaskContext| {
        let counter = counter.clone();
        async move {
            *counter
                .lock()
                .expect("not poisoned")
                .entry(task.id.clone())
                .or_default() += 1;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(task.payload)
        }
    });
    (registry, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_submitted_twice_runs_once_and_both_get_the_result() -> anyhow::Result<()> {
    let env = TestEnv::new("idempotency").await?;
    let dispatcher = env.dispatcher();
    let (handlers, runs) = counting(600);
    let worker = env.worker("once", 4, handlers);
    let mut first = env.reply_queue().await?;
    let mut second = env.reply_queue().await?;
    let mut third = env.reply_queue().await?;
    let task = |n: u32| json!({"id": "same", "kind": "count", "payload": {"n": n}});

    // The second copy arrives while the first runs (600 ms).
    let mut started = env.watch_events(&["task.started"]).await?;
    env.submit(task(1), &first.name).await?;
    started.next_event(Duration::from_secs(30)).await?;
    env.submit(task(2), &second.name).await?;
    let a = first
        .collect(&["same".into()], Duration::from_secs(30))
        .await?;
    let b = second
        .collect(&["same".into()], Duration::from_secs(30))
        .await?;
    for result in [&a["same"][0], &b["same"][0]] {
        assert_eq!(result.status, Status::Succeeded);
        assert_eq!(
            result.result,
            json!({"n": 1}),
            "the first submission's result"
        );
        assert_eq!(result.worker.as_deref(), Some("once"));
    }

    // A third copy after it finished is answered from the window at once.
    env.submit(task(3), &third.name).await?;
    let c = third
        .collect(&["same".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(c["same"][0].status, Status::Succeeded);
    assert_eq!(c["same"][0].result, json!({"n": 1}));
    assert_eq!(runs.lock().expect("not poisoned")["same"], 1, "ran once");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_waiting_side_by_side_run_once() -> anyhow::Result<()> {
    let env = TestEnv::new("twins").await?;
    let dispatcher = env.dispatcher();
    let mut first = env.reply_queue().await?;
    let mut second = env.reply_queue().await?;
    // No worker yet: both copies are held in the dispatcher's window together.
    env.submit(
        json!({"id": "twin", "kind": "count", "payload": "a"}),
        &first.name,
    )
    .await?;
    env.submit(
        json!({"id": "twin", "kind": "count", "payload": "b"}),
        &second.name,
    )
    .await?;
    let other = json!({"id": "other", "kind": "count", "payload": "c"});
    env.submit(other, &first.name).await?;
    let (handlers, runs) = counting(50);
    let worker = env.worker("late", 4, handlers);
    let a = first
        .collect(&["twin".into(), "other".into()], Duration::from_secs(30))
        .await?;
    let b = second
        .collect(&["twin".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(a["twin"][0].result, b["twin"][0].result);
    assert_eq!(a["twin"][0].result, Value::from("a"));
    assert_eq!(a["other"][0].result, Value::from("c"));
    let runs = runs.lock().expect("not poisoned").clone();
    assert_eq!(runs.get("twin"), Some(&1), "{runs:?}");
    assert_eq!(runs.get("other"), Some(&1), "{runs:?}");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
