//! The `warren` command line against a running system: status and workers tell the truth, and
//! `dead requeue` brings a dead task back to completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use warren_common::Status;
use warren_tests::{HandlerError, Handlers, Process, TaskContext, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_workers_and_dead_requeue() -> anyhow::Result<()> {
    let env = TestEnv::new("cli").await?;
    let fixed = Arc::new(AtomicBool::new(false));
    let mut handlers = Handlers::new();
    {
        let fixed = fixed.clone();
        handlers.register("fragile", move |_: TaskContext| {
            let fixed = fixed.load(Ordering::SeqCst);
            async move {
                if fixed {
                    Ok(json!("works now"))
                } else {
                    Err(HandlerError::failed("broken dependency"))
                }
            }
        });
    }
    let dispatcher = env.dispatcher();
    let worker = env.worker("cli-worker", 3, handlers);
    let mut replies = env.reply_queue().await?;
    env.round_trip(
        &mut replies,
        json!({"id": "warm", "kind": "echo"}),
        Duration::from_secs(30),
    )
    .await?;

    let (code, workers) = Process::output(&env, "warren", &["workers"]).await?;
    assert_eq!(code, 0);
    let line = workers
        .lines()
        .find(|l| l.starts_with("cli-worker"))
        .expect(&workers);
    assert!(
        line.contains("online") && line.contains("fragile") && line.contains(" 0%"),
        "{line}"
    );

    let (code, status) = Process::output(&env, "warren", &["status"]).await?;
    assert_eq!(code, 0);
    assert!(status.contains(&env.topology.dead_queue()), "{status}");
    assert!(
        status.contains("workers: 1 live, running 0 of 3 slots"),
        "{status}"
    );
    assert!(status.contains("dispatchers: 1"), "{status}");
    assert!(status.contains("throughput: "), "{status}");

    env.submit(
        json!({"id": "d1", "kind": "fragile", "max_attempts": 1}),
        &replies.name,
    )
    .await?;
    let dead = replies
        .collect(&["d1".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(dead["d1"][0].status, Status::Dead);
    let (_, listed) = Process::output(&env, "warren", &["dead", "list"]).await?;
    let row = listed.lines().find(|l| l.starts_with("d1")).expect(&listed);
    assert!(row.contains("broken dependency"), "{row}");
    let (_, status) = Process::output(&env, "warren", &["status"]).await?;
    let dead_row = status
        .lines()
        .find(|l| l.starts_with("dead"))
        .expect(&status);
    assert!(
        dead_row.split_whitespace().nth(2) == Some("1"),
        "{dead_row}"
    );

    fixed.store(true, Ordering::SeqCst);
    let (code, _) = Process::output(&env, "warren", &["dead", "requeue", "d1"]).await?;
    assert_eq!(code, 0);
    let again = replies
        .collect(&["d1".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(again["d1"][0].status, Status::Succeeded, "{again:?}");
    assert_eq!(
        again["d1"][0].attempts, 1,
        "a requeued task starts its attempts over"
    );
    assert_eq!(env.depth(&env.topology.dead_queue()).await?, 0);

    let (code, out) =
        Process::output(&env, "warren", &["submit", "echo", "{\"x\":1}", "--wait"]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"succeeded\""), "{out}");

    // Many tasks from a file, one JSON object a line, waiting for every result.
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.config.topology.prefix));
    let lines: Vec<String> = (0..20)
        .map(|i| json!({"kind": "echo", "payload": i}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n"))?;
    let path = file.to_string_lossy().into_owned();
    let (code, out) =
        Process::output(&env, "warren", &["submit", "--file", &path, "--wait"]).await?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 submitted, 20 succeeded, 0 did not, 0 without a result"),
        "{out}"
    );
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

/// Runs a warren binary with this environment's configuration plus `extra` variables; returns
/// its exit code and stderr. Its standard output is a pipe closed before it writes, as when it
/// is piped into `head -1` and `head` has read its line.
async fn with_closed_stdout(
    env: &TestEnv,
    name: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> anyhow::Result<(i32, String)> {
    let mut child = tokio::process::Command::new(warren_tests::binary(name)?)
        .args(args)
        .envs(env.env_vars())
        .envs(extra.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    drop(child.stdout.take());
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output.status.code().unwrap_or(-1), stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_says_what_went_wrong() -> anyhow::Result<()> {
    let mut env = TestEnv::new("cli-errors").await?;

    // `warren status | head -1`: no panic when standard output goes away, exit code 0.
    let (code, stderr) = with_closed_stdout(&env, "warren", &["status"], &[]).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A wrong setting is refused with the values that are right.
    let policy = [("WARREN__DISPATCHER__POLICY", "bogus")];
    let (code, stderr) = with_closed_stdout(&env, "warren-dispatcher", &[], &policy).await?;
    assert_eq!(code, warren_common::config::EXIT_CONFIG, "{stderr}");
    assert!(
        stderr.contains("unknown value 'bogus'; expected one of: fcfs, priority, sjf, edf"),
        "{stderr}"
    );
    assert!(stderr.contains("dispatcher.policy"), "{stderr}");

    // A prefix no dispatcher declared: said so, not a bare NOT_FOUND.
    let prefix = std::mem::replace(&mut env.config.topology.prefix, "no-such-prefix".into());
    for args in [
        &["submit", "echo", "{}"][..],
        &["dead", "list"],
        &["status"],
    ] {
        let (_, _, stderr) = Process::output_all(&env, "warren", args).await?;
        assert!(
            stderr.contains("no dispatcher with topology.prefix 'no-such-prefix' has declared"),
            "{args:?}: {stderr}"
        );
    }
    env.config.topology.prefix = prefix;
    env.cleanup().await
}
