//! What the router sends back rather than on: a dead task buried with its reason and result,
//! a duplicate submission answered with the first one's result, and the results that waiting
//! duplicates get when the first one ends.

use tracing::info;
use warren_common::message::{with_reason, without_header};
use warren_common::publish::{publish_result, settle};
use warren_common::{HEADER_SUBMITTED, Status, TaskEvent, TaskResult, publish_confirmed};
use warren_core::decisions::Answer;
use warren_core::{Ending, Held, Prior, TaskInfo};

use super::{Carried, Router};

impl Router<'_> {
    /// Moves a held task to the dead queue with `reason`, tells its submitter (if it asked for
    /// a result) and the events exchange, then acks it.
    pub(super) fn bury(&self, carried: Carried, task: Option<TaskInfo>, reason: String) {
        let publisher = self.publisher.clone();
        let dead = self.dispatcher.topology.dead_queue();
        if let Some(task) = &task {
            self.dispatcher.metrics.task(Status::Dead, &task.kind);
            self.notifier.send(TaskEvent {
                error: Some(reason.clone()),
                submitter: warren_common::message::submitter(carried.properties()),
                ..TaskEvent::new(&task.id, &task.kind, Status::Dead)
            });
        }
        self.settling.spawn(async move {
            let properties = with_reason(
                without_header(carried.properties().clone(), HEADER_SUBMITTED),
                &reason,
            );
            let moved =
                publish_confirmed(&publisher, "", &dead, true, carried.data(), properties).await;
            if let (Ok(()), Some(task)) = (&moved, &task) {
                let result = TaskResult {
                    error: Some(reason),
                    attempts: warren_common::message::attempts(carried.properties()),
                    ..TaskResult::new(&task.id, &task.kind, Status::Dead)
                };
                if let Ok(Some(confirm)) =
                    publish_result(&publisher, carried.properties(), &result).await
                {
                    let _ = confirm.await;
                }
            }
            settle(&carried.into_delivery(), moved.is_ok()).await;
        });
    }

    /// Answers a submission of a task id dispatched lately without running it: with the
    /// result if the task has finished (a pending one's submitter was recorded to be answered
    /// when it does), then acks it.
    pub(super) fn duplicate(&self, held: Held<Carried>, prior: Prior) {
        let Held { task, handle } = held;
        self.dispatcher.metrics.duplicates.inc();
        info!(task = %task.id, "a duplicate submission: answering it without running the task again");
        let answer = match prior {
            Prior::Done(ending) => Some(result_of(&task.id, &task.kind, ending)),
            Prior::Pending | Prior::Unseen => None,
        };
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            if let Some(result) = answer
                && let Ok(Some(confirm)) =
                    publish_result(&publisher, handle.properties(), &result).await
            {
                let _ = confirm.await;
            }
            settle(&handle.into_delivery(), true).await;
        });
    }

    /// Sends a task's result to the duplicates waiting for it.
    pub(super) fn answer_waiters(&self, answer: Answer) {
        let result = result_of(&answer.id, &answer.kind, answer.ending);
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            for waiter in answer.waiters {
                let request = lapin::BasicProperties::default()
                    .with_reply_to(waiter.reply_to.as_str().into())
                    .with_correlation_id(
                        waiter
                            .correlation_id
                            .as_deref()
                            .unwrap_or(&result.id)
                            .into(),
                    );
                if let Ok(Some(confirm)) = publish_result(&publisher, &request, &result).await {
                    let _ = confirm.await;
                }
            }
        });
    }
}

/// The result a duplicate's submitter gets.
fn result_of(id: &str, kind: &str, ending: Ending) -> TaskResult {
    let omitted = ending.result_omitted;
    TaskResult {
        result: ending.result.unwrap_or_default(),
        error: ending.error.or_else(|| {
            omitted.then(|| {
                "succeeded; its result was too large to keep for duplicate submissions".to_owned()
            })
        }),
        attempts: ending.attempts,
        worker: ending.worker,
        started_at: ending.started_at,
        finished_at: ending.finished_at,
        ..TaskResult::new(id, kind, ending.status)
    }
}
