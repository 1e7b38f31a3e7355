//! Why each held task waits: the dispatcher knows exactly, so it says so — to `warren
//! waiting`, to `warren status`, to a `submit --wait` that timed out, and as a gauge. Pure, like
//! the rest of the core: the held tasks, the fleet and `now` in; reasons out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::facts::WorkerState;
use crate::fleet::Fleet;
use crate::scheduler::TaskInfo;

/// Why a held task has not been sent to a worker yet. The first that applies, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// No live worker runs its kind.
    NoWorkerForKind {
        /// The kind. Not serialized: a [`WaitingTask`] beside it says `kind` already.
        #[serde(skip)]
        kind: String,
    },
    /// Live workers run its kind, but none has every tag it `requires`.
    MissingTags {
        /// The required tags missing from the worker of that kind that has the most of them.
        missing: Vec<String>,
    },
    /// Able workers exist, but none has the capacity units it costs.
    TooCostly {
        /// Its cost.
        cost: u32,
        /// The largest capacity among the workers able to run it.
        largest: u32,
    },
    /// A retry's backoff: not before then.
    Backoff {
        /// Milliseconds until it may start.
        in_ms: u64,
    },
    /// Able workers exist and all of them are busy (or draining): it waits its turn.
    Busy,
}

impl WaitReason {
    /// A short code, for counts and the gauge's label.
    pub fn code(&self) -> &'static str {
        match self {
            WaitReason::NoWorkerForKind { .. } => "no_worker_for_kind",
            WaitReason::MissingTags { .. } => "missing_tags",
            WaitReason::TooCostly { .. } => "too_costly",
            WaitReason::Backoff { .. } => "backoff",
            WaitReason::Busy => "busy",
        }
    }

    /// Every code, in the order reasons are tried.
    pub const CODES: [&'static str; 5] = [
        "no_worker_for_kind",
        "missing_tags",
        "too_costly",
        "backoff",
        "busy",
    ];

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            WaitReason::NoWorkerForKind { kind } => format!("no live worker runs kind {kind}"),
            WaitReason::MissingTags { missing } => {
                format!("no live worker has the tags {}", missing.join(", "))
            }
            WaitReason::TooCostly { cost, largest } => {
                format!("it costs {cost} capacity units; the largest able worker has {largest}")
            }
            WaitReason::Backoff { in_ms } => {
                format!(
                    "retry backoff: not before {:.1} s from now",
                    *in_ms as f64 / 1000.0
                )
            }
            WaitReason::Busy => "every able worker is busy: it waits its turn".into(),
        }
    }

    /// Why `task` waits, given the `fleet` at `now`.
    pub fn of(task: &TaskInfo, fleet: &Fleet, now: Instant) -> WaitReason {
        let live = || fleet.workers().filter(|w| w.state != WorkerState::Offline);
        if !live().any(|w| w.kinds.contains(&task.kind)) {
            return WaitReason::NoWorkerForKind {
                kind: task.kind.clone(),
            };
        }
        if !live().any(|w| w.is_able(&task.kind, &task.requires)) {
            let missing = live()
                .filter(|w| w.kinds.contains(&task.kind))
                .map(|w| {
                    let missing: Vec<String> = task
                        .requires
                        .iter()
                        .filter(|tag| !w.tags.contains(*tag))
                        .cloned()
                        .collect();
                    missing
                })
                .min_by_key(Vec::len)
                .unwrap_or_default();
            return WaitReason::MissingTags { missing };
        }
        let largest = live()
            .filter(|w| w.is_able(&task.kind, &task.requires))
            .map(|w| w.capacity)
            .max()
            .unwrap_or(0);
        if largest < task.cost {
            return WaitReason::TooCostly {
                cost: task.cost,
                largest,
            };
        }
        if let Some(at) = task.not_before.filter(|at| *at > now) {
            let in_ms = u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX);
            return WaitReason::Backoff { in_ms };
        }
        WaitReason::Busy
    }
}

/// One waiting task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingTask {
    /// Task id.
    pub id: String,
    /// Task kind.
    pub kind: String,
    /// Its priority level (0 = most urgent).
    pub level: usize,
    /// How long the dispatcher has held it, in milliseconds.
    pub waited_ms: u64,
    /// Why it waits.
    #[serde(flatten)]
    pub reason: WaitReason,
    /// The reason, for people.
    pub detail: String,
}

/// What the dispatcher holds and why: counts of every held task by reason, and the oldest
/// ones in full.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Every held task.
    pub held: usize,
    /// Held tasks by [`WaitReason::code`] (every code present, zeros included).
    pub counts: BTreeMap<String, usize>,
    /// The oldest held tasks first, at most the limit asked for (only those asked for, when
    /// ids were given).
    pub tasks: Vec<WaitingTask>,
    /// Whether tasks were left out for the limit.
    pub truncated: bool,
}

impl Waiting {
    /// The report over `held` (each task with its level), oldest first: at most `limit`
    /// tasks, only those of `ids` if given.
    pub fn over<'a>(
        held: impl Iterator<Item = (usize, &'a TaskInfo)>,
        fleet: &Fleet,
        now: Instant,
        limit: usize,
        ids: Option<&[String]>,
    ) -> Waiting {
        let mut counts: BTreeMap<String, usize> = WaitReason::CODES
            .iter()
            .map(|code| ((*code).to_owned(), 0))
            .collect();
        let mut tasks = Vec::new();
        let mut held_count = 0;
        for (level, task) in held {
            held_count += 1;
            let reason = WaitReason::of(task, fleet, now);
            *counts.entry(reason.code().to_owned()).or_default() += 1;
            if ids.is_none_or(|ids| ids.contains(&task.id)) {
                tasks.push((task.arrived, level, task, reason));
            }
        }
        tasks.sort_by_key(|(arrived, ..)| *arrived);
        let truncated = tasks.len() > limit;
        let tasks = tasks
            .into_iter()
            .take(limit)
            .map(|(arrived, level, task, reason)| WaitingTask {
                id: task.id.clone(),
                kind: task.kind.clone(),
                level,
                waited_ms: millis(now.saturating_duration_since(arrived)),
                detail: reason.describe(),
                reason,
            })
            .collect();
        Waiting {
            held: held_count,
            counts,
            tasks,
            truncated,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::fleet::WorkerEntry;
    use crate::scheduler::Origin;

    fn worker(id: &str, kinds: &[&str], tags: &[&str], capacity: u32, now: Instant) -> WorkerEntry {
        WorkerEntry {
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            concurrency: 1,
            capacity,
            ..WorkerEntry::new(id, &format!("q.{id}"), WorkerState::Online, now)
        }
    }

    fn task(id: &str, kind: &str, requires: &[&str], cost: u32, arrived: Instant) -> TaskInfo {
        TaskInfo {
            id: id.into(),
            kind: kind.into(),
            requires: requires.iter().map(|t| (*t).to_owned()).collect(),
            cost,
            estimated_ms: None,
            deadline: None,
            arrived,
            not_before: None,
            origin: Origin::Reentry,
        }
    }

    #[test]
    fn names_the_first_reason_that_applies() {
        let now = Instant::now();
        let mut fleet = Fleet::new(Duration::from_secs(3));
        fleet.insert(worker("a", &["echo"], &["ssd"], 2, now));
        fleet.insert(worker("b", &["echo"], &["ssd", "eu"], 4, now));
        let reason = |t: &TaskInfo| WaitReason::of(t, &fleet, now);
        assert_eq!(
            reason(&task("1", "nosuch", &[], 1, now)),
            WaitReason::NoWorkerForKind {
                kind: "nosuch".into()
            }
        );
        // The worker closest to having them (b) lacks only gpu.
        assert_eq!(
            reason(&task("2", "echo", &["gpu", "eu", "ssd"], 1, now)),
            WaitReason::MissingTags {
                missing: vec!["gpu".into()]
            }
        );
        assert_eq!(
            reason(&task("3", "echo", &["ssd"], 5, now)),
            WaitReason::TooCostly {
                cost: 5,
                largest: 4
            }
        );
        let mut backoff = task("4", "echo", &[], 1, now);
        backoff.not_before = Some(now + Duration::from_millis(1500));
        assert_eq!(reason(&backoff), WaitReason::Backoff { in_ms: 1500 });
        assert_eq!(
            reason(&task("5", "echo", &["eu"], 4, now)),
            WaitReason::Busy
        );
        assert!(
            reason(&task("6", "x", &[], 1, now))
                .describe()
                .contains("kind x")
        );
    }

    #[test]
    fn a_report_reads_back_as_it_was_written() {
        let now = Instant::now();
        let fleet = Fleet::new(Duration::from_secs(3));
        let tasks = [task("1", "nosuch", &[], 1, now)];
        let report = Waiting::over(tasks.iter().map(|t| (0, t)), &fleet, now, 10, None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tasks"][0]["kind"], "nosuch");
        assert_eq!(json["tasks"][0]["reason"], "no_worker_for_kind");
        let back: Waiting = serde_json::from_value(json).unwrap();
        assert_eq!(back.tasks[0].detail, report.tasks[0].detail);
        assert_eq!(back.counts, report.counts);
    }

    #[test]
    fn an_offline_worker_runs_nothing() {
        let now = Instant::now();
        let mut fleet = Fleet::new(Duration::from_secs(3));
        let mut gone = worker("a", &["echo"], &[], 1, now);
        gone.state = WorkerState::Offline;
        fleet.insert(gone);
        let reason = WaitReason::of(&task("1", "echo", &[], 1, now), &fleet, now);
        assert_eq!(reason.code(), "no_worker_for_kind");
    }

    #[test]
    fn reports_oldest_first_within_the_limit_and_counts_all() {
        let start = Instant::now();
        let now = start + Duration::from_secs(10);
        let fleet = Fleet::new(Duration::from_secs(3));
        let tasks: Vec<TaskInfo> = (0..5)
            .map(|n| {
                task(
                    &n.to_string(),
                    "k",
                    &[],
                    1,
                    start + Duration::from_secs(5 - n),
                )
            })
            .collect();
        let held = tasks.iter().enumerate().map(|(n, t)| (n % 2, t));
        let report = Waiting::over(held, &fleet, now, 2, None);
        assert_eq!(report.held, 5);
        assert_eq!(report.counts["no_worker_for_kind"], 5);
        assert_eq!(report.counts["busy"], 0);
        assert!(report.truncated);
        let ids: Vec<&str> = report.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["4", "3"]);
        assert_eq!(report.tasks[0].waited_ms, 9_000);
        assert_eq!(report.tasks[0].level, 0);

        let only = ["1".to_owned()];
        let held = tasks.iter().map(|t| (0, t));
        let report = Waiting::over(held, &fleet, now, 10, Some(&only));
        assert_eq!(report.tasks.len(), 1);
        assert_eq!(report.held, 5);
        assert!(!report.truncated);
    }
}
