//! `/metrics` and `/healthz` of a running dispatcher and worker: valid Prometheus text (read
//! by a real parser) that counts what really happened.

use std::time::Duration;

use anyhow::bail;
use lapin::BasicProperties;
use serde_json::{Value, json};
use warren_tests::{Handlers, TestEnv, free_port, http_get as get, ids, tasks, wait_for};

/// Scrapes `/metrics` and parses it with a Prometheus text-format parser.
async fn scrape(port: u16) -> anyhow::Result<prometheus_parse::Scrape> {
    let (code, body) = get(port, "/metrics").await?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    Ok(prometheus_parse::Scrape::parse(lines)?)
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_tell_what_happened() -> anyhow::Result<()> {
    let mut env = TestEnv::new("metrics").await?;
    let (dispatcher_port, worker_port) = (free_port()?, free_port()?);
    env.config.dispatcher.metrics_listen = format!("127.0.0.1:{dispatcher_port}");
    let dispatcher = env.dispatcher();
    let mut worker_config = env.config.clone();
    worker_config.worker.id = Some("metered".into());
    worker_config.worker.concurrency = 3;
    worker_config.worker.metrics_listen = format!("127.0.0.1:{worker_port}");
    let worker = env.worker_with(worker_config, Handlers::new());

    // Once it routes and knows the worker, submissions take the fast path.
    wait_for(
        "the dispatcher to route",
        Duration::from_secs(20),
        || async {
            let Ok(s) = scrape(dispatcher_port).await else {
                return false;
            };
            value(&s, "warren_workers", &[]) == Some(1.0)
                && value(&s, "warren_leader", &[]) == Some(1.0)
        },
    )
    .await?;
    let mut replies = env.reply_queue().await?;
    let mut batch = tasks(20, "echo", "ok", |i| json!(i));
    batch.push(json!({"id": "boom", "kind": "fail", "max_attempts": 1}));
    env.submit_many(&batch, &replies.name).await?;
    env.publish_raw(b"{not json", BasicProperties::default())
        .await?;
    replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;

    // Gauges follow within a liveness tick (250 ms) and a depth poll (2 s).
    let rejected = env.topology.rejected_queue();
    wait_for(
        "the gauges to catch up",
        Duration::from_secs(20),
        || async {
            let Ok(s) = scrape(dispatcher_port).await else {
                return false;
            };
            value(&s, "warren_workers", &[]) == Some(1.0)
                && value(&s, "warren_leader", &[]) == Some(1.0)
                && value(&s, "warren_queue_messages", &[("queue", &rejected)]) == Some(1.0)
        },
    )
    .await?;

    let d = scrape(dispatcher_port).await?;
    let count = |name, labels: &[(&str, &str)]| value(&d, name, labels).unwrap_or(-1.0);
    assert_eq!(
        count(
            "warren_dispatcher_tasks_total",
            &[("status", "accepted"), ("kind", "echo")]
        ),
        20.0
    );
    assert_eq!(
        count(
            "warren_dispatcher_tasks_total",
            &[("status", "dispatched"), ("kind", "echo")]
        ),
        20.0
    );
    assert_eq!(
        count(
            "warren_dispatcher_tasks_total",
            &[("status", "rejected"), ("kind", "")]
        ),
        1.0
    );
    assert_eq!(count("warren_dispatch_latency_seconds_count", &[]), 21.0);
    // Three idle slots: the first tasks at least went from intake straight to the worker.
    let fast = count("warren_dispatcher_fast_path_total", &[]);
    assert!((1.0..=21.0).contains(&fast), "fast path {fast}");
    assert_eq!(count("warren_held_tasks", &[]), 0.0);
    assert_eq!(count("warren_departed_workers", &[]), 0.0);
    for level in 0..env.topology.levels.len() {
        let queue = env.topology.level_queue(level);
        assert_eq!(count("warren_queue_messages", &[("queue", &queue)]), 0.0);
    }
    assert_eq!(
        count(
            "warren_queue_consumers",
            &[("queue", &env.topology.intake_queue())]
        ),
        1.0
    );

    let w = scrape(worker_port).await?;
    let count = |name, labels: &[(&str, &str)]| value(&w, name, labels).unwrap_or(-1.0);
    assert_eq!(
        count(
            "warren_worker_tasks_total",
            &[("status", "succeeded"), ("kind", "echo")]
        ),
        20.0
    );
    assert_eq!(
        count(
            "warren_worker_tasks_total",
            &[("status", "dead"), ("kind", "fail")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "warren_worker_task_duration_seconds_count",
            &[("kind", "echo")]
        ),
        20.0
    );
    assert_eq!(count("warren_worker_in_flight", &[]), 0.0);
    assert_eq!(count("warren_worker_concurrency", &[]), 3.0);
    // Every family is documented and typed.
    for scrape in [&d, &w] {
        for sample in &scrape.samples {
            let family = sample
                .metric
                .trim_end_matches("_total")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .trim_end_matches("_bucket");
            assert!(
                scrape.docs.contains_key(family),
                "no HELP for {}",
                sample.metric
            );
        }
    }

    let (code, body) = get(dispatcher_port, "/healthz").await?;
    let health: Value = serde_json::from_str(&body)?;
    assert_eq!(code, 200);
    assert_eq!(health["role"], "leader");
    let (code, _) = get(worker_port, "/healthz").await?;
    assert_eq!(code, 200);

    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
