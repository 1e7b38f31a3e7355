//! The router: the I/O shell around the scheduling core ([`warren_core::Core`]). It turns what
//! the broker delivers — tasks from the priority queues and from intake, heartbeats, finished
//! attempts — into facts for the core, and carries the core's decisions out: a task sent to its
//! worker's queue (the priority-queue delivery acked only once the broker confirmed it there),
//! a duplicate answered, a task buried, a dead worker's queue reclaimed. It decides nothing.
//!
//! - `arrivals`: deliveries in, as facts;
//! - `answers`: results, duplicates and burials out;
//! - `reclaim`: dead workers' queues reclaimed in the background;
//! - `requests`: questions for the routing dispatcher (why tasks wait).

mod answers;
mod arrivals;
mod reclaim;
mod requests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, PublisherConfirm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_common::message::without_header;
use warren_common::publish::{check_confirmation, settle};
use warren_common::{BrokerError, HEADER_SUBMITTED, Status, TaskEvent};
use warren_core::{Assignment, Change, Core, Decision, Held};

pub(crate) use arrivals::Carried;
pub(crate) use reclaim::Reclaimer;

use crate::Dispatcher;
use crate::feeds::{self, Input};
use crate::filing::file_and_settle;
use crate::notify::Notifier;

/// How often silent workers are looked for.
const LIVENESS_TICK: Duration = Duration::from_millis(250);
/// How often tasks that no live worker can run are logged.
const WAITING_REPORT: Duration = Duration::from_secs(10);

/// The router of one broker session.
pub(crate) struct Router<'a> {
    /// Shared settings and names.
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// Every decision; outlives sessions, because workers and the idempotency window do (the
    /// tasks it holds are this session's, and cleared when it ends).
    pub(crate) core: &'a mut Core<Carried>,
    /// Confirm-mode channel for publishing to worker queues.
    pub(crate) publisher: Channel,
    /// Task events.
    pub(crate) notifier: Notifier,
    /// Back into the router, for dispatches the broker refused.
    pub(crate) inputs: mpsc::Sender<Input>,
    /// Confirm waiters still settling deliveries; waited for before the connection closes.
    pub(crate) settling: TaskTracker,
    /// Carries out the core's reclaims of dead workers' queues.
    pub(crate) reclaimer: Reclaimer,
    /// When unrunnable tasks were last reported.
    pub(crate) last_report: Instant,
    /// The connection that holds the leader baton; routing happens only over it.
    pub(crate) connection: &'a lapin::Connection,
    /// Since when this dispatcher leads (holds the baton), if it does.
    pub(crate) leading_since: Option<Instant>,
    /// The channel consuming the priority queues, once routing.
    pub(crate) levels_channel: Option<Channel>,
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
                    self.refile_held_too_long();
                    self.start_routing().await?;
                    if self.levels_channel.is_some() {
                        for (queue, lost) in self.core.start_reclaims() {
                            self.reclaimer.start(queue, lost, stop);
                        }
                    }
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
            Input::Heartbeat(beat) => match self.core.heartbeat(&beat, Instant::now()) {
                Change::Joined => {
                    info!(worker = %beat.worker, kinds = ?beat.kinds, capacity = beat.concurrency, "worker joined")
                }
                Change::Returned => {
                    info!(worker = %beat.worker, "a worker declared dead is heard again; leaving its queue to it");
                    self.reclaimer.stop(&beat.queue);
                }
                // A worker that says goodbye has emptied and deleted its own queue.
                Change::Left => info!(worker = %beat.worker, "worker left"),
                Change::Refreshed => {}
            },
            Input::Reclaimed(queue) => {
                self.reclaimer.done(&queue);
                self.core.reclaimed(&queue);
            }
            Input::Released(released) => {
                if let Some(answer) = self.core.released(*released) {
                    self.answer_waiters(answer);
                }
            }
            Input::Unsent { worker, task } => self.core.unsent(&worker, &task),
            Input::Began { worker, task } => self.core.began(&worker, &task),
            Input::Leader => self.leading_since = Some(Instant::now()),
            Input::Request(delivery) => self.answer_request(*delivery),
            Input::Failed(err) => return Err(err),
        }
        Ok(())
    }

    /// Updates the gauges of `/metrics`.
    fn export_state(&self) {
        let metrics = &self.dispatcher.metrics;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let fleet = self.core.fleet();
        metrics.workers.set(gauge(fleet.workers().count()));
        metrics.leader.set(i64::from(self.levels_channel.is_some()));
        metrics.held.set(gauge(self.core.held().iter().sum()));
        // Counts only: no task is listed for an empty set of ids.
        let waiting = self.core.waiting(Instant::now(), 0, Some(&[]));
        for (reason, count) in waiting.counts {
            let labels = crate::metrics::ReasonLabels { reason };
            metrics.waiting.get_or_create(&labels).set(gauge(count));
        }
        metrics.departed.set(gauge(fleet.departed().count()));
    }

    /// Files back to their levels the tasks held for half the broker's consumer_timeout, so the
    /// broker never closes the channel that holds them.
    fn refile_held_too_long(&mut self) {
        let limit = self.dispatcher.config.amqp.renew_after();
        for (level, held) in self.core.held_too_long(Instant::now(), limit) {
            let queue = self.dispatcher.topology.level_queue(level);
            let carried = held.handle;
            let (body, properties) = (carried.data().to_vec(), carried.properties().clone());
            let delivery = carried.into_delivery();
            let publisher = self.publisher.clone();
            self.settling.spawn(file_and_settle(
                publisher, queue, body, properties, delivery,
            ));
        }
    }

    /// Buries the held tasks whose deadline passed before they could start.
    fn expire_deadlines(&mut self) {
        for expired in self.core.expired(Instant::now()) {
            let reason = "deadline passed before the task started".to_owned();
            self.bury(expired.handle, Some(expired.task), reason);
        }
    }

    /// Carries out every decision the core can make now.
    async fn dispatch(&mut self) -> Result<(), BrokerError> {
        self.expire_deadlines();
        let now = Instant::now();
        while let Some(decision) = self.core.next(now) {
            match decision {
                Decision::Send(assignment) => self.send(assignment, now).await?,
                Decision::Duplicate { held, prior } => self.duplicate(held, prior),
            }
        }
        self.dispatcher.fast_path.set_room(self.core.has_room());
        Ok(())
    }

    /// Publishes an assigned task to its worker's queue; a confirm waiter acks its delivery.
    async fn send(
        &mut self,
        assignment: Assignment<Carried>,
        now: Instant,
    ) -> Result<(), BrokerError> {
        let Assignment {
            held: Held {
                task,
                handle: delivery,
            },
            worker,
            queue,
        } = assignment;
        let sent = self
            .publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
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
                self.core.unsent(&worker, &task.id);
                return Err(err.into());
            }
        };
        self.notifier.send(TaskEvent {
            worker: Some(worker.clone()),
            submitter: warren_common::message::submitter(delivery.properties()),
            ..TaskEvent::new(&task.id, &task.kind, Status::Dispatched)
        });
        let metrics = &self.dispatcher.metrics;
        metrics.task(Status::Dispatched, &task.kind);
        if delivery.is_from_intake() {
            metrics.fast_path.inc();
        }
        metrics
            .dispatch_latency
            .observe(now.saturating_duration_since(task.arrived).as_secs_f64());
        let inputs = self.inputs.clone();
        self.settling.spawn(confirm_dispatch(
            confirm,
            delivery.into_delivery(),
            queue,
            worker,
            task.id,
            inputs,
        ));
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
            self.dispatcher.fast_path.open();
        }
        info!(workers = self.core.fleet().workers().count(), "routing");
        Ok(())
    }

    /// Forgets workers that fell silent (their queues then wait to be reclaimed); now and then,
    /// says which held tasks no live worker can run.
    fn expire(&mut self) {
        if self.last_report.elapsed() >= WAITING_REPORT {
            self.last_report = Instant::now();
            let waiting = self.core.waiting(Instant::now(), 5, None);
            let stuck = waiting.held - waiting.counts["busy"] - waiting.counts["backoff"];
            if stuck > 0 {
                let oldest: Vec<String> = waiting
                    .tasks
                    .iter()
                    .map(|t| format!("{} ({}): {}", t.id, t.kind, t.detail))
                    .collect();
                warn!(
                    stuck,
                    ?oldest,
                    "tasks wait that no live worker can run (`warren waiting` lists them)"
                );
            }
        }
        for dead in self.core.dead_workers(Instant::now()) {
            warn!(worker = %dead.id, held = dead.outstanding.len(), "worker silent for too long; declaring it dead");
            if self.leading_since.is_some() {
                self.notifier.worker_offline(&dead);
            }
        }
    }
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
