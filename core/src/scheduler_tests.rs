use super::*;
use crate::facts::{Heartbeat, WorkerState};
use crate::settings::{BalancerName, LevelMode, PolicyName, Settings};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn config(policy: PolicyName, balancer: BalancerName) -> Settings {
    Settings {
        policy,
        balancer,
        ..Settings::default()
    }
}

fn registry(workers: &[(&str, &[&str], &[&str], u32)]) -> Fleet {
    let mut registry = Fleet::new(Duration::from_secs(3));
    for (id, kinds, tags, concurrency) in workers {
        let beat = Heartbeat {
            worker: (*id).into(),
            queue: format!("q.{id}"),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            concurrency: *concurrency,
            capacity: 0,
            running: vec![],
            started: vec![],
            state: WorkerState::Online,
            seq: 0,
            at: chrono::Utc::now(),
        };
        registry.heartbeat(&beat, Instant::now());
    }
    registry
}

fn task(id: &str, kind: &str, requires: &[&str], arrived: Instant) -> TaskInfo {
    TaskInfo {
        id: id.into(),
        kind: kind.into(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        cost: 1,
        estimated_ms: None,
        deadline: None,
        arrived,
        not_before: None,
        origin: crate::scheduler::Origin::Reentry,
    }
}

fn held(task: TaskInfo) -> Held<()> {
    Held { task, handle: () }
}

fn drain(scheduler: &mut Scheduler<()>, registry: &mut Fleet) -> Vec<(String, String)> {
    let mut order = vec![];
    let now = Instant::now();
    while let Some(a) = scheduler.next(registry, now) {
        registry.dispatched(&a.worker, &a.held.task.id, a.held.task.cost, now);
        order.push((a.held.task.id, a.worker));
    }
    order
}

fn ids(order: &[(String, String)]) -> Vec<&str> {
    order.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn strict_priority_and_fifo_within_a_level() {
    let mut registry = registry(&[("w", &["echo"], &[], 10)]);
    let mut scheduler = Scheduler::new(
        3,
        &config(PolicyName::Priority, BalancerName::RoundRobin),
        1,
    );
    let t = Instant::now();
    scheduler.push(2, held(task("low1", "echo", &[], t)));
    scheduler.push(1, held(task("normal1", "echo", &[], t)));
    scheduler.push(0, held(task("high1", "echo", &[], t)));
    scheduler.push(
        0,
        held(task("high2", "echo", &[], t + Duration::from_millis(1))),
    );
    let order = drain(&mut scheduler, &mut registry);
    assert_eq!(ids(&order), ["high1", "high2", "normal1", "low1"]);
}

#[test]
fn fcfs_ignores_levels() {
    let mut registry = registry(&[("w", &["echo"], &[], 10)]);
    let mut scheduler = Scheduler::new(3, &config(PolicyName::Fcfs, BalancerName::RoundRobin), 1);
    let t = Instant::now();
    scheduler.push(2, held(task("first", "echo", &[], t)));
    scheduler.push(
        0,
        held(task("second", "echo", &[], t + Duration::from_millis(1))),
    );
    assert_eq!(
        ids(&drain(&mut scheduler, &mut registry)),
        ["first", "second"]
    );
}

#[test]
fn sjf_runs_the_shortest_expected_first_learned_or_given() {
    let mut registry = registry(&[("w", &["long", "short"], &[], 1)]);
    let mut scheduler = Scheduler::new(1, &config(PolicyName::Sjf, BalancerName::RoundRobin), 1);
    for _ in 0..5 {
        scheduler.observe("long", 900.0);
        scheduler.observe("short", 10.0);
    }
    let t = Instant::now();
    scheduler.push(0, held(task("L", "long", &[], t)));
    scheduler.push(
        0,
        held(task("S", "short", &[], t + Duration::from_millis(1))),
    );
    let mut hinted = task("L-hinted-tiny", "long", &[], t + Duration::from_millis(2));
    hinted.estimated_ms = Some(1.0);
    scheduler.push(0, held(hinted));
    let mut order = vec![];
    let now = Instant::now();
    while let Some(a) = scheduler.next(&registry, now) {
        order.push(a.held.task.id.clone());
        registry.dispatched(&a.worker, &a.held.task.id, 1, now);
        registry.released(&a.worker, &a.held.task.id);
    }
    assert_eq!(order, ["L-hinted-tiny", "S", "L"]);
}

#[test]
fn edf_orders_by_deadline_and_expired_tasks_are_taken_out() {
    let mut registry = registry(&[("w", &["echo"], &[], 10)]);
    let mut scheduler = Scheduler::new(1, &config(PolicyName::Edf, BalancerName::RoundRobin), 1);
    let t = Instant::now();
    let with_deadline = |id: &str, secs: Option<u64>| {
        let mut task = task(id, "echo", &[], t);
        task.deadline = secs.map(|s| t + Duration::from_secs(s));
        held(task)
    };
    scheduler.push(0, with_deadline("none", None));
    scheduler.push(0, with_deadline("late", Some(50)));
    scheduler.push(0, with_deadline("soon", Some(20)));
    scheduler.push(0, with_deadline("missed", Some(1)));
    let expired = scheduler.take_expired(t + Duration::from_secs(10));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].task.id, "missed");
    assert_eq!(
        ids(&drain(&mut scheduler, &mut registry)),
        ["soon", "late", "none"]
    );
}

#[test]
fn retries_wait_for_their_backoff() {
    let mut registry = registry(&[("w", &["echo"], &[], 10)]);
    let mut scheduler = Scheduler::new(
        1,
        &config(PolicyName::Priority, BalancerName::RoundRobin),
        1,
    );
    let t = Instant::now();
    let mut retry = task("retry", "echo", &[], t);
    retry.not_before = Some(t + Duration::from_secs(5));
    scheduler.push(0, held(retry));
    scheduler.push(
        0,
        held(task("fresh", "echo", &[], t + Duration::from_millis(1))),
    );
    let first = scheduler.next(&registry, t).unwrap();
    assert_eq!(first.held.task.id, "fresh");
    assert!(
        scheduler
            .next(&registry, t + Duration::from_secs(1))
            .is_none()
    );
    let later = scheduler
        .next(&registry, t + Duration::from_secs(6))
        .unwrap();
    assert_eq!(later.held.task.id, "retry");
    registry.dispatched(&later.worker, "retry", 1, t);
}

#[test]
fn unrunnable_tasks_wait_without_blocking_others() {
    let mut registry = registry(&[("cpu", &["echo"], &[], 10), ("gpu", &["echo"], &["gpu"], 1)]);
    let mut scheduler = Scheduler::new(
        1,
        &config(PolicyName::Priority, BalancerName::RoundRobin),
        1,
    );
    let t = Instant::now();
    scheduler.push(0, held(task("needs-tpu", "echo", &["tpu"], t)));
    scheduler.push(0, held(task("needs-gpu", "echo", &["gpu"], t)));
    scheduler.push(0, held(task("other-kind", "resize", &[], t)));
    scheduler.push(0, held(task("plain", "echo", &[], t)));
    let sent = drain(&mut scheduler, &mut registry);
    assert!(sent.contains(&("needs-gpu".into(), "gpu".into())));
    assert!(sent.iter().any(|(id, _)| id == "plain"));
    assert_eq!(sent.len(), 2);
    assert_eq!(scheduler.held(), [2]);
    let waiting = crate::waiting::Waiting::over(scheduler.tasks(), &registry, t, 10, None);
    let reasons: Vec<(&str, String)> = waiting
        .tasks
        .iter()
        .map(|w| (w.id.as_str(), w.detail.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("needs-tpu", "no live worker has the tags tpu".to_owned()),
            ("other-kind", "no live worker runs kind resize".to_owned())
        ]
    );
}

#[test]
fn never_exceeds_credit_and_packs_costs() {
    let mut registry = registry(&[("a", &["echo"], &[], 2), ("b", &["echo"], &[], 1)]);
    let mut scheduler = Scheduler::new(
        1,
        &config(PolicyName::Priority, BalancerName::LeastLoaded),
        1,
    );
    let t = Instant::now();
    let mut heavy = task("heavy", "echo", &[], t);
    heavy.cost = 2;
    scheduler.push(0, held(heavy));
    for i in 0..10 {
        scheduler.push(0, held(task(&format!("t{i}"), "echo", &[], t)));
    }
    let sent = drain(&mut scheduler, &mut registry);
    assert_eq!(
        sent[0],
        ("heavy".to_string(), "a".to_string()),
        "only a has 2 units"
    );
    assert_eq!(sent.len(), 2);
    assert_eq!(registry.total_credit(), 0);
}

#[test]
fn weighted_levels_serve_low_levels_too() {
    let mut registry = registry(&[("w", &["echo"], &[], 1)]);
    let dispatcher = Settings {
        levels: LevelMode::Weighted,
        weights: vec![3, 1],
        ..Settings::default()
    };
    let mut scheduler = Scheduler::new(2, &dispatcher, 1);
    let t = Instant::now();
    for i in 0..8 {
        scheduler.push(0, held(task(&format!("h{i}"), "echo", &[], t)));
        scheduler.push(1, held(task(&format!("l{i}"), "echo", &[], t)));
    }
    let mut first_eight = vec![];
    for _ in 0..8 {
        let a = scheduler.next(&registry, t).unwrap();
        registry.dispatched(&a.worker, &a.held.task.id, 1, t);
        registry.released(&a.worker, &a.held.task.id);
        first_eight.push(a.held.task.id);
    }
    let low = first_eight.iter().filter(|id| id.starts_with('l')).count();
    assert_eq!(low, 2, "{first_eight:?}");
}

/// A random world: workers with random kinds, tags and capacity; tasks with random kinds,
/// requirements, costs and levels.
/// Workers as (kinds mask, tags mask, capacity); tasks as (kind, requires mask, cost, level).
type World = (Vec<(usize, usize, u32)>, Vec<(usize, usize, u32, usize)>);

fn world() -> impl Strategy<Value = World> {
    let workers = prop::collection::vec((0usize..8, 0usize..4, 1u32..4), 1..6);
    let tasks = prop::collection::vec((0usize..3, 0usize..3, 1u32..3, 0usize..3), 0..40);
    (workers, tasks)
}

const KINDS: [&str; 3] = ["a", "b", "c"];
const TAGS: [&str; 2] = ["gpu", "ssd"];

fn subset<'a>(mask: usize, of: &[&'a str]) -> Vec<&'a str> {
    of.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

proptest! {
    #[test]
    fn strict_never_skips_a_runnable_higher_level_and_filters_capabilities(
        (workers, tasks) in world(),
        balancer in prop::sample::select(vec![
            BalancerName::RoundRobin, BalancerName::Random,
            BalancerName::LeastLoaded, BalancerName::PowerOfTwo,
        ]),
        seed in any::<u64>(),
    ) {
        let specs: Vec<(String, Vec<&str>, Vec<&str>, u32)> = workers
            .iter()
            .enumerate()
            .map(|(i, (kinds, tags, capacity))| {
                (format!("w{i}"), subset(*kinds, &KINDS), subset(*tags, &TAGS), *capacity)
            })
            .collect();
        let borrowed: Vec<(&str, &[&str], &[&str], u32)> = specs
            .iter()
            .map(|(id, k, t, c)| (id.as_str(), k.as_slice(), t.as_slice(), *c))
            .collect();
        let mut registry = registry(&borrowed);
        let mut scheduler = Scheduler::new(3, &config(PolicyName::Priority, balancer), seed);
        let t = Instant::now();
        let mut levels = std::collections::HashMap::new();
        for (i, (kind, requires, cost, level)) in tasks.iter().enumerate() {
            let mut info = task(&format!("t{i}"), KINDS[*kind], &subset(*requires, &TAGS), t);
            info.cost = *cost;
            levels.insert(info.id.clone(), (*level, info.clone()));
            scheduler.push(*level, held(info));
        }
        let mut remaining: Vec<(usize, TaskInfo)> = levels.values().cloned().collect();
        while let Some(a) = scheduler.next(&registry, t) {
            let (level, info) = levels[&a.held.task.id].clone();
            let worker = registry.get(&a.worker).unwrap();
            prop_assert!(worker.kinds.contains(&info.kind));
            prop_assert!(info.requires.iter().all(|tag| worker.tags.contains(tag)));
            prop_assert!(worker.credit() >= info.cost);
            for (other_level, other) in &remaining {
                if *other_level < level && other.id != info.id {
                    let runnable = registry.workers().any(|w| w.can_take(&other.kind, &other.requires, other.cost));
                    prop_assert!(!runnable, "{} (level {}) was runnable when {} (level {}) went", other.id, other_level, info.id, level);
                }
            }
            remaining.retain(|(_, other)| other.id != info.id);
            registry.dispatched(&a.worker, &info.id, info.cost, t);
        }
    }
}

#[test]
fn lookahead_queues_only_when_no_worker_has_a_free_slot() {
    let mut registry = registry(&[("a", &["echo"], &[], 2), ("b", &["echo"], &[], 2)]);
    registry = registry.with_lookahead(Duration::from_millis(20));
    // `a` runs 1 ms tasks (lookahead 2 x 20 / 1 = 40, capped at 3 x 2 = 6); `b` 1 s tasks
    // (none).
    registry.ran("a", 1.0);
    registry.ran("b", 1_000.0);
    let mut scheduler = Scheduler::new(
        3,
        &config(PolicyName::Priority, BalancerName::RoundRobin),
        1,
    );
    let t = Instant::now();
    for i in 0..12 {
        let arrived = t + Duration::from_millis(i);
        scheduler.push(1, held(task(&format!("t{i:02}"), "echo", &[], arrived)));
    }
    let order = drain(&mut scheduler, &mut registry);
    let on = |worker: &str| order.iter().filter(|(_, w)| w == worker).count();
    // The four free slots first, round robin; then only `a` queues more, up to its lookahead.
    let first: Vec<&str> = order[..4].iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(first, ["a", "b", "a", "b"]);
    assert_eq!((on("a"), on("b")), (2 + 6, 2));
    assert_eq!(scheduler.held().iter().sum::<usize>(), 2);
}

#[test]
fn a_free_slot_beats_a_queue_behind_a_busy_worker() {
    for balancer in [
        BalancerName::RoundRobin,
        BalancerName::Random,
        BalancerName::LeastLoaded,
        BalancerName::PowerOfTwo,
    ] {
        let mut registry = registry(&[("a", &["echo"], &[], 2), ("b", &["echo"], &[], 2)]);
        registry = registry.with_lookahead(Duration::from_millis(20));
        registry.ran("a", 0.0);
        let now = Instant::now();
        registry.dispatched("a", "x", 1, now);
        registry.dispatched("a", "y", 1, now);
        registry.dispatched("b", "z", 1, now);
        // `a` is busy but may queue 6 more; `b` has one free slot.
        let mut scheduler = Scheduler::new(3, &config(PolicyName::Priority, balancer), 1);
        scheduler.push(1, held(task("t", "echo", &[], now)));
        let order = drain(&mut scheduler, &mut registry);
        assert_eq!(order[0], ("t".to_owned(), "b".to_owned()), "{balancer:?}");
    }
}
