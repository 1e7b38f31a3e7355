//! Graceful shutdown of real worker processes: SIGTERM loses no task.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use warren_common::Status;
use warren_tests::{Handlers, Process, TestEnv, ids, tasks};

/// Starts a worker process, gives it sleep tasks, waits until it runs `running` of them, sends
/// SIGTERM, then lets a second (in-process) worker take over. Returns the results.
async fn terminate_mid_run(
    test: &str,
    grace_ms: &str,
    sleep_ms: u64,
    total: usize,
) -> anyhow::Result<(Vec<warren_common::TaskResult>, HashSet<String>)> {
    let env = TestEnv::new(test).await?;
    let dispatcher = env.dispatcher();
    let mut started = env.watch_events(&["task.started"]).await?;
    let mut replies = env.reply_queue().await?;
    let mut process = Process::start(
        &env,
        "warren-worker",
        &[
            ("WARREN__WORKER__ID", "doomed"),
            ("WARREN__WORKER__CONCURRENCY", "4"),
            ("WARREN__WORKER__GRACE_MS", grace_ms),
        ],
    )?;
    let batch = tasks(total, "sleep", test, |_| json!({ "ms": sleep_ms }));
    env.submit_many(&batch, &replies.name).await?;
    let running: HashSet<String> = started
        .events(4, Duration::from_secs(30))
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    process.terminate()?;
    let status = process.wait(Duration::from_secs(30)).await?;
    assert!(status.success(), "worker exited with {status}");
    let rescue = env.worker("rescue", 4, Handlers::new());
    let results = replies
        .collect(&ids(&batch), Duration::from_secs(60))
        .await?;
    let mut flat = Vec::new();
    for id in ids(&batch) {
        let got = &results[&id];
        assert_eq!(got.len(), 1, "{id} ran {} times", got.len());
        assert_eq!(got[0].status, Status::Succeeded, "{id}: {:?}", got[0].error);
        flat.push(got[0].clone());
    }
    rescue.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await?;
    Ok((flat, running))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_tasks_finish_and_loses_none() -> anyhow::Result<()> {
    let (results, running) = terminate_mid_run("sigterm-grace", "30000", 500, 12).await?;
    for result in &results {
        if running.contains(&result.id) {
            assert_eq!(
                result.worker.as_deref(),
                Some("doomed"),
                "{} finished where it ran",
                result.id
            );
        }
    }
    assert!(
        results
            .iter()
            .any(|r| r.worker.as_deref() == Some("rescue"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_hands_tasks_back() -> anyhow::Result<()> {
    let (results, running) = terminate_mid_run("sigterm-handback", "200", 3000, 8).await?;
    for result in &results {
        assert_eq!(
            result.worker.as_deref(),
            Some("rescue"),
            "{} was handed back",
            result.id
        );
    }
    assert_eq!(running.len(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_exits_64_naming_the_key() -> anyhow::Result<()> {
    let env = TestEnv::new("badconfig").await?;
    for binary in ["warren-worker", "warren-dispatcher"] {
        let run = tokio::process::Command::new(warren_tests::binary(binary)?)
            .envs(env.env_vars())
            .env("WARREN__DISPATCHER__WINDOW", "0")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{binary}: {stderr}");
        assert!(
            stderr.contains("`dispatcher.window`"),
            "{binary} should name the key: {stderr}"
        );
    }
    env.cleanup().await
}
