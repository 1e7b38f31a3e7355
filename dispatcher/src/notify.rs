//! Task events published by the dispatcher (`task.accepted`, `task.rejected`,
//! `task.dispatched`, …). Events are informational: they go through a bounded buffer to a
//! publisher task and are dropped, never waited for, when the buffer is full.

use chrono::Utc;
use lapin::Channel;
use lapin::options::BasicPublishOptions;
use tokio::sync::mpsc;
use tracing::debug;
use warren_common::message::json_properties;
use warren_common::{Heartbeat, Status, TaskEvent, WorkerState};

/// Events waiting to be published, at most.
const BUFFER: usize = 8192;

/// Hands events to the publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    /// Into the publisher task.
    events: mpsc::Sender<(&'static str, Vec<u8>)>,
}

impl Notifier {
    /// Starts a publisher task on `channel` (no confirms) for the events exchange `exchange`.
    /// It ends when every `Notifier` clone is dropped or the channel fails.
    pub(crate) fn start(channel: Channel, exchange: String) -> Notifier {
        let (events, mut queue) = mpsc::channel::<(&'static str, Vec<u8>)>(BUFFER);
        tokio::spawn(async move {
            while let Some((routing_key, body)) = queue.recv().await {
                let sent = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &body,
                        json_properties(false),
                    )
                    .await;
                if let Err(err) = sent {
                    debug!(cause = %err, "event publisher stopped");
                    return;
                }
            }
        });
        Notifier { events }
    }

    /// Queues a `task.<status>` event.
    pub(crate) fn task(
        &self,
        id: &str,
        kind: &str,
        status: Status,
        attempt: u32,
        error: Option<String>,
        submitter: Option<String>,
    ) {
        self.send(TaskEvent {
            attempt,
            error,
            submitter,
            ..TaskEvent::new(id, kind, status)
        });
    }

    /// Queues a `worker.offline` event for a worker declared dead.
    pub(crate) fn worker_offline(&self, worker: &warren_core::WorkerEntry) {
        let goodbye = Heartbeat {
            worker: worker.id.clone(),
            queue: worker.queue.clone(),
            kinds: worker.kinds.iter().cloned().collect(),
            tags: worker.tags.iter().cloned().collect(),
            concurrency: worker.concurrency,
            capacity: worker.capacity,
            running: worker.outstanding.keys().cloned().collect(),
            started: worker.started.iter().cloned().collect(),
            state: WorkerState::Offline,
            seq: 0,
            at: Utc::now(),
        };
        let body = serde_json::to_vec(&goodbye).expect("heartbeats serialize");
        self.push(WorkerState::Offline.routing_key(false), body);
    }

    /// Queues a task event, or drops it if the buffer is full.
    pub(crate) fn send(&self, event: TaskEvent) {
        let body = serde_json::to_vec(&event).expect("events serialize");
        self.push(event.status.routing_key(), body);
    }

    fn push(&self, routing_key: &'static str, body: Vec<u8>) {
        if self.events.try_send((routing_key, body)).is_err() {
            debug!("event buffer full; dropping an event");
        }
    }
}
