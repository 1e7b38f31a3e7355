//! Every quorum queue warren declares has an explicit delivery limit, so that no RabbitMQ
//! default decides what happens to a message handed out again and again (RabbitMQ 4 drops it
//! after 20 deliveries unless the queue dead-letters; 3.x has no limit):
//! - the queues that carry tasks (intake, priority levels, worker queues) dead-letter a message
//!   past `DELIVERY_LIMIT` into `<prefix>.dead`, where `warren dead list` shows why;
//! - the dead queue is listed by handing its messages back, which never wears them out;
//! - queues declared by a warren from before the limit are used as they are.
//!
//! Run against RabbitMQ 3.10 and, by `scripts/test`, 4.0.5.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use warren_common::Topology;
use warren_common::topology::DELIVERY_LIMIT;
use warren_tests::{Process, TestEnv, unique_prefix, wait_for};

async fn put(env: &TestEnv, queue: &str, id: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&json!({"id": id, "kind": "echo", "payload": {}}))?;
    env.channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(())
}

/// Takes the one message of `queue` and hands it back, again and again, until it is gone;
/// returns how many times it was handed out.
async fn hand_back_until_gone(env: &TestEnv, queue: &str) -> anyhow::Result<u32> {
    let channel = env.connection.create_channel().await?;
    let mut deliveries = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?;
        match message {
            Some(message) => {
                deliveries += 1;
                let back = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                message.delivery.nack(back).await?;
            }
            // Gone, or on its way back to the queue: only the queue's depth tells.
            None if env.depth(queue).await? == 0 && deliveries > DELIVERY_LIMIT as u32 => break,
            None => {}
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline && deliveries <= 100,
            "{queue}: still there after {deliveries} deliveries"
        );
    }
    let _ = channel.close(200, "".into()).await;
    Ok(deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_handed_out_past_the_limit_is_dead_with_the_reason() -> anyhow::Result<()> {
    let env = TestEnv::new("limit").await?;
    env.topology
        .declare_worker_queue(&env.connection, "w1")
        .await?;
    let mut queues = vec![env.topology.intake_queue()];
    queues.extend((0..env.topology.levels.len()).map(|l| env.topology.level_queue(l)));
    queues.push(env.topology.worker_queue("w1"));
    for (n, queue) in queues.iter().enumerate() {
        let id = format!("limit-{n}");
        put(&env, queue, &id).await?;
        let deliveries = hand_back_until_gone(&env, queue).await?;
        // Handed out once, then once more per return up to the limit.
        assert_eq!(deliveries, DELIVERY_LIMIT as u32 + 1, "{queue}");
    }
    let dead = env.topology.dead_queue();
    wait_for(
        "every task in the dead queue",
        Duration::from_secs(10),
        || async { env.depth(&dead).await.unwrap_or(0) as usize == queues.len() },
    )
    .await?;
    let (code, listing) = Process::output(&env, "warren", &["dead", "list"]).await?;
    assert_eq!(code, 0, "{listing}");
    for (n, queue) in queues.iter().enumerate() {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("limit-{n} ")))
            .unwrap_or_else(|| panic!("limit-{n} not listed:\n{listing}"));
        assert!(
            line.contains(&format!(
                "returned to {queue} more often than its delivery limit ({DELIVERY_LIMIT})"
            )),
            "{line}"
        );
    }
    // Requeued, they start over: the broker's dead-lettering record is not carried along.
    let (code, out) = Process::output(&env, "warren", &["dead", "requeue", "limit-0"]).await?;
    assert_eq!(code, 0, "{out}");
    let intake = env.topology.intake_queue();
    let message = env
        .channel
        .basic_get(intake.as_str().into(), BasicGetOptions::default())
        .await?
        .expect("requeued into intake");
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(
        !headers.inner().keys().any(|k| k.as_str().contains("death")),
        "{headers:?}"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_the_dead_never_wears_them_out() -> anyhow::Result<()> {
    let env = TestEnv::new("limit-list").await?;
    let dead = env.topology.dead_queue();
    put(&env, &dead, "listed-often").await?;
    // More listings than RabbitMQ 4's default limit of 20 returns.
    for listing in 0..DELIVERY_LIMIT + 5 {
        let (code, out) = Process::output(&env, "warren", &["dead", "list"]).await?;
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("listed-often"),
            "listing {listing} lost it:\n{out}"
        );
    }
    assert_eq!(env.depth(&dead).await?, 1);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_from_before_the_limit_are_used_as_they_are() -> anyhow::Result<()> {
    let env = TestEnv::new("limit-legacy").await?;
    let old = Topology::new(unique_prefix("legacy"));
    // As warren declared its queues before delivery limits: the queue type only.
    let quorum = || {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut queues = old.task_queues();
    queues.push(old.worker_queue("w1"));
    for queue in &queues {
        env.channel
            .queue_declare(queue.as_str().into(), durable, quorum())
            .await?;
    }
    let mut leader = quorum();
    leader.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    env.channel
        .queue_declare(old.leader_queue().as_str().into(), durable, leader)
        .await?;
    old.declare(&env.connection).await?;
    old.declare_for_worker(&env.connection, "w1").await?;

    // A queue that is not a quorum queue at all is still an error.
    let classic = Topology::new(unique_prefix("classic"));
    env.channel
        .queue_declare(
            classic.intake_queue().as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    let refused = classic.declare(&env.connection).await;
    assert!(refused.is_err(), "a classic queue was accepted");

    let channel = env.connection.create_channel().await?;
    queues.push(old.leader_queue());
    queues.push(classic.intake_queue());
    queues.extend(classic.shared_queues());
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        old.submit_exchange(),
        old.events_exchange(),
        classic.submit_exchange(),
        classic.events_exchange(),
    ] {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await?;
    }
    env.cleanup().await
}
