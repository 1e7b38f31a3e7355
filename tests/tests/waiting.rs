//! "Why does my task not run?": the routing dispatcher says why each task it holds waits —
//! `warren waiting` (table and JSON), the counts in `warren status`, the reason a `submit
//! --wait` that timed out prints, and the `warren_waiting_tasks{reason}` gauge.

use std::time::Duration;

use serde_json::{Value, json};
use warren_tests::{Handlers, Process, TestEnv, free_port, http_get, wait_for};

/// `warren waiting --json`, parsed.
async fn waiting(env: &TestEnv) -> anyhow::Result<Value> {
    let (code, out, err) = Process::output_all(env, "warren", &["waiting", "--json"]).await?;
    anyhow::ensure!(code == 0, "warren waiting exited {code}: {err}");
    Ok(serde_json::from_str(&out)?)
}

fn listed<'a>(answer: &'a Value, id: &str) -> Option<&'a Value> {
    answer["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == json!(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_says_why_each_task_waits() -> anyhow::Result<()> {
    let mut env = TestEnv::new("waiting").await?;
    let metrics_port = free_port()?;
    env.config.dispatcher.metrics_listen = format!("127.0.0.1:{metrics_port}");

    // No dispatcher yet: nobody answers, and status says nothing routes.
    let (code, _, stderr) = Process::output_all(&env, "warren", &["waiting"]).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("no dispatcher is routing"), "{stderr}");

    let dispatcher = env.dispatcher();
    let worker = env.worker("plain", 2, Handlers::new());
    let mut replies = env.reply_queue().await?;
    env.round_trip(
        &mut replies,
        json!({"id": "warm-up", "kind": "echo", "payload": {}}),
        Duration::from_secs(30),
    )
    .await?;

    env.submit(json!({"id": "w-nosuch", "kind": "nosuch"}), &replies.name)
        .await?;
    env.submit(
        json!({"id": "w-gpu", "kind": "echo", "requires": ["gpu"]}),
        &replies.name,
    )
    .await?;
    wait_for("both tasks held", Duration::from_secs(20), || async {
        let answer = match waiting(&env).await {
            Ok(answer) => answer,
            Err(err) => {
                eprintln!("warren waiting: {err:#}");
                Value::Null
            }
        };
        listed(&answer, "w-nosuch").is_some() && listed(&answer, "w-gpu").is_some()
    })
    .await?;
    let answer = waiting(&env).await?;
    let nosuch = listed(&answer, "w-nosuch").unwrap();
    assert_eq!(nosuch["reason"], "no_worker_for_kind");
    assert_eq!(nosuch["kind"], "nosuch");
    let gpu = listed(&answer, "w-gpu").unwrap();
    assert_eq!(gpu["reason"], "missing_tags");
    assert_eq!(gpu["missing"], json!(["gpu"]));
    assert_eq!(answer["held"], 2);
    assert_eq!(answer["counts"]["no_worker_for_kind"], 1);
    assert_eq!(answer["counts"]["missing_tags"], 1);
    // Oldest first.
    let ids: Vec<&str> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["w-nosuch", "w-gpu"]);

    let (code, table) = Process::output(&env, "warren", &["waiting"]).await?;
    assert_eq!(code, 0);
    assert!(table.contains("no live worker runs kind nosuch"), "{table}");
    assert!(table.contains("no live worker has the tags gpu"), "{table}");
    let (code, status) = Process::output(&env, "warren", &["status"]).await?;
    assert_eq!(code, 0);
    assert!(
        status.contains("waiting: 2 (no worker for kind 1, missing tags 1) held"),
        "{status}"
    );

    // A submitter that waits in vain is told why.
    let (code, _, stderr) = Process::output_all(
        &env,
        "warren",
        &["submit", "nosuch", "{}", "--wait", "--timeout", "3"],
    )
    .await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("no result for"), "{stderr}");
    assert!(
        stderr.contains("waits: no live worker runs kind nosuch"),
        "{stderr}"
    );

    // The gauge counts them by reason.
    wait_for("the gauge", Duration::from_secs(10), || async {
        let Ok((200, body)) = http_get(metrics_port, "/metrics").await else {
            return false;
        };
        body.lines()
            .any(|l| l == "warren_waiting_tasks{reason=\"no_worker_for_kind\"} 2")
            && body
                .lines()
                .any(|l| l == "warren_waiting_tasks{reason=\"missing_tags\"} 1")
    })
    .await?;

    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_submission_prints_or_writes_its_ids() -> anyhow::Result<()> {
    let env = TestEnv::new("waiting-ids").await?;
    let dir = std::env::temp_dir().join(warren_tests::unique_prefix("ids"));
    std::fs::create_dir_all(&dir)?;
    let tasks = dir.join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"id\": \"given-1\", \"kind\": \"echo\"}\n{\"kind\": \"echo\"}\n",
    )?;
    let path = tasks.to_string_lossy().into_owned();
    let (code, out) = Process::output(&env, "warren", &["submit", "--file", &path]).await?;
    assert_eq!(code, 0);
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed.len(), 2, "{out}");
    assert_eq!(printed[0], "given-1");
    assert!(uuid::Uuid::parse_str(printed[1]).is_ok(), "{out}");

    let ids = dir.join("ids.txt");
    let ids_path = ids.to_string_lossy().into_owned();
    let (code, out) = Process::output(
        &env,
        "warren",
        &["submit", "--file", &path, "--ids", &ids_path],
    )
    .await?;
    assert_eq!(code, 0);
    assert!(!out.contains("given-1"), "{out}");
    let written = std::fs::read_to_string(&ids)?;
    assert_eq!(written.lines().count(), 2);
    assert_eq!(written.lines().next(), Some("given-1"));
    std::fs::remove_dir_all(&dir)?;
    env.cleanup().await
}
