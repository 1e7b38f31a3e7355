//! The core's settings: the scheduling choices an operator makes (`[dispatcher]` in the
//! configuration file, which reads into these types) and the limits that follow from them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A worker's lookahead (tasks the dispatcher may queue for it beyond its free slots) is at most
/// this many times its concurrency: enough to keep a worker of sub-millisecond tasks busy across
/// a dispatch round trip (measured: `warren-bench`). A worker prefetches its concurrency plus
/// that many, so everything queued for it is delivered and waits in the worker for a slot.
pub const LOOKAHEAD_SLOTS: u32 = 3;

/// Serde through a string, so that a wrong value (in a file or a `WARREN__*` variable) is
/// refused with the values that are right (the `config` crate adds the key): its own enum
/// error names only the type ("enum PolicyName does not have variant constructor bogus").
#[macro_export]
macro_rules! named_values {
    ($type:ident, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            /// Every value's name, as the configuration spells it.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The configuration's name of this value.
            pub fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl ::std::str::FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> Result<$type, String> {
                match text {
                    $($name => Ok($type::$variant),)+
                    other => Err(format!(
                        "unknown value '{}'; expected one of: {}",
                        other,
                        $type::NAMES.join(", ")
                    )),
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = String;

            fn try_from(text: String) -> Result<$type, String> {
                text.parse()
            }
        }

        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.name().to_owned()
            }
        }
    };
}

/// `dispatcher.policy`: the order of the tasks the dispatcher holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PolicyName {
    /// First come, first served: arrival order, all tasks on one level.
    Fcfs,
    /// Priority levels, arrival order within a level.
    #[default]
    Priority,
    /// Shortest job first: `estimated_ms`, else the kind's learned run time.
    Sjf,
    /// Earliest deadline first; tasks without a deadline last.
    Edf,
}

/// `dispatcher.levels`: which priority level goes next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LevelMode {
    /// Always the most urgent level that has a runnable task.
    #[default]
    Strict,
    /// Smooth weighted round robin over the levels with runnable tasks, plus aging.
    Weighted,
}

/// `dispatcher.balancer`: which worker gets a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BalancerName {
    /// Each able worker in turn.
    #[default]
    RoundRobin,
    /// A uniformly random able worker.
    Random,
    /// The able worker with the most free capacity.
    LeastLoaded,
    /// The freer of two random able workers.
    PowerOfTwo,
}

named_values!(PolicyName, {
    Fcfs => "fcfs", Priority => "priority", Sjf => "sjf", Edf => "edf",
});
named_values!(LevelMode, { Strict => "strict", Weighted => "weighted" });
named_values!(BalancerName, {
    RoundRobin => "round_robin", Random => "random", LeastLoaded => "least_loaded",
    PowerOfTwo => "power_of_two",
});

/// Everything the core needs to know of the dispatcher's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Order within a level.
    pub policy: PolicyName,
    /// Which level goes next.
    pub levels: LevelMode,
    /// Weights of the levels for `LevelMode::Weighted`, most urgent first.
    pub weights: Vec<u32>,
    /// Under `weighted`, a task waiting longer than this goes next (`None`: never).
    pub aging: Option<Duration>,
    /// Which worker gets a task.
    pub balancer: BalancerName,
    /// Work (at a worker's mean run time) that may wait in its queue beyond its free slots.
    pub lookahead: Duration,
    /// Silence after which a worker is dead.
    pub heartbeat_timeout: Duration,
    /// The idempotency window (zero: off).
    pub dedupe_window: Duration,
    /// Task ids the idempotency window holds at most.
    pub dedupe_max: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policy: PolicyName::Priority,
            levels: LevelMode::Strict,
            weights: vec![6, 3, 1],
            aging: Some(Duration::from_secs(30)),
            balancer: BalancerName::RoundRobin,
            lookahead: Duration::from_millis(20),
            heartbeat_timeout: Duration::from_secs(3),
            dedupe_window: Duration::from_secs(600),
            dedupe_max: 50_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_value_is_refused_with_the_right_ones() {
        let err = serde_json::from_str::<PolicyName>("\"bogus\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown value 'bogus'"), "{text}");
        assert!(text.contains("fcfs, priority, sjf, edf"), "{text}");
        for name in BalancerName::NAMES {
            let value: BalancerName = name.parse().unwrap();
            assert_eq!(
                serde_json::to_string(&value).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!("weighted".parse::<LevelMode>(), Ok(LevelMode::Weighted));
    }
}
