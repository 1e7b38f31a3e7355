//! Task events published by the dispatcher (`task.accepted`, `task.rejected`,
//! `task.dispatched`, …), in batches (`warren_common::event_batch`). Events are informational:
//! they go through a bounded buffer to a publisher task and are dropped, never waited for, when
//! the buffer is full.

use chrono::Utc;
use lapin::Channel;
use lapin::options::BasicPublishOptions;
use tracing::debug;
use warren_common::event_batch::EventSender;
use warren_common::message::json_properties;
use warren_common::{Heartbeat, Status, TaskEvent, WorkerState};

/// Hands events to the publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    /// Task events, batched.
    events: EventSender,
    /// For `worker.offline` events (rare: one per dead worker).
    channel: Channel,
    /// The events exchange.
    exchange: String,
}

impl Notifier {
    /// Starts a publisher task on `channel` (in confirm mode) for the events exchange
    /// `exchange`. It ends when every `Notifier` clone is dropped or the channel fails.
    pub(crate) fn start(channel: Channel, exchange: String) -> Notifier {
        Notifier {
            events: EventSender::start(channel.clone(), exchange.clone()),
            channel,
            exchange,
        }
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
        let (channel, exchange) = (self.channel.clone(), self.exchange.clone());
        tokio::spawn(async move {
            let sent = channel
                .basic_publish(
                    exchange.as_str().into(),
                    WorkerState::Offline.routing_key(false).into(),
                    BasicPublishOptions::default(),
                    &body,
                    json_properties(false),
                )
                .await;
            if let Err(err) = sent {
                debug!(cause = %err, "could not publish a worker.offline event");
            }
        });
    }

    /// Queues a task event, or drops it if the buffer is full.
    pub(crate) fn send(&self, event: TaskEvent) {
        self.events.send_and_forget(event);
    }
}
