//! The pipeline end to end on a real broker: submit → dispatcher → priority queues → workers →
//! result.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_common::Status;
use warren_tests::{HandlerError, Handlers, TaskContext, TestEnv, ids, tasks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_echo_tasks_across_three_workers_come_back_once_each() -> anyhow::Result<()> {
    let env = TestEnv::new("echo1000").await?;
    let dispatcher = env.dispatcher();
    let workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| env.worker(id, 8, Handlers::new()))
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

    let worker = env.worker("only", 1, Handlers::new());
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
    let mut probe = Handlers::new();
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
async fn a_worker_keeps_within_its_slots_and_units_whatever_its_queue_holds() -> anyhow::Result<()>
{
    // No dispatcher: tasks are put straight into the worker's queue, as a dispatcher's
    // lookahead (or one that adopted tasks of unknown cost) may have queued them, and the worker
    // prefetches more than its slots. 3 slots and 4 units: tasks costing 2 run 2 at once (units
    // bind), tasks costing 1 run 3 at once (slots bind).
    let env = TestEnv::new("capacity").await?;
    let units = Arc::new(AtomicUsize::new(0));
    let tasks_running = Arc::new(AtomicUsize::new(0));
    let peaks = Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let mut probe = Handlers::new();
    {
        let (units, tasks_running, peaks) = (units.clone(), tasks_running.clone(), peaks.clone());
        probe.register("heavy", move |task: TaskContext| {
            let (units, tasks_running, peaks) =
                (units.clone(), tasks_running.clone(), peaks.clone());
            async move {
                let cost = task.payload.as_u64().unwrap_or(1) as usize;
                let now_units = units.fetch_add(cost, Ordering::SeqCst) + cost;
                let now_tasks = tasks_running.fetch_add(1, Ordering::SeqCst) + 1;
                {
                    let mut peaks = peaks.lock().unwrap();
                    peaks.0 = peaks.0.max(now_units);
                    peaks.1 = peaks.1.max(now_tasks);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                tasks_running.fetch_sub(1, Ordering::SeqCst);
                units.fetch_sub(cost, Ordering::SeqCst);
                Ok::<_, HandlerError>(Value::Null)
            }
        });
    }
    let (worker, queue) = lone_worker(&env, "small", 3, Some(4), probe).await?;
    let mut replies = env.reply_queue().await?;
    for (cost, expected) in [(2, (4, 2)), (1, (3, 3))] {
        *peaks.lock().unwrap() = (0, 0);
        let batch: Vec<Value> = (0..9)
            .map(|i| json!({ "id": format!("cost{cost}-{i}"), "kind": "heavy", "cost": cost, "payload": cost }))
            .collect();
        env.queue_directly(&queue, &batch, &replies.name).await?;
        let results = replies
            .collect(&ids(&batch), Duration::from_secs(60))
            .await?;
        assert!(results.values().all(|r| r[0].status == Status::Succeeded));
        let peaks = *peaks.lock().unwrap();
        assert_eq!(peaks, expected, "cost {cost}: peak (units, tasks) running");
    }
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starts_the_tasks_it_holds_in_the_order_they_were_queued() -> anyhow::Result<()> {
    // The dispatcher decides the order of a worker's queue; the worker must keep it, though it
    // holds several deliveries at once (it prefetches more than its slots) and each runs in its
    // own tokio task. One slot; the first task waits until all are queued, so the rest pile up.
    let env = TestEnv::new("inorder").await?;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut probe = Handlers::new();
    {
        let (order, gate) = (order.clone(), gate.clone());
        probe.register("seq", move |task: TaskContext| {
            let (order, gate) = (order.clone(), gate.clone());
            async move {
                let n = task.payload.as_u64().unwrap_or(0);
                if n == 0 {
                    let _ = gate.acquire().await;
                }
                order.lock().unwrap().push(n);
                Ok::<_, HandlerError>(Value::Null)
            }
        });
    }
    let (worker, queue) = lone_worker(&env, "inorder", 1, None, probe).await?;
    let mut replies = env.reply_queue().await?;
    let batch: Vec<Value> = (0..300)
        .map(|i| json!({ "id": format!("seq-{i}"), "kind": "seq", "payload": i }))
        .collect();
    env.queue_directly(&queue, &batch, &replies.name).await?;
    gate.add_permits(1);
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    assert!(results.values().all(|r| r[0].status == Status::Succeeded));
    let order = order.lock().unwrap().clone();
    let misplaced: Vec<_> = order.windows(2).filter(|pair| pair[0] > pair[1]).collect();
    assert!(misplaced.is_empty(), "started out of order: {misplaced:?}");
    worker.stop().await?;
    env.cleanup().await
}

/// Starts worker `id` with `concurrency` slots (and `capacity` units, if given), no dispatcher,
/// and waits until it consumes its queue (it declares the queue as it starts): the worker and
/// its queue, for tests that put tasks straight into it.
async fn lone_worker(
    env: &TestEnv,
    id: &str,
    concurrency: u32,
    capacity: Option<u32>,
    handlers: Handlers,
) -> anyhow::Result<(warren_tests::Component, String)> {
    let mut config = env.config.clone();
    config.worker.id = Some(id.into());
    config.worker.concurrency = concurrency;
    config.worker.capacity = capacity;
    let worker = env.worker_with(config, handlers);
    let queue = env.topology.worker_queue(id);
    warren_tests::wait_for("the worker to consume", Duration::from_secs(20), || async {
        env.consumers(&queue).await.unwrap_or(0) == 1
    })
    .await?;
    Ok((worker, queue))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_hands_back_the_tasks_it_had_not_started() -> anyhow::Result<()> {
    // One slot, three tasks in its queue: all three are delivered (the worker prefetches more
    // than its slots), one runs. On SIGTERM the running one finishes within the grace period;
    // the two waiting ones never start and go back to the most urgent priority queue.
    let env = TestEnv::new("waiting").await?;
    let started = Arc::new(AtomicUsize::new(0));
    let mut probe = Handlers::new();
    {
        let started = started.clone();
        probe.register("slow", move |_: TaskContext| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, HandlerError>(Value::Null)
            }
        });
    }
    let (worker, queue) = lone_worker(&env, "one", 1, None, probe).await?;
    let mut replies = env.reply_queue().await?;
    let batch = tasks(3, "slow", "wait", |_| Value::Null);
    env.queue_directly(&queue, &batch, &replies.name).await?;
    warren_tests::wait_for(
        "one task running, the others delivered",
        Duration::from_secs(20),
        || async {
            started.load(Ordering::SeqCst) == 1 && env.depth(&queue).await.unwrap_or(1) == 0
        },
    )
    .await?;
    worker.stop().await?;
    let results = replies
        .collect_until(Duration::from_secs(10), |r| !r.is_empty())
        .await?;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(started.load(Ordering::SeqCst), 1, "tasks started");
    assert_eq!(env.depth(&env.topology.level_queue(0)).await?, 2);
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
    let worker = env.worker("exec", 2, Handlers::new());
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
    let worker = env.worker("r", 2, Handlers::new());
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
    let mut special = Handlers::new();
    special.register("special", |_: TaskContext| async { Ok(json!("special")) });
    let dispatcher = env.dispatcher();
    let plain = env.worker("plain", 4, Handlers::new());
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
