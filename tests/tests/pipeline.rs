//! The pipeline end to end on a real broker: submit → dispatcher → priority queues → workers →
//! result.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_common::Status;
use warren_tests::{HandlerError, Registry, TaskContext, TestEnv, ids, tasks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_echo_tasks_across_three_workers_come_back_once_each() -> anyhow::Result<()> {
    let env = TestEnv::new("echo1000").await?;
    let dispatcher = env.dispatcher();
    let workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| env.worker(id, 8, Registry::new()))
        .collect();
    let mut replies = env.reply_queue().await?;
    let batch = tasks(
        1000,
        "echo",
        "echo",
        |i| json!({ "n": i, "text": format!("task {i}") }),
    );
    env.submit_many(&batch, &replies.name).await?;
    let ids = ids(&batch);
    let results = replies.collect(&ids, Duration::from_secs(120)).await?;

    let mut per_worker = std::collections::HashMap::<String, usize>::new();
    for (i, id) in ids.iter().enumerate() {
        let got = &results[id];
        assert_eq!(got.len(), 1, "{id} came back {} times", got.len());
        let result = &got[0];
        assert_eq!(result.status, Status::Succeeded, "{id}: {:?}", result.error);
        assert_eq!(
            result.result,
            json!({ "n": i, "text": format!("task {i}") })
        );
        assert_eq!(result.attempts, 1);
        *per_worker
            .entry(result.worker.clone().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "all three workers took tasks: {per_worker:?}"
    );
    for worker in workers {
        worker.stop().await?;
    }
    dispatcher.stop().await?;
    // Nothing arrived twice, even late: no result is left after the workers stopped.
    let late = replies
        .collect_until(Duration::from_millis(300), |_| false)
        .await
        .err();
    assert!(late.is_some_and(|e| e.to_string().contains("with 0 results")));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_dispatched_high_first() -> anyhow::Result<()> {
    let env = TestEnv::new("backlog").await?;
    let dispatcher = env.dispatcher();
    let mut accepted = env.watch_events(&["task.accepted"]).await?;
    let mut replies = env.reply_queue().await?;
    // Submitted lowest first, interleaved, so arrival order is the opposite of priority.
    let mut batch = Vec::new();
    for i in 0..10 {
        for (name, priority) in [("low", 1), ("normal", 5), ("high", 8)] {
            batch.push(json!({ "id": format!("{name}-{i}"), "kind": "echo", "priority": priority, "payload": name }));
        }
    }
    env.submit_many(&batch, &replies.name).await?;
    accepted
        .events(batch.len(), Duration::from_secs(30))
        .await?;

    let worker = env.worker("only", 1, Registry::new());
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    let mut order: Vec<_> = results.values().map(|r| r[0].clone()).collect();
    order.sort_by_key(|r| r.started_at);
    let levels: Vec<&str> = order.iter().map(|r| r.result.as_str().unwrap()).collect();
    let expected: Vec<&str> = ["high", "normal", "low"]
        .iter()
        .flat_map(|level| std::iter::repeat_n(*level, 10))
        .collect();
    assert_eq!(levels, expected);
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_runs_more_than_its_concurrency() -> anyhow::Result<()> {
    let env = TestEnv::new("concurrency").await?;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut probe = Registry::new();
    {
        let (running, peak) = (running.clone(), peak.clone());
        probe.register("probe", move |_: TaskContext| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Long against the broker round trip, so four are surely running at once.
                tokio::time::sleep(Duration::from_millis(250)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(Value::Null)
            }
        });
    }
    let dispatcher = env.dispatcher();
    let worker = env.worker("four", 4, probe);
    let mut replies = env.reply_queue().await?;
    let batch = tasks(40, "probe", "probe", |_| Value::Null);
    env.submit_many(&batch, &replies.name).await?;
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    assert!(results.values().all(|r| r[0].status == Status::Succeeded));
    assert_eq!(peak.load(Ordering::SeqCst), 4, "peak concurrency");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_handlers_run_real_commands() -> anyhow::Result<()> {
    let mut env = TestEnv::new("exec").await?;
    let handlers: warren_common::config::Config = toml_config(
        r#"
        [handlers.upper]
        command = ["tr", "a-z", "A-Z"]
        [handlers.broken]
        command = ["sh", "-c", "echo 'disk on fire' >&2; exit 2"]
        "#,
    );
    env.config.handlers = handlers.handlers;
    let dispatcher = env.dispatcher();
    let worker = env.worker("exec", 2, Registry::new());
    let mut replies = env.reply_queue().await?;
    env.submit(
        json!({"id": "up", "kind": "upper", "payload": "hello warren"}),
        &replies.name,
    )
    .await?;
    env.submit(
        json!({"id": "broken", "kind": "broken", "max_attempts": 1}),
        &replies.name,
    )
    .await?;
    let results = replies
        .collect(&["up".into(), "broken".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(results["up"][0].status, Status::Succeeded);
    assert_eq!(results["up"][0].result, json!("HELLO WARREN"));
    assert_eq!(results["broken"][0].status, Status::Dead);
    let error = results["broken"][0].error.clone().unwrap();
    assert!(error.contains("disk on fire"), "{error}");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_keep_the_correlation_id_and_failures_say_why() -> anyhow::Result<()> {
    let env = TestEnv::new("results").await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("r", 2, Registry::new());
    let mut replies = env.reply_queue().await?;
    env.submit(
        json!({"id": "f", "kind": "fail", "max_attempts": 1, "payload": {"error": "nope"}}),
        &replies.name,
    )
    .await?;
    let results = replies
        .collect(&["f".into()], Duration::from_secs(30))
        .await?;
    let failed = &results["f"][0];
    assert_eq!(failed.status, Status::Dead);
    assert_eq!(
        failed.error.as_deref(),
        Some("failed 1 of 1 attempts; last error: nope")
    );
    assert_eq!(failed.worker.as_deref(), Some("r"));
    assert!(failed.started_at <= failed.finished_at);
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_only_go_to_workers_with_the_kind() -> anyhow::Result<()> {
    let env = TestEnv::new("kinds").await?;
    let mut special = Registry::new();
    special.register("special", |_: TaskContext| async { Ok(json!("special")) });
    let dispatcher = env.dispatcher();
    let plain = env.worker("plain", 4, Registry::new());
    let capable = env.worker("capable", 4, special);
    let mut replies = env.reply_queue().await?;
    let batch = tasks(20, "special", "s", |_| Value::Null);
    env.submit_many(&batch, &replies.name).await?;
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(30))
        .await?;
    let workers: HashSet<_> = results
        .values()
        .map(|r| r[0].worker.clone().unwrap())
        .collect();
    assert_eq!(workers, HashSet::from(["capable".to_string()]));
    plain.stop().await?;
    capable.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

fn toml_config(text: &str) -> warren_common::config::Config {
    let dir = std::env::temp_dir().join(format!("warren-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, text).unwrap();
    let config = warren_common::config::Config::load(Some(&file)).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    config
}
