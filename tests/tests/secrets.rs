//! Passwords in broker URLs never show: not in a dispatcher's logs, not in `/metrics` or
//! `/healthz`, not in the errors the command line prints.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use warren_tests::{TestEnv, binary, broker_url, free_port, http_get, wait_for};

const SECRET: &str = "Sup3rS3cretPassw0rd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_logs_metrics_and_errors() -> anyhow::Result<()> {
    let env = TestEnv::new("secrets").await?;
    let port = free_port()?;
    // A first node that refuses connections (its failure is logged), then the real broker.
    let urls = format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f,{}", broker_url());
    let dispatcher = tokio::process::Command::new(binary("warren-dispatcher")?)
        .envs(env.env_vars())
        .env("WARREN__AMQP__URLS", &urls)
        .env(
            "WARREN__DISPATCHER__METRICS_LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting warren-dispatcher")?;
    wait_for(
        "the dispatcher to be healthy",
        Duration::from_secs(30),
        || async {
            http_get(port, "/healthz")
                .await
                .is_ok_and(|(code, _)| code == 200)
        },
    )
    .await?;
    for path in ["/metrics", "/healthz"] {
        let (_, body) = http_get(port, path).await?;
        assert!(!body.contains(SECRET), "{path} shows the password");
    }
    let pid = dispatcher.id().context("running")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let output = tokio::time::timeout(Duration::from_secs(30), dispatcher.wait_with_output())
        .await
        .context("the dispatcher did not stop")??;
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        logs.contains("unreachable"),
        "the dead node's failure is logged: {logs}"
    );
    assert!(!logs.contains(SECRET), "the logs show the password");

    // The command line's error names the node without its password.
    let failed = tokio::process::Command::new(binary("warren")?)
        .arg("status")
        .envs(env.env_vars())
        .env(
            "WARREN__AMQP__URLS",
            format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f"),
        )
        .env("WARREN__AMQP__MAX_BACKOFF_MS", "100")
        .kill_on_drop(true)
        .output();
    let failed = tokio::time::timeout(Duration::from_secs(60), failed)
        .await
        .context("warren status did not give up")??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("guest:***@127.0.0.1:1"), "{said}");
    assert!(!said.contains(SECRET), "{said}");
    env.cleanup().await
}
