//! Failure tests: real processes killed with SIGKILL in the middle of a run. Nothing may be
//! lost; duplicates only where a dead worker was running a task.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use warren_common::{Status, TaskEvent, TaskResult};
use warren_tests::{Handlers, Process, Replies, TestEnv, ids, tasks, wait_for};

/// 2,000 sleep tasks of 10–50 ms.
fn sleep_batch(name: &str) -> Vec<serde_json::Value> {
    tasks(
        2000,
        "sleep",
        name,
        |i| json!({ "ms": 10 + (i * 7919) % 41 }),
    )
}

/// Collects results until `partial` plus the new ones cover every id; returns them merged.
async fn collect_rest(
    replies: &mut Replies,
    ids: &[String],
    mut partial: HashMap<String, Vec<TaskResult>>,
) -> anyhow::Result<HashMap<String, Vec<TaskResult>>> {
    let seen = partial.clone();
    let rest = replies
        .collect_until(Duration::from_secs(120), |results| {
            ids.iter()
                .all(|id| seen.contains_key(id) || results.contains_key(id))
        })
        .await?;
    for (id, mut more) in rest {
        partial.entry(id).or_default().append(&mut more);
    }
    Ok(partial)
}

fn started_on(events: &[TaskEvent], worker: &str) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e.status == Status::Started && e.worker.as_deref() == Some(worker))
        .map(|e| e.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing_and_its_tasks_move_on_quickly() -> anyhow::Result<()> {
    let env = TestEnv::new("workerdeath").await?;
    let dispatcher = env.dispatcher();
    let mut events = env
        .watch_events(&["task.started", "task.dispatched"])
        .await?;
    let mut offline = env.watch_events(&["worker.offline"]).await?;
    let mut replies = env.reply_queue().await?;
    let mut workers = Process::workers(&env, 3, 8)?;
    let batch = sleep_batch("wd");
    let ids = ids(&batch);
    env.submit_many(&batch, &replies.name).await?;
    let partial = replies
        .collect_until(Duration::from_secs(60), |r| r.len() >= 500)
        .await?;
    workers[0].kill()?;
    let killed_at = Utc::now();
    workers[0].wait(Duration::from_secs(10)).await?;
    let results = collect_rest(&mut replies, &ids, partial).await?;
    let events = events
        .drain_events(Duration::from_secs(1), Duration::from_secs(60))
        .await?;

    let goodbye = offline.next_json(Duration::from_secs(30)).await?;
    assert_eq!(
        goodbye["worker"], "w1",
        "the dispatcher announces the dead worker"
    );
    assert_eq!(goodbye["state"], "offline");
    let on_killed = started_on(&events, "w1");
    let timeout = chrono::Duration::milliseconds(env.config.dispatcher.heartbeat_timeout_ms as i64);
    for id in &ids {
        let got = &results[id];
        assert!(
            got.iter().all(|r| r.status == Status::Succeeded),
            "{id}: {got:?}"
        );
        if got.len() > 1 {
            assert!(
                on_killed.contains(id),
                "{id} ran twice but not on the killed worker"
            );
        }
        let finished_by_killed = got.iter().any(|r| r.worker.as_deref() == Some("w1"));
        if on_killed.contains(id) && !finished_by_killed {
            let redispatched = events
                .iter()
                .filter(|e| e.id == *id && e.status == Status::Dispatched && e.at > killed_at)
                .map(|e| e.at)
                .min()
                .unwrap_or_else(|| panic!("{id} was never dispatched again"));
            assert!(
                redispatched - killed_at <= timeout * 2,
                "{id} re-dispatched {} ms after the kill",
                (redispatched - killed_at).num_milliseconds()
            );
        }
    }
    for mut worker in workers.drain(1..) {
        worker.terminate()?;
        worker.wait(Duration::from_secs(30)).await?;
    }
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatcher_is_replaced_within_seconds_without_reruns() -> anyhow::Result<()> {
    let env = TestEnv::new("dispatcherdeath").await?;
    let workers: Vec<_> = (1..=3)
        .map(|i| env.worker(&format!("w{i}"), 8, Handlers::new()))
        .collect();
    let mut replies = env.reply_queue().await?;
    let mut first = Process::start(&env, "warren-dispatcher", &[])?;
    env.round_trip(
        &mut replies,
        json!({"id": "probe", "kind": "echo"}),
        Duration::from_secs(30),
    )
    .await?;
    let second = Process::start(&env, "warren-dispatcher", &[])?;
    // Both validate submissions; the standby consumes intake once it has joined the election.
    wait_for("the standby to start", Duration::from_secs(30), || async {
        env.consumers(&env.topology.intake_queue())
            .await
            .unwrap_or(0)
            == 2
    })
    .await?;

    let mut events = env.watch_events(&["task.dispatched"]).await?;
    let batch = sleep_batch("dd");
    let ids = ids(&batch);
    env.submit_many(&batch, &replies.name).await?;
    let partial = replies
        .collect_until(Duration::from_secs(60), |r| r.len() >= 600)
        .await?;
    first.kill()?;
    let killed_at = Utc::now();
    first.wait(Duration::from_secs(10)).await?;
    let results = collect_rest(&mut replies, &ids, partial).await?;
    let events = events
        .drain_events(Duration::from_secs(1), Duration::from_secs(60))
        .await?;

    for id in &ids {
        let got = &results[id];
        assert_eq!(got.len(), 1, "{id} ran {} times", got.len());
        assert_eq!(got[0].status, Status::Succeeded);
    }
    let resumed = events
        .iter()
        .filter(|e| e.at > killed_at)
        .map(|e| e.at)
        .min()
        .expect("the standby dispatched after the kill");
    let takeover = (resumed - killed_at).num_milliseconds();
    assert!(
        takeover <= 5_000,
        "standby routed {takeover} ms after the kill"
    );
    eprintln!("standby routed {takeover} ms after the leader was killed");
    let mut second = second;
    second.terminate()?;
    second.wait(Duration::from_secs(30)).await?;
    for worker in workers {
        worker.stop().await?;
    }
    env.cleanup().await
}
