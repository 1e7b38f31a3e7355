//! What the worker says about itself: identity, capabilities, the tasks it holds and its
//! life-cycle state, turned into heartbeats.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use warren_common::{Heartbeat, WorkerState};

/// The worker's self-description, shared by the runner (which updates it) and the heartbeat
/// loop (which publishes it).
#[derive(Debug)]
pub(crate) struct WorkerStatus {
    /// Worker id.
    pub(crate) id: String,
    /// The worker's own queue.
    pub(crate) queue: String,
    /// Kinds with a handler.
    pub(crate) kinds: Vec<String>,
    /// Advertised capability tags.
    pub(crate) tags: Vec<String>,
    /// Tasks run at once.
    pub(crate) concurrency: u32,
    /// Capacity units that task costs fill.
    pub(crate) capacity: u32,
    /// Ids of the tasks it holds (running or waiting for a slot); a std mutex because it is
    /// never held across an await.
    running: Mutex<BTreeSet<String>>,
    /// Ids of the tasks whose attempt has begun: if this worker is lost, each of these counts a
    /// failed attempt (the dispatcher learns them from heartbeats).
    begun: Mutex<BTreeSet<String>>,
    /// Life-cycle state.
    state: Mutex<WorkerState>,
    /// Heartbeat sequence number.
    seq: AtomicU64,
}

impl WorkerStatus {
    pub(crate) fn new(
        id: String,
        queue: String,
        kinds: Vec<String>,
        tags: Vec<String>,
        concurrency: u32,
        capacity: u32,
    ) -> WorkerStatus {
        WorkerStatus {
            id,
            queue,
            kinds,
            tags,
            concurrency,
            capacity,
            running: Mutex::new(BTreeSet::new()),
            begun: Mutex::new(BTreeSet::new()),
            state: Mutex::new(WorkerState::Online),
            seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn started(&self, id: &str) {
        self.running
            .lock()
            .expect("status lock")
            .insert(id.to_owned());
    }

    /// The attempt of task `id` begins (it has its slot and units).
    pub(crate) fn began(&self, id: &str) {
        self.begun
            .lock()
            .expect("status lock")
            .insert(id.to_owned());
    }

    pub(crate) fn finished(&self, id: &str) {
        self.running.lock().expect("status lock").remove(id);
        self.begun.lock().expect("status lock").remove(id);
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        *self.state.lock().expect("status lock") = state;
    }

    /// A heartbeat describing the worker now.
    pub(crate) fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            worker: self.id.clone(),
            queue: self.queue.clone(),
            kinds: self.kinds.clone(),
            tags: self.tags.clone(),
            concurrency: self.concurrency,
            capacity: self.capacity,
            running: self
                .running
                .lock()
                .expect("status lock")
                .iter()
                .cloned()
                .collect(),
            started: self
                .begun
                .lock()
                .expect("status lock")
                .iter()
                .cloned()
                .collect(),
            state: *self.state.lock().expect("status lock"),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            at: Utc::now(),
        }
    }
}
