//! Intake: every message on the submit exchange becomes a validated task on its priority
//! level's queue, or is moved to the rejected queue with a reason. The submission is acked only
//! after the broker confirmed where it went.

use std::sync::Arc;

use tokio::sync::mpsc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;
use warren_common::envelope::SubmitProperties;
use warren_common::message::with_reason;
use warren_common::publish::publish_result;
use warren_common::{BrokerError, Status, Task, TaskResult, confirmed_channel};

use crate::Dispatcher;
use crate::feeds::Input;
use crate::filing::{Filed, file};
use crate::headers::{Arrival, forwardable};
use crate::notify::Notifier;

/// Consumes the intake queue until `stop` fires or the channel fails; then waits until every
/// submission taken is settled and closes its channels.
pub(crate) async fn run(
    dispatcher: Arc<Dispatcher>,
    connection: &Connection,
    notifier: Notifier,
    router: mpsc::Sender<Input>,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    let consume = connection.create_channel().await?;
    let publisher = confirmed_channel(connection).await?;
    let settling = TaskTracker::new();
    let result = consume_intake(
        &dispatcher,
        &consume,
        &publisher,
        &notifier,
        &router,
        &settling,
        &stop,
    )
    .await;
    settling.close();
    settling.wait().await;
    // Close channels before the connection is closed (lapin's background close of dropped
    // channels races with the connection close).
    let _ = consume.close(200, "intake stopped".into()).await;
    let _ = publisher.close(200, "intake stopped".into()).await;
    result
}

async fn consume_intake(
    dispatcher: &Dispatcher,
    consume: &Channel,
    publisher: &Channel,
    notifier: &Notifier,
    router: &mpsc::Sender<Input>,
    settling: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    let prefetch = dispatcher.config.dispatcher.intake_prefetch;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            dispatcher.topology.intake_queue().as_str().into(),
            "warren-intake".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => return Err(BrokerError::Pool("intake consumer cancelled".into())),
            },
        };
        match admit(dispatcher, publisher, notifier, &delivery).await? {
            Admitted::Filed(filed) => {
                settling.spawn(filed.settle(delivery));
            }
            Admitted::ToRouter {
                level,
                task,
                body,
                properties,
            } => {
                let handed = Input::Submitted {
                    level,
                    task,
                    body,
                    properties: *properties,
                    delivery: Box::new(delivery),
                };
                // If the router is gone (the session ends), the delivery is dropped unacked
                // and the broker requeues it when this channel closes.
                let _ = router.send(handed).await;
            }
        }
    }
}

/// What intake did with a submission.
enum Admitted {
    /// Published to its priority queue (or the rejected queue); the confirm is pending.
    Filed(Filed),
    /// Valid, to be handed to this dispatcher's router (the fast path).
    ToRouter {
        level: usize,
        task: Box<Task>,
        body: Vec<u8>,
        properties: Box<BasicProperties>,
    },
}

/// Validates one submission and publishes it where it belongs, or says to hand it to the
/// router when this dispatcher routes and the task need not wait (no retry backoff).
async fn admit(
    dispatcher: &Dispatcher,
    publisher: &Channel,
    notifier: &Notifier,
    delivery: &Delivery,
) -> Result<Admitted, BrokerError> {
    let properties = &delivery.properties;
    let fallback = SubmitProperties {
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
        priority: *properties.priority(),
    };
    let topology = &dispatcher.topology;
    match Task::decode(&delivery.data, &fallback, &dispatcher.config.tasks) {
        Ok(task) => {
            let policy = dispatcher.config.dispatcher.policy;
            let level =
                warren_core::policy::intake_level(policy, task.priority, |p| topology.level_for(p));
            let queue = topology.level_queue(level);
            let arrival = Arrival {
                from_client: delivery.exchange.as_str() == topology.submit_exchange(),
                redelivered: delivery.redelivered,
                now_ms: chrono::Utc::now().timestamp_millis(),
            };
            let (forwarded, removed) = arrival.forward(properties, &task.id);
            if !removed.is_empty() {
                debug!(task = %task.id, ?removed, "removed warren's own headers from a submission");
            }
            let submitter = properties.user_id().as_ref().map(|u| u.to_string());
            notifier.task(&task.id, &task.kind, Status::Accepted, 0, None, submitter);
            dispatcher.metrics.task(Status::Accepted, &task.kind);
            let waits = forwarded
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(warren_common::HEADER_NOT_BEFORE));
            if !waits && dispatcher.fast_path.takes() {
                return Ok(Admitted::ToRouter {
                    level,
                    body: task.to_json(),
                    task: Box::new(task),
                    properties: Box::new(forwarded),
                });
            }
            let filed = file(publisher, queue, &task.to_json(), forwarded).await?;
            Ok(Admitted::Filed(filed))
        }
        Err(rejection) => {
            let reason = rejection.to_string();
            debug!(%reason, "rejected a submission");
            let queue = topology.rejected_queue();
            let kept = with_reason(forwardable(properties), &reason);
            let filed = file(publisher, queue, &delivery.data, kept).await?;
            let (id, kind) = best_effort_identity(delivery);
            let result = TaskResult {
                error: Some(reason.clone()),
                ..TaskResult::new(&id, &kind, Status::Rejected)
            };
            let reply = publish_result(publisher, properties, &result).await?;
            // Only a valid kind becomes a label: anything else could flood the label set.
            let label = if warren_common::envelope::is_valid_kind(&kind) {
                kind.as_str()
            } else {
                ""
            };
            dispatcher.metrics.task(Status::Rejected, label);
            let submitter = properties.user_id().as_ref().map(|u| u.to_string());
            notifier.task(&id, &kind, Status::Rejected, 0, Some(reason), submitter);
            Ok(Admitted::Filed(filed.with_reply(reply)))
        }
    }
}

/// The id and kind of a rejected message, as far as they can be read.
fn best_effort_identity(delivery: &Delivery) -> (String, String) {
    let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(128).collect::<String>())
    };
    let id = field("id")
        .filter(|id| !id.is_empty())
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
        })
        .unwrap_or_default();
    (id, field("kind").unwrap_or_default())
}
