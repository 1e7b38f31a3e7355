//! The worker's Prometheus metrics: what it ran, how long it took, and how busy it is.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warren_common::Status;
use warren_common::metrics::TaskLabels;

/// Labels of the run-time histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    /// Task kind.
    pub(crate) kind: String,
}

/// Every metric one worker process exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// `warren_worker_tasks_total{status,kind}`: attempts started and their outcomes.
    pub(crate) tasks: Family<TaskLabels, Counter>,
    /// `warren_worker_task_duration_seconds{kind}`: how long finished attempts ran.
    pub(crate) duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// `warren_worker_in_flight`: attempts running now.
    pub(crate) in_flight: Gauge,
    /// `warren_worker_concurrency`: attempts it runs at once at most.
    pub(crate) concurrency: Gauge,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 4.0, 16))
}

impl Metrics {
    /// New metrics and the registry that exports them.
    pub(crate) fn new(concurrency: u32) -> (Arc<Metrics>, Registry) {
        let metrics = Arc::new(Metrics {
            tasks: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
            concurrency: Gauge::default(),
        });
        metrics.concurrency.set(i64::from(concurrency));
        let mut registry = Registry::with_prefix("warren_worker");
        registry.register(
            "tasks",
            "Attempts this worker started, and their outcomes, by status and kind",
            metrics.tasks.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Run time of finished attempts, by kind",
            metrics.duration.clone(),
        );
        registry.register(
            "in_flight",
            "Attempts running now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "concurrency",
            "Attempts this worker runs at once at most",
            metrics.concurrency.clone(),
        );
        (metrics, registry)
    }

    /// Counts one attempt reaching `status`.
    pub(crate) fn task(&self, status: Status, kind: &str) {
        self.tasks
            .get_or_create(&TaskLabels::new(status, kind))
            .inc();
    }
}
