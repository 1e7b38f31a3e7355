//! The router's inputs: consumers of the priority-level queues (bounded by the scheduling
//! window) and of the events exchange (heartbeats, finished tasks), turned into one stream of
//! `Input`s.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::mpsc;
use warren_common::event_batch::decode_events;
use warren_common::{BrokerError, Heartbeat, Status, TaskEvent, Topology};

/// Something the router must react to.
#[derive(Debug)]
pub(crate) enum Input {
    /// A task from priority level `level`, held until it is dispatched.
    Task {
        /// Level index, 0 = most urgent.
        level: usize,
        /// The delivery, acked once the task is confirmed on a worker's queue.
        delivery: Box<Delivery>,
    },
    /// A valid submission that intake hands to the routing dispatcher (the fast path).
    Submitted {
        /// Its priority level.
        level: usize,
        /// The validated task.
        task: Box<warren_common::Task>,
        /// Its normalized body.
        body: Vec<u8>,
        /// The properties to forward it with.
        properties: lapin::BasicProperties,
        /// The intake delivery, acked once the task is confirmed elsewhere.
        delivery: Box<Delivery>,
    },
    /// A worker's heartbeat.
    Heartbeat(Heartbeat),
    /// A departed worker's queue was emptied into the priority queues and deleted.
    Reclaimed(String),
    /// A worker no longer holds a task (its event said so).
    Released(Box<warren_core::Released>),
    /// A worker began an attempt of a task (its `task.started` event).
    Began {
        /// Worker id.
        worker: String,
        /// Task id.
        task: String,
    },
    /// A dispatch the broker refused: the worker does not hold the task after all.
    Unsent {
        /// Worker id.
        worker: String,
        /// Task id.
        task: String,
    },
    /// This dispatcher received the leader baton: it may route.
    Leader,
    /// A question for the routing dispatcher (`<prefix>.requests`), answered to its
    /// `reply_to`.
    Request(Box<Delivery>),
    /// A consumer failed: the session must restart.
    Failed(BrokerError),
}

/// Starts one consumer per priority level on one channel, each with `window` unacked
/// deliveries at most, and one of the requests queue, forwarding into `inputs`. Returns the
/// channel, to close at the end: only the routing dispatcher consumes these.
pub(crate) async fn levels(
    connection: &Connection,
    topology: &Topology,
    window: u16,
    inputs: &mpsc::Sender<Input>,
) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(window, BasicQosOptions::default())
        .await?;
    for level in 0..topology.levels.len() {
        let consumer = channel
            .basic_consume(
                topology.level_queue(level).as_str().into(),
                format!("warren-level-{level}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        forward(consumer, inputs.clone(), move |delivery| {
            Some(Input::Task {
                level,
                delivery: Box::new(delivery),
            })
        });
    }
    let requests = channel
        .basic_consume(
            topology.requests_queue().as_str().into(),
            "warren-requests".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    forward(requests, inputs.clone(), |delivery| {
        Some(Input::Request(Box::new(delivery)))
    });
    Ok(channel)
}

/// Binds a private queue to the events the router needs and forwards them into `inputs`.
/// Returns the channel, to close at the end.
pub(crate) async fn events(
    connection: &Connection,
    topology: &Topology,
    instance: &str,
    inputs: &mpsc::Sender<Input>,
) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    let queue = format!("{}.dispatcher.{instance}", topology.prefix);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in [
        "worker.#",
        "task.started",
        "task.succeeded",
        "task.failed",
        "task.retrying",
        "task.dead",
    ] {
        channel
            .queue_bind(
                queue.as_str().into(),
                topology.events_exchange().as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "warren-events".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    forward_many(consumer, inputs.clone(), |delivery| {
        let key = delivery.routing_key.as_str();
        if key.starts_with("worker.") {
            serde_json::from_slice(&delivery.data)
                .ok()
                .map(Input::Heartbeat)
                .into_iter()
                .collect()
        } else {
            // One event, or a batch of them.
            decode_events(&delivery.data)
                .into_iter()
                .filter_map(task_input)
                .collect()
        }
    });
    Ok(channel)
}

/// What a task event tells the router: an attempt began, or a worker no longer holds a task.
fn task_input(event: TaskEvent) -> Option<Input> {
    if event.status == Status::Started {
        return Some(Input::Began {
            worker: event.worker?,
            task: event.id,
        });
    }
    let worker = event
        .worker
        .clone()
        .filter(|_| event.status.releases_worker())?;
    let finished = matches!(
        event.status,
        Status::Succeeded | Status::Failed | Status::Dead
    );
    let ending = finished.then(|| {
        let started_at = event
            .duration_ms
            .and_then(|ms| i64::try_from(ms).ok())
            .map(|ms| event.at - chrono::Duration::milliseconds(ms));
        warren_core::Ending {
            status: event.status,
            result: event.result,
            result_omitted: event.result_omitted,
            error: event.error,
            attempts: event.attempt,
            worker: Some(worker.clone()),
            started_at,
            finished_at: Some(event.at),
        }
    });
    Some(Input::Released(Box::new(warren_core::Released {
        worker,
        task: event.id,
        ran: event.duration_ms.map(|ms| (event.kind, ms as f64)),
        ending,
    })))
}

/// Forwards a consumer's deliveries, each mapped by `map` to any number of inputs, until the
/// consumer or the router ends.
fn forward_many(
    mut consumer: Consumer,
    inputs: mpsc::Sender<Input>,
    map: impl Fn(Delivery) -> Vec<Input> + Send + 'static,
) {
    tokio::spawn(async move {
        while let Some(next) = consumer.next().await {
            let mapped = match next {
                Ok(delivery) => map(delivery),
                Err(err) => vec![Input::Failed(err.into())],
            };
            for input in mapped {
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// Forwards a consumer's deliveries, mapped by `map` (which may drop them), until the consumer
/// or the router ends.
fn forward(
    consumer: Consumer,
    inputs: mpsc::Sender<Input>,
    map: impl Fn(Delivery) -> Option<Input> + Send + 'static,
) {
    forward_many(consumer, inputs, move |delivery| {
        map(delivery).into_iter().collect()
    });
}
