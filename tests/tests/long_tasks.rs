//! Tasks longer than the broker's `consumer_timeout` run once, on test-started broker nodes
//! (the local cluster, or the RabbitMQ 4 node) that close any channel that holds a delivery
//! unacked for 10 s: a 90 s task, four at once on
//! one worker, and a task that waits 90 s for a worker in the dispatcher's window all run once
//! with one result each; and a worker `kill -9`ed in the middle of renewed tasks loses none.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use warren_common::Status;
use warren_tests::{CLUSTER_LOCK, Cluster, Process, Replies, TestEnv};

/// The cluster's nodes close a channel holding a delivery unacked this long.
const CONSUMER_TIMEOUT_MS: u64 = 10_000;

/// Brings up test-started broker nodes with a 10 s consumer_timeout (for channels opened from
/// now on) and an environment that knows it: the local cluster, or, with
/// `WARREN_TEST_BROKER=rabbit4`, the RabbitMQ 4 node of `scripts/rabbit4.sh` that
/// `WARREN_TEST_AMQP_URL` points at (`scripts/test` starts it).
async fn short_timeout_broker(prefix: &str) -> anyhow::Result<(Option<Cluster>, TestEnv)> {
    let setting = format!("application:set_env(rabbit, consumer_timeout, {CONSUMER_TIMEOUT_MS}).");
    let (cluster, mut env) = if std::env::var("WARREN_TEST_BROKER").as_deref() == Ok("rabbit4") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbit4.sh");
        let status = std::process::Command::new("bash")
            .args([script, "ctl", "eval", &setting])
            .status()?;
        anyhow::ensure!(status.success(), "rabbit4.sh ctl eval failed");
        (None, TestEnv::new(prefix).await?)
    } else {
        let cluster = Cluster::up()?;
        for node in ["1", "2", "3"] {
            cluster.run(&["cli", node, "rabbitmqctl", "eval", &setting])?;
        }
        let urls = cluster.urls();
        let env = TestEnv::on(prefix, urls.clone(), &urls[0]).await?;
        (Some(cluster), env)
    };
    env.config.amqp.consumer_timeout_ms = CONSUMER_TIMEOUT_MS;
    Ok((cluster, env))
}

/// `task.started` events per task id, read until none has come for `quiet`.
async fn starts(events: &mut Replies) -> anyhow::Result<HashMap<String, usize>> {
    let mut count = HashMap::new();
    for event in events
        .drain_events(Duration::from_secs(2), Duration::from_secs(60))
        .await?
    {
        if event.status == Status::Started {
            *count.entry(event.id).or_default() += 1;
        }
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_nine_times_longer_than_the_consumer_timeout_run_once() -> anyhow::Result<()> {
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let (cluster, env) = short_timeout_broker("longtasks").await?;
    let dispatcher = env.dispatcher();
    let mut worker = Process::start(
        &env,
        "warren-worker",
        &[
            ("WARREN__WORKER__ID", "w1"),
            ("WARREN__WORKER__CONCURRENCY", "4"),
        ],
    )?;
    let mut replies = env.reply_queue().await?;
    let mut events = env.watch_events(&["task.started"]).await?;
    // Four 90 s tasks fill the worker's four slots; the echo task waits in the dispatcher's
    // window until one is free, 90 s later.
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = format!("long-{i}");
        env.submit(
            json!({"id": id, "kind": "sleep", "payload": {"ms": 90_000}, "timeout_ms": 300_000}),
            &replies.name,
        )
        .await?;
        ids.push(id);
    }
    env.submit(
        json!({"id": "behind", "kind": "echo", "payload": 1}),
        &replies.name,
    )
    .await?;
    ids.push("behind".into());
    let results = replies
        .collect_until(Duration::from_secs(200), |r| {
            ids.iter().all(|id| r.contains_key(id))
        })
        .await?;
    // Any duplicate result would have arrived by now.
    let late = replies
        .collect_until(Duration::from_secs(3), |_| false)
        .await;
    anyhow::ensure!(late.is_err(), "a second result arrived: {late:?}");
    for id in &ids {
        let result = &results[id];
        assert_eq!(result.len(), 1, "{id}: {result:?}");
        assert_eq!(
            (result[0].status, result[0].attempts),
            (Status::Succeeded, 1),
            "{id}"
        );
    }
    let started = starts(&mut events).await?;
    for id in &ids {
        assert_eq!(
            started.get(id),
            Some(&1),
            "{id} started {:?} times",
            started.get(id)
        );
    }
    worker.terminate()?;
    worker.wait(Duration::from_secs(30)).await?;
    dispatcher.stop().await?;
    env.cleanup().await?;
    drop(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_its_renewed_tasks_run_loses_none() -> anyhow::Result<()> {
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let (cluster, env) = short_timeout_broker("longkill").await?;
    let dispatcher = env.dispatcher();
    let mut doomed = Process::start(
        &env,
        "warren-worker",
        &[
            ("WARREN__WORKER__ID", "doomed"),
            ("WARREN__WORKER__CONCURRENCY", "4"),
        ],
    )?;
    let mut replies = env.reply_queue().await?;
    let mut events = env.watch_events(&["task.started"]).await?;
    let ids: Vec<String> = (0..4).map(|i| format!("renewed-{i}")).collect();
    for id in &ids {
        env.submit(
            json!({"id": id, "kind": "sleep", "payload": {"ms": 30_000}, "timeout_ms": 300_000}),
            &replies.name,
        )
        .await?;
    }
    events.events(ids.len(), Duration::from_secs(30)).await?;
    // Past the consumer_timeout: every delivery has been renewed at least once.
    tokio::time::sleep(Duration::from_millis(CONSUMER_TIMEOUT_MS + 2_000)).await;
    doomed.kill()?;
    doomed.wait(Duration::from_secs(10)).await?;
    let rescue = Process::start(
        &env,
        "warren-worker",
        &[
            ("WARREN__WORKER__ID", "rescue"),
            ("WARREN__WORKER__CONCURRENCY", "4"),
        ],
    )?;
    let results = replies.collect(&ids, Duration::from_secs(120)).await?;
    for id in &ids {
        let result = &results[id];
        assert_eq!(result.len(), 1, "{id}: {result:?}");
        // The attempt lost with the killed worker counts.
        assert_eq!(
            (
                result[0].status,
                result[0].attempts,
                result[0].worker.as_deref()
            ),
            (Status::Succeeded, 2, Some("rescue")),
            "{id}"
        );
    }
    let mut rescue = rescue;
    rescue.terminate()?;
    rescue.wait(Duration::from_secs(30)).await?;
    dispatcher.stop().await?;
    env.cleanup().await?;
    drop(cluster);
    Ok(())
}

/// warren renews what it holds after half of `amqp.consumer_timeout_ms` whatever the broker's
/// own timeout, so this runs on the shared broker, which it does not reconfigure: a worker told
/// to stop while its tasks' deliveries are being renewed lets them finish, and none of them
/// runs a second time from a renewed copy left in its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_renewed_tasks_once() -> anyhow::Result<()> {
    let mut env = TestEnv::new("renewdrain").await?;
    // Renew every second.
    env.config.amqp.consumer_timeout_ms = 2_000;
    let dispatcher = env.dispatcher();
    let mut worker = Process::start(
        &env,
        "warren-worker",
        &[
            ("WARREN__WORKER__ID", "drains"),
            ("WARREN__WORKER__CONCURRENCY", "2"),
        ],
    )?;
    let mut replies = env.reply_queue().await?;
    let mut events = env.watch_events(&["task.started"]).await?;
    let ids: Vec<String> = (0..2).map(|i| format!("drain-{i}")).collect();
    for id in &ids {
        env.submit(
            json!({"id": id, "kind": "sleep", "payload": {"ms": 6_000}}),
            &replies.name,
        )
        .await?;
    }
    events.events(ids.len(), Duration::from_secs(30)).await?;
    // Renewed a few times, then told to stop: the tasks finish within the grace period.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    worker.terminate()?;
    let status = worker.wait(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "worker exited with {status}");
    let rescue = env.worker("rescue", 2, warren_tests::Handlers::new());
    let results = replies.collect(&ids, Duration::from_secs(30)).await?;
    // A rerun from a leftover copy would start again on the rescue worker.
    let late = replies
        .collect_until(Duration::from_secs(8), |_| false)
        .await;
    anyhow::ensure!(late.is_err(), "a second result arrived: {late:?}");
    for id in &ids {
        assert_eq!(results[id].len(), 1, "{id}");
        assert_eq!(
            (results[id][0].status, results[id][0].worker.as_deref()),
            (Status::Succeeded, Some("drains")),
            "{id}"
        );
    }
    let started = starts(&mut events).await?;
    assert!(started.is_empty(), "started again: {started:?}");
    rescue.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
