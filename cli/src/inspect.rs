//! `warren status` and `warren workers`: queue depths by passive declares, workers by listening
//! to their heartbeats for a moment.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use warren_common::publish::{inspect_queue, private_consumer};
use warren_common::{Heartbeat, WorkerState};

use crate::Session;

/// How long to listen for heartbeats beyond one heartbeat period.
const MARGIN: Duration = Duration::from_millis(500);

/// Prints every queue's depth and consumers, the live workers and the leader.
pub(crate) async fn status(context: &Session) -> Result<i32> {
    let topology = &context.topology;
    let mut queues = vec![("intake".to_owned(), topology.intake_queue())];
    for (index, level) in topology.levels.iter().enumerate() {
        queues.push((format!("level {}", level.name), topology.level_queue(index)));
    }
    queues.push(("dead".into(), topology.dead_queue()));
    queues.push(("rejected".into(), topology.rejected_queue()));
    out!(
        "{:<16} {:<40} {:>9} {:>9}",
        "queue",
        "name",
        "ready",
        "consumers"
    );
    for (label, name) in &queues {
        let channel = context.connection.create_channel().await?;
        match inspect_queue(&channel, name).await {
            Ok(state) => out!(
                "{label:<16} {name:<40} {:>9} {:>9}",
                state.message_count(),
                state.consumer_count()
            ),
            Err(_) => out!("{label:<16} {name:<40} {:>9} {:>9}", "missing", "-"),
        }
    }
    let channel = context.connection.create_channel().await?;
    let intake = inspect_queue(&channel, &topology.intake_queue()).await;
    if intake.is_err() {
        eprintln!(
            "warren: {}",
            crate::hint("NOT_FOUND", &topology.prefix).unwrap_or_default()
        );
    }
    let dispatchers = intake.map(|q| q.consumer_count()).unwrap_or(0);
    let heard = listen(context).await?;
    let workers = &heard.workers;
    let running: usize = workers.values().map(|w| w.running.len()).sum();
    let capacity: u32 = workers.values().map(|w| w.concurrency).sum();
    out!();
    if dispatchers == 0 {
        out!("dispatchers: none running: nothing is routed to workers");
    } else {
        out!("dispatchers: {dispatchers} (one leads, the others stand by)");
    }
    let answer = crate::waiting::ask(context, 0, Some(&[]), Duration::from_secs(2))
        .await
        .ok()
        .flatten();
    match answer {
        Some(answer) => out!(
            "waiting: {} held by the routing dispatcher (`warren waiting` lists them)",
            crate::waiting::summary(&answer.waiting)
        ),
        None if dispatchers > 0 => {
            out!("waiting: unknown (no dispatcher routes yet, or none answered in 2 s)")
        }
        None => {}
    }
    out!(
        "workers: {} live, running {running} of {capacity} slots",
        workers.len()
    );
    let seconds = heard.window.as_secs_f64();
    out!(
        "throughput: {:.1} tasks/s finished ({} in the last {seconds:.1} s)",
        heard.finished as f64 / seconds,
        heard.finished
    );
    Ok(0)
}

/// Prints the live workers.
pub(crate) async fn workers(context: &Session) -> Result<i32> {
    let workers = listen(context).await?.workers;
    out!(
        "{:<32} {:<9} {:>7} {:>6} {:>5} {:>9}  {:<24} tags",
        "worker",
        "state",
        "running",
        "slots",
        "load",
        "last seen",
        "kinds"
    );
    let now = chrono::Utc::now();
    for beat in workers.values() {
        let age = (now - beat.at).num_milliseconds().max(0);
        let load = 100 * beat.running.len() / beat.concurrency.max(1) as usize;
        out!(
            "{:<32} {:<9} {:>7} {:>6} {:>4}% {:>7}ms  {:<24} {}",
            beat.worker,
            format!("{:?}", beat.state).to_lowercase(),
            beat.running.len(),
            beat.concurrency,
            load,
            age,
            beat.kinds.join(","),
            beat.tags.join(",")
        );
    }
    if workers.is_empty() {
        out!("(no worker sent a heartbeat)");
    }
    Ok(0)
}

/// What the events exchange said while `warren` listened.
struct Heard {
    /// The latest heartbeat of every live worker.
    workers: BTreeMap<String, Heartbeat>,
    /// Tasks that reached a final state (succeeded, failed, dead).
    finished: usize,
    /// How long it listened.
    window: Duration,
}

/// Listens to the events exchange for one heartbeat period (plus a margin).
async fn listen(context: &Session) -> Result<Heard> {
    let channel = context.connection.create_channel().await?;
    let events = context.topology.events_exchange();
    let bindings = [
        (events.as_str(), "worker.#"),
        (events.as_str(), "task.succeeded"),
        (events.as_str(), "task.failed"),
        (events.as_str(), "task.dead"),
    ];
    let (_, mut consumer) = private_consumer(&channel, &bindings).await?;
    let window = Duration::from_millis(context.config.worker.heartbeat_ms) + MARGIN;
    let deadline = tokio::time::Instant::now() + window;
    let mut workers = BTreeMap::new();
    let mut finished = 0;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        if delivery.routing_key.as_str().starts_with("task.") {
            finished += warren_common::event_batch::decode_events(&delivery.data).len();
        } else if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&delivery.data) {
            if beat.state == WorkerState::Offline {
                workers.remove(&beat.worker);
            } else {
                workers.insert(beat.worker.clone(), beat);
            }
        }
    }
    let _ = channel.close(200, "listened".into()).await;
    Ok(Heard {
        workers,
        finished,
        window,
    })
}
