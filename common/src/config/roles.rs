//! `[dispatcher]`, `[worker]` and `[handlers.<kind>]`: what each role is configured with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BalancerName, LevelMode, PolicyName};

/// `[dispatcher]`: scheduling and liveness settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Tasks the dispatcher holds per priority level (its scheduling window). Memory is bounded
    /// by this, never by the backlog.
    pub window: u16,
    /// Submissions validated concurrently (intake prefetch).
    pub intake_prefetch: u16,
    /// A worker whose heartbeats stop for this long is dead, in milliseconds.
    pub heartbeat_timeout_ms: u64,
    /// After becoming the leader, how long to listen to heartbeats (adopting the tasks workers
    /// are running) before routing, in milliseconds.
    pub adopt_ms: u64,
    /// How held tasks are ordered.
    pub policy: PolicyName,
    /// How the next priority level is chosen.
    pub levels: LevelMode,
    /// Per-level weights for `levels = "weighted"`, most urgent first (one per level).
    pub weights: Vec<u32>,
    /// Under `weighted`, a task waiting longer than this goes next whatever its level, in
    /// milliseconds (0: never).
    pub aging_ms: u64,
    /// How a worker is chosen among those able to take a task.
    pub balancer: BalancerName,
    /// Address of the `/metrics` and `/healthz` HTTP server (empty: none).
    pub metrics_listen: String,
    /// Idempotency window in milliseconds: a task id submitted again this long after the first
    /// was dispatched does not run again; its submitter gets the first one's result (0: off).
    pub dedupe_window_ms: u64,
    /// Task ids the idempotency window holds at most (the oldest go first).
    pub dedupe_max: usize,
    /// While a dispatcher routes, its intake hands valid submissions straight to the router,
    /// which sends one directly to a worker that has room (skipping the priority queue) and
    /// files the rest to their priority queues.
    pub fast_path: bool,
    /// How much work, in milliseconds of a worker's mean run time, may wait in its queue beyond
    /// its free slots, so that a worker of short tasks never idles while the dispatcher learns
    /// of a finished task and sends the next one. Bounds how long a more urgent task can wait
    /// behind queued ones (0: credit is exactly the free slots).
    pub lookahead_ms: u64,
    /// How long one try at reclaiming a dead worker's queue waits for the broker to drop the
    /// worker's consumer, in milliseconds, before it says so in the log and tries again (a
    /// consumer lost with a node that is down stays counted until the node is back).
    pub reclaim_patience_ms: u64,
}

impl DispatcherConfig {
    /// The scheduling core's settings.
    pub fn core_settings(&self) -> warren_core::Settings {
        let millis = Duration::from_millis;
        warren_core::Settings {
            policy: self.policy,
            levels: self.levels,
            weights: self.weights.clone(),
            aging: (self.aging_ms > 0).then(|| millis(self.aging_ms)),
            balancer: self.balancer,
            lookahead: millis(self.lookahead_ms),
            heartbeat_timeout: millis(self.heartbeat_timeout_ms),
            dedupe_window: millis(self.dedupe_window_ms),
            dedupe_max: self.dedupe_max,
        }
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            window: 64,
            intake_prefetch: 256,
            heartbeat_timeout_ms: 3_000,
            adopt_ms: 1_500,
            policy: PolicyName::Priority,
            levels: LevelMode::Strict,
            weights: vec![6, 3, 1],
            aging_ms: 30_000,
            balancer: BalancerName::RoundRobin,
            metrics_listen: "127.0.0.1:9464".into(),
            dedupe_window_ms: 600_000,
            dedupe_max: 50_000,
            fast_path: true,
            lookahead_ms: 20,
            reclaim_patience_ms: 60_000,
        }
    }
}

/// `[worker]`: what a worker advertises and how it runs tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unique worker id; default `<hostname>-<pid>-<short uuid>`.
    pub id: Option<String>,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Capacity in units that tasks' `cost` fills (default: `concurrency`, one unit a task).
    pub capacity: Option<u32>,
    /// Capability tags advertised to the dispatcher (matched against a task's `requires`).
    pub tags: Vec<String>,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// On SIGTERM, how long running tasks may take to finish before they are handed back,
    /// in milliseconds.
    pub grace_ms: u64,
    /// Address of the `/metrics` and `/healthz` HTTP server (empty: none). Off by default,
    /// since several workers often share a host; e.g. `0.0.0.0:9465` in a container.
    pub metrics_listen: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: None,
            concurrency: 4,
            capacity: None,
            tags: Vec::new(),
            heartbeat_ms: 1_000,
            grace_ms: 30_000,
            metrics_listen: String::new(),
        }
    }
}

impl WorkerConfig {
    /// The configured id, or `<hostname>-<pid>-<8 hex digits>`.
    pub fn resolved_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let host: String = gethostname::gethostname()
            .to_string_lossy()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let short = &uuid::Uuid::new_v4().simple().to_string()[..8];
        format!("{host}-{}-{short}", std::process::id())
    }
}

/// `[handlers.<kind>]`: a task kind run by an external command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecHandlerConfig {
    /// Program and arguments, run directly (never through a shell). The payload arrives as
    /// JSON on stdin; stdout is the result; a non-zero exit is a failure.
    pub command: Vec<String>,
}
