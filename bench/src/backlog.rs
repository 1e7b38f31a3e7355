//! `warren-bench backlog`: with only the dispatcher running, submit N tasks as fast as confirms
//! allow and let intake file them into the priority queues; then start the workers and drain
//! the backlog. The dispatcher's resident memory is sampled every 500 ms throughout (it must not
//! grow with the backlog), and every task id must complete: completions are counted from
//! `task.succeeded|failed|dead` events, so no per-task reply queue is needed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use lapin::{Connection, Consumer};
use serde::Serialize;
use warren_common::{Status, Topology};

use crate::Settings;
use crate::broker::{self, ConfirmWindow};
use crate::fleet::{Binaries, Fleet, FleetReport};
use crate::memory::{Memory, Sampler};
use crate::progress::Progress;
use crate::stats::Throughput;
use crate::task;

/// What the backlog run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BacklogFigures {
    /// Rates, completions and memory.
    #[serde(flatten)]
    pub(crate) observed: Observed,
    /// CPU and exit of the dispatcher and workers.
    pub(crate) fleet: FleetReport,
    /// Ready messages per queue when completions stopped coming, if they did.
    pub(crate) stalled_depths: Option<BTreeMap<String, u32>>,
    /// Where the processes' logs are.
    pub(crate) log_dir: String,
}

/// Rates, completions and memory of one backlog run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Observed {
    /// Tasks in the backlog.
    pub(crate) tasks: usize,
    /// Workers started for the drain.
    pub(crate) workers: usize,
    /// Tasks each worker runs at once.
    pub(crate) concurrency: u32,
    /// Submissions, first publish to last confirm.
    pub(crate) submitted: Throughput,
    /// Intake: first publish until the intake queue was empty.
    pub(crate) filed: Throughput,
    /// The drain: workers started until the last task completed.
    pub(crate) drained: Throughput,
    /// Tasks that never completed.
    pub(crate) missing: usize,
    /// Completion events beyond the first for a task.
    pub(crate) duplicates: u64,
    /// Tasks whose first completion was not `succeeded`.
    pub(crate) not_succeeded: u64,
    /// The dispatcher's memory (and the largest worker's).
    pub(crate) memory: Memory,
    /// Up to ten ids of tasks that never completed.
    pub(crate) missing_sample: Vec<String>,
}

/// Runs the backlog mode with `n` tasks.
pub(crate) async fn run(
    settings: &Settings,
    n: usize,
    binaries: &Binaries,
    progress: &Progress,
) -> Result<BacklogFigures> {
    let mut topology = Topology::new(broker::unique_prefix("backlog"));
    if settings.no_history {
        topology.history = None;
    }
    let url = &settings.amqp_url;
    let client = broker::connect(url, "warren-bench backlog submitter").await?;
    let watcher = broker::connect(url, "warren-bench backlog events").await?;
    topology.declare(&client).await?;
    let measured = match Fleet::start(binaries, url, &topology, &client).await {
        Ok(mut fleet) => {
            let observed = measure(
                settings,
                n,
                &topology,
                &mut fleet,
                [&client, &watcher],
                progress,
            )
            .await;
            let stalled_depths = match &observed {
                Ok(observed) if observed.missing > 0 => {
                    let queues = broker::warren_queues(&topology, &fleet.worker_ids);
                    Some(broker::depths(&client, &queues).await)
                }
                _ => None,
            };
            let worker_ids = fleet.worker_ids.clone();
            let log_dir = fleet.log_dir.display().to_string();
            let fleet = fleet.stop().await;
            let _ = broker::delete_topology(&client, &topology, &worker_ids).await;
            observed.map(|observed| BacklogFigures {
                observed,
                fleet,
                stalled_depths,
                log_dir,
            })
        }
        Err(err) => {
            let _ = broker::delete_topology(&client, &topology, &[]).await;
            Err(err)
        }
    };
    let _ = watcher.close(200, "backlog done".into()).await;
    let _ = client.close(200, "backlog done".into()).await;
    measured
}

async fn measure(
    settings: &Settings,
    n: usize,
    topology: &Topology,
    fleet: &mut Fleet,
    [client, watcher]: [&Connection; 2],
    progress: &Progress,
) -> Result<Observed> {
    let stall = settings.stall();
    let prefix = topology.prefix.clone();
    let events_channel = watcher.create_channel().await?;
    let events_queue = broker::private_queue(&events_channel).await?;
    let keys = ["task.succeeded", "task.failed", "task.dead"];
    broker::bind(
        &events_channel,
        &events_queue,
        &topology.events_exchange(),
        &keys,
    )
    .await?;
    let events = broker::consume(&events_channel, &events_queue, None).await?;

    let sampler = Sampler::start(fleet.dispatcher.pid);
    let submit_bar = progress.bar("backlog: submitted", n as u64);
    let start = Instant::now();
    let mut window = ConfirmWindow::open(client, settings.window, stall).await?;
    let exchange = topology.submit_exchange();
    for i in 0..n {
        let body = task::body(&prefix, i);
        window
            .publish(&exchange, "noop", &body, broker::json_properties())
            .await?;
        submit_bar.inc(1);
    }
    window.finish().await?;
    window.close().await;
    submit_bar.finish();
    let submitted = Throughput::new(n as u64, start.elapsed());

    let filed = wait_for_intake(client, topology, n, stall, progress).await?;
    let filed = Throughput::new(n as u64, filed - start);

    let drain_bar = progress.bar("backlog: completed", n as u64);
    let drain_start = Instant::now();
    let tracking = tokio::spawn(track(events, prefix.clone(), n, stall, drain_bar));
    let workers = fleet
        .start_workers(client, topology, settings.workers, settings.concurrency)
        .await;
    if let Err(err) = workers {
        tracking.abort();
        return Err(err);
    }
    sampler.draining(fleet.pids().1);
    let tracked = tracking.await??;
    let memory = sampler.stop().await;
    let _ = events_channel.close(200, "backlog done".into()).await;

    let last = tracked.last_new.unwrap_or(drain_start);
    let missing_sample = (0..n)
        .filter(|&i| tracked.seen[i] == 0)
        .take(10)
        .map(|i| task::id(&prefix, i))
        .collect();
    Ok(Observed {
        tasks: n,
        workers: settings.workers,
        concurrency: settings.concurrency,
        submitted,
        filed,
        drained: Throughput::new(tracked.distinct as u64, last - drain_start),
        missing: n - tracked.distinct,
        duplicates: tracked.duplicates,
        not_succeeded: tracked.not_succeeded,
        memory,
        missing_sample,
    })
}

/// Waits until the intake queue is empty (every submission filed on a priority level);
/// fails if its depth does not go down for `stall`.
async fn wait_for_intake(
    client: &Connection,
    topology: &Topology,
    n: usize,
    stall: Duration,
    progress: &Progress,
) -> Result<Instant> {
    let bar = progress.bar("backlog: filed", n as u64);
    let intake = topology.intake_queue();
    let (mut lowest, mut lowest_at) = (u32::MAX, Instant::now());
    loop {
        let (depth, _) = broker::queue_state(client, &intake).await?;
        bar.set_position(n.saturating_sub(depth as usize) as u64);
        if depth == 0 {
            bar.finish();
            return Ok(Instant::now());
        }
        if depth < lowest {
            (lowest, lowest_at) = (depth, Instant::now());
        } else if lowest_at.elapsed() > stall {
            bail!("intake stuck at {depth} ready submissions for {stall:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Completion events seen so far.
struct Tracked {
    /// Completion events per task index.
    seen: Vec<u8>,
    distinct: usize,
    duplicates: u64,
    not_succeeded: u64,
    last_new: Option<Instant>,
}

/// Counts completion events until every task completed or none came for `stall`.
async fn track(
    mut events: Consumer,
    prefix: String,
    n: usize,
    stall: Duration,
    bar: ProgressBar,
) -> Result<Tracked> {
    let mut tracked = Tracked {
        seen: vec![0; n],
        distinct: 0,
        duplicates: 0,
        not_succeeded: 0,
        last_new: None,
    };
    while tracked.distinct < n {
        let delivery = match tokio::time::timeout(stall, events.next()).await {
            Err(_) => break,
            Ok(None) => bail!("the events consumer ended"),
            Ok(Some(delivery)) => delivery?,
        };
        for event in warren_common::event_batch::decode_events(&delivery.data) {
            let Some(i) = task::index(&prefix, &event.id).filter(|&i| i < n) else {
                continue;
            };
            tracked.seen[i] = tracked.seen[i].saturating_add(1);
            if tracked.seen[i] > 1 {
                tracked.duplicates += 1;
                continue;
            }
            if event.status != Status::Succeeded {
                tracked.not_succeeded += 1;
            }
            tracked.distinct += 1;
            tracked.last_new = Some(Instant::now());
            bar.inc(1);
        }
    }
    bar.finish();
    Ok(tracked)
}
