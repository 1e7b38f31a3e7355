//! warren's dispatcher: validates submissions into per-priority quorum queues (intake), holds a
//! bounded window of them, and routes each to a worker with a free slot (router), reclaiming the
//! queues of workers that leave or die. Any number may run: all validate and follow the
//! workers' heartbeats, and the one holding the leader baton routes (leadership).
#![warn(missing_docs)]

pub mod balancer;
pub mod dedupe;
mod feeds;
mod intake;
mod leadership;
pub mod levels;
mod metrics;
mod notify;
pub mod policy;
pub mod registry;
mod router;
pub mod scheduler;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_common::{BrokerError, Config, Pool, Topology, confirmed_channel};

use registry::Registry;
use scheduler::Scheduler;

/// Why a dispatcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// The broker connection could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What every part of one dispatcher process shares.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    /// Settings, validated.
    pub(crate) config: Config,
    /// Names on the broker.
    pub(crate) topology: Topology,
    /// This process's id, naming its private events queue.
    pub(crate) instance: String,
    /// What `/metrics` exports.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// What `/healthz` reports.
    pub(crate) health: Arc<warren_common::metrics::Health>,
    /// Set while this dispatcher routes (and `dispatcher.fast_path` is on): its intake then
    /// hands valid submissions to the router instead of filing them.
    pub(crate) fast_path: std::sync::atomic::AtomicBool,
    /// Whether some worker had a free slot after the router's last dispatch round: intake
    /// hands a submission to the router only then, and files it itself otherwise (on its own
    /// connection, so a busy router does not slow intake down).
    pub(crate) room: std::sync::atomic::AtomicBool,
}

/// Runs a dispatcher until `shutdown` fires. Reconnects (to the next node of `amqp.urls`)
/// whenever the broker connection is lost; on shutdown, stops consuming, lets pending confirms
/// settle, and closes, so every task it held goes back to its queue.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DispatcherError> {
    let instance = uuid_short();
    let pool = Pool::new(&config.amqp, &format!("warren-dispatcher {instance}"))?;
    let timeout = Duration::from_millis(config.dispatcher.heartbeat_timeout_ms);
    let (metrics, registry) = metrics::Metrics::new();
    let health = Arc::new(warren_common::metrics::Health::default());
    let leader = metrics.clone();
    warren_common::metrics::start(
        &config.dispatcher.metrics_listen,
        registry,
        health.clone(),
        move || {
            if leader.leader.get() == 1 {
                "leader"
            } else {
                "standby"
            }
        },
        shutdown.clone(),
    )
    .await;
    let dispatcher = Arc::new(Dispatcher {
        topology: config.topology(),
        config,
        instance,
        metrics,
        health,
        fast_path: std::sync::atomic::AtomicBool::new(false),
        room: std::sync::atomic::AtomicBool::new(false),
    });
    let config = &dispatcher.config.dispatcher;
    let mut registry =
        Registry::new(timeout).with_lookahead(Duration::from_millis(config.lookahead_ms));
    let mut dedupe = dedupe::Dedupe::new(
        Duration::from_millis(config.dedupe_window_ms),
        config.dedupe_max,
    );
    let mut backoff = Duration::from_millis(100);
    info!(instance = %dispatcher.instance, prefix = %dispatcher.topology.prefix, "dispatcher starting");
    while let Some(connection) = pool.get_or_wait(&shutdown).await {
        dispatcher.health.set_connected(true);
        let ended = session(
            &dispatcher,
            &connection,
            &pool,
            &mut registry,
            &mut dedupe,
            &shutdown,
        )
        .await;
        dispatcher.health.set_connected(false);
        dispatcher.metrics.leader.set(0);
        dispatcher
            .fast_path
            .store(false, std::sync::atomic::Ordering::SeqCst);
        match ended {
            Ok(()) => {
                let _ = connection.close(200, "dispatcher stopped".into()).await;
                info!("dispatcher stopped");
                return Ok(());
            }
            Err(err) => {
                warn!(cause = %err, "broker session lost; reconnecting");
                // Close rather than return it to the pool: a live connection could still hold
                // deliveries on channels that survived.
                let _ = connection.close(200, "session lost".into()).await;
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(pool.max_backoff());
            }
        }
    }
    Ok(())
}

/// One connection's worth of dispatching.
async fn session(
    dispatcher: &Arc<Dispatcher>,
    connection: &lapin::Connection,
    pool: &Pool,
    registry: &mut Registry,
    dedupe: &mut dedupe::Dedupe,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let topology = &dispatcher.topology;
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    let _ = setup.close(200, "declared".into()).await;
    // Stops intake, routing and the queue-depth poller: on shutdown, or when a part fails.
    let stop = shutdown.child_token();
    let poller = metrics::poll_depths(
        dispatcher.metrics.clone(),
        connection.create_channel().await?,
        topology,
        stop.clone(),
    );

    let events_channel = connection.create_channel().await?;
    let notifier = notify::Notifier::start(events_channel.clone(), topology.events_exchange());
    let (inputs, receiver) = mpsc::channel(4096);
    let mut channels = vec![events_channel];
    channels.push(feeds::events(connection, topology, &dispatcher.instance, &inputs).await?);
    channels.push(
        leadership::campaign(connection, topology, &dispatcher.instance, inputs.clone()).await?,
    );

    // Intake gets its own connection, so validation and routing do not share one I/O loop.
    let intake_connection = Arc::new(pool.get().await?);
    let intake = {
        let (dispatcher, notifier, stop) = (dispatcher.clone(), notifier.clone(), stop.clone());
        let inputs = inputs.clone();
        let connection = intake_connection.clone();
        tokio::spawn(async move {
            let result = intake::run(dispatcher, &connection, notifier, inputs.clone(), stop).await;
            if let Err(err) = result {
                let _ = inputs.send(feeds::Input::Failed(err)).await;
            }
        })
    };
    let publisher = confirmed_channel(connection).await?;
    channels.push(publisher.clone());
    let mut router = router::Router {
        dispatcher: dispatcher.clone(),
        registry,
        dedupe,
        scheduler: Scheduler::new(
            topology.levels.len(),
            &dispatcher.config.dispatcher,
            rand::random(),
        ),
        publisher,
        notifier,
        inputs,
        settling: TaskTracker::new(),
        pool: pool.clone(),
        last_report: std::time::Instant::now(),
        connection,
        leading_since: None,
        levels_channel: None,
        reclaiming: std::collections::HashMap::new(),
    };
    info!("validating submissions; waiting for the leader baton to route");
    let routed = router.run(receiver, &stop).await;
    stop.cancel();
    dispatcher
        .fast_path
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = poller.await;
    router.settling.close();
    router.settling.wait().await;
    let _ = intake.await;
    let _ = intake_connection.close(200, "session over".into()).await;
    // Close channels before the connection: lapin closes dropped channels in the background,
    // which races with the connection close and logs spurious errors.
    channels.extend(router.levels_channel.take());
    drop(router);
    for channel in channels {
        let _ = channel.close(200, "dispatcher stopping".into()).await;
    }
    routed
}

fn uuid_short() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
