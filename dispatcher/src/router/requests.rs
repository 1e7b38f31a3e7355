//! Questions for the routing dispatcher, from `<prefix>.requests` (README, *Waiting tasks*).
//! Only the dispatcher that routes consumes that queue, because only it holds the tasks: a
//! request is a JSON object `{"op": "waiting", "limit": 50, "ids": [...]}` with `reply_to`
//! (and `correlation_id`), answered with [`warren_core::Waiting`] plus `dispatcher` (this
//! instance) — or `{"error": ...}` for a request it does not understand. Why the broker and not
//! the metrics port: the CLI already has the broker's address and credentials, needs no route
//! to a dispatcher's host, and need not know which dispatcher leads.

use std::time::Instant;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use serde::Deserialize;
use serde_json::json;
use tracing::debug;
use warren_common::publish::publish_reply;

use super::Router;

/// The most tasks one answer lists.
pub(crate) const MAX_LISTED: usize = 1_000;

/// A question.
#[derive(Debug, Deserialize)]
struct Request {
    /// What is asked: `waiting`.
    op: String,
    /// At most this many tasks in the answer.
    #[serde(default = "default_limit")]
    limit: usize,
    /// Only these tasks (their counts still cover every held task).
    #[serde(default)]
    ids: Option<Vec<String>>,
}

fn default_limit() -> usize {
    50
}

impl Router<'_> {
    /// Answers a request to its `reply_to`, then acks it.
    pub(super) fn answer_request(&self, delivery: Delivery) {
        let answer = match serde_json::from_slice::<Request>(&delivery.data) {
            Ok(request) if request.op == "waiting" => {
                let waiting = self.core.waiting(
                    Instant::now(),
                    request.limit.min(MAX_LISTED),
                    request.ids.as_deref(),
                );
                let mut answer = serde_json::to_value(waiting).expect("reports serialize");
                answer["dispatcher"] = json!(self.dispatcher.instance);
                answer
            }
            Ok(request) => {
                json!({"error": format!("unknown op '{}': this dispatcher answers 'waiting'", request.op)})
            }
            Err(err) => json!({"error": format!("not a request: {err}")}),
        };
        let publisher = self.publisher.clone();
        self.settling.spawn(async move {
            let body = serde_json::to_vec(&answer).expect("answers serialize");
            let sent = publish_reply(&publisher, &delivery.properties, &body, false, None).await;
            if let Err(err) = sent {
                debug!(cause = %err, "could not answer a request");
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        });
    }
}
