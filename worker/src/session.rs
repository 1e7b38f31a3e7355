//! One connection's worth of work: declare the topology, consume the worker queue, run tasks,
//! publish heartbeats; and the loop that starts a new session after a lost connection, or
//! drains gracefully on shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_common::event_batch::EventSender;
use warren_common::reclaim::{WORKER_PATIENCE, reclaim};
use warren_common::{BrokerError, Pool, WorkerState, confirmed_channel};

use crate::{Worker, attempt, heartbeat};

/// How a session ended.
enum Ended {
    /// Shutdown was asked for and the drain is complete.
    Drained,
    /// The connection or a channel failed; start a new session.
    Lost(BrokerError),
}

/// Runs sessions until shutdown.
pub(crate) async fn run_sessions(worker: Arc<Worker>, pool: Pool, shutdown: CancellationToken) {
    let mut backoff = pool.reconnect_backoff();
    loop {
        let Some(connection) = pool.get_or_wait(&shutdown).await else {
            info!("stopped before reaching the broker");
            return;
        };
        worker.health.set_connected(true);
        let ended = session(&worker, &connection, &shutdown).await;
        worker.health.set_connected(false);
        match ended {
            Ok(Ended::Drained) => {
                let _ = connection.close(200, "worker stopped".into()).await;
                info!("worker stopped");
                return;
            }
            Ok(Ended::Lost(err)) | Err(err) => {
                warn!(cause = %err, "broker session lost; reconnecting");
                // Close rather than return it to the pool: channels that survived could still
                // hold deliveries.
                let _ = connection.close(200, "session lost".into()).await;
                if shutdown.is_cancelled() {
                    // Nothing is held any more: the broker requeued what this session had.
                    return;
                }
                tokio::time::sleep(backoff.next_pause()).await;
            }
        }
    }
}

async fn session(
    worker: &Arc<Worker>,
    connection: &lapin::Connection,
    shutdown: &CancellationToken,
) -> Result<Ended, BrokerError> {
    let status = &worker.status;
    let consume_channel = connection.create_channel().await?;
    worker
        .topology
        .declare_for_worker(connection, &status.id)
        .await?;
    // Its slots plus the most the dispatcher queues ahead for it: what waits in its queue is
    // delivered, so the broker hands over tasks in batches rather than one per ack (measured:
    // with a prefetch of 16 the broker spends twice the CPU per message of 256).
    let prefetch = status
        .concurrency
        .saturating_mul(1 + warren_common::config::LOOKAHEAD_SLOTS);
    let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
    consume_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publisher = confirmed_channel(connection).await?;
    let events = EventSender::start(publisher.clone(), worker.topology.events_exchange());
    let mut consumer = consume_channel
        .basic_consume(
            status.queue.as_str().into(),
            status.id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    status.set_state(WorkerState::Online);
    heartbeat::publish(&publisher, &worker.topology, status, true).await?;
    info!(worker = %status.id, queue = %status.queue, "consuming");

    // Cancelled when the session ends, to stop the heartbeat loop.
    let session_over = CancellationToken::new();
    // Cancelled when running tasks must be handed back (grace expired, or connection lost).
    let hand_back = CancellationToken::new();
    // Cancelled when tasks still waiting for a slot must be handed back (draining).
    let not_started = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut line = attempt::Line::default();
    tokio::spawn(heartbeat::run(
        publisher.clone(),
        worker.topology.clone(),
        status.clone(),
        Duration::from_millis(worker.config.worker.heartbeat_ms),
        session_over.clone(),
    ));
    let _stop_heartbeats = session_over.clone().drop_guard();
    // Renews the deliveries of the tasks it holds, before the broker's consumer_timeout.
    {
        let worker = worker.clone();
        let (publisher, over) = (publisher.clone(), session_over.clone());
        tokio::spawn(async move {
            let status = &worker.status;
            let every = worker.config.amqp.renew_after();
            worker
                .holdings
                .keep(
                    publisher,
                    status.queue.clone(),
                    status.id.clone(),
                    every,
                    over,
                )
                .await;
        });
    }

    let lost = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break None,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    // A renewed copy of a task it runs holds that task from now on.
                    let Some(delivery) = worker.holdings.adopt(&status.id, delivery).await else {
                        continue;
                    };
                    tasks.spawn(attempt::execute(
                        worker.clone(),
                        publisher.clone(),
                        events.clone(),
                        delivery,
                        line.next(),
                        not_started.clone(),
                        hand_back.clone(),
                    ));
                }
                Some(Err(err)) => break Some(BrokerError::from(err)),
                None => break Some(BrokerError::Pool("the worker queue consumer was cancelled".into())),
            },
        }
    };
    if let Some(err) = lost {
        hand_back.cancel();
        tasks.close();
        tasks.wait().await;
        return Ok(Ended::Lost(err));
    }

    // Graceful drain: say we take nothing new, stop the consumer, hand back whatever arrived
    // after that, let running tasks finish within the grace period.
    info!(running = tasks.len(), "draining");
    status.set_state(WorkerState::Draining);
    heartbeat::publish(&publisher, &worker.topology, status, false).await?;
    consume_channel
        .basic_cancel(status.id.as_str().into(), BasicCancelOptions::default())
        .await?;
    not_started.cancel();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        // A renewed copy of a task still running holds it, as before the drain.
        let Some(delivery) = worker.holdings.adopt(&status.id, delivery).await else {
            continue;
        };
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }
    tasks.close();
    let grace = Duration::from_millis(worker.config.worker.grace_ms);
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            running = tasks.len(),
            "grace period over; handing running tasks back"
        );
        hand_back.cancel();
        tasks.wait().await;
    }
    // Tasks handed back, and any that arrived after the dispatcher last routed here, go back
    // to their priority queues; the queue itself goes away with the worker. If this fails or
    // gives up, no goodbye is said, and the dispatcher reclaims the queue when the heartbeats
    // stop.
    let moved = reclaim(
        connection,
        &worker.topology,
        &status.queue,
        WORKER_PATIENCE,
        &CancellationToken::new(),
        None,
        &|properties| worker.holdings.is_spare(&status.id, properties),
    )
    .await?;
    session_over.cancel();
    match moved {
        Some(0) => {}
        Some(moved) => info!(moved, "handed tasks back to the priority queues"),
        None => {
            warn!(
                "the broker still counts a consumer on this worker's queue; leaving the queue to the dispatcher"
            );
            let _ = publisher.close(200, "worker stopped".into()).await;
            let _ = consume_channel.close(200, "worker stopped".into()).await;
            return Ok(Ended::Drained);
        }
    }
    status.set_state(WorkerState::Offline);
    heartbeat::publish(&publisher, &worker.topology, status, false).await?;
    // Close channels before the connection: lapin closes dropped channels in the background,
    // which races with the connection close and logs spurious errors.
    let _ = publisher.close(200, "worker stopped".into()).await;
    let _ = consume_channel.close(200, "worker stopped".into()).await;
    Ok(Ended::Drained)
}
