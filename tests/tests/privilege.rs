//! Least privilege, on the local 3-node cluster loaded with deploy/rabbitmq/definitions.json
//! (the users, permissions and policies of the compose cluster): the dispatcher, the worker,
//! a submitter and a monitor each log in as their own user; the system works, and each user
//! is refused what is not its job.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use warren_common::publish::{inspect_queue, private_consumer};
use warren_tests::{CLUSTER_LOCK, Cluster, Handlers, TestEnv, wait_for};

/// The cluster's node URLs for `user`, whose password in the definitions is its name.
fn urls_for(cluster: &Cluster, user: &str) -> Vec<String> {
    cluster
        .urls()
        .iter()
        .map(|url| url.replace("warren:warren@", &format!("{user}:{user}@")))
        .collect()
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting as {}", warren_common::redact(url)))
}

/// Whether `result` failed because the broker refused access (AMQP 403).
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Err(err) => assert!(
            err.to_string().contains("ACCESS_REFUSED")
                || format!("{err:?}").contains("ACCESSREFUSED"),
            "{what}: failed, but not for lack of rights: {err}"
        ),
        Ok(value) => panic!("{what}: allowed ({value:?}), should be refused"),
    }
}

/// Publishes with confirms on a fresh channel of `connection`; `Ok` if the broker took it.
async fn publish(
    connection: &Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    // A refused publish closes the channel asynchronously; a round trip makes it visible.
    channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

async fn basic_get(channel: &Channel, queue: &str) -> Result<bool, lapin::Error> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map(|got| got.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_runs_with_its_own_least_privilege_user() -> anyhow::Result<()> {
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let cluster = Cluster::up()?;
    let admin_urls = cluster.urls();
    // The definitions grant rights on names under the default prefix, `warren`.
    let mut env = TestEnv::on("privilege", admin_urls.clone(), &admin_urls[1]).await?;
    env.config.topology.prefix = "warren".into();
    env.topology = env.config.topology();
    let topology = env.topology.clone();

    let mut dispatcher_config = env.config.clone();
    dispatcher_config.amqp.urls = urls_for(&cluster, "warren-dispatcher");
    env.config = dispatcher_config;
    let dispatcher = env.dispatcher();
    let mut worker_config = env.config.clone();
    worker_config.amqp.urls = urls_for(&cluster, "warren-worker");
    worker_config.worker.id = Some("lp".into());
    let worker = env.worker_with(worker_config, Handlers::new());

    // The dispatcher, as itself, declares the topology (binding the intake queue to the
    // submit exchange before it consumes the intake queue).
    let intake = topology.intake_queue();
    wait_for(
        "the dispatcher to consume the intake",
        Duration::from_secs(60),
        || async {
            let Ok(channel) = env.connection.create_channel().await else {
                return false;
            };
            let consumers = inspect_queue(&channel, &intake)
                .await
                .map(|q| q.consumer_count());
            let _ = channel.close(200, "probed".into()).await;
            consumers.is_ok_and(|n| n > 0)
        },
    )
    .await?;

    // The monitor watches events.
    let monitor = connect(&urls_for(&cluster, "warren-monitor")[0]).await?;
    let events = topology.events_exchange();
    let (_, mut watched) = private_consumer(
        &monitor.create_channel().await?,
        &[(events.as_str(), "task.#")],
    )
    .await
    .context("the monitor cannot watch events")?;

    // The submitter submits and gets its result, as itself.
    let submitter = connect(&urls_for(&cluster, "warren-submitter")[0]).await?;
    let replies_channel = submitter.create_channel().await?;
    let (reply_queue, mut replies) = private_consumer(&replies_channel, &[]).await?;
    let task = json!({"id": "lp-1", "kind": "echo", "payload": {"least": "privilege"}});
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_reply_to(reply_queue.as_str().into())
        .with_user_id("warren-submitter".into());
    let submit = topology.submit_exchange();
    let body = task.to_string();
    publish(
        &submitter,
        &submit,
        "echo",
        body.as_bytes(),
        properties.clone(),
    )
    .await
    .context("the submitter cannot submit")?;
    let reply = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .context("no result within 60 s")?
        .context("reply consumer ended")??;
    let result: Value = serde_json::from_slice(&reply.data)?;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["result"], json!({"least": "privilege"}));
    assert_eq!(result["worker"], "lp");

    // Task events name the submitter that RabbitMQ vouched for.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(30), watched.next())
            .await
            .context("events stopped")?
            .context("event consumer ended")??;
        for event in warren_common::event_batch::decode_events(&event.data) {
            let submitter = event.submitter.as_deref();
            assert_eq!(submitter, Some("warren-submitter"), "{event:?}");
            seen.push(event.status.as_str().to_owned());
        }
    }
    // Published by three processes on their own channels: their order is not guaranteed.
    seen.sort();
    assert_eq!(seen, ["accepted", "dispatched", "started", "succeeded"]);

    // What the submitter may not do: claim to be someone else, read or write warren's queues.
    let spoofed = properties.clone().with_user_id("warren".into());
    let err = publish(&submitter, &submit, "echo", body.as_bytes(), spoofed)
        .await
        .expect_err("a forged user_id must be refused");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    let normal = topology.level_queue(1);
    let channel = submitter.create_channel().await?;
    refused(
        "submitter reads a priority queue",
        basic_get(&channel, &normal).await,
    );
    let channel = submitter.create_channel().await?;
    refused(
        "submitter consumes a priority queue",
        channel
            .basic_consume(
                normal.as_str().into(),
                "snoop".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    refused(
        "submitter writes a priority queue directly",
        publish(
            &submitter,
            "",
            &normal,
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await,
    );

    // The monitor may watch, not take; the worker may not touch the shared queues.
    let channel = monitor.create_channel().await?;
    refused(
        "monitor reads a priority queue",
        basic_get(&channel, &normal).await,
    );
    let worker_connection = connect(&urls_for(&cluster, "warren-worker")[0]).await?;
    let channel = worker_connection.create_channel().await?;
    refused(
        "worker deletes a priority queue",
        channel
            .queue_delete(normal.as_str().into(), QueueDeleteOptions::default())
            .await,
    );
    let channel = worker_connection.create_channel().await?;
    refused(
        "worker reads the dead queue",
        basic_get(&channel, &topology.dead_queue()).await,
    );

    for connection in [submitter, monitor, worker_connection] {
        let _ = connection.close(200, "test over".into()).await;
    }
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}
