//! What a run reports: each phase's figures with the CPU the broker and the benchmark itself
//! used meanwhile, the ratios between phases, and the two ways of printing them (a table for
//! people, one JSON object for programs).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::Settings;
use crate::backlog::BacklogFigures;
use crate::fleet::FleetReport;
use crate::pipeline::PipelineFigures;
use crate::processes::{broker_pid, cpu_seconds, machine_busy_seconds};
use crate::stats::{Throughput, ratio};

/// A phase's figures (or why it failed) and the CPU spent around it.
#[derive(Debug, Serialize)]
pub(crate) struct Measured<T> {
    /// The phase's own figures, if it completed.
    #[serde(flatten)]
    pub(crate) figures: Option<T>,
    /// Why the phase failed.
    pub(crate) error: Option<String>,
    /// Wall time of the whole phase, setup and cleanup included.
    pub(crate) wall_seconds: f64,
    /// CPU seconds of the local RabbitMQ node during the phase.
    pub(crate) broker_cpu_seconds: Option<f64>,
    /// CPU seconds of the benchmark process during the phase.
    pub(crate) bench_cpu_seconds: Option<f64>,
    /// CPU seconds the whole machine was busy during the phase (every process, every core):
    /// what is not the broker's, the benchmark's or warren's was someone else's load.
    pub(crate) machine_cpu_seconds: Option<f64>,
}

impl<T> Measured<T> {
    /// Runs a phase, recording the broker's and this process's CPU time around it.
    pub(crate) async fn of(phase: impl Future<Output = Result<T>>) -> Measured<T> {
        let broker = broker_pid();
        let me = std::process::id();
        let broker_before = broker.and_then(cpu_seconds);
        let me_before = cpu_seconds(me);
        let machine_before = machine_busy_seconds();
        let started = Instant::now();
        let result = phase.await;
        let delta = |pid: Option<u32>, before: Option<f64>| Some(cpu_seconds(pid?)? - before?);
        let (figures, error) = match result {
            Ok(figures) => (Some(figures), None),
            Err(err) => (None, Some(format!("{err:#}"))),
        };
        Measured {
            figures,
            error,
            wall_seconds: started.elapsed().as_secs_f64(),
            broker_cpu_seconds: delta(broker, broker_before),
            bench_cpu_seconds: delta(Some(me), me_before),
            machine_cpu_seconds: machine_busy_seconds()
                .zip(machine_before)
                .map(|(a, b)| a - b),
        }
    }
}

/// Ratios of completion rates between phases.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Ratios {
    /// Pipeline tasks/s over raw messages/s.
    pub(crate) pipeline_over_raw: Option<f64>,
    /// Relay messages/s over raw messages/s.
    pub(crate) relay_over_raw: Option<f64>,
    /// Pipeline tasks/s over relay messages/s.
    pub(crate) pipeline_over_relay: Option<f64>,
    /// Floor messages/s over raw messages/s.
    pub(crate) floor_over_raw: Option<f64>,
    /// Pipeline tasks/s over floor messages/s: how close warren is to the contract's own cost.
    pub(crate) pipeline_over_floor: Option<f64>,
}

/// Everything one normal run measured.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    /// Messages (tasks) per phase.
    pub(crate) messages: usize,
    /// Workers in the pipeline phase.
    pub(crate) workers: usize,
    /// Concurrency of each worker.
    pub(crate) concurrency: u32,
    /// Publisher confirms kept outstanding.
    pub(crate) window: usize,
    /// Prefetch of the baseline consumers.
    pub(crate) prefetch: u16,
    /// Open-loop pipeline submission rate, if one was asked for.
    pub(crate) rate: Option<f64>,
    /// Phase `raw`.
    pub(crate) raw: Option<Measured<Throughput>>,
    /// Phase `relay`.
    pub(crate) relay: Option<Measured<Throughput>>,
    /// Phase `floor`.
    pub(crate) floor: Option<Measured<Throughput>>,
    /// Phase `pipeline`.
    pub(crate) pipeline: Option<Measured<PipelineFigures>>,
    /// Ratios between the phases' rates.
    pub(crate) ratios: Ratios,
}

impl RunReport {
    /// An empty report for a run with these settings.
    pub(crate) fn new(messages: usize, settings: &Settings, rate: Option<f64>) -> RunReport {
        RunReport {
            messages,
            workers: settings.workers,
            concurrency: settings.concurrency,
            window: settings.window,
            prefetch: settings.prefetch,
            rate,
            raw: None,
            relay: None,
            floor: None,
            pipeline: None,
            ratios: Ratios::default(),
        }
    }

    /// Fills in the ratios from the phases that completed (none for a rate-limited pipeline).
    pub(crate) fn compute_ratios(&mut self) {
        let rate = |phase: &Option<Measured<Throughput>>| {
            phase.as_ref()?.figures.as_ref().map(|t| t.per_second)
        };
        let (raw, relay, floor) = (rate(&self.raw), rate(&self.relay), rate(&self.floor));
        // An open-loop pipeline runs at the offered rate, not at its maximum: no ratio then.
        let pipeline = self
            .pipeline
            .as_ref()
            .and_then(|p| p.figures.as_ref())
            .filter(|_| self.rate.is_none())
            .map(|p| p.completed.per_second);
        self.ratios = Ratios {
            pipeline_over_raw: ratio(pipeline, raw),
            relay_over_raw: ratio(relay, raw),
            pipeline_over_relay: ratio(pipeline, relay),
            floor_over_raw: ratio(floor, raw),
            pipeline_over_floor: ratio(pipeline, floor),
        };
    }
}

/// Prints a run's report as a table, or as one JSON object.
pub(crate) fn print_run(report: &RunReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "warren-bench: {} messages per phase; pipeline: {} workers x {}; confirm window {}, prefetch {}",
        report.messages, report.workers, report.concurrency, report.window, report.prefetch
    );
    println!();
    println!(
        "{:<10} {:>10} {:>9} {:>13} {:>12} {:>14}",
        "phase", "per s", "seconds", "broker cpu s", "bench cpu s", "machine cpu s"
    );
    if let Some(raw) = &report.raw {
        row("raw", raw, raw.figures.as_ref());
    }
    if let Some(relay) = &report.relay {
        row("relay", relay, relay.figures.as_ref());
    }
    if let Some(floor) = &report.floor {
        row("floor", floor, floor.figures.as_ref());
    }
    if let Some(pipeline) = &report.pipeline {
        row(
            "pipeline",
            pipeline,
            pipeline.figures.as_ref().map(|p| &p.completed),
        );
    }
    let r = &report.ratios;
    println!();
    println!(
        "ratios: pipeline/raw {}   relay/raw {}   pipeline/relay {}   floor/raw {}   pipeline/floor {}",
        opt(r.pipeline_over_raw, 3),
        opt(r.relay_over_raw, 3),
        opt(r.pipeline_over_relay, 3),
        opt(r.floor_over_raw, 3),
        opt(r.pipeline_over_floor, 3)
    );
    if let Some(pipeline) = &report.pipeline
        && let Some(p) = &pipeline.figures
    {
        print_pipeline(p, pipeline);
    }
    Ok(())
}

/// One phase's line of the table.
fn row<T>(name: &str, measured: &Measured<T>, throughput: Option<&Throughput>) {
    match throughput {
        Some(t) => println!(
            "{name:<10} {:>10.0} {:>9.2} {:>13} {:>12} {:>14}",
            t.per_second,
            t.seconds,
            opt(measured.broker_cpu_seconds, 2),
            opt(measured.bench_cpu_seconds, 2),
            opt(measured.machine_cpu_seconds, 2)
        ),
        None => println!(
            "{name:<10} FAILED: {}",
            measured.error.as_deref().unwrap_or("?")
        ),
    }
}

fn print_pipeline<T>(p: &PipelineFigures, measured: &Measured<T>) {
    println!();
    if let Some(rate) = p.offered_rate {
        println!("pipeline offered open-loop at {rate:.0} tasks/s");
    }
    println!(
        "pipeline submitted {:.0}/s over {:.2} s; completed {}/{} (missing {}, duplicates {}, not succeeded {}, foreign {})",
        p.submitted.per_second,
        p.submitted.seconds,
        p.completed.count,
        p.tasks,
        p.missing,
        p.duplicates,
        p.not_succeeded,
        p.foreign
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p90", "p99", "max"
    );
    for (name, percentiles) in [
        ("submit -> start", &p.submit_to_start),
        ("submit -> result", &p.submit_to_result),
    ] {
        match percentiles {
            Some(l) => println!(
                "{name:<24} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ),
            None => println!("{name:<24} (no samples)"),
        }
    }
    print_cpu(&p.fleet, measured, p.completed.count);
    print_problems(&p.fleet, &p.stalled_depths, &p.missing_sample, &p.log_dir);
}

fn print_cpu<T>(fleet: &FleetReport, measured: &Measured<T>, tasks: u64) {
    let per_task = |cpu: Option<f64>| match cpu {
        Some(cpu) if tasks > 0 => format!("{:.0} us/task", cpu * 1e6 / tasks as f64),
        _ => "-".into(),
    };
    let broker = measured.broker_cpu_seconds;
    println!(
        "cpu seconds: dispatcher {} ({}), workers {} ({}), broker {} ({})",
        opt(fleet.dispatcher_cpu_seconds, 2),
        per_task(fleet.dispatcher_cpu_seconds),
        opt(fleet.workers_cpu_seconds, 2),
        per_task(fleet.workers_cpu_seconds),
        opt(broker, 2),
        per_task(broker)
    );
    let known = [
        fleet.dispatcher_cpu_seconds,
        fleet.workers_cpu_seconds,
        broker,
        measured.bench_cpu_seconds,
    ];
    let known: Option<f64> = known.into_iter().sum();
    let other = measured
        .machine_cpu_seconds
        .zip(known)
        .map(|(all, k)| all - k);
    println!(
        "machine busy {} cpu s over {:.1} s wall; other processes (not broker, bench, warren) {} cpu s",
        opt(measured.machine_cpu_seconds, 2),
        measured.wall_seconds,
        opt(other, 2)
    );
}

fn print_problems(
    fleet: &FleetReport,
    stalled_depths: &Option<BTreeMap<String, u32>>,
    missing_sample: &[String],
    log_dir: &str,
) {
    if let Some(depths) = stalled_depths {
        println!("STALLED; ready messages per queue: {depths:?}");
        println!("missing, for example: {missing_sample:?}");
    }
    for process in &fleet.processes {
        if !process.exit.contains("exit status: 0") {
            println!("{} exit: {}", process.name, process.exit);
        }
        if process.stop_seconds > 5.0 {
            println!(
                "{} took {:.1} s to stop",
                process.name, process.stop_seconds
            );
        }
    }
    let rss: Vec<String> = fleet
        .processes
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.name,
                p.rss_kib
                    .map_or("-".into(), |kib| format!("{:.1}", mib(kib)))
            )
        })
        .collect();
    println!("RSS MiB before SIGTERM: {}", rss.join(", "));
    let warnings = fleet.warnings();
    if !warnings.is_empty() {
        println!("logged warnings:");
        for (message, count) in warnings {
            println!("  {count:>6} x {message}");
        }
    }
    println!("logs: {log_dir}");
}

/// Prints a backlog run's report as a table, or as one JSON object.
pub(crate) fn print_backlog(report: &Measured<BacklogFigures>, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let Some(b) = &report.figures else {
        println!("backlog FAILED: {}", report.error.as_deref().unwrap_or("?"));
        return Ok(());
    };
    let o = &b.observed;
    println!(
        "warren-bench backlog: {} tasks; {} workers x {}",
        o.tasks, o.workers, o.concurrency
    );
    let line = |name: &str, t: &Throughput| {
        println!(
            "{name:<34} {:>9.0}/s over {:>8.2} s",
            t.per_second, t.seconds
        )
    };
    line("submitted (confirmed)", &o.submitted);
    line("filed by intake (intake empty)", &o.filed);
    line("drained (workers start -> last)", &o.drained);
    println!(
        "completed {}/{} (missing {}, duplicates {}, not succeeded {})",
        o.drained.count, o.tasks, o.missing, o.duplicates, o.not_succeeded
    );
    let m = &o.memory;
    println!(
        "dispatcher RSS MiB: start {:.1}, peak while filing {:.1}, peak while draining {:.1}, end {:.1} ({} samples)",
        mib(m.start_kib),
        mib(m.peak_filing_kib),
        mib(m.peak_drain_kib),
        mib(m.end_kib),
        m.samples
    );
    println!("largest worker RSS MiB: {:.1}", mib(m.worker_peak_kib));
    let step = m.timeline.len().div_ceil(12).max(1);
    let points: Vec<String> = m
        .timeline
        .iter()
        .step_by(step)
        .chain(m.timeline.last())
        .map(|s| {
            let worker = s
                .largest_worker_kib
                .map_or(String::new(), |kib| format!("/{:.0}", mib(kib)));
            format!("{:.0}s {:.1}{worker}", s.seconds, mib(s.dispatcher_kib))
        })
        .collect();
    println!(
        "RSS MiB over time (dispatcher/largest worker): {}",
        points.join(", ")
    );
    print_cpu(&b.fleet, report, o.drained.count);
    println!(
        "whole run: {:.1} s wall, bench cpu {} s",
        report.wall_seconds,
        opt(report.bench_cpu_seconds, 2)
    );
    print_problems(&b.fleet, &b.stalled_depths, &o.missing_sample, &b.log_dir);
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}
