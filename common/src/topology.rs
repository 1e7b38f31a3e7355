//! Topology as data: every exchange, queue and binding warren uses, named from one prefix, and
//! the one function that declares them (idempotently, at start-up and after every reconnect).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

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
}

impl Topology {
    /// A topology with the default three levels: high 7–9, normal 4–6, low 0–3.
    pub fn new(prefix: impl Into<String>) -> Topology {
        Topology {
            prefix: prefix.into(),
            levels: default_levels(),
        }
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

    /// The quorum queue of tasks that exhausted their attempts, expired or were cancelled.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The single-active-consumer quorum queue whose baton message marks the one dispatcher
    /// that routes.
    pub fn leader_queue(&self) -> String {
        format!("{}.leader", self.prefix)
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

    /// Every shared queue: [`Topology::task_queues`] and the leader queue.
    pub fn shared_queues(&self) -> Vec<String> {
        let mut queues = self.task_queues();
        queues.push(self.leader_queue());
        queues
    }

    /// Declares the exchanges and shared queues. Safe to run any number of times.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for exchange in [self.submit_exchange(), self.events_exchange()] {
            declare_topic_exchange(channel, &exchange).await?;
        }
        for queue in &self.task_queues() {
            declare_quorum(channel, queue).await?;
        }
        let mut single_active = quorum_arguments();
        single_active.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel
            .queue_declare(
                self.leader_queue().as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                single_active,
            )
            .await?;
        channel
            .queue_bind(
                self.intake_queue().as_str().into(),
                self.submit_exchange().as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares what a worker needs of its own: the events exchange (for heartbeats) and its
    /// queue. The shared queues are the dispatcher's to declare, so a worker's broker user
    /// needs no rights over them beyond publishing (see deploy/rabbitmq/definitions.json).
    pub async fn declare_for_worker(
        &self,
        channel: &Channel,
        worker_id: &str,
    ) -> lapin::Result<()> {
        declare_topic_exchange(channel, &self.events_exchange()).await?;
        self.declare_worker_queue(channel, worker_id).await
    }

    /// Declares one worker's queue.
    pub async fn declare_worker_queue(
        &self,
        channel: &Channel,
        worker_id: &str,
    ) -> lapin::Result<()> {
        declare_quorum(channel, &self.worker_queue(worker_id)).await
    }
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

/// Declares a durable quorum queue.
pub async fn declare_quorum(channel: &Channel, name: &str) -> lapin::Result<()> {
    let arguments = quorum_arguments();
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
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
