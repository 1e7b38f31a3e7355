//! The client examples in `examples/` run against a live warren and get their results.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use warren_common::Status;
use warren_tests::{Handlers, Process, TestEnv, broker_url};

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The management HTTP API the curl example publishes through.
fn management_url() -> String {
    std::env::var("WARREN_TEST_MGMT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// Runs a client example (`program` with `args`) against a dispatcher and a worker "client"
/// on a private prefix, and checks that it printed a succeeded echo of its payload.
async fn run_client_example(
    test: &str,
    program: &str,
    args: &[&str],
    hint: &str,
) -> anyhow::Result<()> {
    let env = TestEnv::new(test).await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("client", 2, Handlers::new());
    let payload = json!({"from": test});
    let run = tokio::process::Command::new(program)
        .args(args)
        .args(["echo", &payload.to_string(), "7"])
        .env("AMQP_URL", broker_url())
        .env("MGMT_URL", management_url())
        .env("WARREN_PREFIX", &env.config.topology.prefix)
        .env("TIMEOUT", "30")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("the example did not finish")?
        .with_context(|| format!("{program} is needed ({hint})"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "example failed: {stdout}{stderr}");
    let mut result: serde_json::Value = serde_json::from_str(&stdout)?;
    // Without jq, the curl example prints the management API's answer as it came.
    if let Some(message) = result.get(0) {
        result = serde_json::from_str(message["payload"].as_str().unwrap_or_default())?;
    }
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["result"], payload);
    assert_eq!(result["worker"], "client");
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_pika_example_gets_its_result() -> anyhow::Result<()> {
    let script = example("examples/python/submit.py");
    run_client_example(
        "python",
        "python3",
        &[script.to_str().unwrap()],
        "with pika: scripts/test installs it",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_amqplib_example_gets_its_result() -> anyhow::Result<()> {
    let script = example("examples/node/submit.js");
    run_client_example(
        "node",
        "node",
        &[script.to_str().unwrap()],
        "with amqplib in examples/node/node_modules: scripts/test runs npm ci there",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_example_gets_its_result_through_the_management_api() -> anyhow::Result<()> {
    let script = example("examples/curl.sh");
    run_client_example(
        "curl",
        "bash",
        &[script.to_str().unwrap()],
        "with curl, and the broker's management plugin: scripts/broker.sh enables it",
    )
    .await
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
