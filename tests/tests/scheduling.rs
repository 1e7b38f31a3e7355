//! Scheduling on the real broker: balancers, capability tags, and shortest-job-first with
//! learned run times.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use warren_common::Status;
use warren_common::config::{BalancerName, PolicyName};
use warren_tests::{HandlerError, Handlers, TaskContext, TestEnv, ids, tasks};

/// A registry with one handler `kind` that sleeps `ms`.
fn sleeper(kind: &str, ms: u64) -> Handlers {
    let mut registry = Handlers::new();
    registry.register(kind, move |_: TaskContext| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(Value::Null)
    });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_gives_the_fast_worker_clearly_more_tasks() -> anyhow::Result<()> {
    let mut env = TestEnv::new("leastloaded").await?;
    env.config.dispatcher.balancer = BalancerName::LeastLoaded;
    let mut online = env.watch_events(&["worker.online"]).await?;
    let dispatcher = env.dispatcher();
    // The slow worker's run time dwarfs the broker round trip (publish, confirm, event) even on
    // a busy machine, so the comparison measures the balancer, not the broker's latency.
    let fast = env.worker("fast", 2, sleeper("work", 1));
    let slow = env.worker("slow", 2, sleeper("work", 1500));
    // Both must be known before the tasks arrive, or the first one up takes the early ones.
    let mut joined = std::collections::HashSet::new();
    while joined.len() < 2 {
        let beat = online.next_json(Duration::from_secs(30)).await?;
        joined.insert(beat["worker"].as_str().unwrap_or_default().to_owned());
    }
    let mut replies = env.reply_queue().await?;
    let batch = tasks(120, "work", "work", |_| Value::Null);
    env.submit_many(&batch, &replies.name).await?;
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    let mut per_worker = HashMap::<String, usize>::new();
    for result in results.values() {
        assert_eq!(result[0].status, Status::Succeeded);
        *per_worker
            .entry(result[0].worker.clone().unwrap())
            .or_default() += 1;
    }
    let (f, s) = (
        per_worker["fast"],
        per_worker.get("slow").copied().unwrap_or(0),
    );
    assert!(f >= 2 * s, "fast {f} vs slow {s}");
    fast.stop().await?;
    slow.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_requiring_a_tag_run_only_where_it_is_advertised() -> anyhow::Result<()> {
    let env = TestEnv::new("requires").await?;
    let dispatcher = env.dispatcher();
    let plain = env.worker("plain", 4, Handlers::new());
    let mut gpu_config = env.config.clone();
    gpu_config.worker.id = Some("gpu".into());
    gpu_config.worker.tags = vec!["gpu".into()];
    let gpu = env.worker_with(gpu_config, Handlers::new());
    let mut replies = env.reply_queue().await?;
    let mut batch = Vec::new();
    for i in 0..30 {
        batch.push(json!({"id": format!("gpu-{i}"), "kind": "echo", "requires": ["gpu"]}));
        batch.push(json!({"id": format!("any-{i}"), "kind": "echo"}));
    }
    env.submit_many(&batch, &replies.name).await?;
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    for (id, result) in &results {
        if id.starts_with("gpu-") {
            assert_eq!(result[0].worker.as_deref(), Some("gpu"), "{id}");
        }
    }
    assert!(
        results
            .values()
            .any(|r| r[0].worker.as_deref() == Some("plain"))
    );
    plain.stop().await?;
    gpu.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sjf_runs_the_short_kind_first_once_run_times_are_learned() -> anyhow::Result<()> {
    let mut env = TestEnv::new("sjf").await?;
    env.config.dispatcher.policy = PolicyName::Sjf;
    let handlers = || {
        let mut registry = sleeper("long", 120);
        registry.merge(sleeper("short", 5));
        registry
    };
    let dispatcher = env.dispatcher();
    let mut replies = env.reply_queue().await?;

    // Learn: a few of each kind.
    let learner = env.worker("learner", 2, handlers());
    let mut warmup = tasks(3, "long", "warm-long", |_| Value::Null);
    warmup.extend(tasks(3, "short", "warm-short", |_| Value::Null));
    env.submit_many(&warmup, &replies.name).await?;
    replies
        .collect(&ids(&warmup), Duration::from_secs(30))
        .await?;
    learner.stop().await?;

    // A backlog, long ones submitted first, while no worker runs.
    let mut accepted = env.watch_events(&["task.accepted"]).await?;
    let mut backlog = tasks(5, "long", "long", |_| Value::Null);
    backlog.extend(tasks(5, "short", "short", |_| Value::Null));
    env.submit_many(&backlog, &replies.name).await?;
    accepted
        .events(backlog.len(), Duration::from_secs(30))
        .await?;

    let worker = env.worker("runner", 1, handlers());
    let results = replies
        .collect(&ids(&backlog), Duration::from_secs(60))
        .await?;
    let mut order: Vec<_> = results.values().map(|r| r[0].clone()).collect();
    order.sort_by_key(|r| r.started_at);
    let kinds: Vec<&str> = order.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, [["short"; 5], ["long"; 5]].concat(), "{order:#?}");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
