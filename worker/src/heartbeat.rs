//! Heartbeats: the worker's status published on the events exchange every `worker.heartbeat_ms`,
//! which is how the dispatcher learns of the worker, its capacity and the tasks it holds.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicPublishOptions;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_common::message::json_properties;
use warren_common::{BrokerError, Topology, publish::check_confirmation};

use crate::status::WorkerStatus;

/// Publishes one heartbeat now and waits for the broker to take it.
pub(crate) async fn publish(
    channel: &Channel,
    topology: &Topology,
    status: &WorkerStatus,
    first: bool,
) -> Result<(), BrokerError> {
    let heartbeat = status.heartbeat();
    let key = heartbeat.state.routing_key(first);
    let body = serde_json::to_vec(&heartbeat).expect("heartbeats serialize");
    let confirm = channel
        .basic_publish(
            topology.events_exchange().as_str().into(),
            key.into(),
            BasicPublishOptions::default(),
            &body,
            json_properties(false),
        )
        .await?;
    check_confirmation(confirm.await?, key)
}

/// Publishes a heartbeat every `period` until `stop` fires or the channel fails.
pub(crate) async fn run(
    channel: Channel,
    topology: Topology,
    status: Arc<WorkerStatus>,
    period: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) = publish(&channel, &topology, &status, false).await {
            warn!(cause = %err, "heartbeat not published");
            return;
        }
    }
}
