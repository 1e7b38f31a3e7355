//! Reclaiming a worker's queue (by the worker itself as it leaves, or by the dispatcher when
//! it dies): once no consumer is attached (so the broker has
//! requeued everything the worker held), every task in it goes back to the most urgent level
//! queue, confirmed before it is acked, and the empty queue is deleted.

use std::time::Duration;

use crate::broker::inspect_queue;
use crate::message::with_reason;
use crate::{BrokerError, Task, Topology, confirmed_channel, publish_confirmed};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often, and how many times, to look for the worker's consumer to be gone.
const POLL: Duration = Duration::from_millis(250);
const POLLS: u32 = 240;

/// Moves every task of `queue` back to the priority queues and deletes it. Gives up (leaving
/// the queue alone) if a consumer stays attached, which means the worker is alive after all.
pub async fn reclaim(
    connection: &Connection,
    topology: &Topology,
    queue: &str,
    stop: &CancellationToken,
) -> Result<usize, BrokerError> {
    for _ in 0..POLLS {
        // A passive declare of a missing queue closes the channel: use a fresh one each time.
        let probe = connection.create_channel().await?;
        let declared = inspect_queue(&probe, queue).await;
        let Ok(state) = declared else {
            return Ok(0); // already gone
        };
        let _ = probe.close(200, "probe done".into()).await;
        if state.consumer_count() == 0 {
            let moved = move_all(connection, topology, queue).await?;
            info!(queue, moved, "reclaimed a departed worker's queue");
            return Ok(moved);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(0),
            () = tokio::time::sleep(POLL) => {}
        }
    }
    warn!(
        queue,
        "a consumer is still attached to a departed worker's queue; leaving it"
    );
    Ok(0)
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
