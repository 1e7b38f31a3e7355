//! Holding a task's delivery for as long as the task takes, whatever the broker's
//! `consumer_timeout` (which closes a channel that keeps a delivery unacked longer, requeueing
//! everything on it). Every `amqp.consumer_timeout_ms / 2`, a task's delivery is renewed: a copy
//! marked `x-warren-renewal: <worker id>` is published to the worker's own queue, confirmed, and
//! only then is the old delivery acked. When the copy comes back to this worker's consumer, it
//! holds the task from then on instead of starting it again; the attempt goes on undisturbed.
//! At every instant a durable copy exists (invariant 1): the unacked delivery, or the confirmed
//! copy in the queue. If the worker dies, whichever it was goes back through the reclaim like
//! any task of a lost worker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use lapin::Acker;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_common::message::{header_str, with_header};
use warren_common::publish::settle;
use warren_common::{HEADER_RENEWAL, publish_confirmed};

/// Ids of finished tasks remembered, to drop a renewed copy that comes back after its task
/// ended.
const FINISHED: usize = 4096;

/// Where a held task's delivery stands.
#[derive(Debug)]
enum State {
    /// Held by this delivery alone.
    Holding(Acker),
    /// A copy is being published; this delivery still holds the task until it is confirmed.
    Publishing,
    /// The old delivery is acked; the confirmed copy waits in the queue, on its way back.
    Returning,
    /// Settled: a copy that comes back is a spare, acked and dropped.
    Done,
    /// Handed back: a copy that comes back runs as any task.
    HandedBack,
}

/// One held task.
#[derive(Debug)]
pub(crate) struct Holder {
    /// The first delivery: the task's body and properties, copied when it is renewed.
    delivery: Arc<Delivery>,
    /// Its state; a std mutex, never held across an await.
    state: Mutex<State>,
    /// When it was delivered or last renewed.
    since: Mutex<Instant>,
}

/// The tasks this worker holds, by id: where renewed copies find their task.
#[derive(Default, Debug)]
pub(crate) struct Holdings {
    /// Held tasks.
    held: Mutex<HashMap<String, Arc<Holder>>>,
    /// Tasks finished lately, oldest first, and the same as a set.
    finished: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl Holdings {
    /// Holds task `id` by `delivery`.
    pub(crate) fn hold(&self, id: &str, delivery: Arc<Delivery>) -> Arc<Holder> {
        let holder = Arc::new(Holder {
            state: Mutex::new(State::Holding(delivery.acker.clone())),
            delivery,
            since: Mutex::new(Instant::now()),
        });
        self.held
            .lock()
            .expect("holdings lock")
            .insert(id.to_owned(), holder.clone());
        holder
    }

    /// Task `id` ended (`finished`: it will not run again here; otherwise it was handed back).
    pub(crate) fn release(&self, id: &str, holder: &Arc<Holder>, finished: bool) {
        let mut held = self.held.lock().expect("holdings lock");
        if held.get(id).is_some_and(|h| Arc::ptr_eq(h, holder)) {
            held.remove(id);
        }
        drop(held);
        if finished {
            let mut recent = self.finished.lock().expect("holdings lock");
            if recent.1.insert(id.to_owned()) {
                recent.0.push_back(id.to_owned());
                if recent.0.len() > FINISHED
                    && let Some(oldest) = recent.0.pop_front()
                {
                    recent.1.remove(&oldest);
                }
            }
        }
    }

    /// Whether a message with `properties` is a renewed copy, made by worker `me`, of a task
    /// that has finished here: a spare, to drop rather than run again.
    pub(crate) fn is_spare(&self, me: &str, properties: &lapin::BasicProperties) -> bool {
        let mine = header_str(properties, HEADER_RENEWAL).as_deref() == Some(me);
        let id = properties.message_id().as_ref().map(|id| id.to_string());
        mine && id.is_some_and(|id| self.finished.lock().expect("holdings lock").1.contains(&id))
    }

    /// A delivery that may be a renewed copy made by worker `me`: taken as the new holder of its
    /// running task, or dropped if it is a spare (`None`); otherwise given back to run.
    pub(crate) async fn adopt(&self, me: &str, delivery: Delivery) -> Option<Delivery> {
        // Most deliveries carry no renewal mark: nothing is allocated for them.
        if header_str(&delivery.properties, HEADER_RENEWAL).as_deref() != Some(me) {
            return Some(delivery);
        }
        let Some(id) = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
        else {
            return Some(delivery);
        };
        let holder = self.held.lock().expect("holdings lock").get(&id).cloned();
        let Some(holder) = holder else {
            let finished = self.finished.lock().expect("holdings lock").1.contains(&id);
            if finished {
                debug!(task = %id, "dropping a renewed copy of a task that has finished");
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return None;
            }
            return Some(delivery);
        };
        let spare = {
            let mut state = holder.state.lock().expect("holder lock");
            match &*state {
                State::Publishing | State::Returning => {
                    // The renewal acks the old delivery once the copy is confirmed.
                    *state = State::Holding(delivery.acker.clone());
                    false
                }
                State::HandedBack => {
                    *state = State::Done;
                    drop(state);
                    return Some(delivery);
                }
                State::Holding(_) | State::Done => true,
            }
        };
        if spare {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        None
    }
}

impl Holder {
    /// Settles the task's delivery: acks it once the task is safely handed on (`done`), or
    /// hands it back (requeues it). A renewed copy on its way back is acked when it comes
    /// (`done`: the task is finished), or runs as any task (handed back).
    pub(crate) async fn settle(&self, done: bool) {
        let acker = {
            let mut state = self.state.lock().expect("holder lock");
            let after = if done { State::Done } else { State::HandedBack };
            match std::mem::replace(&mut *state, after) {
                State::Holding(acker) => acker,
                // The renewal settles the old delivery when its copy's confirm is in.
                State::Publishing | State::Returning => return,
                finished @ (State::Done | State::HandedBack) => {
                    *state = finished;
                    return;
                }
            }
        };
        settle(&acker, done).await;
    }

    /// Hands the task back untouched (the worker stops, or lost its connection).
    pub(crate) async fn hand_back(&self) {
        self.settle(false).await;
    }

    /// Renews the delivery: publishes a copy marked as renewed by `me` to `queue` (the worker's
    /// own), and once the broker confirmed it, acks the delivery that held the task until then.
    async fn renew(&self, publisher: &Channel, queue: &str, me: &str) {
        let old = {
            let mut state = self.state.lock().expect("holder lock");
            match std::mem::replace(&mut *state, State::Returning) {
                State::Holding(acker) => {
                    *state = State::Publishing;
                    acker
                }
                other => {
                    // A copy is already on its way, or the task is settled.
                    *state = other;
                    return;
                }
            }
        };
        let marked = with_header(
            self.delivery.properties.clone(),
            HEADER_RENEWAL,
            AMQPValue::LongString(me.into()),
        );
        let published =
            publish_confirmed(publisher, "", queue, true, &self.delivery.data, marked).await;
        *self.since.lock().expect("holder lock") = Instant::now();
        // What becomes of the old delivery: kept (the copy is not confirmed), handed back, or
        // acked (the copy holds the task, or it was settled meanwhile).
        let (keep_old, requeue_old) = {
            let mut state = self.state.lock().expect("holder lock");
            match (&*state, &published) {
                (State::Publishing, Err(_)) => {
                    *state = State::Holding(old.clone());
                    (true, false)
                }
                (State::Publishing, Ok(())) => {
                    *state = State::Returning;
                    (false, false)
                }
                (State::HandedBack, Err(_)) => (false, true),
                (State::Holding(_) | State::Returning | State::Done | State::HandedBack, _) => {
                    (false, false)
                }
            }
        };
        if requeue_old {
            // Handed back while the copy was not confirmed: the old delivery goes back.
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = old.nack(options).await;
            return;
        }
        if let Err(err) = &published {
            warn!(cause = %err, "could not renew a held delivery; trying again later");
        }
        if !keep_old {
            debug!(%queue, "renewed a held delivery");
            let _ = old.ack(BasicAckOptions::default()).await;
        }
    }
}

impl Holdings {
    /// Until `over` fires, renews every held delivery `every` after it was delivered or last
    /// renewed (`amqp.consumer_timeout_ms / 2`), publishing on `publisher` to `queue`.
    pub(crate) async fn keep(
        &self,
        publisher: Channel,
        queue: String,
        me: String,
        every: Duration,
        over: CancellationToken,
    ) {
        let tick = (every / 8).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = over.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            let due: Vec<Arc<Holder>> = self
                .held
                .lock()
                .expect("holdings lock")
                .values()
                .filter(|h| h.since.lock().expect("holder lock").elapsed() >= every)
                .cloned()
                .collect();
            for holder in due {
                holder.renew(&publisher, &queue, &me).await;
            }
        }
    }
}
