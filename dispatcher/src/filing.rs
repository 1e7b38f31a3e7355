//! Filing: publishing a message to the queue that holds it next (a task to its priority level,
//! a bad submission to the rejected queue) and settling the delivery it came from only once the
//! broker confirmed the copy. The one way intake and the router file anything.

use lapin::message::Delivery;
use lapin::{BasicProperties, Channel, PublisherConfirm};
use tracing::warn;
use warren_common::BrokerError;
use warren_common::publish::{check_confirmation, publish_to_queue, settle};

/// A message published to its new home, awaiting the broker's confirms.
pub(crate) struct Filed {
    /// The confirm of the copy in its queue.
    confirm: PublisherConfirm,
    /// That queue, for messages.
    queue: String,
    /// The confirm of a result sent to `reply_to` alongside, if any.
    reply: Option<PublisherConfirm>,
}

/// Publishes `body` with `properties` to `queue` (mandatory, on a confirm-mode channel).
pub(crate) async fn file(
    publisher: &Channel,
    queue: String,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Filed, BrokerError> {
    let confirm = publish_to_queue(publisher, &queue, body, properties).await?;
    Ok(Filed {
        confirm,
        queue,
        reply: None,
    })
}

impl Filed {
    /// Also waits for `reply` (a result sent to the submitter) before settling.
    pub(crate) fn with_reply(self, reply: Option<PublisherConfirm>) -> Filed {
        Filed { reply, ..self }
    }

    /// Acks `delivery` once the new home confirmed the copy; otherwise hands it back to its
    /// queue to be tried again.
    pub(crate) async fn settle(self, delivery: Delivery) {
        let confirmed = match self.confirm.await {
            Ok(confirmation) => check_confirmation(confirmation, &self.queue),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = &confirmed {
            warn!(queue = %self.queue, cause = %err, "not confirmed; requeueing the delivery");
        }
        // Best effort, but awaited (lapin keeps every unawaited confirm): the filed message
        // itself is what must not be lost.
        if let Some(reply) = self.reply {
            let _ = reply.await;
        }
        settle(&delivery, confirmed.is_ok()).await;
    }
}

/// Files `body` to `queue` and settles `delivery` by the outcome, in one go (for a spawned task).
pub(crate) async fn file_and_settle(
    publisher: Channel,
    queue: String,
    body: Vec<u8>,
    properties: BasicProperties,
    delivery: Delivery,
) {
    match file(&publisher, queue, &body, properties).await {
        Ok(filed) => filed.settle(delivery).await,
        Err(err) => {
            warn!(cause = %err, "could not file; requeueing the delivery");
            settle(&delivery, false).await;
        }
    }
}
