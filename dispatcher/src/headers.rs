//! What a submission's properties become on warren's queues. Everything in the `x-warren-*`
//! header namespace is warren's own: a client's submission (one that came through the submit
//! exchange) has every such header removed before anything reads it, so a submitter cannot set
//! a task's attempts, history, backoff, submitter or any bookkeeping warren adds later; the
//! submitter becomes the `user_id` RabbitMQ verified, or nothing. warren's own re-entries —
//! retries, `warren dead requeue` — are published straight to the intake queue (the default
//! exchange, which the least-privilege submitter may not write) and keep theirs.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use warren_common::message::{with_header, without_warren_headers};
use warren_common::{HEADER_REDELIVERED, HEADER_SUBMITTED, HEADER_SUBMITTER};

/// How a valid submission reached intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Through the submit exchange (a client's), not straight into the intake queue (warren's).
    pub(crate) from_client: bool,
    /// The broker redelivered it: a dispatcher that died may already have filed it.
    pub(crate) redelivered: bool,
    /// The time of acceptance, Unix milliseconds.
    pub(crate) now_ms: i64,
}

impl Arrival {
    /// The properties a valid task with id `id` is filed with, and the names of the headers
    /// removed from a client's submission.
    pub(crate) fn forward(
        &self,
        properties: &BasicProperties,
        id: &str,
    ) -> (BasicProperties, Vec<String>) {
        let (properties, removed) = if self.from_client {
            without_warren_headers(properties.clone())
        } else {
            (properties.clone(), Vec::new())
        };
        let mut forwarded = forwardable(&properties)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into());
        if self.from_client {
            forwarded = with_header(
                forwarded,
                HEADER_SUBMITTED,
                AMQPValue::LongLongInt(self.now_ms),
            );
        }
        if self.redelivered {
            forwarded = with_header(forwarded, HEADER_REDELIVERED, AMQPValue::Boolean(true));
        }
        (forwarded, removed)
    }
}

/// The submission's properties, safe to republish from the dispatcher's connection: RabbitMQ
/// refuses a `user_id` that is not the publishing connection's user, so it moves to a header.
pub(crate) fn forwardable(properties: &BasicProperties) -> BasicProperties {
    let mut forwarded = properties.clone();
    if let Some(user) = properties.user_id() {
        forwarded = with_header(
            forwarded,
            HEADER_SUBMITTER,
            AMQPValue::LongString(user.as_str().into()),
        );
        // BasicProperties has no "without": rebuild it without the user_id.
        forwarded = without_user_id(forwarded);
    }
    forwarded
}

fn without_user_id(p: BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.expiration() {
        out = out.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;
