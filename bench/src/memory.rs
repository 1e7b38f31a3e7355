//! Resident memory over time: the dispatcher's, and once they run the largest worker's,
//! sampled from /proc every 500 ms in the background, with the peaks before and during the
//! drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::processes::rss_kib;

/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Resident memory of the dispatcher over the run, in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Memory {
    /// Right after it started.
    pub(crate) start_kib: u64,
    /// Largest while the backlog was submitted and filed (no workers).
    pub(crate) peak_filing_kib: u64,
    /// Largest while the workers drained the backlog.
    pub(crate) peak_drain_kib: u64,
    /// At the end of the drain.
    pub(crate) end_kib: u64,
    /// Samples taken.
    pub(crate) samples: usize,
    /// The largest resident memory any worker had, KiB.
    pub(crate) worker_peak_kib: u64,
    /// Every sample, every 500 ms from the dispatcher's start.
    pub(crate) timeline: Vec<Sample>,
}

/// One memory sample.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Seconds since sampling started.
    pub(crate) seconds: f64,
    /// The dispatcher's resident memory.
    pub(crate) dispatcher_kib: u64,
    /// The largest resident memory of a worker, once workers run.
    pub(crate) largest_worker_kib: Option<u64>,
}

/// Samples the dispatcher's (and, once started, the workers') resident memory every 500 ms
/// in the background.
pub(crate) struct Sampler {
    /// Set once the workers are started: later samples count towards the drain.
    draining: Arc<AtomicBool>,
    /// Set to stop sampling.
    stop: Arc<AtomicBool>,
    /// The workers' pids, once they run.
    workers: Arc<Mutex<Vec<u32>>>,
    /// The sampling task; returns the samples when stopped.
    handle: tokio::task::JoinHandle<Memory>,
}

impl Sampler {
    /// Starts sampling process `pid` (the dispatcher).
    pub(crate) fn start(pid: u32) -> Sampler {
        let draining = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let (is_draining, is_stopped) = (draining.clone(), stop.clone());
        let worker_pids = workers.clone();
        let handle = tokio::spawn(async move {
            let mut memory = Memory::default();
            let mut ticker = tokio::time::interval(SAMPLE_EVERY);
            let started = Instant::now();
            while !is_stopped.load(Ordering::Relaxed) {
                ticker.tick().await;
                let Some(kib) = rss_kib(pid) else {
                    break;
                };
                let pids = worker_pids.lock().map(|p| p.clone()).unwrap_or_default();
                let worker_kib = pids.iter().filter_map(|&p| rss_kib(p)).max();
                memory.record(
                    started.elapsed(),
                    kib,
                    worker_kib,
                    is_draining.load(Ordering::Relaxed),
                );
            }
            memory
        });
        Sampler {
            draining,
            stop,
            workers,
            handle,
        }
    }

    /// From now on, samples count towards the drain and include the workers `pids`.
    pub(crate) fn draining(&self, pids: Vec<u32>) {
        if let Ok(mut workers) = self.workers.lock() {
            *workers = pids;
        }
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops sampling and returns what was seen.
    pub(crate) async fn stop(self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

impl Memory {
    fn record(&mut self, at: Duration, kib: u64, worker_kib: Option<u64>, draining: bool) {
        if self.samples == 0 {
            self.start_kib = kib;
        }
        self.samples += 1;
        self.end_kib = kib;
        let peak = if draining {
            &mut self.peak_drain_kib
        } else {
            &mut self.peak_filing_kib
        };
        *peak = (*peak).max(kib);
        if let Some(worker_kib) = worker_kib {
            self.worker_peak_kib = self.worker_peak_kib.max(worker_kib);
        }
        self.timeline.push(Sample {
            seconds: at.as_secs_f64(),
            dispatcher_kib: kib,
            largest_worker_kib: worker_kib,
        });
    }
}
