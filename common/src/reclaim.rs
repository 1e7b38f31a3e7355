//! Reclaiming a worker's queue (by the worker itself as it leaves, or by the dispatcher when
//! it dies): once no consumer is attached (so the broker has
//! requeued everything the worker held), every task in it goes back to the most urgent level
//! queue, confirmed before it is acked, and the empty queue is deleted.

use std::time::Duration;

use crate::message::with_reason;
use crate::publish::inspect_queue;
use crate::{BrokerError, Task, Topology, confirmed_channel, publish_confirmed};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often to look for the worker's consumer to be gone.
const POLL: Duration = Duration::from_millis(250);

/// How long a leaving worker waits for its own, cancelled, consumer to be gone from the count.
/// A consumer connected through a broker node that went down stays counted until that node is
/// back, so a worker that waited as long as the dispatcher could miss its orchestrator's stop
/// deadline; it leaves the queue to the dispatcher instead.
pub const WORKER_PATIENCE: Duration = Duration::from_secs(10);

/// Moves every task of `queue` back to the priority queues and deletes it: `Some(moved)` (0 if
/// it was gone already). `None` if it left the queue alone: a consumer stayed attached for
/// `patience` (the worker is alive after all, or the broker still counts a consumer it lost),
/// or `stop` fired.
pub async fn reclaim(
    connection: &Connection,
    topology: &Topology,
    queue: &str,
    patience: Duration,
    stop: &CancellationToken,
) -> Result<Option<usize>, BrokerError> {
    let polls = (patience.as_millis() / POLL.as_millis()).max(1);
    for _ in 0..polls {
        // A passive declare of a missing queue closes the channel: use a fresh one each time.
        let probe = connection.create_channel().await?;
        let declared = inspect_queue(&probe, queue).await;
        let Ok(state) = declared else {
            return Ok(Some(0)); // already gone
        };
        let _ = probe.close(200, "probe done".into()).await;
        if state.consumer_count() == 0 {
            let moved = move_all(connection, topology, queue).await?;
            info!(queue, moved, "reclaimed a departed worker's queue");
            return Ok(Some(moved));
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(POLL) => {}
        }
    }
    warn!(
        queue,
        ?patience,
        "a consumer is still attached to a departed worker's queue"
    );
    Ok(None)
}

async fn move_all(
    connection: &Connection,
    topology: &Topology,
    queue: &str,
) -> Result<usize, BrokerError> {
    let channel = confirmed_channel(connection).await?;
    let mut moved = 0;
    loop {
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            let delivery = &message.delivery;
            let (target, properties) = match Task::from_json(&delivery.data) {
                // To the most urgent level: these tasks already waited their turn once, and a
                // worker's departure should not send them to the back of the line.
                Ok(_) => (topology.level_queue(0), delivery.properties.clone()),
                Err(reason) => (
                    topology.dead_queue(),
                    with_reason(delivery.properties.clone(), &reason.to_string()),
                ),
            };
            publish_confirmed(&channel, "", &target, true, &delivery.data, properties).await?;
            delivery.ack(BasicAckOptions::default()).await?;
            moved += 1;
        }
        // Quorum queues cannot delete "if empty": check, then delete, then loop if a late
        // message slipped in between.
        let state = inspect_queue(&channel, queue).await?;
        if state.consumer_count() > 0 {
            // The worker came back: it owns its queue again.
            let _ = channel.close(200, "worker is back".into()).await;
            return Ok(moved);
        }
        if state.message_count() == 0 {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
            let _ = channel.close(200, "reclaimed".into()).await;
            return Ok(moved);
        }
    }
}
