//! Carrying out what an attempt led to (the core's `retry::verdict`): success; a retry with
//! backoff (back through intake, with the attempt recorded); death in `<prefix>.dead` once
//! `max_attempts` is spent; or a failure when the handler aborted, kept in `<prefix>.dead` too
//! (findable and requeueable). `Report::publish`
//! waits for the broker's confirms before the caller acks.

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, PublisherConfirm};
use serde_json::Value;
use warren_common::TaskEvent;
use warren_common::event_batch::EventSender;
use warren_common::events::{EVENT_RESULT_MAX_BYTES, json_len_within};
use warren_common::message::{with_failed_attempt, with_header, with_reason};
use warren_common::publish::{check_confirmation, publish_result, publish_to_queue};
use warren_common::{BrokerError, HEADER_NOT_BEFORE, Status, Task, TaskResult};
use warren_core::retry::Verdict;

use crate::Worker;
use crate::events::event;

/// A finished attempt, ready to be reported.
pub(crate) struct Report<'a> {
    /// The task.
    pub(crate) task: &'a Task,
    /// This attempt's number.
    pub(crate) attempt: u32,
    /// What it leads to.
    pub(crate) verdict: Verdict,
    /// When the attempt started.
    pub(crate) started_at: DateTime<Utc>,
    /// When it ended.
    pub(crate) finished_at: DateTime<Utc>,
}

impl Report<'_> {
    /// The status the verdict leads to.
    pub(crate) fn status(&self) -> Status {
        match self.verdict {
            Verdict::Succeeded(_) => Status::Succeeded,
            Verdict::Failed { .. } => Status::Failed,
            Verdict::Retry { .. } => Status::Retrying,
            Verdict::Dead { .. } => Status::Dead,
        }
    }

    /// Publishes what the verdict calls for — the retry or the dead letter (confirmed; a
    /// failed task's too), the
    /// result (if the submitter asked for one), the event — and waits for the broker to have
    /// them all.
    pub(crate) async fn publish(
        &self,
        worker: &Worker,
        publisher: &Channel,
        events: &EventSender,
        delivery: &Delivery,
    ) -> Result<(), BrokerError> {
        let request = &delivery.properties;
        let topology = &worker.topology;
        let mut pending: Vec<(PublisherConfirm, String)> = Vec::with_capacity(3);
        let mut result_confirm = None;
        let (status, value, error) = match &self.verdict {
            Verdict::Succeeded(value) => (Status::Succeeded, value.clone(), None),
            // Kept in the dead queue, so that it can be found (`warren dead list`) and, once
            // whatever made the handler give up is fixed, requeued (`warren dead requeue`).
            Verdict::Failed { error } => {
                let reason = format!("aborted by its handler: {error}");
                let properties = with_reason(self.carried_over(worker, request, error), &reason);
                let queue = topology.dead_queue();
                pending.push((
                    publish_to_queue(publisher, &queue, &delivery.data, properties).await?,
                    queue,
                ));
                (Status::Failed, Value::Null, Some(error.clone()))
            }
            Verdict::Retry { error, delay } => {
                let not_before =
                    Utc::now() + chrono::Duration::from_std(*delay).unwrap_or_default();
                let properties = with_header(
                    self.carried_over(worker, request, error),
                    HEADER_NOT_BEFORE,
                    AMQPValue::LongLongInt(not_before.timestamp_millis()),
                );
                let queue = topology.intake_queue();
                pending.push((
                    publish_to_queue(publisher, &queue, &delivery.data, properties).await?,
                    queue,
                ));
                (Status::Retrying, Value::Null, Some(error.clone()))
            }
            Verdict::Dead { error, last } => {
                let properties = with_reason(self.carried_over(worker, request, last), error);
                let queue = topology.dead_queue();
                pending.push((
                    publish_to_queue(publisher, &queue, &delivery.data, properties).await?,
                    queue,
                ));
                (Status::Dead, Value::Null, Some(error.clone()))
            }
        };
        if status != Status::Retrying {
            let result = TaskResult {
                result: value,
                error: error.clone(),
                attempts: self.attempt,
                worker: Some(worker.status.id.clone()),
                started_at: Some(self.started_at),
                finished_at: Some(self.finished_at),
                ..TaskResult::new(&self.task.id, &self.task.kind, status)
            };
            result_confirm = publish_result(publisher, request, &result).await?;
        }
        let duration = (self.finished_at - self.started_at)
            .num_milliseconds()
            .max(0) as u64;
        let (carried, omitted) = match &self.verdict {
            Verdict::Succeeded(value) => {
                let small = json_len_within(value, EVENT_RESULT_MAX_BYTES).is_some();
                (Some(value).filter(|_| small), !small)
            }
            _ => (None, false),
        };
        // Measured only when too large to carry: rare, and then worth saying.
        let result_bytes = match &self.verdict {
            Verdict::Succeeded(value) if omitted => {
                serde_json::to_vec(value).ok().map(|json| json.len() as u64)
            }
            _ => None,
        };
        let finished = TaskEvent {
            submitter: warren_common::message::submitter(request),
            result: carried.cloned(),
            result_omitted: omitted,
            result_bytes,
            ..event(
                worker,
                self.task,
                status,
                self.attempt,
                error,
                Some(duration),
            )
        };
        // The event in a batch with other attempts' events; confirmed like the rest.
        let event = events.send(finished);
        for (confirm, target) in pending {
            check_confirmation(confirm.await?, &target)?;
        }
        event.await?;
        // Awaited, never dropped (lapin keeps unawaited confirms), but its outcome ignored: a
        // reply queue that is gone is the submitter's business, not a reason to run again.
        if let Some(confirm) = result_confirm {
            let _ = confirm.await;
        }
        Ok(())
    }

    /// The request's properties with this attempt counted and recorded in the history.
    fn carried_over(
        &self,
        worker: &Worker,
        request: &BasicProperties,
        error: &str,
    ) -> BasicProperties {
        with_failed_attempt(
            request.clone(),
            self.attempt,
            &worker.status.id,
            error,
            self.finished_at,
        )
    }
}
