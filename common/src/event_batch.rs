//! Task events published in batches: one message per routing key per flush, its body a JSON
//! array of the events, so that under load the events exchange, its consumers and the history
//! stream handle a message per batch rather than per event. A single event is published as
//! it always was, one JSON object, so a batch forms only when events wait: no timer, no added
//! latency when the load is light. Readers take either form ([`decode_events`]).
//!
//! How batches grow with load: at most [`IN_FLIGHT`] batches await the broker's confirm; while
//! they do, new events queue up, and the next flush takes all of them (up to [`MAX_BATCH`]).

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicPublishOptions;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::BrokerError;
use crate::events::TaskEvent;
use crate::message::json_properties;
use crate::publish::check_confirmation;

/// Batches awaiting their confirm, at most.
pub const IN_FLIGHT: usize = 2;
/// Events in one batch, at most.
pub const MAX_BATCH: usize = 512;
/// How long a batch may wait for its publish to go out and for the broker's confirm. Events
/// are routed to the history stream, and a stream whose node dies can leave a publish
/// unconfirmed for good (seen in the broker-node kill test): past this, the batch's senders get
/// an error and its flight is free again.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting to be published, at most (memory stays bounded if the broker stalls): a
/// fire-and-forget event beyond it is dropped, a confirmed one refused.
pub const BUFFER: usize = 8192;

/// The events in a message body of the events exchange: one JSON object, or an array of them.
/// Unreadable bodies, and unreadable elements of an array, give nothing.
pub fn decode_events(body: &[u8]) -> Vec<TaskEvent> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice::<Vec<serde_json::Value>>(body)
            .map(|values| {
                values
                    .into_iter()
                    .filter_map(|v| serde_json::from_value(v).ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        serde_json::from_slice::<TaskEvent>(body)
            .map(|event| vec![event])
            .unwrap_or_default()
    }
}

/// Where a sender learns that its event is on the broker.
type Confirmed = oneshot::Sender<Result<(), BrokerError>>;
/// An event and, if its sender waits, where to tell it.
type Queued = (TaskEvent, Option<Confirmed>);

/// Hands events to the batching publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSender {
    queue: mpsc::Sender<Queued>,
}

impl EventSender {
    /// Starts the publisher task on `channel` (which must be in confirm mode) for the events
    /// exchange `exchange`. It ends when every sender is dropped, or when the channel fails
    /// (then every waiting sender gets the error).
    pub fn start(channel: Channel, exchange: String) -> EventSender {
        let (queue, mut events) = mpsc::channel::<Queued>(BUFFER);
        tokio::spawn(async move {
            let flights = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = events.recv().await {
                // Wait for a flight; events keep queueing meanwhile, and this flush takes them.
                let Ok(flight) = flights.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match events.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let failed = publish(&channel, &exchange, batch, flight).await;
                if failed {
                    debug!("event publisher stopped: its channel failed");
                    return;
                }
            }
        });
        EventSender { queue }
    }

    /// Queues `event` at once; the future resolves once the broker confirmed the message
    /// carrying it.
    pub fn send(
        &self,
        event: TaskEvent,
    ) -> impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (confirmed, on_broker) = oneshot::channel();
        let queued = self.queue.try_send((event, Some(confirmed))).is_ok();
        async move {
            let stopped = || BrokerError::Pool("the event publisher stopped".into());
            if !queued {
                return Err(stopped());
            }
            on_broker.await.map_err(|_| stopped())?
        }
    }

    /// Publishes `event` without waiting for the broker (events are informational); drops it
    /// if [`BUFFER`] events wait already.
    pub fn send_and_forget(&self, event: TaskEvent) {
        if self.queue.try_send((event, None)).is_err() {
            debug!("event buffer full; dropping an event");
        }
    }
}

/// Publishes `batch`, one message per routing key, and answers its senders once confirmed
/// (in a task holding `flight`). Returns whether the channel failed.
async fn publish(
    channel: &Channel,
    exchange: &str,
    batch: Vec<Queued>,
    flight: tokio::sync::OwnedSemaphorePermit,
) -> bool {
    let mut groups: Vec<(&'static str, Vec<Queued>)> = Vec::new();
    for (event, confirmed) in batch {
        let key = event.status.routing_key();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push((event, confirmed)),
            None => groups.push((key, vec![(event, confirmed)])),
        }
    }
    let mut confirms = Vec::with_capacity(groups.len());
    let mut failed = false;
    for (key, group) in groups {
        let body = if group.len() == 1 {
            serde_json::to_vec(&group[0].0)
        } else {
            let events: Vec<&TaskEvent> = group.iter().map(|(e, _)| e).collect();
            serde_json::to_vec(&events)
        }
        .expect("events serialize");
        let waiters: Vec<Confirmed> = group.into_iter().filter_map(|(_, c)| c).collect();
        let sent = channel.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            &body,
            json_properties(false),
        );
        match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
            Ok(Ok(confirm)) => confirms.push((confirm, waiters)),
            outcome => {
                failed = true;
                let cause = match outcome {
                    Ok(Err(err)) => BrokerError::from(err).to_string(),
                    _ => format!("the publish did not go out within {CONFIRM_TIMEOUT:?}"),
                };
                for waiter in waiters {
                    let _ = waiter.send(Err(BrokerError::Pool(cause.clone())));
                }
            }
        }
    }
    let exchange = exchange.to_owned();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        for (confirm, waiters) in confirms {
            let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(confirmation)) => check_confirmation(confirmation, &exchange),
                Ok(Err(err)) => Err(err.into()),
                Err(_) => Err(BrokerError::Pool(format!(
                    "no confirm for events within {CONFIRM_TIMEOUT:?}"
                ))),
            };
            for waiter in waiters {
                let answer = match &outcome {
                    Ok(()) => Ok(()),
                    Err(err) => Err(BrokerError::Pool(err.to_string())),
                };
                let _ = waiter.send(answer);
            }
        }
        drop(flight);
    });
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn reads_one_event_or_a_batch() {
        let one = TaskEvent::new("a", "echo", Status::Started);
        let two = TaskEvent::new("b", "echo", Status::Started);
        let single = serde_json::to_vec(&one).unwrap();
        assert_eq!(decode_events(&single), vec![one.clone()]);
        let batch = serde_json::to_vec(&[&one, &two]).unwrap();
        assert_eq!(decode_events(&batch), vec![one.clone(), two]);
        assert!(decode_events(b"not json").is_empty());
        let mixed = format!("[{}, 42]", serde_json::to_string(&one).unwrap());
        assert_eq!(decode_events(mixed.as_bytes()), vec![one]);
    }
}
