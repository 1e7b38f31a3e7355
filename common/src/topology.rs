//! Topology as data: every exchange, queue and binding warren uses, named from one prefix, and
//! the one function that declares them (idempotently, at start-up and after every reconnect).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// One priority level: a quorum queue holding the tasks whose priority is at least
/// `min_priority` (and below the next level's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Readable name, used in the queue name `<prefix>.tasks.<name>`.
    pub name: String,
    /// Lowest task priority (0–9) that lands on this level.
    pub min_priority: u8,
}

/// The names of everything warren declares on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every name (`topology.prefix`).
    pub prefix: String,
    /// Priority levels, most urgent first.
    pub levels: Vec<Level>,
    /// The task history stream's retention; `None`: no history.
    pub history: Option<Retention>,
}

/// How long the history stream keeps events: until they are older than `max_age` or the
/// stream is larger than `max_bytes`, whichever comes first (RabbitMQ drops whole segments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// RabbitMQ's `x-max-age`: a number and a unit, `Y`, `M`, `D`, `h`, `m` or `s` (`7D`).
    pub max_age: String,
    /// RabbitMQ's `x-max-length-bytes`.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age: "7D".into(),
            max_bytes: 5 * 1024 * 1024 * 1024,
        }
    }
}

impl Retention {
    /// Checks `max_age` the way RabbitMQ will, and that the stream may hold something.
    pub fn validate(&self) -> Result<(), String> {
        let (number, unit) = self.max_age.split_at(self.max_age.len().saturating_sub(1));
        let number_ok = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
        if !number_ok || !["Y", "M", "D", "h", "m", "s"].contains(&unit) {
            return Err(format!(
                "max_age must be a number and one of the units Y, M, D, h, m, s (like 7D), got '{}'",
                self.max_age
            ));
        }
        if self.max_bytes < 1024 * 1024 {
            return Err("max_bytes must be at least 1048576 (1 MiB)".into());
        }
        Ok(())
    }
}

impl Topology {
    /// A topology with the default three levels (high 7–9, normal 4–6, low 0–3) and history.
    pub fn new(prefix: impl Into<String>) -> Topology {
        Topology {
            prefix: prefix.into(),
            levels: default_levels(),
            history: Some(Retention::default()),
        }
    }

    /// The stream that keeps every task event (bound to the events exchange with `task.#`),
    /// which `warren task ID` reads.
    pub fn history_stream(&self) -> String {
        format!("{}.history", self.prefix)
    }

    /// The topic exchange clients publish tasks to.
    pub fn submit_exchange(&self) -> String {
        format!("{}.submit", self.prefix)
    }

    /// The topic exchange carrying `task.*` and `worker.*` events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The quorum queue the dispatcher reads submissions from.
    pub fn intake_queue(&self) -> String {
        format!("{}.intake", self.prefix)
    }

    /// The quorum queue of messages that were not valid tasks.
    pub fn rejected_queue(&self) -> String {
        format!("{}.rejected", self.prefix)
    }

    /// The quorum queue of tasks that exhausted their attempts, expired or that their handler
    /// aborted (status `failed`).
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The single-active-consumer quorum queue whose baton message marks the one dispatcher
    /// that routes.
    pub fn leader_queue(&self) -> String {
        format!("{}.leader", self.prefix)
    }

    /// The quorum queue of questions for the routing dispatcher (`warren waiting`): a JSON
    /// request with `reply_to`, answered by the dispatcher that routes (README, *Waiting
    /// tasks*).
    pub fn requests_queue(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    /// The quorum queue of priority level `index` (0 = most urgent).
    pub fn level_queue(&self, index: usize) -> String {
        format!("{}.tasks.{}", self.prefix, self.levels[index].name)
    }

    /// The quorum queue a worker consumes its tasks from.
    pub fn worker_queue(&self, worker_id: &str) -> String {
        format!("{}.worker.{}", self.prefix, worker_id)
    }

    /// The level index (0 = most urgent) a task of `priority` goes to.
    pub fn level_for(&self, priority: u8) -> usize {
        warren_core::levels::level_for(self.levels.iter().map(|l| l.min_priority), priority)
    }

    /// Checks the levels: at least one, distinct names, strictly decreasing bounds, the last
    /// one starting at 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.levels.is_empty() {
            return Err("at least one level is needed".into());
        }
        for pair in self.levels.windows(2) {
            if pair[0].min_priority <= pair[1].min_priority {
                return Err(
                    "levels must be listed most urgent first, with decreasing min_priority".into(),
                );
            }
        }
        if self.levels.last().map(|l| l.min_priority) != Some(0) {
            return Err("the last level must have min_priority 0".into());
        }
        let names_ok = self
            .levels
            .iter()
            .all(|l| crate::envelope::is_valid_kind(&l.name));
        if !names_ok {
            return Err("level names must be 1–128 characters of A-Za-z0-9._:-".into());
        }
        if !crate::envelope::is_valid_kind(&self.prefix) {
            return Err("the prefix must be 1–128 characters of A-Za-z0-9._:-".into());
        }
        Ok(())
    }

    /// The shared quorum queues that hold tasks or messages: intake, rejected, dead and one
    /// per priority level.
    pub fn task_queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.intake_queue(),
            self.rejected_queue(),
            self.dead_queue(),
        ];
        queues.extend((0..self.levels.len()).map(|i| self.level_queue(i)));
        queues
    }

    /// Every shared queue: [`Topology::task_queues`], the leader and requests queues, and the
    /// history stream.
    pub fn shared_queues(&self) -> Vec<String> {
        let mut queues = self.task_queues();
        queues.push(self.leader_queue());
        queues.push(self.requests_queue());
        queues.push(self.history_stream());
        queues
    }

    /// Declares the exchanges and shared queues. Safe to run any number of times, and on
    /// queues an older warren declared (see [`Declarer`]).
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let mut declarer = Declarer::open(connection).await?;
        for exchange in [self.submit_exchange(), self.events_exchange()] {
            declare_topic_exchange(declarer.channel(), &exchange).await?;
        }
        // The dead queue first: the others dead-letter into it.
        for queue in [
            self.dead_queue(),
            self.rejected_queue(),
            self.requests_queue(),
        ] {
            declarer.quorum(&queue, Holds::Records).await?;
        }
        declarer
            .quorum(&self.intake_queue(), self.holds_tasks())
            .await?;
        for level in 0..self.levels.len() {
            declarer
                .quorum(&self.level_queue(level), self.holds_tasks())
                .await?;
        }
        declarer.quorum(&self.leader_queue(), Holds::Baton).await?;
        if let Some(retention) = &self.history {
            declarer.stream(&self.history_stream(), retention).await?;
            declarer
                .bind(&self.history_stream(), &self.events_exchange(), "task.#")
                .await?;
        }
        declarer
            .bind(&self.intake_queue(), &self.submit_exchange(), "#")
            .await?;
        declarer.close().await;
        Ok(())
    }

    /// Declares what a worker needs of its own: the events exchange (for heartbeats) and its
    /// queue. The shared queues are the dispatcher's to declare, so a worker's broker user
    /// needs no rights over them beyond publishing (see deploy/rabbitmq/definitions.json).
    pub async fn declare_for_worker(
        &self,
        connection: &Connection,
        worker_id: &str,
    ) -> lapin::Result<()> {
        let mut declarer = Declarer::open(connection).await?;
        declare_topic_exchange(declarer.channel(), &self.events_exchange()).await?;
        declarer
            .quorum(&self.worker_queue(worker_id), self.holds_tasks())
            .await?;
        declarer.close().await;
        Ok(())
    }

    /// Declares one worker's queue.
    pub async fn declare_worker_queue(
        &self,
        connection: &Connection,
        worker_id: &str,
    ) -> lapin::Result<()> {
        let mut declarer = Declarer::open(connection).await?;
        declarer
            .quorum(&self.worker_queue(worker_id), self.holds_tasks())
            .await?;
        declarer.close().await;
        Ok(())
    }

    /// What the queues that carry tasks hold: tasks, dead-lettered into the dead queue past
    /// the delivery limit.
    fn holds_tasks(&self) -> Holds {
        Holds::Tasks {
            dead_queue: self.dead_queue(),
        }
    }
}

/// How many times a quorum queue that carries tasks (intake, priority levels, worker queues)
/// hands a message out before it dead-letters it into `<prefix>.dead` (reason
/// `delivery_limit`). Set explicitly on every such queue, so that every RabbitMQ version behaves
/// alike: 3.x has no limit by default; 4.x has this same one by default but *drops* what exceeds
/// it unless the queue dead-letters. warren itself never returns a task to its queue in a loop
/// (it counts attempts and hands long tasks on as fresh messages), so only a process that dies
/// again and again while holding the same message, or a draining worker's hand-backs, can use
/// it up.
pub const DELIVERY_LIMIT: i32 = 20;

/// The delivery limit of the queues that hold records rather than work (dead, rejected) and of
/// the leader queue: so high that it is never reached (`warren dead list` hands each message
/// back once per listing). Not `-1`, which means "unlimited" to RabbitMQ 4 but "drop at the
/// first return" to 3.x.
pub const UNREACHABLE_DELIVERY_LIMIT: i32 = 1_000_000_000;

/// What a quorum queue holds, which decides its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Tasks: [`DELIVERY_LIMIT`], then at-least-once dead-lettering into `dead_queue`.
    Tasks {
        /// Where a task past the limit goes.
        dead_queue: String,
    },
    /// Records (dead tasks, rejected messages, requests, benchmark messages):
    /// [`UNREACHABLE_DELIVERY_LIMIT`], no dead-lettering.
    Records,
    /// The leader baton: a single-active-consumer queue with [`UNREACHABLE_DELIVERY_LIMIT`].
    Baton,
}

impl Holds {
    /// The queue arguments this warren declares.
    pub fn arguments(&self) -> FieldTable {
        let mut arguments = self.legacy_arguments();
        let limit = match self {
            Holds::Tasks { .. } => DELIVERY_LIMIT,
            Holds::Records | Holds::Baton => UNREACHABLE_DELIVERY_LIMIT,
        };
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
        if let Holds::Tasks { dead_queue } = self {
            // Through the default exchange, straight to the dead queue. At-least-once: the
            // message leaves this queue only once the dead queue has confirmed it (RabbitMQ
            // requires reject-publish overflow for that; no length limit is set, so nothing
            // is ever refused for it).
            let text = |s: &str| AMQPValue::LongString(s.into());
            arguments.insert("x-dead-letter-exchange".into(), text(""));
            arguments.insert("x-dead-letter-routing-key".into(), text(dead_queue));
            arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            arguments.insert("x-overflow".into(), text("reject-publish"));
        }
        arguments
    }

    /// The arguments warren declared before it set delivery limits (up to 0.1 of this
    /// repository's history): the queue type, and single-active-consumer for the baton.
    fn legacy_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if *self == Holds::Baton {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        arguments
    }
}

/// Declares quorum queues on one connection, tolerating queues an older warren declared.
///
/// RabbitMQ refuses to redeclare a queue with other arguments (`PRECONDITION_FAILED`, which
/// closes the channel), and a queue's arguments cannot change after it is declared. A queue
/// that a warren from before delivery limits declared is therefore redeclared with the
/// arguments of that time: if the broker accepts those, the queue is used as it is, with a
/// warning naming the policy that gives it the limit (deploy/rabbitmq/definitions.json,
/// `warren-task-queues`). Anything else that differs (say, a classic queue of that name) is
/// still an error.
pub struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
}

impl<'a> Declarer<'a> {
    /// A declarer with a fresh channel on `connection`.
    pub async fn open(connection: &'a Connection) -> lapin::Result<Declarer<'a>> {
        let channel = connection.create_channel().await?;
        Ok(Declarer {
            connection,
            channel,
        })
    }

    /// Its current channel (replaced after a refused declaration).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares a durable quorum queue holding `holds`.
    pub async fn quorum(&mut self, name: &str, holds: Holds) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .channel
            .queue_declare(name.into(), durable, holds.arguments())
            .await;
        let refused = match declared {
            Ok(_) => return Ok(()),
            Err(err) if is_precondition_failed(&err) => err,
            Err(err) => return Err(err),
        };
        self.channel = self.connection.create_channel().await?;
        self.channel
            .queue_declare(name.into(), durable, holds.legacy_arguments())
            .await?;
        warn!(
            queue = name,
            "this queue was declared without a delivery limit or dead-lettering (by a warren \
             from before both, or by hand), and a queue's arguments cannot change: using it as \
             it is. On RabbitMQ 4 a message returned to it {DELIVERY_LIMIT} times would be \
             dropped; apply the policies of deploy/rabbitmq/definitions.json, or delete the \
             queue while it is empty so that warren declares it anew"
        );
        debug!(
            queue = name,
            "the broker refused the declaration: {refused}"
        );
        Ok(())
    }

    /// Declares a stream kept as `retention` says. A stream declared before with another
    /// retention is used as it is, with a warning (its arguments cannot change; a policy's
    /// `max-age` and `max-length-bytes` can).
    pub async fn stream(&mut self, name: &str, retention: &Retention) -> lapin::Result<()> {
        let mut arguments = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        arguments.insert("x-queue-type".into(), text("stream"));
        arguments.insert("x-max-age".into(), text(&retention.max_age));
        let bytes = i64::try_from(retention.max_bytes).unwrap_or(i64::MAX);
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(bytes));
        // Segments of 100 MB (RabbitMQ's default is 500 MB), so that retention by size drops
        // history in finer steps.
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(100_000_000),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .channel
            .queue_declare(name.into(), durable, arguments)
            .await;
        match declared {
            Ok(_) => Ok(()),
            Err(err) if is_precondition_failed(&err) => {
                self.channel = self.connection.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..durable
                };
                self.channel
                    .queue_declare(name.into(), passive, FieldTable::default())
                    .await?;
                warn!(
                    stream = name,
                    "the history stream exists with another retention than history.max_age and \
                     history.max_bytes say; using it as it is (change a stream's retention with \
                     a policy: max-age, max-length-bytes)"
                );
                debug!(stream = name, "the broker refused the declaration: {err}");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Binds `queue` to `exchange` with `key`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Closes its channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "declared".into()).await;
    }
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.get_id() == 406
    )
}

/// Declares a durable topic exchange.
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// Declares a durable quorum queue holding `holds` (see [`Declarer`]).
pub async fn declare_quorum(
    connection: &Connection,
    name: &str,
    holds: Holds,
) -> lapin::Result<()> {
    let mut declarer = Declarer::open(connection).await?;
    declarer.quorum(name, holds).await?;
    declarer.close().await;
    Ok(())
}

/// The default levels: high 7–9, normal 4–6, low 0–3.
pub fn default_levels() -> Vec<Level> {
    [("high", 7), ("normal", 4), ("low", 0)]
        .into_iter()
        .map(|(name, min_priority)| Level {
            name: name.into(),
            min_priority,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_priorities_onto_default_levels() {
        let topology = Topology::new("w");
        let levels: Vec<usize> = (0..=9).map(|p| topology.level_for(p)).collect();
        assert_eq!(levels, [2, 2, 2, 2, 1, 1, 1, 0, 0, 0]);
        assert_eq!(topology.level_queue(0), "w.tasks.high");
        assert_eq!(topology.worker_queue("a"), "w.worker.a");
        assert!(topology.validate().is_ok());
    }

    #[test]
    fn rejects_bad_levels() {
        let mut topology = Topology::new("w");
        topology.levels.swap(0, 1);
        assert!(topology.validate().is_err());
        topology.levels.clear();
        assert!(topology.validate().is_err());
    }
}
