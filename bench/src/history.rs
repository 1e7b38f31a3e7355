//! `warren-bench history`: fills a history stream with the events of `n` finished tasks (the
//! four a task's life publishes: accepted, dispatched, started, succeeded — one message each,
//! published to the events exchange as warren does, as fast as confirms allow), then times
//! `warren task ID` for the first task and the last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::json;
use warren_common::Topology;

use crate::Settings;
use crate::broker;
use crate::fleet::Binaries;
use crate::progress::Progress;

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct HistoryFigures {
    /// Tasks whose events were written.
    pub(crate) tasks: usize,
    /// Event messages written.
    pub(crate) events: usize,
    /// How long writing them took.
    pub(crate) fill_secs: f64,
    /// `warren task` of the first task: wall time.
    pub(crate) first_lookup_ms: f64,
    /// `warren task` of the last task: wall time.
    pub(crate) last_lookup_ms: f64,
    /// The stream's name (deleted at the end unless kept).
    pub(crate) stream: String,
}

/// Fills and times; deletes the topology at the end unless `keep`.
pub(crate) async fn run(
    settings: &Settings,
    n: usize,
    keep: bool,
    binaries: &Binaries,
    progress: &Progress,
) -> Result<HistoryFigures> {
    ensure!(n > 0, "-n must be at least 1");
    let topology = Topology::new(broker::unique_prefix("history"));
    let connection = broker::connect(&settings.amqp_url, "warren-bench history").await?;
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = topology.events_exchange();
    let bar = progress.bar("history: tasks' events written", n as u64);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(settings.window);
    let (mut first, mut last) = (String::new(), String::new());
    for i in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        if i == 0 {
            first = id.clone();
        }
        last = id.clone();
        let worker = format!("bench-worker-{}", i % 4);
        let at = chrono::Utc::now();
        let events = [
            (
                "accepted",
                json!({"id": id, "kind": "echo", "status": "accepted", "attempt": 0, "at": at}),
            ),
            (
                "dispatched",
                json!({"id": id, "kind": "echo", "status": "dispatched", "attempt": 0, "worker": worker, "at": at}),
            ),
            (
                "started",
                json!({"id": id, "kind": "echo", "status": "started", "attempt": 1, "worker": worker, "at": at}),
            ),
            (
                "succeeded",
                json!({"id": id, "kind": "echo", "status": "succeeded", "attempt": 1, "worker": worker, "duration_ms": 1, "result": {"n": i}, "at": at}),
            ),
        ];
        for (status, event) in events {
            let body = serde_json::to_vec(&event)?;
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    format!("task.{status}").as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await?;
            pending.push_back(confirm);
            if pending.len() >= settings.window
                && let Some(oldest) = pending.pop_front()
            {
                oldest.await?;
            }
        }
        bar.inc(1);
    }
    for confirm in pending {
        confirm.await?;
    }
    bar.finish_and_clear();
    let fill_secs = started.elapsed().as_secs_f64();
    let first_lookup_ms = lookup(settings, binaries, &topology, &first).await?;
    let last_lookup_ms = lookup(settings, binaries, &topology, &last).await?;
    let figures = HistoryFigures {
        tasks: n,
        events: 4 * n,
        fill_secs,
        first_lookup_ms,
        last_lookup_ms,
        stream: topology.history_stream(),
    };
    if !keep {
        broker::delete_topology(&connection, &topology, &[]).await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(figures)
}

/// Runs `warren task ID --json`; returns its wall time in milliseconds, once it found the
/// task succeeded.
async fn lookup(
    settings: &Settings,
    binaries: &Binaries,
    topology: &Topology,
    id: &str,
) -> Result<f64> {
    let started = Instant::now();
    let output = tokio::process::Command::new(&binaries.cli)
        .args(["task", id, "--json"])
        .env("WARREN__AMQP__URLS", &settings.amqp_url)
        .env("WARREN__TOPOLOGY__PREFIX", &topology.prefix)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .context("warren task did not finish in 120 s")??;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())?;
    ensure!(
        answer["state"] == "succeeded",
        "warren task {id} found: {answer}"
    );
    Ok(took)
}
