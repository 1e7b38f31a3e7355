//! The router: the I/O shell around the scheduler core. It holds the tasks of the scheduling
//! window, feeds heartbeats and releases to the registry, sends each task the scheduler picks
//! to its worker's queue, and acks the task's priority-queue delivery only once the broker has
//! confirmed it on the worker's queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, PublisherConfirm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_common::broker::{check_confirmation, publish_result, settle};
use warren_common::message::{header_u64, with_reason, without_header};
use warren_common::reclaim::reclaim;
use warren_common::{
    BrokerError, HEADER_NOT_BEFORE, HEADER_SUBMITTED, Pool, Status, Task, publish_confirmed,
};

use crate::Dispatcher;
use crate::dedupe::{Dedupe, Outcome, Verdict, Waiter};
use crate::feeds::{self, Input};
use crate::notify::Notifier;
use crate::registry::{Change, Registry};
use crate::scheduler::{Held, Scheduler, TaskInfo};

/// How often silent workers are looked for.
const LIVENESS_TICK: Duration = Duration::from_millis(250);
/// First pause before trying again to reclaim a departed worker's queue; doubles up to
/// [`RECLAIM_RETRY_MAX`].
const RECLAIM_RETRY: Duration = Duration::from_secs(1);
const RECLAIM_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often tasks that no live worker can run are reported.
const WAITING_REPORT: Duration = Duration::from_secs(10);

/// The router of one broker session.
pub(crate) struct Router<'a> {
    /// Shared settings and names.
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// Workers and their credit; outlives sessions, because workers do.
    pub(crate) registry: &'a mut Registry,
    /// Ids dispatched lately, for idempotency; outlives sessions, like the registry.
    pub(crate) dedupe: &'a mut Dedupe,
    /// The held tasks of this session (the broker requeues them if the session dies).
    pub(crate) scheduler: Scheduler<Carried>,
    /// Confirm-mode channel for publishing to worker queues.
    pub(crate) publisher: Channel,
    /// Task events.
    pub(crate) notifier: Notifier,
    /// Back into the router, for dispatches the broker refused.
    pub(crate) inputs: mpsc::Sender<Input>,
    /// Confirm waiters still settling deliveries; waited for before the connection closes.
    pub(crate) settling: TaskTracker,
    /// For reclaiming departed workers' queues on their own connections.
    pub(crate) pool: Pool,
    /// When unrunnable tasks were last reported.
    pub(crate) last_report: Instant,
    /// The connection that holds the leader baton; routing happens only over it.
    pub(crate) connection: &'a lapin::Connection,
    /// Since when this dispatcher leads (holds the baton), if it does.
    pub(crate) leading_since: Option<Instant>,
    /// The channel consuming the priority queues, once routing.
    pub(crate) levels_channel: Option<Channel>,
    /// Departed workers' queues being reclaimed in this session, to stop if the worker is back.
    pub(crate) reclaiming: std::collections::HashMap<String, CancellationToken>,
}

impl Router<'_> {
    /// Routes until `stop` fires or the session fails.
    pub(crate) async fn run(
        &mut self,
        mut inputs: mpsc::Receiver<Input>,
        stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut liveness = tokio::time::interval(LIVENESS_TICK);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                input = inputs.recv() => match input {
                    Some(input) => self.handle(input)?,
                    None => return Ok(()),
                },
                _ = liveness.tick() => {
                    self.expire();
                    self.start_routing().await?;
                    self.reclaim_departed(stop);
                    self.export_state();
                }
            }
            self.dispatch().await?;
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), BrokerError> {
        match input {
            Input::Task { level, delivery } => self.hold(level, *delivery),
            Input::Submitted {
                level,
                task,
                body,
                properties,
                delivery,
            } => self.submitted(level, *task, body, properties, *delivery),
            Input::Heartbeat(beat) => {
                let change = self.registry.heartbeat(&beat, Instant::now());
                let alive = beat.state != warren_common::WorkerState::Offline;
                if let Some(reclaiming) =
                    alive.then(|| self.reclaiming.remove(&beat.queue)).flatten()
                {
                    info!(worker = %beat.worker, "a worker declared dead is heard again; leaving its queue to it");
                    reclaiming.cancel();
                }
                match change {
                    Change::Joined => {
                        info!(worker = %beat.worker, kinds = ?beat.kinds, capacity = beat.concurrency, "worker joined")
                    }
                    // A worker that says goodbye has emptied and deleted its own queue.
                    Change::Left => info!(worker = %beat.worker, "worker left"),
                    Change::Refreshed => {}
                }
            }
            Input::Reclaimed(queue) => {
                self.reclaiming.remove(&queue);
                self.registry.reclaimed(&queue);
            }
            Input::Released {
                worker,
                task,
                ran,
                finished,
                outcome,
            } => {
                self.registry.released(&worker, &task);
                if finished {
                    self.registry.finished(&task);
                }
                if let Some((kind, duration_ms)) = ran {
                    self.scheduler.observe(&kind, duration_ms as f64);
                    self.registry.ran(&worker, duration_ms as f64);
                }
                if let Some(outcome) = outcome {
                    self.answer_waiters(&task, *outcome);
                }
            }
            Input::Unsent { worker, task } => {
                self.registry.released(&worker, &task);
                self.dedupe.undispatched(&task);
            }
            Input::Leader => self.leading_since = Some(Instant::now()),
            Input::Failed(err) => return Err(err),
        }
        Ok(())
    }

    /// Holds a task delivered from a priority queue; an unreadable one goes to the dead queue.
    fn hold(&mut self, level: usize, delivery: Delivery) {
        let decoded = Task::from_json(&delivery.data);
        let delivery = Carried {
            delivery,
            normalized: None,
        };
        match decoded {
            Ok(task) => self.take(level, task, delivery),
            Err(reason) => {
                warn!(%reason, "unreadable task on a priority queue; moving it to dead");
                self.bury(delivery, None, reason.to_string());
            }
        }
    }

    /// A valid submission handed over by intake while this dispatcher routes (the fast path):
    /// if a worker can take it right now, it goes straight to the worker's queue, skipping its
    /// priority queue (any held task that could use that worker's room would have been sent
    /// already); otherwise it is filed to its priority queue as intake would have.
    fn submitted(
        &mut self,
        level: usize,
        task: Task,
        body: Vec<u8>,
        properties: lapin::BasicProperties,
        delivery: Delivery,
    ) {
        let carried = Carried {
            delivery,
            normalized: Some((body, properties)),
        };
        let now_runnable = self
            .registry
            .workers()
            .any(|w| w.can_take(&task.kind, &task.requires, task.cost));
        if now_runnable {
            return self.take(level, task, carried);
        }
        let queue = self.dispatcher.topology.level_queue(level);
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            let filed = publish_confirmed(
                &publisher,
                "",
                &queue,
                true,
                carried.data(),
                carried.properties().clone(),
            )
            .await;
            if let Err(err) = &filed {
                warn!(cause = %err, "submission not filed; requeueing it");
            }
            settle(&carried.delivery, filed.is_ok()).await;
        });
    }

    /// Holds a task (or answers it as a duplicate, or drops a copy a worker already has).
    fn take(&mut self, level: usize, task: Task, delivery: Carried) {
        match task {
            task if maybe_duplicate(&delivery) && self.registry.has_seen(&task.id) => {
                // A copy the previous leader had already sent on: it runs, or ran, elsewhere.
                info!(task = %task.id, "dropping a redelivered task that a worker already has");
                self.settling
                    .spawn(async move { settle(&delivery.delivery, true).await });
            }
            task => {
                if is_fresh(&delivery) {
                    let waiter = waiter(delivery.properties());
                    let verdict = self.dedupe.check(&task.id, waiter, Instant::now());
                    if verdict != Verdict::New {
                        return self.duplicate(delivery, &task.id, &task.kind, verdict);
                    }
                }
                let (now, wall) = (Instant::now(), chrono::Utc::now());
                let to_instant = |at: chrono::DateTime<chrono::Utc>| match (at - wall).to_std() {
                    Ok(ahead) => now + ahead,
                    Err(_) => now
                        .checked_sub((wall - at).to_std().unwrap_or_default())
                        .unwrap_or(now),
                };
                let deadline = task.deadline.map(to_instant);
                let not_before = header_u64(delivery.properties(), HEADER_NOT_BEFORE)
                    .and_then(|ms| i64::try_from(ms).ok())
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(to_instant);
                let info = TaskInfo {
                    id: task.id,
                    kind: task.kind,
                    requires: task.requires,
                    cost: task.cost,
                    estimated_ms: task.estimated_ms.map(|ms| ms as f64),
                    deadline,
                    arrived: now,
                    not_before,
                };
                self.scheduler.push(
                    level,
                    Held {
                        task: info,
                        handle: delivery,
                    },
                );
            }
        }
    }

    /// Moves a held task to the dead queue with `reason`, tells its submitter (if it asked for
    /// a result) and the events exchange, then acks it.
    fn bury(&self, delivery: Carried, task: Option<TaskInfo>, reason: String) {
        let publisher = self.publisher.clone();
        let dead = self.dispatcher.topology.dead_queue();
        if let Some(task) = &task {
            self.dispatcher.metrics.task(Status::Dead, &task.kind);
            self.notifier.send(warren_common::TaskEvent {
                error: Some(reason.clone()),
                submitter: warren_common::message::submitter(delivery.properties()),
                ..event(task, Status::Dead)
            });
        }
        self.settling.spawn(async move {
            let properties = with_reason(
                without_header(delivery.properties().clone(), HEADER_SUBMITTED),
                &reason,
            );
            let moved =
                publish_confirmed(&publisher, "", &dead, true, delivery.data(), properties).await;
            if let (Ok(()), Some(task)) = (&moved, &task) {
                let result = warren_common::TaskResult {
                    id: task.id.clone(),
                    kind: task.kind.clone(),
                    status: Status::Dead,
                    result: serde_json::Value::Null,
                    error: Some(reason),
                    attempts: warren_common::message::attempts(delivery.properties()),
                    worker: None,
                    started_at: None,
                    finished_at: None,
                };
                if let Ok(Some(confirm)) =
                    publish_result(&publisher, delivery.properties(), &result).await
                {
                    let _ = confirm.await;
                }
            }
            settle(&delivery.delivery, moved.is_ok()).await;
        });
    }

    /// Answers a submission of a task id dispatched lately without running it: with the
    /// result if the task has finished (a pending one's submitter was recorded to be answered
    /// when it does), then acks it.
    fn duplicate(&self, delivery: Carried, id: &str, kind: &str, verdict: Verdict) {
        self.dispatcher.metrics.duplicates.inc();
        info!(task = %id, "a duplicate submission: answering it without running the task again");
        let answer = match verdict {
            Verdict::Done(outcome) => Some(result_of(id, kind, outcome)),
            Verdict::Pending | Verdict::New => None,
        };
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            if let Some(result) = answer
                && let Ok(Some(confirm)) =
                    publish_result(&publisher, delivery.properties(), &result).await
            {
                let _ = confirm.await;
            }
            settle(&delivery.delivery, true).await;
        });
    }

    /// Records how a task ended and sends its result to the duplicates waiting for it.
    fn answer_waiters(&mut self, id: &str, outcome: Outcome) {
        let Some((kind, waiters)) = self.dedupe.finished(id, outcome.clone()) else {
            return;
        };
        if waiters.is_empty() {
            return;
        }
        let result = result_of(id, &kind, outcome);
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            for waiter in waiters {
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

    /// Updates the gauges of `/metrics`.
    fn export_state(&self) {
        let metrics = &self.dispatcher.metrics;
        let workers = self.registry.workers().count();
        metrics
            .workers
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        metrics.leader.set(i64::from(self.levels_channel.is_some()));
        let held: usize = self.scheduler.held().iter().sum();
        metrics.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        let departed = self.registry.departed().count();
        metrics
            .departed
            .set(i64::try_from(departed).unwrap_or(i64::MAX));
    }

    /// Buries the held tasks whose deadline passed before they could start.
    fn expire_deadlines(&mut self) {
        for expired in self.scheduler.take_expired(Instant::now()) {
            let reason = "deadline passed before the task started".to_owned();
            self.bury(expired.handle, Some(expired.task), reason);
        }
    }

    /// Sends every task the scheduler can place now.
    async fn dispatch(&mut self) -> Result<(), BrokerError> {
        self.expire_deadlines();
        let now = Instant::now();
        let room = &self.dispatcher.room;
        while let Some(assignment) = self.scheduler.next(self.registry, now) {
            let task = assignment.held.task;
            let delivery = assignment.held.handle;
            if is_fresh(&delivery) {
                // A twin of a task dispatched since this one was held.
                let waiter = waiter(delivery.properties());
                let verdict = self.dedupe.check(&task.id, waiter, now);
                if verdict != Verdict::New {
                    self.duplicate(delivery, &task.id, &task.kind, verdict);
                    continue;
                }
            }
            self.registry
                .dispatched(&assignment.worker, &task.id, task.cost, now);
            let sent = self
                .publisher
                .basic_publish(
                    "".into(),
                    assignment.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    delivery.data(),
                    without_header(delivery.properties().clone(), HEADER_SUBMITTED),
                )
                .await;
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(err) => {
                    self.registry.released(&assignment.worker, &task.id);
                    return Err(err.into());
                }
            };
            self.notifier.send(warren_common::TaskEvent {
                worker: Some(assignment.worker.clone()),
                submitter: warren_common::message::submitter(delivery.properties()),
                ..event(&task, Status::Dispatched)
            });
            self.dedupe.dispatched(&task.id, &task.kind, now);
            let metrics = &self.dispatcher.metrics;
            metrics.task(Status::Dispatched, &task.kind);
            if delivery.normalized.is_some() {
                metrics.fast_path.inc();
            }
            metrics
                .dispatch_latency
                .observe(now.saturating_duration_since(task.arrived).as_secs_f64());
            let inputs = self.inputs.clone();
            self.settling.spawn(confirm_dispatch(
                confirm,
                delivery.delivery,
                assignment.queue,
                assignment.worker,
                task.id,
                inputs,
            ));
        }
        let free = self.registry.total_credit() > 0;
        room.store(free, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Once this dispatcher has led for `dispatcher.adopt_ms` (time for every worker's
    /// heartbeat to say which tasks it runs), starts consuming the priority queues.
    async fn start_routing(&mut self) -> Result<(), BrokerError> {
        let Some(since) = self.leading_since else {
            return Ok(());
        };
        let adopt = Duration::from_millis(self.dispatcher.config.dispatcher.adopt_ms);
        if self.levels_channel.is_some() || since.elapsed() < adopt {
            return Ok(());
        }
        let topology = &self.dispatcher.topology;
        let window = self.dispatcher.config.dispatcher.window;
        let channel = feeds::levels(self.connection, topology, window, &self.inputs).await?;
        self.levels_channel = Some(channel);
        if self.dispatcher.config.dispatcher.fast_path {
            self.dispatcher
                .fast_path
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        info!(workers = self.registry.workers().count(), "routing");
        Ok(())
    }

    /// Forgets workers that fell silent (their queues are then the registry's `departed`); now
    /// and then, says which held tasks no live worker can run.
    fn expire(&mut self) {
        if self.last_report.elapsed() >= WAITING_REPORT {
            self.last_report = Instant::now();
            let waiting = self.scheduler.unrunnable(self.registry);
            if !waiting.is_empty() {
                warn!(
                    ?waiting,
                    "tasks wait: no live worker can run these kinds (or tags, or cost)"
                );
            }
        }
        for dead in self.registry.expire(Instant::now()) {
            warn!(worker = %dead.id, held = dead.outstanding.len(), "worker silent for too long; declaring it dead");
            if self.leading_since.is_some() {
                self.notifier.worker_offline(&dead);
            }
        }
    }

    /// While routing, reclaims every departed worker's queue not being reclaimed yet (workers
    /// may have died while another dispatcher led, or in an earlier session of this one).
    fn reclaim_departed(&mut self, stop: &CancellationToken) {
        if self.levels_channel.is_none() {
            return;
        }
        let queues: Vec<String> = self
            .registry
            .departed()
            .filter(|queue| !self.reclaiming.contains_key(*queue))
            .cloned()
            .collect();
        for queue in queues {
            self.reclaim(queue, stop);
        }
    }

    /// Reclaims `queue` in the background until it is done (then says so to the router), the
    /// worker is heard again, or the session stops: the broker may keep counting the dead
    /// worker's consumer for as long as a node is down, and a connection may fail meanwhile.
    fn reclaim(&mut self, queue: String, stop: &CancellationToken) {
        let stop = stop.child_token();
        self.reclaiming.insert(queue.clone(), stop.clone());
        let pool = self.pool.clone();
        let topology = self.dispatcher.topology.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let mut pause = RECLAIM_RETRY;
            loop {
                let patience = warren_common::reclaim::DISPATCHER_PATIENCE;
                let attempt = match pool.get().await {
                    Ok(connection) => {
                        reclaim(&connection, &topology, &queue, patience, &stop).await
                    }
                    Err(err) => Err(err),
                };
                match attempt {
                    Ok(Some(_)) => {
                        let _ = inputs.send(Input::Reclaimed(queue)).await;
                        return;
                    }
                    Ok(None) if stop.is_cancelled() => return,
                    Ok(None) => {
                        warn!(%queue, "the broker still counts a consumer on a dead worker's queue (a node may be down); will try again")
                    }
                    Err(err) => {
                        warn!(%queue, cause = %err, "reclaiming a worker queue failed; will try again")
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RECLAIM_RETRY_MAX);
            }
        });
    }
}

/// What the router holds of a task: the delivery to settle once the task is safely elsewhere,
/// and, for a submission taken straight from intake, its normalized form (body, properties) to
/// send on instead of the delivery's bytes.
#[derive(Debug)]
pub(crate) struct Carried {
    /// The delivery from a priority queue, or from intake.
    delivery: Delivery,
    /// The normalized task and its properties, for an intake delivery.
    normalized: Option<(Vec<u8>, lapin::BasicProperties)>,
}

impl Carried {
    /// The task's body as warren's queues carry it.
    fn data(&self) -> &[u8] {
        self.normalized
            .as_ref()
            .map_or(&self.delivery.data, |(body, _)| body)
    }

    /// The task's properties as warren's queues carry them.
    fn properties(&self) -> &lapin::BasicProperties {
        self.normalized
            .as_ref()
            .map_or(&self.delivery.properties, |(_, properties)| properties)
    }
}

/// Whether a delivery is a client's submission on its first way through (not a retry, a
/// requeue, a reclaimed task or a redelivery): one that the idempotency window applies to.
fn is_fresh(delivery: &Carried) -> bool {
    !maybe_duplicate(delivery)
        && delivery
            .properties()
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(HEADER_SUBMITTED))
}

/// Where a duplicate submission wants its answer, if anywhere.
fn waiter(properties: &lapin::BasicProperties) -> Option<Waiter> {
    Some(Waiter {
        reply_to: properties.reply_to().as_ref()?.to_string(),
        correlation_id: properties.correlation_id().as_ref().map(|c| c.to_string()),
    })
}

/// The result a duplicate's submitter gets.
fn result_of(id: &str, kind: &str, outcome: Outcome) -> warren_common::TaskResult {
    let omitted = outcome.result_omitted;
    warren_common::TaskResult {
        id: id.to_owned(),
        kind: kind.to_owned(),
        status: outcome.status,
        result: outcome.result.unwrap_or_default(),
        error: outcome.error.or_else(|| {
            omitted.then(|| {
                "succeeded; its result was too large to keep for duplicate submissions".to_owned()
            })
        }),
        attempts: outcome.attempts,
        worker: outcome.worker,
        started_at: outcome.started_at,
        finished_at: outcome.finished_at,
    }
}

/// Whether a delivery may be a copy of a task that a dispatcher which died had already passed
/// on: redelivered from its priority queue, or filed from a redelivered submission.
fn maybe_duplicate(delivery: &Carried) -> bool {
    delivery.delivery.redelivered
        || delivery
            .properties()
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(warren_common::HEADER_REDELIVERED))
}

/// Waits for the worker queue to confirm a dispatched task, then acks the priority-queue
/// delivery; if the broker refused it, requeues the delivery and frees the worker's slot.
async fn confirm_dispatch(
    confirm: PublisherConfirm,
    delivery: Delivery,
    queue: String,
    worker: String,
    task: String,
    inputs: mpsc::Sender<Input>,
) {
    let confirmed = match confirm.await {
        Ok(confirmation) => check_confirmation(confirmation, &queue),
        Err(err) => Err(err.into()),
    };
    if let Err(err) = &confirmed {
        warn!(%task, %worker, cause = %err, "dispatch not confirmed; the task goes back to its level");
        let _ = inputs.send(Input::Unsent { worker, task }).await;
    }
    settle(&delivery, confirmed.is_ok()).await;
}

fn event(task: &TaskInfo, status: Status) -> warren_common::TaskEvent {
    warren_common::TaskEvent {
        id: task.id.clone(),
        kind: task.kind.clone(),
        status,
        attempt: 0,
        worker: None,
        error: None,
        duration_ms: None,
        submitter: None,
        result: None,
        result_omitted: false,
        at: chrono::Utc::now(),
    }
}
