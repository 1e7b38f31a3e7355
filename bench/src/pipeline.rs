//! Phase `pipeline`: the real thing. A dispatcher and W workers run as child processes; the
//! client submits `noop` tasks to `<prefix>.submit` with pipelined confirms (as fast as they
//! come, or open-loop at `--rate`), collects every result from a private reply queue, and
//! measures tasks/s, submit→start and submit→result latency, and the children's CPU time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use lapin::{Connection, Consumer};
use serde::Serialize;
use warren_common::{Status, TaskResult, Topology};

use crate::Settings;
use crate::broker::{self, ConfirmWindow};
use crate::fleet::{Binaries, Fleet, FleetReport};
use crate::progress::Progress;
use crate::stats::{Percentiles, Throughput};
use crate::task;

/// What the pipeline phase measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PipelineFigures {
    /// Tasks submitted.
    pub(crate) tasks: usize,
    /// Workers running, and the concurrency of each.
    pub(crate) workers: usize,
    /// Tasks each worker runs at once.
    pub(crate) concurrency: u32,
    /// The open-loop submission rate asked for, if any.
    pub(crate) offered_rate: Option<f64>,
    /// Submissions, first publish to last confirm.
    pub(crate) submitted: Throughput,
    /// Distinct results, first publish to the last new result.
    pub(crate) completed: Throughput,
    /// Tasks without any result.
    pub(crate) missing: usize,
    /// Results beyond the first for a task.
    pub(crate) duplicates: u64,
    /// First results whose status was not `succeeded`.
    pub(crate) not_succeeded: u64,
    /// Messages on the reply queue that were no result of this run.
    pub(crate) foreign: u64,
    /// Client submit time to the result's `started_at`.
    pub(crate) submit_to_start: Option<Percentiles>,
    /// Client submit time to the client receiving the result.
    pub(crate) submit_to_result: Option<Percentiles>,
    /// CPU and exit of the dispatcher and workers.
    pub(crate) fleet: FleetReport,
    /// Ready messages per queue when results stopped coming, if they did.
    pub(crate) stalled_depths: Option<BTreeMap<String, u32>>,
    /// Up to ten ids of tasks without a result.
    pub(crate) missing_sample: Vec<String>,
    /// Where the processes' logs are.
    pub(crate) log_dir: String,
}

/// Runs the phase with `n` tasks; stops the processes and deletes the topology at the end.
pub(crate) async fn run(
    settings: &Settings,
    n: usize,
    rate: Option<f64>,
    binaries: &Binaries,
    progress: &Progress,
) -> Result<PipelineFigures> {
    let mut topology = Topology::new(broker::unique_prefix("pipeline"));
    if settings.no_history {
        topology.history = None;
    }
    let url = &settings.amqp_url;
    let client = broker::connect(url, "warren-bench pipeline submitter").await?;
    let receiver = broker::connect(url, "warren-bench pipeline results").await?;
    topology.declare(&client).await?;

    let spinner = progress.spinner("pipeline: starting");
    let started = start_fleet(settings, binaries, url, &topology, &client).await;
    spinner.finish_and_clear();
    let measured = match started {
        Ok(fleet) => {
            let measured =
                measure(settings, n, rate, &topology, [&client, &receiver], progress).await;
            let stalled_depths = match &measured {
                Ok(run) if run.stalled => {
                    let queues = broker::warren_queues(&topology, &fleet.worker_ids);
                    Some(broker::depths(&client, &queues).await)
                }
                _ => None,
            };
            let worker_ids = fleet.worker_ids.clone();
            let log_dir = fleet.log_dir.display().to_string();
            let fleet_report = fleet.stop().await;
            let _ = broker::delete_topology(&client, &topology, &worker_ids).await;
            measured.map(|run| run.figures(settings, rate, fleet_report, stalled_depths, log_dir))
        }
        Err(err) => {
            let _ = broker::delete_topology(&client, &topology, &[]).await;
            Err(err)
        }
    };
    let _ = receiver.close(200, "pipeline done".into()).await;
    let _ = client.close(200, "pipeline done".into()).await;
    measured
}

async fn start_fleet(
    settings: &Settings,
    binaries: &Binaries,
    url: &str,
    topology: &Topology,
    client: &Connection,
) -> Result<Fleet> {
    let mut fleet = Fleet::start(binaries, url, topology, client).await?;
    fleet
        .start_workers(client, topology, settings.workers, settings.concurrency)
        .await?;
    Ok(fleet)
}

/// The raw observations of one pipeline run.
struct Observed {
    n: usize,
    prefix: String,
    /// When each task was handed to the client library, by index.
    submitted_at: Vec<DateTime<Utc>>,
    /// First publish and last confirm.
    submit_span: (Instant, Instant),
    collected: Collected,
    stalled: bool,
}

async fn measure(
    settings: &Settings,
    n: usize,
    rate: Option<f64>,
    topology: &Topology,
    [client, receiver]: [&Connection; 2],
    progress: &Progress,
) -> Result<Observed> {
    let prefix = topology.prefix.clone();
    let channel = receiver.create_channel().await?;
    let reply_queue = broker::private_queue(&channel).await?;
    let results = broker::consume(&channel, &reply_queue, None).await?;
    let submitted_bar = progress.bar("pipeline: submitted", n as u64);
    let results_bar = progress.bar("pipeline: results", n as u64);
    let stall = settings.stall();
    let collecting = tokio::spawn(collect(results, prefix.clone(), n, stall, results_bar));

    let submitted = async {
        let mut window = ConfirmWindow::open(client, settings.window, stall).await?;
        let exchange = topology.submit_exchange();
        let mut times = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            window.ready().await?;
            let properties = broker::json_properties().with_reply_to(reply_queue.as_str().into());
            times.push(Utc::now());
            window
                .publish(&exchange, "noop", &task::body(&prefix, i), properties)
                .await?;
            submitted_bar.inc(1);
        }
        window.finish().await?;
        window.close().await;
        submitted_bar.finish();
        anyhow::Ok((times, (start, Instant::now())))
    }
    .await;
    let (submitted_at, submit_span) = match submitted {
        Ok(submitted) => submitted,
        Err(err) => {
            collecting.abort();
            return Err(err);
        }
    };
    let collected = collecting.await??;
    let _ = channel.close(200, "pipeline done".into()).await;
    Ok(Observed {
        n,
        prefix,
        submitted_at,
        submit_span,
        stalled: collected.distinct < n,
        collected,
    })
}

/// The first result of one task.
#[derive(Debug, Clone)]
struct Received {
    /// When the client got it.
    received_at: DateTime<Utc>,
    /// When the worker started the attempt.
    started_at: Option<DateTime<Utc>>,
    /// Its status.
    status: Status,
}

/// Everything the reply queue delivered.
struct Collected {
    /// The first result of each task, by index.
    first: Vec<Option<Received>>,
    /// Tasks with a result.
    distinct: usize,
    /// Results beyond the first.
    duplicates: u64,
    /// Messages that were no result of this run.
    foreign: u64,
    /// When the last new result arrived.
    last_new: Option<Instant>,
}

/// Collects results until every task has one, or none came for `stall`.
async fn collect(
    mut results: Consumer,
    prefix: String,
    n: usize,
    stall: Duration,
    bar: ProgressBar,
) -> Result<Collected> {
    let mut collected = Collected {
        first: vec![None; n],
        distinct: 0,
        duplicates: 0,
        foreign: 0,
        last_new: None,
    };
    while collected.distinct < n {
        let delivery = match tokio::time::timeout(stall, results.next()).await {
            Err(_) => break,
            Ok(None) => bail!("the reply consumer ended"),
            Ok(Some(delivery)) => delivery?,
        };
        let received_at = Utc::now();
        let Ok(result) = serde_json::from_slice::<TaskResult>(&delivery.data) else {
            collected.foreign += 1;
            continue;
        };
        match task::index(&prefix, &result.id).filter(|&i| i < n) {
            None => collected.foreign += 1,
            Some(i) if collected.first[i].is_some() => collected.duplicates += 1,
            Some(i) => {
                collected.first[i] = Some(Received {
                    received_at,
                    started_at: result.started_at,
                    status: result.status,
                });
                collected.distinct += 1;
                collected.last_new = Some(Instant::now());
                bar.inc(1);
            }
        }
    }
    bar.finish();
    Ok(collected)
}

impl Observed {
    fn figures(
        self,
        settings: &Settings,
        rate: Option<f64>,
        fleet: FleetReport,
        stalled_depths: Option<BTreeMap<String, u32>>,
        log_dir: String,
    ) -> PipelineFigures {
        let (first_publish, last_confirm) = self.submit_span;
        let collected = &self.collected;
        let mut to_start = Vec::with_capacity(self.n);
        let mut to_result = Vec::with_capacity(self.n);
        let mut not_succeeded = 0;
        let mut missing_sample = Vec::new();
        for (i, received) in collected.first.iter().enumerate() {
            let Some(received) = received else {
                if missing_sample.len() < 10 {
                    missing_sample.push(task::id(&self.prefix, i));
                }
                continue;
            };
            let submitted_at = self.submitted_at[i];
            if received.status != Status::Succeeded {
                not_succeeded += 1;
            }
            if let Some(started_at) = received.started_at {
                to_start.push(millis(started_at - submitted_at));
            }
            to_result.push(millis(received.received_at - submitted_at));
        }
        let last = collected.last_new.unwrap_or(first_publish);
        PipelineFigures {
            tasks: self.n,
            workers: settings.workers,
            concurrency: settings.concurrency,
            offered_rate: rate,
            submitted: Throughput::new(self.n as u64, last_confirm - first_publish),
            completed: Throughput::new(collected.distinct as u64, last - first_publish),
            missing: self.n - collected.distinct,
            duplicates: collected.duplicates,
            not_succeeded,
            foreign: collected.foreign,
            submit_to_start: Percentiles::of(to_start),
            submit_to_result: Percentiles::of(to_result),
            fleet,
            stalled_depths,
            missing_sample,
            log_dir,
        }
    }
}

/// A chrono duration in milliseconds (negative if clocks disagree).
fn millis(duration: chrono::TimeDelta) -> f64 {
    duration
        .num_microseconds()
        .map_or(f64::NAN, |micros| micros as f64 / 1000.0)
}
