//! warren's worker: consumes its own queue, runs up to `worker.concurrency` tasks at once with
//! built-in, external-command and Rust handlers, reports results and events, publishes
//! heartbeats, and drains gracefully on shutdown.
//!
//! ```no_run
//! # async fn example() -> Result<(), warren_worker::WorkerError> {
//! use warren_worker::{HandlerError, Handlers, TaskContext};
//! let config = warren_common::Config::load(None).expect("valid config");
//! let mut handlers = Handlers::with_builtins(&config);
//! handlers.register("add", |task: TaskContext| async move {
//!     let a = task.payload["a"].as_i64().ok_or_else(|| HandlerError::abort("need a"))?;
//!     let b = task.payload["b"].as_i64().ok_or_else(|| HandlerError::abort("need b"))?;
//!     Ok(serde_json::json!(a + b))
//! });
//! warren_worker::run(config, handlers, warren_common::shutdown::on_signal()).await
//! # }
//! ```
#![warn(missing_docs)]

mod attempt;
pub mod builtin;
mod events;
pub mod exec;
pub mod handler;
mod heartbeat;
mod holding;
mod metrics;
mod report;
mod session;
mod status;

use std::sync::Arc;

use warren_common::{BrokerError, Config, Pool, Topology};

pub use handler::{Handler, HandlerError, HandlerFuture, Handlers, TaskContext};

use status::WorkerStatus;

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Handlers {
    /// A registry with the built-in handlers and the `exec` handlers of `config.handlers`.
    pub fn with_builtins(config: &Config) -> Handlers {
        let mut registry = Handlers::new();
        builtin::register(&mut registry);
        for (kind, handler) in &config.handlers {
            registry.register(
                kind.clone(),
                exec::ExecHandler::new(handler.command.clone()),
            );
        }
        registry
    }
}

/// Everything one worker process shares between its sessions and tasks.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Settings, validated.
    pub(crate) config: Config,
    /// Names on the broker.
    pub(crate) topology: Topology,
    /// Kind → handler.
    pub(crate) handlers: Handlers,
    /// Identity and live state, published in heartbeats.
    pub(crate) status: Arc<WorkerStatus>,
    /// What `/metrics` exports.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// What `/healthz` reports.
    pub(crate) health: Arc<warren_common::metrics::Health>,
    /// Its capacity units: a task runs once it holds `cost` of them. The dispatcher's credit
    /// keeps within them too, but may queue tasks ahead (its lookahead) and cannot know the
    /// cost of tasks it adopted, so the worker enforces its own capacity.
    pub(crate) units: Arc<tokio::sync::Semaphore>,
    /// Its slots (`worker.concurrency`): a task runs once it holds one. The worker prefetches
    /// more than its slots (what the dispatcher queues ahead), so the prefetch does not limit
    /// how many run.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// The deliveries that hold its tasks, renewed before the broker's consumer_timeout.
    pub(crate) holdings: holding::Holdings,
}

/// Runs a worker until `shutdown` fires, then drains: stops taking tasks, lets running ones
/// finish within `worker.grace_ms`, hands the rest back, and says goodbye. Reconnects (to the
/// next node in `amqp.urls`) whenever the broker connection is lost.
pub async fn run(
    config: Config,
    handlers: Handlers,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), WorkerError> {
    let id = config.worker.resolved_id();
    let topology = config.topology();
    let status = WorkerStatus::new(
        id.clone(),
        topology.worker_queue(&id),
        handlers.kinds(),
        config.worker.tags.clone(),
        config.worker.concurrency,
        config.worker.capacity.unwrap_or(config.worker.concurrency),
    );
    let pool = Pool::new(&config.amqp, &format!("warren-worker {id}"))?;
    let (metrics, registry) = metrics::Metrics::new(config.worker.concurrency);
    let health = Arc::new(warren_common::metrics::Health::default());
    warren_common::metrics::start(
        &config.worker.metrics_listen,
        registry,
        health.clone(),
        || "worker",
        shutdown.clone(),
    )
    .await;
    let units = Arc::new(tokio::sync::Semaphore::new(status.capacity as usize));
    let slots = Arc::new(tokio::sync::Semaphore::new(status.concurrency as usize));
    let worker = Arc::new(Worker {
        units,
        slots,
        config,
        topology,
        handlers,
        status: Arc::new(status),
        metrics,
        health,
        holdings: holding::Holdings::default(),
    });
    tracing::info!(worker = %id, kinds = ?worker.status.kinds, "worker starting");
    session::run_sessions(worker, pool, shutdown).await;
    Ok(())
}
