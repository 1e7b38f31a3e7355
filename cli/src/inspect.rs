//! `warren status` and `warren workers`: queue depths by passive declares, workers by listening
//! to their heartbeats for a moment.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use warren_common::broker::{inspect_queue, private_consumer};
use warren_common::{Heartbeat, WorkerState};

use crate::Context_;

/// How long to listen for heartbeats beyond one heartbeat period.
const MARGIN: Duration = Duration::from_millis(500);

/// Prints every queue's depth and consumers, the live workers and the leader.
pub(crate) async fn status(context: &Context_) -> Result<i32> {
    let topology = &context.topology;
    let mut queues = vec![("intake".to_owned(), topology.intake_queue())];
    for (index, level) in topology.levels.iter().enumerate() {
        queues.push((format!("level {}", level.name), topology.level_queue(index)));
    }
    queues.push(("dead".into(), topology.dead_queue()));
    queues.push(("rejected".into(), topology.rejected_queue()));
    println!(
        "{:<16} {:<40} {:>9} {:>9}",
        "queue", "name", "ready", "consumers"
    );
    for (label, name) in &queues {
        let channel = context.connection.create_channel().await?;
        match inspect_queue(&channel, name).await {
            Ok(state) => println!(
                "{label:<16} {name:<40} {:>9} {:>9}",
                state.message_count(),
                state.consumer_count()
            ),
            Err(_) => println!("{label:<16} {name:<40} {:>9} {:>9}", "missing", "-"),
        }
    }
    let channel = context.connection.create_channel().await?;
    let dispatchers = inspect_queue(&channel, &topology.intake_queue())
        .await
        .map(|q| q.consumer_count())
        .unwrap_or(0);
    let workers = heartbeats(context).await?;
    let running: usize = workers.values().map(|w| w.running.len()).sum();
    let capacity: u32 = workers.values().map(|w| w.concurrency).sum();
    println!();
    println!("dispatchers: {dispatchers} (one leads, the others stand by)");
    println!(
        "workers: {} live, running {running} of {capacity} slots",
        workers.len()
    );
    Ok(0)
}

/// Prints the live workers.
pub(crate) async fn workers(context: &Context_) -> Result<i32> {
    let workers = heartbeats(context).await?;
    println!(
        "{:<32} {:<9} {:>7} {:>8} {:>9}  {:<24} tags",
        "worker", "state", "running", "slots", "last seen", "kinds"
    );
    let now = chrono::Utc::now();
    for beat in workers.values() {
        let age = (now - beat.at).num_milliseconds().max(0);
        println!(
            "{:<32} {:<9} {:>7} {:>8} {:>7}ms  {:<24} {}",
            beat.worker,
            format!("{:?}", beat.state).to_lowercase(),
            beat.running.len(),
            beat.concurrency,
            age,
            beat.kinds.join(","),
            beat.tags.join(",")
        );
    }
    if workers.is_empty() {
        println!("(no worker sent a heartbeat)");
    }
    Ok(0)
}

/// The latest heartbeat of every worker heard within one heartbeat period (plus a margin).
async fn heartbeats(context: &Context_) -> Result<BTreeMap<String, Heartbeat>> {
    let channel = context.connection.create_channel().await?;
    let events = context.topology.events_exchange();
    let (_, mut consumer) = private_consumer(&channel, &[(events.as_str(), "worker.#")]).await?;
    let listen = Duration::from_millis(context.config.worker.heartbeat_ms) + MARGIN;
    let deadline = tokio::time::Instant::now() + listen;
    let mut workers = BTreeMap::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&delivery.data) {
            if beat.state == WorkerState::Offline {
                workers.remove(&beat.worker);
            } else {
                workers.insert(beat.worker.clone(), beat);
            }
        }
    }
    let _ = channel.close(200, "listened".into()).await;
    Ok(workers)
}
