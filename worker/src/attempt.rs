//! One attempt of one task: run its handler under a timeout, then hand the outcome on (result to
//! `reply_to`, event to the events exchange) and only then ack the delivery.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::Channel;
use lapin::message::Delivery;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_common::event_batch::EventSender;
use warren_common::message::attempts;
use warren_common::publish::settle;
use warren_common::{Status, Task, TaskEvent};

use warren_core::retry::{Failure, verdict};

use crate::events::event;
use crate::handler::{HandlerError, TaskContext};
use crate::report::Report;
use crate::{Worker, metrics};

/// How an attempt ended.
enum AttemptEnd {
    /// The handler returned.
    Finished(Result<Value, HandlerError>),
    /// The worker is stopping past its grace period: hand the task back untouched.
    HandedBack,
}

/// Runs one delivery to completion. `not_started` fires when tasks still waiting for a slot must
/// be handed back (the worker drains), `hand_back` when running ones must be too.
pub(crate) async fn execute(
    worker: Arc<Worker>,
    publisher: Channel,
    events: EventSender,
    delivery: Delivery,
    mut turn: Turn,
    not_started: CancellationToken,
    hand_back: CancellationToken,
) {
    let task = match Task::from_json(&delivery.data) {
        Ok(task) => task,
        Err(reason) => {
            drop(turn);
            // Only warren writes worker queues, so this is a bug elsewhere; keep the bytes.
            warn!(%reason, "unreadable task in the worker queue; moving it to dead");
            let dead = worker.topology.dead_queue();
            let properties = warren_common::message::with_reason(
                delivery.properties.clone(),
                &reason.to_string(),
            );
            let moved = warren_common::publish_confirmed(
                &publisher,
                "",
                &dead,
                true,
                &delivery.data,
                properties,
            )
            .await;
            settle(&delivery, moved.is_ok()).await;
            return;
        }
    };
    let attempt = attempts(&delivery.properties) + 1;
    // Held from now on: heartbeats report it, so a new leader adopts it; and its delivery is
    // renewed before the broker's consumer_timeout however long it waits or runs.
    worker.status.started(&task.id);
    let delivery = Arc::new(delivery);
    let holder = worker.holdings.hold(&task.id, delivery.clone());
    let cost = task.cost.clamp(1, worker.status.capacity.max(1));
    // In delivery order (its turn), a slot, then the units.
    let permits = tokio::select! {
        biased;
        () = hand_back.cancelled() => None,
        () = not_started.cancelled() => None,
        permits = async {
            turn.wait().await;
            let slot = worker.slots.clone().acquire_owned().await.ok()?;
            let units = worker.units.clone().acquire_many_owned(cost).await.ok()?;
            Some((slot, units))
        } => permits,
    };
    drop(turn);
    let Some(_permits) = permits else {
        debug!(task = %task.id, "handing back a task that never started");
        holder.hand_back().await;
        worker.holdings.release(&task.id, &holder, false);
        worker.status.finished(&task.id);
        return;
    };
    worker.status.began(&task.id);
    worker.metrics.task(Status::Started, &task.kind);
    worker.metrics.in_flight.inc();
    let started_at = Utc::now();
    let submitter = warren_common::message::submitter(&delivery.properties);
    let started = TaskEvent {
        submitter: submitter.clone(),
        ..event(&worker, &task, Status::Started, attempt, None, None)
    };
    // Confirmed before the handler runs: the dispatchers then know the attempt began, so if
    // the task kills this worker, the lost attempt counts (a poison task cannot loop).
    let _ = events.send(started).await;
    let outcome = run_handler(&worker, &task, attempt, &hand_back).await;
    let finished_at = Utc::now();
    let result = match outcome {
        AttemptEnd::HandedBack => {
            debug!(task = %task.id, "handing task back");
            holder.hand_back().await;
            worker.holdings.release(&task.id, &holder, false);
            worker.status.finished(&task.id);
            worker.metrics.in_flight.dec();
            return;
        }
        AttemptEnd::Finished(result) => result,
    };
    let verdict = verdict(
        result.map_err(Failure::from),
        attempt,
        task.max_attempts,
        worker.config.tasks.retry_policy(),
        rand::random(),
    );
    let report = Report {
        task: &task,
        attempt,
        verdict,
        started_at,
        finished_at,
    };
    let delivered = report
        .publish(&worker, &publisher, &events, &delivery)
        .await;
    if let Err(err) = &delivered {
        warn!(task = %task.id, cause = %err, "could not hand the outcome on; the task will run again");
    }
    holder.settle(delivered.is_ok()).await;
    worker
        .holdings
        .release(&task.id, &holder, delivered.is_ok());
    worker.status.finished(&task.id);
    let metrics = &worker.metrics;
    metrics.in_flight.dec();
    if delivered.is_ok() {
        metrics.task(report.status(), &task.kind);
        let ran = (finished_at - started_at).to_std().unwrap_or_default();
        metrics
            .duration
            .get_or_create(&metrics::KindLabels {
                kind: task.kind.clone(),
            })
            .observe(ran.as_secs_f64());
    }
}

/// The order in which deliveries take their slot and units: the order the dispatcher put them
/// in the worker's queue. Each delivery runs in its own tokio task, and tokio polls new tasks
/// in no set order, so fair semaphores alone let a later delivery take a slot first (seen: a
/// `normal` task started before the last `high` one of a backlog).
#[derive(Default)]
pub(crate) struct Line {
    last: Option<oneshot::Receiver<()>>,
}

impl Line {
    /// The turn of the next delivery: it comes after every turn handed out before.
    pub(crate) fn next(&mut self) -> Turn {
        let (done, next) = oneshot::channel();
        Turn {
            after: self.last.replace(next),
            _done: done,
        }
    }
}

/// One delivery's place in its [`Line`]. Dropping it lets the next delivery go on.
pub(crate) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until the delivery before this one has dropped its turn.
    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            // Nothing is ever sent: the sender's drop is the signal.
            let _ = after.await;
        }
    }
}

/// Runs the handler in its own tokio task (so a panic fails only this attempt), bounded by the
/// task's timeout and by `hand_back`.
async fn run_handler(
    worker: &Worker,
    task: &Task,
    attempt: u32,
    hand_back: &CancellationToken,
) -> AttemptEnd {
    let Some(handler) = worker.handlers.get(&task.kind) else {
        return AttemptEnd::Finished(Err(HandlerError::failed(format!(
            "no handler for kind {:?} on worker {}",
            task.kind, worker.status.id
        ))));
    };
    let cancelled = CancellationToken::new();
    let context = TaskContext {
        id: task.id.clone(),
        kind: task.kind.clone(),
        payload: task.payload.clone(),
        attempt,
        cancelled: cancelled.clone(),
    };
    let mut running = tokio::spawn(handler.call(context));
    let timeout = Duration::from_millis(task.timeout_ms);
    let outcome = tokio::select! {
        joined = &mut running => AttemptEnd::Finished(match joined {
            Ok(result) => result,
            Err(err) if err.is_panic() => Err(HandlerError::failed(format!(
                "handler panicked: {}",
                panic_message(err.into_panic())
            ))),
            Err(err) => Err(HandlerError::failed(format!("handler aborted: {err}"))),
        }),
        () = tokio::time::sleep(timeout) => AttemptEnd::Finished(Err(HandlerError::failed(format!(
            "timed out after {} ms", task.timeout_ms
        )))),
        () = hand_back.cancelled() => AttemptEnd::HandedBack,
    };
    cancelled.cancel();
    running.abort();
    outcome
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
