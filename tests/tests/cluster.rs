//! Broker node death on the local 3-node cluster (scripts/cluster.sh): 10,000 tasks flow while
//! the node leading the most queues is killed and later restarted (every task completes, and
//! nothing the broker confirmed to the client is lost); the chaos run; a worker stopped while a
//! node is down.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use warren_common::{Status, TaskResult};
use warren_tests::{CLUSTER_LOCK, Cluster, Handlers, TestEnv, ids, tasks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_the_death_of_the_busiest_broker_node() -> anyhow::Result<()> {
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let cluster = Cluster::up()?;
    let urls = cluster.urls();
    // Components start on node 1 (the first URL), which therefore leads the queues they
    // declare; the client talks to node 2 unless node 2 turns out to be the busiest.
    let env = TestEnv::on("nodedeath", urls.clone(), &urls[1]).await?;
    let dispatcher = env.dispatcher();
    let workers: Vec<_> = (1..=3)
        .map(|i| env.worker(&format!("w{i}"), 16, Handlers::new()))
        .collect();
    let mut replies = env.reply_queue().await?;
    env.round_trip(
        &mut replies,
        json!({"id": "probe", "kind": "noop"}),
        Duration::from_secs(60),
    )
    .await?;
    let victim = cluster.busiest_node(&env.config.topology.prefix)?;
    anyhow::ensure!(
        victim != 2,
        "the client's own node leads most queues; test set-up is off"
    );
    let started = std::time::Instant::now();
    eprintln!("node {victim} leads the most queues; killing it mid-run");

    let batch = tasks(10_000, "noop", "n", |_| json!(null));
    let ids = ids(&batch);
    let (first, second) = batch.split_at(5_000);
    env.submit_many(first, &replies.name).await?;
    let mut results: HashMap<String, Vec<TaskResult>> = replies
        .collect_until(Duration::from_secs(120), |r| r.len() >= 2_000)
        .await?;
    cluster.run(&["kill", &victim.to_string()])?;
    eprintln!(
        "{:.1}s: killed node {victim} at {} results",
        started.elapsed().as_secs_f64(),
        results.len()
    );
    // Submitting goes on while the node is down: every publish is confirmed by the survivors.
    env.submit_many(second, &replies.name).await?;
    let more = replies
        .collect_until(Duration::from_secs(180), |r| {
            r.len() + results.len() >= 7_000
        })
        .await?;
    merge(&mut results, more);
    cluster.run(&["start", &victim.to_string()])?;
    eprintln!(
        "{:.1}s: restarted node {victim} at {} results",
        started.elapsed().as_secs_f64(),
        results.len()
    );
    let seen = results.clone();
    let rest = replies
        .collect_until(Duration::from_secs(240), |r| {
            ids.iter()
                .all(|id| seen.contains_key(id) || r.contains_key(id))
        })
        .await?;
    merge(&mut results, rest);
    let duplicates = ids.iter().filter(|id| results[*id].len() > 1).count();
    for id in &ids {
        assert!(
            results[id].iter().all(|r| r.status == Status::Succeeded),
            "{id}"
        );
    }
    eprintln!(
        "{:.1}s: 10000 tasks completed; {duplicates} ran more than once (at-least-once)",
        started.elapsed().as_secs_f64()
    );
    for worker in workers {
        worker.stop().await?;
    }
    dispatcher.stop().await?;
    env.cleanup().await?;
    drop(cluster);
    Ok(())
}

fn merge(into: &mut HashMap<String, Vec<TaskResult>>, from: HashMap<String, Vec<TaskResult>>) {
    for (id, mut results) in from {
        into.entry(id).or_default().append(&mut results);
    }
}

/// The chaos run: one 20,000-task run on the cluster during which a worker, the leading
/// dispatcher and the busiest broker node are each killed with SIGKILL (the node restarted
/// later). Prints `submitted / completed / lost / duplicated`; lost must be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_a_worker_the_leader_and_a_broker_node_in_one_run() -> anyhow::Result<()> {
    use warren_tests::Process;
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let cluster = Cluster::up()?;
    let urls = cluster.urls();
    let env = TestEnv::on("chaos", urls.clone(), &urls[1]).await?;
    let started = std::time::Instant::now();
    let mut leader = Process::start(&env, "warren-dispatcher", &[])?;
    let mut replies = env.reply_queue().await?;
    let mut workers = Process::workers(&env, 3, 16)?;
    env.round_trip(
        &mut replies,
        json!({"id": "probe", "kind": "noop"}),
        Duration::from_secs(60),
    )
    .await?;
    let standby = Process::start(&env, "warren-dispatcher", &[])?;
    let victim = cluster.busiest_node(&env.config.topology.prefix)?;
    anyhow::ensure!(
        victim != 2,
        "the client's own node leads most queues; test set-up is off"
    );

    let batch = tasks(20_000, "sleep", "c", |i| json!({ "ms": (i % 5) as u64 }));
    let ids = ids(&batch);
    let mut results: HashMap<String, Vec<TaskResult>> = HashMap::new();
    let quarter = batch.len() / 4;
    for (step, chunk) in batch.chunks(quarter).enumerate() {
        env.submit_many(chunk, &replies.name).await?;
        let target = (step + 1) * quarter * 3 / 4;
        let seen = results.len();
        let more = replies
            .collect_until(Duration::from_secs(300), |r| seen + r.len() >= target)
            .await?;
        merge(&mut results, more);
        let at = started.elapsed().as_secs_f64();
        match step {
            0 => {
                workers[0].kill()?;
                eprintln!("{at:.1}s: killed worker w1 at {} results", results.len());
            }
            1 => {
                leader.kill()?;
                eprintln!(
                    "{at:.1}s: killed the leading dispatcher at {} results",
                    results.len()
                );
            }
            2 => {
                cluster.run(&["kill", &victim.to_string()])?;
                eprintln!(
                    "{at:.1}s: killed broker node {victim} at {} results",
                    results.len()
                );
            }
            _ => {
                cluster.run(&["start", &victim.to_string()])?;
                eprintln!("{at:.1}s: restarted broker node {victim}");
            }
        }
    }
    let seen = results.clone();
    let rest = replies
        .collect_until(Duration::from_secs(600), |r| {
            ids.iter()
                .all(|id| seen.contains_key(id) || r.contains_key(id))
        })
        .await?;
    merge(&mut results, rest);
    let completed = ids.iter().filter(|id| results.contains_key(*id)).count();
    let duplicated = ids.iter().filter(|id| results[*id].len() > 1).count();
    let lost = ids.len() - completed;
    eprintln!(
        "chaos: submitted {} / completed {completed} / lost {lost} / duplicated {duplicated} in {:.0} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0);
    for mut process in workers.into_iter().skip(1).chain([standby]) {
        process.terminate()?;
        process.wait(Duration::from_secs(60)).await?;
    }
    let _ = leader.wait(Duration::from_secs(5)).await;
    env.cleanup().await?;
    drop(cluster);
    Ok(())
}

/// A worker stopped while a broker node is down: the broker still counts the consumer it had
/// through that node (until the node is back), so the worker cannot see its queue free. It
/// stops within its patience anyway and says no goodbye. The node stays down for longer than
/// the dispatcher's patience; the dispatcher keeps trying, reclaims the queue once the node is
/// back, and the task left in it runs on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_a_node_is_down_leaves_its_queue_to_the_dispatcher()
-> anyhow::Result<()> {
    use warren_tests::Process;
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let cluster = Cluster::up()?;
    let urls = cluster.urls();
    // The client, and so the worker queue's leader (declared here first), on node 3; the
    // dispatcher and the worker connect through node 2 first.
    let mut env = TestEnv::on(
        "stalequeue",
        vec![urls[1].clone(), urls[2].clone()],
        &urls[2],
    )
    .await?;
    let metrics_port = warren_tests::free_port()?;
    env.config.dispatcher.metrics_listen = format!("127.0.0.1:{metrics_port}");
    // A short patience, so that the node can stay down for longer than one try waits without
    // the test waiting the default minute.
    env.config.dispatcher.reclaim_patience_ms = 5_000;
    let queue = env.topology.worker_queue("w1");
    env.topology
        .declare_worker_queue(&env.connection, "w1")
        .await?;
    let dispatcher = env.dispatcher();
    let mut worker = Process::start(
        &env,
        "warren-worker",
        &[("WARREN__WORKER__ID", "w1"), ("RUST_LOG", "info")],
    )?;
    let mut replies = env.reply_queue().await?;
    env.round_trip(
        &mut replies,
        json!({"id": "before", "kind": "noop"}),
        Duration::from_secs(60),
    )
    .await?;

    cluster.run(&["kill", "2"])?;
    // The worker reconnects through node 3 and consumes again; the broker counts its old
    // consumer too.
    warren_tests::wait_for(
        "the worker's new consumer beside the one lost with node 2",
        Duration::from_secs(60),
        || async { env.consumers(&queue).await.unwrap_or(0) == 2 },
    )
    .await?;
    let mut offline = env.watch_events(&["worker.offline"]).await?;
    let asked = std::time::Instant::now();
    worker.terminate()?;
    let status = worker.wait(Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "worker exited with {status}");
    eprintln!(
        "worker stopped {:.1} s after SIGTERM",
        asked.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        env.consumers(&queue).await? == 1,
        "the stale consumer should still be counted while node 2 is down"
    );
    // A task the dispatcher had routed to w1 just before it stopped.
    env.queue_directly(
        &queue,
        &[json!({"id": "left", "kind": "noop"})],
        &replies.name,
    )
    .await?;

    // No goodbye was said: the dispatcher declares the worker dead, and cannot reclaim its
    // queue while the broker counts the stale consumer. Node 2 stays down for longer than the
    // dispatcher waits in one go.
    let dead = offline.next_json(Duration::from_secs(30)).await?;
    anyhow::ensure!(dead["worker"] == "w1", "unexpected offline event {dead}");
    let patience = Duration::from_millis(env.config.dispatcher.reclaim_patience_ms);
    let down_for = patience + Duration::from_secs(5);
    eprintln!("keeping node 2 down for {down_for:?} after w1 was declared dead");
    tokio::time::sleep(down_for).await;
    anyhow::ensure!(
        env.depth(&queue).await? == 1,
        "the task should wait in w1's queue while the broker counts its stale consumer"
    );
    anyhow::ensure!(
        departed_workers(metrics_port).await? == 1.0,
        "/metrics should show one worker whose queue waits to be reclaimed"
    );

    cluster.run(&["start", "2"])?;
    let w2 = env.worker("w2", 2, warren_tests::Handlers::new());
    warren_tests::wait_for(
        "the dispatcher to reclaim the worker's queue",
        Duration::from_secs(120),
        || async { env.consumers(&queue).await.is_err() },
    )
    .await?;
    let results = replies
        .collect(&["left".into()], Duration::from_secs(60))
        .await?;
    anyhow::ensure!(
        results["left"][0].worker.as_deref() == Some("w2"),
        "the task should have run on w2: {:?}",
        results["left"]
    );
    warren_tests::wait_for(
        "/metrics to show no queue left to reclaim",
        Duration::from_secs(10),
        || async { departed_workers(metrics_port).await.ok() == Some(0.0) },
    )
    .await?;
    w2.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await?;
    drop(cluster);
    Ok(())
}

/// `warren_departed_workers` from the dispatcher's `/metrics` on `port`.
async fn departed_workers(port: u16) -> anyhow::Result<f64> {
    let (_, body) = warren_tests::http_get(port, "/metrics").await?;
    body.lines()
        .find_map(|line| line.strip_prefix("warren_departed_workers "))
        .ok_or_else(|| anyhow::anyhow!("no warren_departed_workers in /metrics"))?
        .trim()
        .parse()
        .map_err(Into::into)
}
