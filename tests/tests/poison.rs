//! A task that kills its worker (as the OOM killer or a native crash does) is counted one
//! failed attempt per worker lost while running it, and is dead after `max_attempts`: it
//! cannot take down a fleet of restarting workers. Tasks sent alongside it all succeed.

use std::time::Duration;

use serde_json::json;
use warren_common::Status;
use warren_common::message::attempts;
use warren_tests::{Process, TestEnv, ids, tasks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_its_worker_is_dead_after_max_attempts_worker_losses()
-> anyhow::Result<()> {
    let mut env = TestEnv::new("poison").await?;
    env.config.tasks.retry_base_ms = 100;
    env.config.tasks.retry_max_ms = 200;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("poison.toml");
    std::fs::write(
        &config,
        "[handlers.poison]\ncommand = [\"sh\", \"-c\", \"kill -9 $PPID\"]\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let dispatcher = env.dispatcher();
    // Four workers, each restarted when it dies (as `restart: unless-stopped` does), under a
    // new id (a worker's default id has its pid and a random part).
    let start = |generation: usize| {
        let id = format!("p{generation}");
        Process::start_with_args(
            &env,
            "warren-worker",
            &["--config", &config],
            &[
                ("WARREN__WORKER__ID", id.as_str()),
                ("WARREN__WORKER__CONCURRENCY", "4"),
            ],
        )
    };
    let mut workers: Vec<Process> = (0..4).map(start).collect::<anyhow::Result<_>>()?;
    let mut generation = workers.len();
    let mut replies = env.reply_queue().await?;
    env.submit(json!({"id": "poison", "kind": "poison"}), &replies.name)
        .await?;
    let alongside = tasks(40, "sleep", "along", |_| json!({"ms": 50}));
    env.submit_many(&alongside, &replies.name).await?;
    let mut expected = ids(&alongside);
    expected.push("poison".into());

    // Restart every worker that dies, until every task has its result (at most 10 restarts).
    let mut crashes = 0;
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let results = loop {
        let done = replies
            .collect_until(Duration::from_millis(300), |r| {
                seen.extend(r.iter().map(|(k, v)| (k.clone(), v.clone())));
                expected.iter().all(|id| seen.contains_key(id))
            })
            .await;
        for slot in &mut workers {
            if let Some(status) = slot.child.try_wait()? {
                crashes += 1;
                eprintln!("{} exited ({status}); restarting it", slot.name);
                anyhow::ensure!(crashes <= 10, "workers keep dying: the task loops");
                *slot = start(generation)?;
                generation += 1;
            }
        }
        if done.is_ok() {
            break seen;
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no end after 120 s; no result yet for {missing:?}"
        );
    };
    let poison = &results["poison"];
    assert_eq!(poison.len(), 1, "{poison:?}");
    assert_eq!(poison[0].status, Status::Dead);
    assert_eq!(poison[0].attempts, 3);
    let error = poison[0].error.clone().unwrap_or_default();
    assert!(
        error.starts_with("failed 3 of 3 attempts; last error: worker p")
            && error.ends_with(" lost while running it"),
        "{error}"
    );
    assert_eq!(crashes, 3, "one worker lost per attempt");
    for id in ids(&alongside) {
        assert_eq!(results[&id][0].status, Status::Succeeded, "{id}");
    }

    // The dead queue keeps the task with each lost attempt in its history.
    let (message, history) = env.dead_letter().await?;
    let properties = &message;
    assert_eq!(attempts(properties), 3);
    assert_eq!(
        history.iter().map(|h| h.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for record in &history {
        assert_eq!(
            record.error,
            format!("worker {} lost while running it", record.worker)
        );
    }
    for worker in &mut workers {
        worker.terminate()?;
        worker.wait(Duration::from_secs(30)).await?;
    }
    dispatcher.stop().await?;
    env.cleanup().await
}
