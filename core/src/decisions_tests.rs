use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::facts::{Status, WorkerState};

fn beat(id: &str, concurrency: u32, capacity: u32, running: &[&str]) -> Heartbeat {
    Heartbeat {
        worker: id.into(),
        queue: format!("q.{id}"),
        kinds: vec!["echo".into()],
        tags: vec![],
        concurrency,
        capacity,
        running: running.iter().map(|s| s.to_string()).collect(),
        started: vec![],
        state: WorkerState::Online,
        seq: 0,
        at: chrono::Utc::now(),
    }
}

fn task(id: &str, cost: u32, origin: Origin, now: Instant) -> TaskInfo {
    TaskInfo {
        id: id.into(),
        kind: "echo".into(),
        requires: vec![],
        cost,
        estimated_ms: None,
        deadline: None,
        arrived: now,
        not_before: None,
        origin,
    }
}

fn submitted(reply_to: &str) -> Origin {
    Origin::Submitted {
        waiter: Some(Waiter {
            reply_to: reply_to.into(),
            correlation_id: None,
        }),
    }
}

fn ending() -> Ending {
    Ending {
        status: Status::Succeeded,
        result: Some(serde_json::json!(7)),
        result_omitted: false,
        error: None,
        attempts: 1,
        worker: Some("a".into()),
        started_at: None,
        finished_at: None,
    }
}

fn core() -> Core<&'static str> {
    Core::new(3, &Settings::default(), 1)
}

fn send(core: &mut Core<&'static str>, now: Instant) -> Option<(String, String)> {
    match core.next(now)? {
        Decision::Send(a) => Some((a.held.task.id, a.worker)),
        Decision::Duplicate { held, .. } => panic!("{} answered as a duplicate", held.task.id),
    }
}

#[test]
fn a_duplicate_submission_is_answered_not_run_and_its_waiter_gets_the_result() {
    let now = Instant::now();
    let mut core = core();
    core.heartbeat(&beat("a", 2, 0, &[]), now);
    assert!(matches!(
        core.arrived(1, task("t", 1, submitted("first"), now), "d1", now),
        Admission::Held
    ));
    assert_eq!(send(&mut core, now), Some(("t".into(), "a".into())));
    let Admission::Duplicate { held, prior } =
        core.arrived(1, task("t", 1, submitted("second"), now), "d2", now)
    else {
        panic!("a second submission of t is a duplicate");
    };
    assert_eq!((held.handle, prior), ("d2", Prior::Pending));
    let answer = core
        .released(Released {
            worker: "a".into(),
            task: "t".into(),
            ran: Some(("echo".into(), 3.0)),
            ending: Some(ending()),
        })
        .expect("the waiting duplicate is answered");
    assert_eq!(answer.waiters[0].reply_to, "second");
    assert_eq!(answer.ending, ending());
    // Retries and requeues of the same id are not duplicates.
    assert!(matches!(
        core.arrived(1, task("t", 1, Origin::Reentry, now), "d3", now),
        Admission::Held
    ));
}

#[test]
fn a_twin_dispatched_while_one_was_held_is_answered_when_it_comes_up() {
    let now = Instant::now();
    let mut core = core();
    // No worker yet: both copies are held.
    core.arrived(1, task("t", 1, submitted("first"), now), "d1", now);
    core.arrived(1, task("t", 1, submitted("second"), now), "d2", now);
    core.heartbeat(&beat("a", 2, 0, &[]), now);
    assert_eq!(send(&mut core, now), Some(("t".into(), "a".into())));
    let Some(Decision::Duplicate { held, prior }) = core.next(now) else {
        panic!("the twin is a duplicate");
    };
    assert_eq!((held.handle, prior), ("d2", Prior::Pending));
    assert!(core.next(now).is_none());
}

#[test]
fn a_redelivered_copy_of_a_running_task_is_not_run_again() {
    let now = Instant::now();
    let mut core = core();
    core.heartbeat(&beat("a", 2, 0, &["running"]), now);
    assert!(matches!(
        core.arrived(0, task("running", 1, Origin::Redelivered, now), "d", now),
        Admission::AlreadyRunning(Held { handle: "d", .. })
    ));
    assert!(matches!(
        core.arrived(0, task("other", 1, Origin::Redelivered, now), "e", now),
        Admission::Held
    ));
}

#[test]
fn a_refused_dispatch_gives_the_credit_back_and_forgets_the_id() {
    let now = Instant::now();
    let mut core = core();
    core.heartbeat(&beat("a", 1, 0, &[]), now);
    core.arrived(1, task("t", 1, submitted("r"), now), "d", now);
    assert!(send(&mut core, now).is_some());
    assert!(!core.has_room() && !core.takes_now("echo", &[], 1));
    core.unsent("a", "t");
    assert!(core.has_room() && core.takes_now("echo", &[], 1));
    assert!(matches!(
        core.arrived(1, task("t", 1, submitted("r"), now), "d", now),
        Admission::Held
    ));
}

#[test]
fn finished_attempts_grow_the_lookahead() {
    let now = Instant::now();
    let mut core = core();
    core.heartbeat(&beat("a", 2, 0, &[]), now);
    for i in 0..6 {
        core.arrived(1, task(&format!("t{i}"), 1, Origin::Reentry, now), "d", now);
    }
    assert_eq!(std::iter::from_fn(|| send(&mut core, now)).count(), 2);
    // 1 ms tasks in a 20 ms lookahead: up to 3 x 2 more may wait in its queue.
    core.released(Released {
        worker: "a".into(),
        task: "t0".into(),
        ran: Some(("echo".into(), 1.0)),
        ending: None,
    });
    assert_eq!(std::iter::from_fn(|| send(&mut core, now)).count(), 4);
}

#[test]
fn dead_workers_are_reclaimed_once_until_the_session_ends_or_they_return() {
    let start = Instant::now();
    let mut core = core();
    // a holds two tasks and has begun one; b holds none.
    let mut a = beat("a", 2, 0, &["begun", "waiting"]);
    a.started = vec!["begun".into()];
    core.heartbeat(&a, start);
    core.heartbeat(&beat("b", 1, 0, &[]), start);
    let later = start + Duration::from_secs(4);
    assert_eq!(core.dead_workers(later).len(), 2);
    let reclaims = core.start_reclaims();
    let queues: Vec<&str> = reclaims.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(queues, ["q.a", "q.b"]);
    // Only the task a had begun counts as an attempt lost with it.
    assert_eq!(reclaims[0].1.worker, "a");
    assert_eq!(reclaims[0].1.started, ["begun".to_owned()].into());
    assert!(reclaims[1].1.started.is_empty());
    assert!(core.start_reclaims().is_empty(), "under way already");
    core.reclaimed("q.a");
    // The session ends: b's reclaim stopped, so the next session starts it again.
    core.session_ended();
    let queues: Vec<String> = core.start_reclaims().into_iter().map(|(q, _)| q).collect();
    assert_eq!(queues, ["q.b"]);
    // b is heard again: its queue is its own, and its reclaim must stop.
    assert_eq!(
        core.heartbeat(&beat("b", 1, 0, &[]), later),
        Change::Returned
    );
    assert_eq!(core.fleet().departed().count(), 0);
}

/// A random story of facts: heartbeats (with adoptions), arrivals, dispatches, releases and
/// refused dispatches, on workers with random slots and units.
#[derive(Debug, Clone)]
enum Fact {
    Arrive { cost: u32, level: usize },
    Dispatch,
    Release { index: usize },
    Unsend { index: usize },
    Ran { worker: usize, ms: u16 },
    Beat { worker: usize, adopt: bool },
}

fn fact() -> impl Strategy<Value = Fact> {
    prop_oneof![
        (1u32..5, 0usize..3).prop_map(|(cost, level)| Fact::Arrive { cost, level }),
        Just(Fact::Dispatch),
        any::<usize>().prop_map(|index| Fact::Release { index }),
        any::<usize>().prop_map(|index| Fact::Unsend { index }),
        (0usize..4, any::<u16>()).prop_map(|(worker, ms)| Fact::Ran { worker, ms }),
        (0usize..4, any::<bool>()).prop_map(|(worker, adopt)| Fact::Beat { worker, adopt }),
    ]
}

proptest! {
    /// Whatever happens, a task is sent to a worker only if, with it, the worker holds no more
    /// tasks than its slots plus its lookahead and no more units than its capacity plus the
    /// lookahead's units (with no lookahead: its slots and its units); and a worker's units in
    /// use are always exactly the sum of the costs of what it holds (credit never goes below
    /// zero by underflow).
    #[test]
    fn no_worker_is_ever_over_its_slots_or_units(
        workers in prop::collection::vec((1u32..5, 0u32..9), 1..4),
        facts in prop::collection::vec(fact(), 1..200),
        lookahead in prop::sample::select(vec![0u64, 20]),
    ) {
        let now = Instant::now();
        let settings = Settings { lookahead: Duration::from_millis(lookahead), ..Settings::default() };
        let mut core: Core<()> = Core::new(3, &settings, 7);
        let beats: Vec<Heartbeat> = workers.iter().enumerate()
            .map(|(i, (slots, units))| beat(&format!("w{i}"), *slots, *units, &[]))
            .collect();
        for b in &beats {
            core.heartbeat(b, now);
        }
        let mut sent: Vec<(String, String)> = Vec::new();
        for (n, fact) in facts.into_iter().enumerate() {
            match fact {
                Fact::Arrive { cost, level } => {
                    core.arrived(level, task(&format!("t{n}"), cost, Origin::Reentry, now), (), now);
                }
                Fact::Dispatch => {
                    while let Some(Decision::Send(a)) = core.next(now) {
                        let w = core.fleet().get(&a.worker).unwrap();
                        let lookahead_units = (u64::from(w.lookahead) * u64::from(w.capacity))
                            .div_ceil(u64::from(w.concurrency.max(1)));
                        let tasks = w.outstanding.len() as u64;
                        prop_assert!(tasks <= u64::from(w.concurrency + w.lookahead), "{} holds {} tasks", w.id, tasks);
                        prop_assert!(u64::from(w.used) <= u64::from(w.capacity) + lookahead_units, "{} uses {} units", w.id, w.used);
                        if lookahead == 0 {
                            prop_assert!(tasks <= u64::from(w.concurrency) && w.used <= w.capacity);
                        }
                        sent.push((a.worker, a.held.task.id));
                    }
                }
                Fact::Release { index } if !sent.is_empty() => {
                    let (worker, task) = sent.remove(index % sent.len());
                    core.released(Released { worker, task, ran: None, ending: None });
                }
                Fact::Unsend { index } if !sent.is_empty() => {
                    let (worker, task) = sent.remove(index % sent.len());
                    core.unsent(&worker, &task);
                }
                Fact::Ran { worker, ms } => {
                    let id = format!("w{}", worker % beats.len());
                    core.released(Released { worker: id, task: "none".into(), ran: Some(("echo".into(), f64::from(ms) / 10.0)), ending: None });
                }
                Fact::Beat { worker, adopt } => {
                    let mut b = beats[worker % beats.len()].clone();
                    if adopt {
                        b.running = vec![format!("adopted{n}")];
                    }
                    core.heartbeat(&b, now);
                }
                _ => {}
            }
            for w in core.fleet().workers() {
                let costs: u32 = w.outstanding.values().map(|o| o.cost).sum();
                prop_assert_eq!(w.used, costs);
                if lookahead == 0 {
                    prop_assert_eq!(w.lookahead, 0);
                }
            }
        }
    }
}
