//! Idempotency: the ids of tasks dispatched lately, so that a second submission of the same id
//! within the window does not run the task again, and its submitter gets the first one's
//! result — at once if the task has finished, or when it does.
//!
//! Pure: plain data in, decisions out, `now` passed in. The window is bounded by time and by
//! count, and the results it keeps by total size, so memory never depends on the backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::facts::json_len_within;
use serde_json::Value;

/// Results kept for answering duplicates, in bytes of JSON at most (beyond it, only the
/// outcome is kept).
const RESULT_BUDGET: usize = 16 * 1024 * 1024;
/// Submitters waiting for one task's result at most; more duplicates are answered by nobody.
const MAX_WAITERS: usize = 64;

/// Where a duplicate's answer goes: its `reply_to` and `correlation_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// Queue to send the result to.
    pub reply_to: String,
    /// Correlation id to send it with.
    pub correlation_id: Option<String>,
}

/// How a task ended, as much as a duplicate's submitter is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Final status: `succeeded`, `failed` or `dead`.
    pub status: crate::facts::Status,
    /// The result (`None` for `null`, and when it was not kept).
    pub result: Option<Value>,
    /// Whether a result was left out for its size.
    pub result_omitted: bool,
    /// The error, for failures.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The worker of the last attempt.
    pub worker: Option<String>,
    /// When the last attempt started and ended.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last attempt ended.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the window knows of a task id the dispatcher is about to hold or send.
#[derive(Debug, PartialEq)]
pub enum Prior {
    /// Not seen in the window: run it.
    Unseen,
    /// Already dispatched and not finished: the answer comes later (the waiter was recorded).
    Pending,
    /// Already finished: answer with this.
    Done(Ending),
}

// Entries are kept small (a window holds up to `dispatcher.dedupe_max` of them): the outcome
// is boxed, and the id's one allocation is shared by the map and the eviction order.
#[derive(Debug)]
enum State {
    Pending(Vec<Waiter>),
    Done(Box<Ending>),
}

#[derive(Debug)]
struct Entry {
    since: Instant,
    kind: Box<str>,
    state: State,
    /// Bytes of result counted against the budget.
    bytes: u32,
}

/// The window of recently dispatched task ids.
#[derive(Debug)]
pub struct Idempotency {
    window: Duration,
    max: usize,
    entries: HashMap<Arc<str>, Entry>,
    order: VecDeque<(Instant, Arc<str>)>,
    result_bytes: usize,
}

impl Idempotency {
    /// A window of `window` (zero: off) holding at most `max` ids.
    pub fn new(window: Duration, max: usize) -> Idempotency {
        Idempotency {
            window,
            max,
            entries: HashMap::new(),
            order: VecDeque::new(),
            result_bytes: 0,
        }
    }

    /// Whether it does anything.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero() && self.max > 0
    }

    /// Ids in the window.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `id` up for a new submission; a pending one records `waiter` to answer later.
    pub fn check(&mut self, id: &str, waiter: Option<Waiter>, now: Instant) -> Prior {
        self.evict(now);
        let Some(entry) = self.entries.get_mut(id) else {
            return Prior::Unseen;
        };
        match &mut entry.state {
            State::Done(outcome) => Prior::Done((**outcome).clone()),
            State::Pending(waiters) => {
                if let Some(waiter) = waiter
                    && waiters.len() < MAX_WAITERS
                {
                    waiters.push(waiter);
                }
                Prior::Pending
            }
        }
    }

    /// Records that `id` (of `kind`) was sent to a worker.
    pub fn dispatched(&mut self, id: &str, kind: &str, now: Instant) {
        if !self.enabled() || self.entries.contains_key(id) {
            return;
        }
        self.evict(now);
        while self.entries.len() >= self.max {
            if !self.pop_oldest() {
                break;
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.entries.insert(
            id.clone(),
            Entry {
                since: now,
                kind: kind.into(),
                state: State::Pending(Vec::new()),
                bytes: 0,
            },
        );
        self.order.push_back((now, id));
    }

    /// Forgets `id` if it is pending: its dispatch failed, it was never sent.
    pub fn undispatched(&mut self, id: &str) {
        if let Some(entry) = self.entries.get(id)
            && matches!(entry.state, State::Pending(_))
        {
            self.entries.remove(id);
        }
    }

    /// Records how `id` ended; returns its kind and the submitters waiting for it.
    pub fn finished(&mut self, id: &str, mut outcome: Ending) -> Option<(String, Vec<Waiter>)> {
        let entry = self.entries.get_mut(id)?;
        let bytes = outcome.result.as_ref().map_or(0, |r| {
            json_len_within(r, RESULT_BUDGET).unwrap_or(usize::MAX)
        });
        self.result_bytes -= entry.bytes as usize;
        if self.result_bytes.saturating_add(bytes) <= RESULT_BUDGET {
            entry.bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            self.result_bytes += bytes;
        } else {
            entry.bytes = 0;
            outcome.result = None;
            outcome.result_omitted = true;
        }
        let waiters = match std::mem::replace(&mut entry.state, State::Done(Box::new(outcome))) {
            State::Pending(waiters) => waiters,
            State::Done(_) => Vec::new(),
        };
        Some((entry.kind.to_string(), waiters))
    }

    /// Drops entries older than the window.
    fn evict(&mut self, now: Instant) {
        while let Some((since, _)) = self.order.front() {
            if now.saturating_duration_since(*since) < self.window {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry; false if there was none.
    fn pop_oldest(&mut self) -> bool {
        let Some((since, id)) = self.order.pop_front() else {
            return false;
        };
        // The id may have been forgotten and dispatched again since: only its own entry goes.
        if self.entries.get(&id).is_some_and(|e| e.since == since)
            && let Some(entry) = self.entries.remove(&id)
        {
            self.result_bytes -= entry.bytes as usize;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Status;

    fn outcome(result: Value) -> Ending {
        Ending {
            status: Status::Succeeded,
            result: Some(result),
            result_omitted: false,
            error: None,
            attempts: 1,
            worker: Some("w".into()),
            started_at: None,
            finished_at: None,
        }
    }

    fn waiter(name: &str) -> Option<Waiter> {
        Some(Waiter {
            reply_to: name.into(),
            correlation_id: None,
        })
    }

    #[test]
    fn a_duplicate_waits_for_the_first_result_then_gets_it_at_once() {
        let t0 = Instant::now();
        let mut dedupe = Idempotency::new(Duration::from_secs(60), 10);
        assert_eq!(dedupe.check("a", waiter("first"), t0), Prior::Unseen);
        dedupe.dispatched("a", "echo", t0);
        assert_eq!(dedupe.check("a", waiter("second"), t0), Prior::Pending);
        let (kind, waiters) = dedupe.finished("a", outcome(Value::from(5))).unwrap();
        assert_eq!(kind, "echo");
        assert_eq!(waiters, vec![waiter("second").unwrap()]);
        assert_eq!(
            dedupe.check("a", waiter("third"), t0),
            Prior::Done(outcome(Value::from(5)))
        );
    }

    #[test]
    fn the_window_is_bounded_by_time_and_count() {
        let t0 = Instant::now();
        let mut dedupe = Idempotency::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d"] {
            dedupe.dispatched(id, "k", t0);
        }
        assert_eq!(dedupe.len(), 3);
        assert_eq!(dedupe.check("a", None, t0), Prior::Unseen);
        assert_eq!(dedupe.check("d", None, t0), Prior::Pending);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(dedupe.check("d", None, later), Prior::Unseen);
        assert!(dedupe.is_empty());
    }

    #[test]
    fn a_failed_dispatch_is_forgotten_and_a_zero_window_keeps_nothing() {
        let t0 = Instant::now();
        let mut dedupe = Idempotency::new(Duration::from_secs(60), 3);
        dedupe.dispatched("a", "k", t0);
        dedupe.undispatched("a");
        assert_eq!(dedupe.check("a", None, t0), Prior::Unseen);
        let mut off = Idempotency::new(Duration::ZERO, 3);
        off.dispatched("a", "k", t0);
        assert_eq!(off.check("a", None, t0), Prior::Unseen);
    }

    #[test]
    fn big_results_are_not_kept_past_the_budget() {
        let t0 = Instant::now();
        let mut dedupe = Idempotency::new(Duration::from_secs(60), 1000);
        let big = Value::from("x".repeat(RESULT_BUDGET / 2));
        for id in ["a", "b", "c"] {
            dedupe.dispatched(id, "k", t0);
            dedupe.finished(id, outcome(big.clone()));
        }
        let kept = |id: &str, dedupe: &mut Idempotency| match dedupe.check(id, None, t0) {
            Prior::Done(o) => o.result.is_some(),
            other => panic!("{other:?}"),
        };
        assert!(kept("a", &mut dedupe));
        assert!(!kept("c", &mut dedupe));
        assert!(dedupe.result_bytes <= RESULT_BUDGET);
    }
}
