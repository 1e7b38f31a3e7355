//! The client examples in `examples/` run against a live warren and get their results.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use warren_common::Status;
use warren_tests::{Process, Registry, TestEnv, broker_url};

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_pika_example_gets_its_result() -> anyhow::Result<()> {
    let env = TestEnv::new("python").await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("py", 2, Registry::new());
    let run = tokio::process::Command::new("python3")
        .arg(example("examples/python/submit.py"))
        .args(["echo", r#"{"from": "python"}"#, "7"])
        .env("AMQP_URL", broker_url())
        .env("WARREN_PREFIX", &env.config.topology.prefix)
        .env("TIMEOUT", "30")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("the example did not finish")?
        .context("python3 is needed (with pika: scripts/test installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "example failed: {stdout}{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["result"], serde_json::json!({"from": "python"}));
    assert_eq!(result["worker"], "py");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_custom_handler_example_runs_its_handlers() -> anyhow::Result<()> {
    let env = TestEnv::new("rustexample").await?;
    let dispatcher = env.dispatcher();
    let mut process = Process::start(&env, "examples/custom_handler", &[])?;
    let mut replies = env.reply_queue().await?;
    env.submit(
        json!({"id": "sum", "kind": "add", "payload": {"a": 2, "b": 3}}),
        &replies.name,
    )
    .await?;
    env.submit(
        json!({"id": "bad", "kind": "add", "payload": {"a": 2}}),
        &replies.name,
    )
    .await?;
    let results = replies
        .collect(&["sum".into(), "bad".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(results["sum"][0].result, json!(5));
    assert_eq!(results["bad"][0].status, Status::Failed);
    assert_eq!(
        results["bad"][0].error.as_deref(),
        Some("payload.b must be an integer")
    );
    process.terminate()?;
    assert!(process.wait(Duration::from_secs(30)).await?.success());
    dispatcher.stop().await?;
    env.cleanup().await
}
