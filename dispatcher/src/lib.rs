//! warren's dispatcher: validates submissions into per-priority quorum queues (intake), holds a
//! bounded window of them, and routes each to a worker with a free slot (router), reclaiming the
//! queues of workers that leave or die. Any number may run: all validate and follow the
//! workers' heartbeats, and the one holding the leader baton routes (leadership).
#![warn(missing_docs)]

mod fast_path;
mod feeds;
mod filing;
mod headers;
mod intake;
mod leadership;
mod metrics;
mod notify;
mod router;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_common::{BrokerError, Config, Pool, Topology, confirmed_channel};
use warren_core::Core;

use router::{Carried, Reclaimer};

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
    /// Whether intake hands valid submissions to the router (the router opens and closes it).
    pub(crate) fast_path: fast_path::FastPath,
}

/// Runs a dispatcher until `shutdown` fires. Reconnects (to the next node of `amqp.urls`)
/// whenever the broker connection is lost; on shutdown, stops consuming, lets pending confirms
/// settle, and closes, so every task it held goes back to its queue.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DispatcherError> {
    let instance = uuid_short();
    let pool = Pool::new(&config.amqp, &format!("warren-dispatcher {instance}"))?;
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
        fast_path: fast_path::FastPath::default(),
    });
    let levels = dispatcher.topology.levels.len();
    let settings = dispatcher.config.dispatcher.core_settings();
    let mut core: Core<Carried> = Core::new(levels, &settings, rand::random());
    let mut backoff = pool.reconnect_backoff();
    info!(instance = %dispatcher.instance, prefix = %dispatcher.topology.prefix, "dispatcher starting");
    while let Some(connection) = pool.get_or_wait(&shutdown).await {
        dispatcher.health.set_connected(true);
        let ended = session(&dispatcher, &connection, &pool, &mut core, &shutdown).await;
        // The broker requeues what this session held; reclaims under way stopped with it.
        core.session_ended();
        dispatcher.health.set_connected(false);
        dispatcher.metrics.leader.set(0);
        dispatcher.fast_path.close();
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
                if !warren_common::shutdown::pause(&shutdown, backoff.next_pause()).await {
                    return Ok(());
                }
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
    core: &mut Core<Carried>,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let topology = &dispatcher.topology;
    topology.declare(connection).await?;
    // Stops intake, routing and the queue-depth poller: on shutdown, or when a part fails.
    let stop = shutdown.child_token();
    let poller = metrics::poll_depths(
        dispatcher.metrics.clone(),
        connection.create_channel().await?,
        topology,
        stop.clone(),
    );

    let events_channel = warren_common::confirmed_channel(connection).await?;
    let notifier = notify::Notifier::start(events_channel.clone(), topology.events_exchange());
    let (inputs, receiver) = mpsc::channel(4096);
    let mut channels = vec![events_channel];
    channels.push(feeds::events(connection, topology, &dispatcher.instance, &inputs).await?);
    channels.push(
        leadership::campaign(
            connection,
            topology,
            &dispatcher.instance,
            inputs.clone(),
            dispatcher.config.amqp.renew_after(),
        )
        .await?,
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
    let reclaimer = Reclaimer {
        pool: pool.clone(),
        topology: topology.clone(),
        inputs: inputs.clone(),
        patience: Duration::from_millis(dispatcher.config.dispatcher.reclaim_patience_ms),
        retry: dispatcher.config.tasks.retry_policy(),
        underway: std::collections::HashMap::new(),
    };
    let mut router = router::Router {
        dispatcher: dispatcher.clone(),
        core,
        publisher,
        notifier,
        inputs,
        settling: TaskTracker::new(),
        reclaimer,
        last_report: std::time::Instant::now(),
        connection,
        leading_since: None,
        levels_channel: None,
    };
    info!("validating submissions; waiting for the leader baton to route");
    let routed = router.run(receiver, &stop).await;
    stop.cancel();
    dispatcher.fast_path.close();
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
