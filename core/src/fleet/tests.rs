use super::*;
use crate::retry::{RetryPolicy, Verdict};

pub(crate) fn beat(id: &str, kinds: &[&str], tags: &[&str], running: &[&str]) -> Heartbeat {
    Heartbeat {
        worker: id.into(),
        queue: format!("q.{id}"),
        kinds: kinds.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        concurrency: 2,
        capacity: 0,
        running: running.iter().map(|s| s.to_string()).collect(),
        started: vec![],
        state: WorkerState::Online,
        seq: 0,
        at: chrono::Utc::now(),
    }
}

#[test]
fn credit_follows_dispatches_and_releases() {
    let now = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    assert_eq!(
        registry.heartbeat(&beat("a", &["echo"], &[], &[]), now),
        Change::Joined
    );
    assert_eq!(registry.total_credit(), 2);
    registry.dispatched("a", "t1", 1, now);
    registry.dispatched("a", "t2", 1, now);
    let a = registry.get("a").unwrap();
    assert_eq!(a.credit(), 0);
    assert!(!a.can_take("echo", &[], 1));
    registry.released("a", "t1");
    assert!(registry.get("a").unwrap().can_take("echo", &[], 1));
    assert!(!registry.get("a").unwrap().can_take("echo", &[], 2));
    assert!(!registry.get("a").unwrap().can_take("other", &[], 1));
    assert!(
        !registry
            .get("a")
            .unwrap()
            .can_take("echo", &["gpu".into()], 1)
    );
}

#[test]
fn heartbeats_reconcile_outstanding_tasks() {
    let start = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
    registry.dispatched("a", "lost-event", 1, start);
    registry.dispatched("a", "fresh", 1, start + Duration::from_secs(4));
    let later = start + Duration::from_secs(4);
    registry.heartbeat(&beat("a", &["echo"], &[], &["adopted"]), later);
    let mut held: Vec<_> = registry
        .get("a")
        .unwrap()
        .outstanding
        .keys()
        .cloned()
        .collect();
    held.sort();
    assert_eq!(held, ["adopted", "fresh"]);
    assert_eq!(registry.get("a").unwrap().used, 2);
}

#[test]
fn a_full_worker_keeps_the_tasks_queued_for_it() {
    let start = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
    for id in ["long1", "long2", "queued"] {
        registry.dispatched("a", id, 1, start);
    }
    // Both slots busy with long tasks: "queued" waits in its queue, unreported, for longer
    // than the timeout, and is not forgotten.
    let later = start + Duration::from_secs(10);
    registry.heartbeat(&beat("a", &["echo"], &[], &["long1", "long2"]), later);
    assert_eq!(registry.get("a").unwrap().outstanding.len(), 3);
    // Once it has a free slot, an unreported old task is gone.
    registry.heartbeat(&beat("a", &["echo"], &[], &["long1"]), later);
    assert_eq!(registry.get("a").unwrap().outstanding.len(), 1);
}

#[test]
fn a_dead_workers_queue_is_departed_until_reclaimed_or_the_worker_is_heard() {
    let start = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    for id in ["a", "b", "c"] {
        registry.heartbeat(&beat(id, &["echo"], &[], &[]), start);
    }
    registry.heartbeat(
        &beat("c", &["echo"], &[], &[]),
        start + Duration::from_secs(2),
    );
    let later = start + Duration::from_secs(4);
    let dead: Vec<String> = registry.expire(later).into_iter().map(|w| w.id).collect();
    assert_eq!(dead, ["a", "b"]);
    let departed = |registry: &Fleet| registry.departed().cloned().collect::<Vec<_>>();
    assert_eq!(departed(&registry), ["q.a", "q.b"]);
    // Expiring again (another tick) changes nothing; reclaiming one leaves the other.
    assert!(registry.expire(later).is_empty());
    registry.reclaimed("q.a");
    assert_eq!(departed(&registry), ["q.b"]);
    // The leader's own announcement that b is offline is no sign of life.
    let announced = Heartbeat {
        state: WorkerState::Offline,
        ..beat("b", &["echo"], &[], &[])
    };
    assert_eq!(registry.heartbeat(&announced, later), Change::Left);
    assert_eq!(departed(&registry), ["q.b"]);
    // A worker declared dead that is heard again owns its queue again.
    registry.heartbeat(&beat("b", &["echo"], &[], &[]), later);
    assert!(departed(&registry).is_empty());
    assert!(registry.get("b").is_some());
}

#[test]
fn remembers_running_and_finished_tasks() {
    let now = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    registry.heartbeat(&beat("a", &["echo"], &[], &["running"]), now);
    registry.finished("done");
    assert!(registry.has_seen("running") && registry.has_seen("done"));
    assert!(!registry.has_seen("new"));
}

#[test]
fn capacity_units_fill_with_costs() {
    let now = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    let mut big = beat("big", &["render"], &[], &[]);
    big.concurrency = 4;
    big.capacity = 8;
    registry.heartbeat(&big, now);
    registry.dispatched("big", "heavy", 6, now);
    let entry = registry.get("big").unwrap();
    assert_eq!(entry.credit(), 2);
    assert!(entry.can_take("render", &[], 2));
    assert!(!entry.can_take("render", &[], 3));
    assert!((entry.load() - 0.75).abs() < 1e-9);
    registry.released("big", "heavy");
    assert_eq!(registry.get("big").unwrap().credit(), 8);
}

/// A registry with a 20 ms lookahead.
fn lookahead_registry() -> Fleet {
    Fleet::new(Duration::from_secs(3)).with_lookahead(Duration::from_millis(20))
}

#[test]
fn lookahead_follows_the_mean_run_time() {
    let now = Instant::now();
    let mut registry = lookahead_registry();
    let mut w = beat("w", &["echo"], &[], &[]);
    w.concurrency = 4;
    registry.heartbeat(&w, now);
    // Unknown run time: exactly the free slots.
    for i in 0..4 {
        registry.dispatched("w", &format!("t{i}"), 1, now);
    }
    let entry = registry.get("w").unwrap();
    assert_eq!((entry.free(), entry.credit()), (0, 0));
    // 10 ms tasks: 4 slots x 20 ms / 10 ms = 8 more may wait in its queue.
    registry.ran("w", 10.0);
    let entry = registry.get("w").unwrap();
    assert_eq!((entry.free(), entry.lookahead, entry.credit()), (0, 8, 8));
    // Instant tasks: capped at LOOKAHEAD_SLOTS x concurrency.
    for _ in 0..50 {
        registry.ran("w", 0.0);
    }
    assert_eq!(registry.get("w").unwrap().lookahead, 4 * LOOKAHEAD_SLOTS);
    // Long tasks: the average moves towards them and the lookahead goes to 0.
    for _ in 0..50 {
        registry.ran("w", 1_000.0);
    }
    let entry = registry.get("w").unwrap();
    assert_eq!(entry.lookahead, 0);
    assert!(!entry.can_take("echo", &[], 1));
    // No lookahead configured: none, however short the tasks.
    let mut strict = Fleet::new(Duration::from_secs(3));
    strict.heartbeat(&w, now);
    strict.ran("w", 0.0);
    assert_eq!(strict.get("w").unwrap().lookahead, 0);
}

#[test]
fn lookahead_in_capacity_units() {
    let now = Instant::now();
    let mut registry = lookahead_registry();
    let mut big = beat("big", &["render"], &[], &[]);
    big.concurrency = 4;
    big.capacity = 8;
    registry.heartbeat(&big, now);
    registry.ran("big", 20.0);
    // 4 tasks of lookahead at 2 units a task on average: 8 units beyond the 8 it has.
    registry.dispatched("big", "heavy", 6, now);
    let entry = registry.get("big").unwrap();
    assert_eq!((entry.free(), entry.credit()), (2, 10));
    // Never a task bigger than the worker, whatever the credit.
    assert!(entry.can_take("render", &[], 8) && !entry.can_take("render", &[], 9));
    registry.dispatched("big", "queued", 6, now);
    let entry = registry.get("big").unwrap();
    assert_eq!((entry.free(), entry.credit()), (0, 4));
    assert!(entry.can_take("render", &[], 4) && !entry.can_take("render", &[], 5));
}

#[test]
fn silent_and_departed_workers_leave() {
    let start = Instant::now();
    let mut registry = Fleet::new(Duration::from_secs(3));
    registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
    registry.heartbeat(
        &beat("b", &["echo"], &[], &[]),
        start + Duration::from_secs(2),
    );
    let dead = registry.expire(start + Duration::from_secs(4));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "a");
    let mut bye = beat("b", &[], &[], &[]);
    bye.state = WorkerState::Offline;
    assert_eq!(registry.heartbeat(&bye, start), Change::Left);
    assert_eq!(registry.workers().count(), 0);
}

#[test]
fn a_task_a_lost_worker_had_begun_counts_one_failed_attempt() {
    let lost = LostWorker {
        worker: "w7".into(),
        started: ["poison".to_owned()].into(),
    };
    let policy = RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    assert_eq!(lost.verdict("queued", 0, 3, policy, 0.5), None);
    let Some(Verdict::Retry { error, delay }) = lost.verdict("poison", 1, 3, policy, 1.0) else {
        panic!("the second attempt of three was lost: retry");
    };
    assert_eq!(error, "worker w7 lost while running it");
    assert_eq!(delay, Duration::from_millis(200));
    let Some(Verdict::Dead { error, last }) = lost.verdict("poison", 2, 3, policy, 0.0) else {
        panic!("the third attempt of three was lost: dead");
    };
    assert_eq!(
        error,
        "failed 3 of 3 attempts; last error: worker w7 lost while running it"
    );
    assert_eq!(last, "worker w7 lost while running it");
}
