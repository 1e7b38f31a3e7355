//! Shared pieces of warren: the wire contract (envelope, results, events), topology as data,
//! typed configuration, broker connections and process plumbing (logging, shutdown).
#![warn(missing_docs)]

pub mod broker;
pub mod config;
pub mod envelope;
pub mod event_batch;
pub mod events;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod publish;
pub mod reclaim;
pub mod shutdown;
pub mod startup;
pub mod topology;

pub use broker::{BrokerError, Pool};
pub use config::redact;
pub use config::{Config, ConfigError};
pub use envelope::{Rejection, Task, TaskDefaults};
pub use events::{Heartbeat, Status, TaskEvent, TaskResult, WorkerState};
pub use publish::{confirmed_channel, publish_confirmed};
pub use topology::Topology;

/// AMQP header carrying the human-readable reason a message was rejected or declared dead.
pub const HEADER_REASON: &str = "x-warren-reason";
/// AMQP header carrying how many attempts of a task have already been made.
pub const HEADER_ATTEMPTS: &str = "x-warren-attempts";
/// AMQP header recording the `user_id` a submission was published with (RabbitMQ verifies
/// `user_id` against the publishing connection, so it cannot be forwarded as a property).
pub const HEADER_SUBMITTER: &str = "x-warren-submitter";
/// Set by intake on a task that a client submitted through the submit exchange (not a retry or
/// a requeue), with the time of acceptance in Unix milliseconds; removed when the task is
/// dispatched. Such a task is checked against the idempotency window.
pub const HEADER_SUBMITTED: &str = "x-warren-submitted";
/// AMQP header holding the JSON list of a task's failed attempts (`retry::AttemptRecord`).
pub const HEADER_HISTORY: &str = "x-warren-history";
/// AMQP header: do not start this task before this time (milliseconds since the Unix epoch);
/// set on retries to apply the backoff.
pub const HEADER_NOT_BEFORE: &str = "x-warren-not-before";
/// AMQP header set by intake on a task whose submission was redelivered: a dispatcher that
/// died may already have filed it, so it might be a duplicate.
pub const HEADER_REDELIVERED: &str = "x-warren-redelivered";
/// AMQP header on a copy of a running task that its worker published to its own queue to renew
/// the delivery before the broker's `consumer_timeout`: the worker's id. The worker holds its
/// running task by the copy from then on instead of starting it again.
pub const HEADER_RENEWAL: &str = "x-warren-renewal";
