//! `warren-bench`: measures warren against what the broker alone does on the same machine.
//!
//! One run measures, each phase on a fresh topology prefix deleted at its end: `raw` (publish
//! with confirms into a quorum queue, consume with acks), `relay` (a bare two-stage relay
//! through two quorum queues with a reply), `floor` (the broker work the wire contract implies:
//! three quorum queues, a reply and four events), and `pipeline` (the real dispatcher and
//! worker binaries running `noop` tasks). `warren-bench backlog` fills warren with a backlog while no
//! worker runs, then drains it, sampling the dispatcher's memory.

mod backlog;
mod broker;
mod fleet;
mod history;
mod memory;
mod pipeline;
mod processes;
mod progress;
mod raw;
mod relay;
mod report;
mod stats;
mod task;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::fleet::Binaries;
use crate::progress::Progress;
use crate::report::{Measured, RunReport};

/// Measures warren's throughput, latency, CPU and memory against bare RabbitMQ baselines.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Messages (tasks) per phase.
    #[arg(short = 'n', long = "messages", default_value_t = 20_000)]
    messages: usize,
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,relay,floor,pipeline"
    )]
    phases: Vec<Phase>,
    /// Submit pipeline tasks open-loop at this many per second (default: as fast as confirms
    /// allow), to measure latency below saturation.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a backlog with no worker running, then start the workers and drain it.
    Backlog {
        /// Tasks in the backlog.
        #[arg(short = 'n', long = "messages", default_value_t = 1_000_000)]
        messages: usize,
    },
    /// Fill a history stream with the events of N finished tasks, then time `warren task`
    /// for the first and the last.
    History {
        /// Tasks whose events are written (four each).
        #[arg(short = 'n', long = "messages", default_value_t = 1_000_000)]
        messages: usize,
        /// Keep the stream (and its topology) afterwards, to look at it.
        #[arg(long)]
        keep: bool,
    },
}

/// A phase of a normal run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Publish with confirms into a quorum queue, consume with acks.
    Raw,
    /// Two quorum queues, a confirmed relay between them, a reply at the end.
    Relay,
    /// Three quorum queues, a reply and four events per message: the contract's broker work.
    Floor,
    /// The real dispatcher and workers.
    Pipeline,
}

/// Settings shared by every phase and by the backlog mode.
#[derive(Debug, Clone, Args)]
pub(crate) struct Settings {
    /// The broker.
    #[arg(
        long,
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp_url: String,
    /// Workers to start.
    #[arg(short = 'w', long, global = true, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Tasks each worker runs at once (`worker.concurrency`).
    #[arg(long, global = true, default_value_t = 16)]
    pub(crate) concurrency: u32,
    /// Publisher confirms the benchmark keeps outstanding.
    #[arg(long, global = true, default_value_t = 512)]
    pub(crate) window: usize,
    /// Prefetch of the baseline consumers (raw, relay).
    #[arg(long, global = true, default_value_t = 256)]
    pub(crate) prefetch: u16,
    /// Seconds without progress after which a phase is declared stuck.
    #[arg(long, global = true, default_value_t = 60)]
    pub(crate) stall_secs: u64,
    /// Directory holding `warren-dispatcher` and `warren-worker` (default: the workspace's
    /// target/release, built there if missing).
    #[arg(long, global = true)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Rebuild the release binaries before running.
    #[arg(long, global = true)]
    pub(crate) rebuild: bool,
    /// Print one JSON object with every figure instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Run warren without its history stream (`topology.history.enabled = false`), to measure
    /// what the history costs.
    #[arg(long, global = true)]
    pub(crate) no_history: bool,
}

impl Settings {
    /// How long without progress means stuck.
    pub(crate) fn stall(&self) -> Duration {
        Duration::from_secs(self.stall_secs.max(1))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = cli.settings.clone();
    let progress = Progress::new();
    match cli.command {
        Some(Command::Backlog { messages }) => {
            let binaries = Binaries::locate(settings.bin_dir.as_deref(), settings.rebuild)?;
            let report =
                Measured::of(backlog::run(&settings, messages, &binaries, &progress)).await;
            report::print_backlog(&report, settings.json)
        }
        Some(Command::History { messages, keep }) => {
            let binaries = Binaries::locate(settings.bin_dir.as_deref(), settings.rebuild)?;
            let figures = history::run(&settings, messages, keep, &binaries, &progress).await?;
            if settings.json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                println!(
                    "warren-bench history: {} tasks, {} events written in {:.1} s ({:.0} events/s) to {}",
                    figures.tasks,
                    figures.events,
                    figures.fill_secs,
                    figures.events as f64 / figures.fill_secs,
                    figures.stream
                );
                println!(
                    "warren task: first task {:.0} ms, last task {:.0} ms (wall time of the CLI)",
                    figures.first_lookup_ms, figures.last_lookup_ms
                );
            }
            Ok(())
        }
        None => {
            let report = run_phases(&cli, &settings, &progress).await?;
            report::print_run(&report, settings.json)
        }
    }
}

async fn run_phases(cli: &Cli, settings: &Settings, progress: &Progress) -> Result<RunReport> {
    let n = cli.messages;
    let mut report = RunReport::new(n, settings, cli.rate);
    if cli.phases.contains(&Phase::Raw) {
        progress.note(&format!("raw: {n} messages through one quorum queue"));
        report.raw = Some(Measured::of(raw::run(settings, n, progress)).await);
    }
    if cli.phases.contains(&Phase::Relay) {
        progress.note(&format!(
            "relay: {n} messages through two quorum queues and a reply"
        ));
        report.relay = Some(Measured::of(relay::run(settings, n, relay::RELAY, progress)).await);
    }
    if cli.phases.contains(&Phase::Floor) {
        progress.note(&format!(
            "floor: {n} messages through three quorum queues, a reply and four events"
        ));
        report.floor = Some(Measured::of(relay::run(settings, n, relay::FLOOR, progress)).await);
    }
    if cli.phases.contains(&Phase::Pipeline) {
        let binaries = Binaries::locate(settings.bin_dir.as_deref(), settings.rebuild)?;
        progress.note(&format!(
            "pipeline: {n} noop tasks, dispatcher + {} workers x {}",
            settings.workers, settings.concurrency
        ));
        let run = pipeline::run(settings, n, cli.rate, &binaries, progress);
        report.pipeline = Some(Measured::of(run).await);
    }
    report.compute_ratios();
    Ok(report)
}
