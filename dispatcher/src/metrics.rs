//! The dispatcher's Prometheus metrics. Counters count what this dispatcher did itself
//! (accepted, rejected, dispatched, buried), so summing them over dispatchers is right;
//! outcomes of runs are counted by the workers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use warren_common::Topology;
use warren_common::metrics::TaskLabels;
use warren_common::publish::inspect_queue;

/// How often queue depths are read from the broker.
const DEPTH_PERIOD: Duration = Duration::from_secs(2);

/// Labels of the queue gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    /// Queue name.
    pub(crate) queue: String,
}

/// Labels of the waiting-tasks gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    /// Why they wait ([`warren_core::WaitReason::code`]).
    pub(crate) reason: String,
}

/// Every metric one dispatcher process exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// `warren_dispatcher_tasks_total{status,kind}`.
    pub(crate) tasks: Family<TaskLabels, Counter>,
    /// `warren_queue_messages{queue}`: ready messages in warren's shared queues.
    pub(crate) queue_messages: Family<QueueLabels, Gauge>,
    /// `warren_queue_consumers{queue}`.
    pub(crate) queue_consumers: Family<QueueLabels, Gauge>,
    /// `warren_dispatch_latency_seconds`: from a task's arrival in the scheduling window to
    /// its dispatch to a worker.
    pub(crate) dispatch_latency: Histogram,
    /// `warren_workers`: live workers known from heartbeats.
    pub(crate) workers: Gauge,
    /// `warren_leader`: 1 while this dispatcher routes.
    pub(crate) leader: Gauge,
    /// `warren_held_tasks`: tasks in the scheduling window.
    pub(crate) held: Gauge,
    /// `warren_waiting_tasks{reason}`: held tasks by why they wait.
    pub(crate) waiting: Family<ReasonLabels, Gauge>,
    /// `warren_departed_workers`: workers declared dead whose queues are not reclaimed yet.
    pub(crate) departed: Gauge,
    /// `warren_dispatcher_duplicates_total`: submissions of an id already dispatched lately.
    pub(crate) duplicates: Counter,
    /// `warren_dispatcher_fast_path_total`: tasks sent from intake straight to a worker.
    pub(crate) fast_path: Counter,
}

impl Metrics {
    /// New metrics and the registry that exports them.
    pub(crate) fn new() -> (std::sync::Arc<Metrics>, Registry) {
        let metrics = std::sync::Arc::new(Metrics {
            tasks: Family::default(),
            queue_messages: Family::default(),
            queue_consumers: Family::default(),
            dispatch_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            workers: Gauge::default(),
            leader: Gauge::default(),
            held: Gauge::default(),
            waiting: Family::default(),
            departed: Gauge::default(),
            duplicates: Counter::default(),
            fast_path: Counter::default(),
        });
        let mut registry = Registry::with_prefix("warren");
        registry.register(
            "dispatcher_tasks",
            "Tasks this dispatcher accepted, rejected, dispatched or buried, by status and kind",
            metrics.tasks.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages ready in warren's shared queues (intake, levels, dead, rejected)",
            metrics.queue_messages.clone(),
        );
        registry.register(
            "queue_consumers",
            "Consumers of warren's shared queues",
            metrics.queue_consumers.clone(),
        );
        registry.register(
            "dispatch_latency_seconds",
            "Time from a task's arrival in the scheduling window to its dispatch to a worker",
            metrics.dispatch_latency.clone(),
        );
        registry.register(
            "workers",
            "Live workers known from heartbeats",
            metrics.workers.clone(),
        );
        registry.register(
            "leader",
            "1 while this dispatcher holds the leader baton and routes, else 0",
            metrics.leader.clone(),
        );
        registry.register(
            "held_tasks",
            "Tasks held in this dispatcher's scheduling window",
            metrics.held.clone(),
        );
        registry.register(
            "waiting_tasks",
            "Tasks held in this dispatcher's scheduling window, by why they wait (no_worker_for_kind, missing_tags, too_costly, backoff, busy)",
            metrics.waiting.clone(),
        );
        registry.register(
            "departed_workers",
            "Workers declared dead whose queues (and the tasks in them) are not reclaimed yet",
            metrics.departed.clone(),
        );
        registry.register(
            "dispatcher_duplicates",
            "Submissions of a task id dispatched lately, answered without running it again",
            metrics.duplicates.clone(),
        );
        registry.register(
            "dispatcher_fast_path",
            "Tasks sent from intake straight to a worker with room, skipping their priority queue",
            metrics.fast_path.clone(),
        );
        (metrics, registry)
    }

    /// Counts one task reaching `status`.
    pub(crate) fn task(&self, status: warren_common::Status, kind: &str) {
        self.tasks
            .get_or_create(&TaskLabels::new(status, kind))
            .inc();
    }
}

/// Reads the depth of warren's shared queues every few seconds over `channel` until `stop`
/// (or until a read fails, which closes the channel: the queues are declared at the start of
/// every session, so that means the session is ending), then closes the channel.
pub(crate) fn poll_depths(
    metrics: std::sync::Arc<Metrics>,
    channel: lapin::Channel,
    topology: &Topology,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let queues = topology.task_queues();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DEPTH_PERIOD);
        'polling: loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            for queue in &queues {
                let Ok(state) = inspect_queue(&channel, queue).await else {
                    break 'polling;
                };
                let labels = QueueLabels {
                    queue: queue.clone(),
                };
                metrics
                    .queue_messages
                    .get_or_create(&labels)
                    .set(i64::from(state.message_count()));
                metrics
                    .queue_consumers
                    .get_or_create(&labels)
                    .set(i64::from(state.consumer_count()));
            }
        }
        let _ = channel.close(200, "metrics stopped".into()).await;
    })
}
