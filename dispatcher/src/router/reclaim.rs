//! Carries out the core's reclaims of dead workers' queues, each in the background until it is
//! done (then says so to the router), the worker is heard again, or the session stops: the
//! broker may keep counting the dead worker's consumer for as long as a node is down, and a
//! connection may fail meanwhile. Which queues to reclaim, and whether one is under way, is the
//! core's record; this holds only the handles that stop the background tasks.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_common::reclaim::{Lost, reclaim};
use warren_common::{Pool, Topology};
use warren_core::LostWorker;
use warren_core::retry::{Backoff, RetryPolicy};

use crate::feeds::Input;

/// First pause before trying again to reclaim a departed worker's queue; doubles up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The background reclaims of one session.
pub(crate) struct Reclaimer {
    /// For a connection of each reclaim's own.
    pub(crate) pool: Pool,
    /// Names on the broker.
    pub(crate) topology: Topology,
    /// Into the router: `Input::Reclaimed` when a queue is done.
    pub(crate) inputs: mpsc::Sender<Input>,
    /// How long one try waits for the dead worker's consumer to go (`dispatcher.reclaim_patience_ms`).
    pub(crate) patience: Duration,
    /// A retry's backoff (`tasks.retry_base_ms`, `tasks.retry_max_ms`), for the tasks a lost
    /// worker had begun.
    pub(crate) retry: RetryPolicy,
    /// Stops each reclaim under way, by queue.
    pub(crate) underway: HashMap<String, CancellationToken>,
}

impl Reclaimer {
    /// Starts reclaiming `queue`, of the `lost` worker, until it is done, stopped, or `session`
    /// ends.
    pub(crate) fn start(&mut self, queue: String, lost: LostWorker, session: &CancellationToken) {
        let stop = session.child_token();
        self.underway.insert(queue.clone(), stop.clone());
        let (pool, topology, inputs) = (
            self.pool.clone(),
            self.topology.clone(),
            self.inputs.clone(),
        );
        let patience = self.patience;
        let lost = Lost {
            worker: lost,
            policy: self.retry,
        };
        tokio::spawn(async move {
            let mut backoff = Backoff::new(RETRY, RETRY_MAX);
            loop {
                let attempt = match pool.get().await {
                    Ok(connection) => {
                        reclaim(
                            &connection,
                            &topology,
                            &queue,
                            patience,
                            &stop,
                            Some(&lost),
                            &|_| false,
                        )
                        .await
                    }
                    Err(err) => Err(err),
                };
                match attempt {
                    Ok(Some(_)) => {
                        let _ = inputs.send(Input::Reclaimed(queue)).await;
                        return;
                    }
                    Ok(None) if stop.is_cancelled() => return,
                    Ok(None) => {
                        warn!(%queue, "the broker still counts a consumer on a dead worker's queue (a node may be down); will try again")
                    }
                    Err(err) => {
                        warn!(%queue, cause = %err, "reclaiming a worker queue failed; will try again")
                    }
                }
                if !warren_common::shutdown::pause(&stop, backoff.next_pause()).await {
                    return;
                }
            }
        });
    }

    /// The worker of `queue` is heard again: stop reclaiming its queue.
    pub(crate) fn stop(&mut self, queue: &str) {
        if let Some(stop) = self.underway.remove(queue) {
            stop.cancel();
        }
    }

    /// `queue` was reclaimed.
    pub(crate) fn done(&mut self, queue: &str) {
        self.underway.remove(queue);
    }
}
