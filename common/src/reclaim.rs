//! Reclaiming a worker's queue (by the worker itself as it leaves, or by the dispatcher when
//! it dies): once no consumer is attached (so the broker has
//! requeued everything the worker held), every task in it goes back to the most urgent level
//! queue, confirmed before it is acked, and the empty queue is deleted. When the worker was
//! lost, each task it had begun counts one failed attempt (the core's `LostWorker::verdict`):
//! it goes back with the attempt in its history and a backoff, or, with no attempt left, to the
//! dead queue with a `dead` result — so a task that kills its worker cannot take down a fleet.

use std::time::Duration;

use chrono::Utc;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use warren_core::LostWorker;
use warren_core::retry::{RetryPolicy, Verdict};

use crate::message::{
    attempts, json_properties, with_failed_attempt, with_header, with_reason, without_header,
};
use crate::publish::{inspect_queue, publish_result};
use crate::{
    BrokerError, HEADER_NOT_BEFORE, HEADER_RENEWAL, Status, Task, TaskEvent, TaskResult, Topology,
    confirmed_channel, publish_confirmed,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often to look for the worker's consumer to be gone.
const POLL: Duration = Duration::from_millis(250);

/// How long a leaving worker waits for its own, cancelled, consumer to be gone from the count.
/// A consumer connected through a broker node that went down stays counted until that node is
/// back, so a worker that waited as long as the dispatcher could miss its orchestrator's stop
/// deadline; it leaves the queue to the dispatcher instead.
pub const WORKER_PATIENCE: Duration = Duration::from_secs(10);

/// The worker a queue belonged to, lost while holding its tasks, and the backoff for their
/// retries.
#[derive(Debug, Clone)]
pub struct Lost {
    /// Who it was and which tasks it had begun.
    pub worker: LostWorker,
    /// A retry's backoff.
    pub policy: RetryPolicy,
}

/// Moves every task of `queue` back to the priority queues and deletes it, dropping the
/// messages `spare` says are spare copies: `Some(moved)` (0 if
/// it was gone already). `None` if it left the queue alone: a consumer stayed attached for
/// `patience` (the worker is alive after all, or the broker still counts a consumer it lost),
/// or `stop` fired.
pub async fn reclaim(
    connection: &Connection,
    topology: &Topology,
    queue: &str,
    patience: Duration,
    stop: &CancellationToken,
    lost: Option<&Lost>,
    spare: &(dyn Fn(&BasicProperties) -> bool + Sync),
) -> Result<Option<usize>, BrokerError> {
    let polls = (patience.as_millis() / POLL.as_millis()).max(1);
    for _ in 0..polls {
        // A passive declare of a missing queue closes the channel: use a fresh one each time.
        let probe = connection.create_channel().await?;
        let declared = inspect_queue(&probe, queue).await;
        let Ok(state) = declared else {
            return Ok(Some(0)); // already gone
        };
        let _ = probe.close(200, "probe done".into()).await;
        if state.consumer_count() == 0 {
            let moved = move_all(connection, topology, queue, lost, spare).await?;
            info!(queue, moved, "reclaimed a departed worker's queue");
            return Ok(Some(moved));
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(POLL) => {}
        }
    }
    warn!(
        queue,
        ?patience,
        "a consumer is still attached to a departed worker's queue"
    );
    Ok(None)
}

async fn move_all(
    connection: &Connection,
    topology: &Topology,
    queue: &str,
    lost: Option<&Lost>,
    spare: &(dyn Fn(&BasicProperties) -> bool + Sync),
) -> Result<usize, BrokerError> {
    let channel = confirmed_channel(connection).await?;
    let mut moved = 0;
    loop {
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            let delivery = &message.delivery;
            if spare(&delivery.properties) {
                // A leaving worker's renewed copy of a task it finished: nothing to move.
                delivery.ack(BasicAckOptions::default()).await?;
                continue;
            }
            let decoded = Task::from_json(&delivery.data);
            // A renewed copy's mark meant "held by that worker": it no longer is.
            let original = without_header(delivery.properties.clone(), HEADER_RENEWAL);
            let lost_attempt = match &decoded {
                Ok(task) => lost.and_then(|lost| lost_attempt(lost, task, &original)),
                Err(_) => None,
            };
            let (target, properties) = match (&decoded, &lost_attempt) {
                (Ok(_), Some(lost_attempt)) => lost_attempt.record(topology, &original),
                // To the most urgent level: these tasks already waited their turn once, and
                // a worker's departure should not send them to the back of the line.
                (Ok(_), None) => (topology.level_queue(0), original.clone()),
                (Err(reason), _) => (
                    topology.dead_queue(),
                    with_reason(original.clone(), &reason.to_string()),
                ),
            };
            publish_confirmed(
                &channel,
                "",
                &target,
                true,
                &delivery.data,
                properties.clone(),
            )
            .await?;
            if let (Ok(task), Some(lost_attempt)) = (&decoded, &lost_attempt) {
                lost_attempt
                    .announce(&channel, topology, task, &properties)
                    .await?;
            }
            delivery.ack(BasicAckOptions::default()).await?;
            moved += 1;
        }
        // Quorum queues cannot delete "if empty": check, then delete, then loop if a late
        // message slipped in between.
        let state = inspect_queue(&channel, queue).await?;
        if state.consumer_count() > 0 {
            // The worker came back: it owns its queue again.
            let _ = channel.close(200, "worker is back".into()).await;
            return Ok(moved);
        }
        if state.message_count() == 0 {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
            let _ = channel.close(200, "reclaimed".into()).await;
            return Ok(moved);
        }
    }
}

/// A task's attempt lost with its worker.
struct LostAttempt {
    /// The attempt's number.
    attempt: u32,
    /// The lost worker.
    worker: String,
    /// Retry or dead.
    verdict: Verdict,
}

/// The lost attempt of `task`, if its worker had begun it.
fn lost_attempt(lost: &Lost, task: &Task, properties: &BasicProperties) -> Option<LostAttempt> {
    let made = attempts(properties);
    let verdict = lost.worker.verdict(
        &task.id,
        made,
        task.max_attempts,
        lost.policy,
        rand::random(),
    )?;
    Some(LostAttempt {
        attempt: made + 1,
        worker: lost.worker.worker.clone(),
        verdict,
    })
}

impl LostAttempt {
    /// Where the task goes, with the lost attempt recorded in its properties: back to the most
    /// urgent level after a backoff, or to the dead queue.
    fn record(
        &self,
        topology: &Topology,
        properties: &BasicProperties,
    ) -> (String, BasicProperties) {
        let now = Utc::now();
        match &self.verdict {
            Verdict::Retry { error, delay } => {
                let not_before = now + chrono::Duration::from_std(*delay).unwrap_or_default();
                let carried =
                    with_failed_attempt(properties.clone(), self.attempt, &self.worker, error, now);
                let carried = with_header(
                    carried,
                    HEADER_NOT_BEFORE,
                    AMQPValue::LongLongInt(not_before.timestamp_millis()),
                );
                (topology.level_queue(0), carried)
            }
            Verdict::Dead { error, last } => {
                let carried =
                    with_failed_attempt(properties.clone(), self.attempt, &self.worker, last, now);
                (topology.dead_queue(), with_reason(carried, error))
            }
            Verdict::Succeeded(_) | Verdict::Failed { .. } => {
                (topology.level_queue(0), properties.clone())
            }
        }
    }

    /// Once the task is safely in its new queue: the `task.retrying` or `task.dead` event and,
    /// for a dead task, its result to `reply_to`.
    async fn announce(
        &self,
        channel: &Channel,
        topology: &Topology,
        task: &Task,
        properties: &BasicProperties,
    ) -> Result<(), BrokerError> {
        let (status, error) = match &self.verdict {
            Verdict::Retry { error, .. } => (Status::Retrying, error.clone()),
            Verdict::Dead { error, .. } => (Status::Dead, error.clone()),
            Verdict::Succeeded(_) | Verdict::Failed { .. } => return Ok(()),
        };
        warn!(task = %task.id, worker = %self.worker, attempt = self.attempt, ?status, "a task's worker was lost while running it");
        let event = TaskEvent {
            attempt: self.attempt,
            worker: Some(self.worker.clone()),
            error: Some(error.clone()),
            submitter: crate::message::submitter(properties),
            ..TaskEvent::new(&task.id, &task.kind, status)
        };
        let body = serde_json::to_vec(&event).expect("events serialize");
        let events = topology.events_exchange();
        publish_confirmed(
            channel,
            &events,
            status.routing_key(),
            false,
            &body,
            json_properties(false),
        )
        .await?;
        if status == Status::Dead {
            let result = TaskResult {
                error: Some(error),
                attempts: self.attempt,
                worker: Some(self.worker.clone()),
                ..TaskResult::new(&task.id, &task.kind, Status::Dead)
            };
            if let Some(confirm) = publish_result(channel, properties, &result).await? {
                let _ = confirm.await;
            }
        }
        Ok(())
    }
}
