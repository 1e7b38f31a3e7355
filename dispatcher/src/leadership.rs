//! Leadership: any number of dispatchers run, exactly one routes. The mechanism is a baton — a
//! message in the single-active-consumer quorum queue `<prefix>.leader`. Every dispatcher
//! consumes that queue; RabbitMQ delivers only to the one active consumer, so the dispatcher
//! that receives the baton is the leader and holds it unacked. When the leader dies or loses
//! its connection, the broker requeues the baton and hands it to the next consumer within
//! moments; Raft replication of the quorum queue, plus `pause_minority`, keeps two sides of a
//! partition from both handing it out. The leader routes only over the connection that holds
//! the baton, so a leader that lost it can no longer route (fencing by connection).
//!
//! Why not an exclusive queue as a lock: standbys would learn of a free lock only by failing
//! to declare it again and again (each failure a channel error). Why a baton rather than bare
//! single-active-consumer: the broker does not tell a consumer it became active; the arriving
//! baton does.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tracing::{debug, info};
use warren_common::message::json_properties;
use warren_common::publish::inspect_queue;
use warren_common::{BrokerError, Topology, confirmed_channel, publish_confirmed};

use crate::feeds::Input;

/// Joins the election: makes sure a baton exists, consumes the leader queue, and sends
/// `Input::Leader` into `inputs` when this dispatcher receives the baton. Returns the channel
/// (closing it, or losing the connection, gives the baton up).
pub(crate) async fn campaign(
    connection: &Connection,
    topology: &Topology,
    instance: &str,
    inputs: mpsc::Sender<Input>,
    renew_after: Duration,
) -> Result<Channel, BrokerError> {
    let channel = confirmed_channel(connection).await?;
    channel.basic_qos(8, BasicQosOptions::default()).await?;
    let queue = topology.leader_queue();
    let state = inspect_queue(&channel, &queue).await?;
    // A leader holds its baton unacked, so "none ready" may mean "held"; an extra baton is
    // harmless: only the active consumer ever receives batons, and it discards extras.
    if state.message_count() == 0 {
        let baton = format!("{{\"baton\":\"{instance}\"}}");
        publish_confirmed(
            &channel,
            "",
            &queue,
            true,
            baton.as_bytes(),
            json_properties(true),
        )
        .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("warren-dispatcher-{instance}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let renewal = Renewal {
        channel: channel.clone(),
        queue,
        body: format!("{{\"baton\":\"{instance}\"}}").into_bytes(),
        every: renew_after,
    };
    tokio::spawn(hold_baton(consumer, inputs, renewal));
    Ok(channel)
}

/// How the leader renews its baton before the broker's consumer_timeout: a fresh baton is
/// published (and, the leader being the active consumer, delivered to it), then the held one is
/// acked. Not a requeue, which RabbitMQ 4 counts against the queue's delivery limit.
struct Renewal {
    /// The leader queue's channel (confirm mode).
    channel: Channel,
    /// The leader queue.
    queue: String,
    /// A baton's body.
    body: Vec<u8>,
    /// Renew after this long (`amqp.consumer_timeout_ms / 2`).
    every: Duration,
}

async fn hold_baton(mut consumer: lapin::Consumer, inputs: mpsc::Sender<Input>, renewal: Renewal) {
    let mut baton: Option<Delivery> = None;
    let mut leading = false;
    let mut refresh = tokio::time::interval(renewal.every);
    refresh.tick().await;
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) if baton.is_none() => {
                    baton = Some(delivery);
                    if !leading {
                        leading = true;
                        info!("received the leader baton: this dispatcher leads");
                        if inputs.send(Input::Leader).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(extra)) => {
                    debug!("discarding an extra leader baton");
                    let _ = extra.ack(BasicAckOptions::default()).await;
                }
                Some(Err(err)) => {
                    let _ = inputs.send(Input::Failed(err.into())).await;
                    return;
                }
                None => {
                    if leading {
                        let lost = BrokerError::Pool("the leader queue consumer was cancelled".into());
                        let _ = inputs.send(Input::Failed(lost)).await;
                    }
                    return;
                }
            },
            _ = refresh.tick() => {
                if baton.is_some() {
                    let fresh = publish_confirmed(
                        &renewal.channel,
                        "",
                        &renewal.queue,
                        true,
                        &renewal.body,
                        json_properties(true),
                    )
                    .await;
                    if fresh.is_ok() && let Some(held) = baton.take() {
                        // The fresh baton comes straight back to us, the active consumer.
                        let _ = held.ack(BasicAckOptions::default()).await;
                    }
                }
            }
        }
    }
}
