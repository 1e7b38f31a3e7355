//! "What happened to my task?": every `task.*` event is kept in the history stream
//! `<prefix>.history`, and `warren task ID` tells a task's story from it — found quickly by
//! its UUIDv7 id among the others.

use std::time::Duration;

use serde_json::{Value, json};
use warren_common::Status;
use warren_tests::{HandlerError, Handlers, Process, TaskContext, TestEnv, tasks};

/// `warren task ID --json`, parsed, and its exit code.
async fn lookup(env: &TestEnv, id: &str) -> anyhow::Result<(i32, Value)> {
    let (code, out, err) = Process::output_all(env, "warren", &["task", id, "--json"]).await?;
    let answer = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out} {err}"))?;
    Ok((code, answer))
}

fn statuses(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["status"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_task_tells_what_happened() -> anyhow::Result<()> {
    let mut env = TestEnv::new("history").await?;
    env.config.tasks.retry_base_ms = 50;
    env.config.tasks.retry_max_ms = 100;
    let dispatcher = env.dispatcher();
    let mut handlers = Handlers::new();
    handlers.register("strict", |_: TaskContext| async {
        Err::<Value, _>(HandlerError::abort("payload can never work"))
    });
    let workers = [
        env.worker("hist-a", 4, handlers.clone()),
        env.worker("hist-b", 4, handlers),
    ];
    let mut replies = env.reply_queue().await?;

    // 1,000 echo tasks with UUIDv7 ids, as clients get by default.
    let batch = tasks(1_000, "echo", "", |n| json!({"n": n}));
    let batch: Vec<Value> = batch
        .into_iter()
        .map(|mut t| {
            t["id"] = json!(uuid::Uuid::now_v7().to_string());
            t
        })
        .collect();
    let ids = warren_tests::ids(&batch);
    env.submit_many(&batch, &replies.name).await?;
    replies.collect(&ids, Duration::from_secs(120)).await?;
    for id in [&ids[0], &ids[499], &ids[999]] {
        let (code, answer) = lookup(&env, id).await?;
        assert_eq!(code, 0, "{answer}");
        assert_eq!(answer["state"], "succeeded", "{answer}");
        let seen = statuses(&answer);
        for status in ["accepted", "dispatched", "started", "succeeded"] {
            assert!(seen.iter().any(|s| s == status), "{id}: {seen:?}");
        }
        let events = answer["events"].as_array().unwrap();
        let last = events.last().unwrap();
        let worker = last["worker"].as_str().unwrap_or_default();
        assert!(worker.starts_with("hist-"), "{last}");
        let n = batch.iter().find(|t| t["id"] == json!(id)).unwrap()["payload"]["n"].clone();
        assert_eq!(last["result"]["n"], n, "{last}");
    }
    let (code, table) = Process::output(&env, "warren", &["task", &ids[7]]).await?;
    assert_eq!(code, 0);
    assert!(table.contains("state: succeeded"), "{table}");
    assert!(table.contains("dispatched"), "{table}");

    // A result too large to ride on its event: its size instead.
    let big_id = uuid::Uuid::now_v7().to_string();
    let big = "x".repeat(70_000);
    env.submit(
        json!({"id": big_id, "kind": "echo", "payload": big}),
        &replies.name,
    )
    .await?;
    replies
        .collect(std::slice::from_ref(&big_id), Duration::from_secs(30))
        .await?;
    let (code, answer) = lookup(&env, &big_id).await?;
    assert_eq!(code, 0);
    let last = answer["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["result_omitted"], true, "{last}");
    assert_eq!(last["result_bytes"], 70_002, "{last}");

    // Every attempt failing: dead after 3, each error in the history.
    let dead_id = uuid::Uuid::now_v7().to_string();
    env.submit(
        json!({"id": dead_id, "kind": "fail", "payload": {"error": "disk full"}}),
        &replies.name,
    )
    .await?;
    // Aborted by its handler: failed.
    let failed_id = uuid::Uuid::now_v7().to_string();
    env.submit(json!({"id": failed_id, "kind": "strict"}), &replies.name)
        .await?;
    let ended = replies
        .collect(
            &[dead_id.clone(), failed_id.clone()],
            Duration::from_secs(60),
        )
        .await?;
    assert_eq!(ended[&dead_id][0].status, Status::Dead);
    let (code, answer) = lookup(&env, &dead_id).await?;
    assert_eq!(code, 0);
    assert_eq!(answer["state"], "dead", "{answer}");
    let retries: Vec<&Value> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "retrying")
        .collect();
    assert_eq!(retries.len(), 2, "{answer}");
    for (n, retry) in retries.iter().enumerate() {
        assert_eq!(retry["attempt"], n + 1);
        assert_eq!(retry["error"], "disk full");
    }
    let dead = answer["events"].as_array().unwrap().last().unwrap().clone();
    assert!(dead["error"].as_str().unwrap().contains("3 of 3"), "{dead}");
    let (code, answer) = lookup(&env, &failed_id).await?;
    assert_eq!(code, 0);
    assert_eq!(answer["state"], "failed", "{answer}");

    // A malformed submission with an id: rejected, with the reason.
    let rejected_id = uuid::Uuid::now_v7().to_string();
    env.submit(
        json!({"id": rejected_id, "kind": "echo", "priority": 12}),
        &replies.name,
    )
    .await?;
    replies
        .collect(std::slice::from_ref(&rejected_id), Duration::from_secs(30))
        .await?;
    let (code, answer) = lookup(&env, &rejected_id).await?;
    assert_eq!(code, 0);
    assert_eq!(answer["state"], "rejected", "{answer}");
    let reason = answer["events"][0]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("priority"), "{answer}");

    // An id the history does not have: not found, exit code 1.
    let unknown = uuid::Uuid::now_v7().to_string();
    let (code, answer) = lookup(&env, &unknown).await?;
    assert_eq!(code, 1);
    assert_eq!(answer["found"], false);

    for worker in workers {
        worker.stop().await?;
    }
    dispatcher.stop().await?;
    env.cleanup().await
}
