//! A warren under test: the real `warren-dispatcher` and `warren-worker` binaries started as
//! child processes on one topology prefix, waited for until they are ready, and stopped with
//! SIGTERM at the end.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use lapin::Connection;
use serde::Serialize;
use warren_common::{Heartbeat, Topology};

use crate::broker;
use crate::processes::{Child, Stopped};

/// How long a started process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths of the two binaries.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// `warren-dispatcher`.
    pub(crate) dispatcher: PathBuf,
    /// `warren-worker`.
    pub(crate) worker: PathBuf,
    /// `warren`, the command line.
    pub(crate) cli: PathBuf,
}

impl Binaries {
    /// The release binaries in `bin_dir`, or in the workspace's `target/release` (built there
    /// first when missing, or always with `rebuild`).
    pub(crate) fn locate(bin_dir: Option<&Path>, rebuild: bool) -> Result<Binaries> {
        let root = workspace_root();
        let dir = match bin_dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("release"),
        };
        let binaries = Binaries {
            dispatcher: dir.join("warren-dispatcher"),
            worker: dir.join("warren-worker"),
            cli: dir.join("warren"),
        };
        let missing = [&binaries.dispatcher, &binaries.worker, &binaries.cli]
            .iter()
            .any(|path| !path.exists());
        if bin_dir.is_none() && (missing || rebuild) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--release", "--bin", "warren-dispatcher"])
                .args(["--bin", "warren-worker", "--bin", "warren"])
                .current_dir(&root)
                .status()
                .context("running cargo build")?;
            ensure!(
                status.success(),
                "cargo build of the warren binaries failed: {status}"
            );
        }
        for path in [&binaries.dispatcher, &binaries.worker, &binaries.cli] {
            ensure!(path.exists(), "no binary at {}", path.display());
        }
        Ok(binaries)
    }
}

/// The workspace this benchmark was built in.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_path_buf()
}

/// CPU seconds and stop reports of a fleet that was stopped.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetReport {
    /// CPU seconds of the dispatcher, read just before SIGTERM.
    pub(crate) dispatcher_cpu_seconds: Option<f64>,
    /// CPU seconds of all workers together, read just before SIGTERM.
    pub(crate) workers_cpu_seconds: Option<f64>,
    /// Every process: exit, stop time, logged warnings.
    pub(crate) processes: Vec<Stopped>,
}

impl FleetReport {
    /// Every WARN/ERROR message of every process, prefixed with the process name.
    pub(crate) fn warnings(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for process in &self.processes {
            for (message, count) in &process.warnings {
                *all.entry(format!("{}: {message}", process.name))
                    .or_insert(0) += count;
            }
        }
        all
    }
}

/// A dispatcher and its workers, running as children of the benchmark.
pub(crate) struct Fleet {
    /// Where the binaries are.
    binaries: Binaries,
    /// `WARREN__*` variables every process gets.
    env: Vec<(String, String)>,
    /// Where the processes' logs go.
    pub(crate) log_dir: PathBuf,
    /// The dispatcher.
    pub(crate) dispatcher: Child,
    /// The workers, in start order.
    pub(crate) workers: Vec<Child>,
    /// Ids of the workers, for their queue names.
    pub(crate) worker_ids: Vec<String>,
}

impl Fleet {
    /// Starts a dispatcher on `topology` and waits until it consumes its intake and priority
    /// queues, that is, until it validates and routes.
    pub(crate) async fn start(
        binaries: &Binaries,
        url: &str,
        topology: &Topology,
        client: &Connection,
    ) -> Result<Fleet> {
        let log_dir = workspace_root()
            .join("target")
            .join("warren-bench")
            .join(&topology.prefix);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let env = vec![
            ("WARREN__AMQP__URLS".to_owned(), url.to_owned()),
            (
                "WARREN__TOPOLOGY__PREFIX".to_owned(),
                topology.prefix.clone(),
            ),
            (
                "WARREN__TOPOLOGY__HISTORY__ENABLED".to_owned(),
                topology.history.is_some().to_string(),
            ),
        ];
        let dispatcher = Child::spawn(
            "dispatcher",
            &binaries.dispatcher,
            &env,
            log_dir.join("dispatcher.log"),
        )?;
        let mut fleet = Fleet {
            binaries: binaries.clone(),
            env,
            log_dir,
            dispatcher,
            workers: Vec::new(),
            worker_ids: Vec::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        // It validates once it consumes the intake queue, and routes once it consumes the
        // priority queues (a leader first listens to heartbeats for `dispatcher.adopt_ms`).
        let mut queues = vec![topology.intake_queue()];
        queues.extend((0..topology.levels.len()).map(|i| topology.level_queue(i)));
        loop {
            let mut ready = true;
            for queue in &queues {
                let consumers = broker::queue_state(client, queue)
                    .await
                    .map(|(_, consumers)| consumers)
                    .unwrap_or(0);
                ready &= consumers > 0;
            }
            if ready {
                return Ok(fleet);
            }
            if let Some(status) = fleet.dispatcher.exited() {
                bail!(
                    "the dispatcher exited while starting ({status}); see {}",
                    fleet.dispatcher.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the dispatcher did not consume {queues:?} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `count` workers running `concurrency` tasks each, and waits until each has sent
    /// a heartbeat on the events exchange.
    pub(crate) async fn start_workers(
        &mut self,
        client: &Connection,
        topology: &Topology,
        count: usize,
        concurrency: u32,
    ) -> Result<()> {
        // Watch before starting, so no worker's first heartbeat is missed.
        let channel = client.create_channel().await?;
        let queue = broker::private_queue(&channel).await?;
        broker::bind(&channel, &queue, &topology.events_exchange(), &["worker.#"]).await?;
        let mut heartbeats = broker::consume(&channel, &queue, None).await?;
        let mut expected = HashSet::new();
        for i in 1..=count {
            let id = format!("bench-w{i}");
            let mut env = self.env.clone();
            env.push(("WARREN__WORKER__ID".into(), id.clone()));
            env.push((
                "WARREN__WORKER__CONCURRENCY".into(),
                concurrency.to_string(),
            ));
            let log = self.log_dir.join(format!("worker-{id}.log"));
            let worker = Child::spawn(&format!("worker {id}"), &self.binaries.worker, &env, log)?;
            self.workers.push(worker);
            self.worker_ids.push(id.clone());
            expected.insert(id);
        }
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let waited = loop {
            if expected.is_empty() {
                break Ok(());
            }
            if let Some(exited) = self.workers.iter_mut().find_map(|w| {
                let status = w.exited()?;
                Some(format!(
                    "{} exited ({status}); see {}",
                    w.name,
                    w.log.display()
                ))
            }) {
                break Err(anyhow::anyhow!(exited));
            }
            let next = tokio::time::timeout(Duration::from_millis(200), heartbeats.next());
            match next.await {
                Ok(Some(delivery)) => {
                    if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&delivery?.data) {
                        expected.remove(&beat.worker);
                    }
                }
                Ok(None) => break Err(anyhow::anyhow!("heartbeat consumer ended")),
                Err(_) if tokio::time::Instant::now() > deadline => {
                    break Err(anyhow::anyhow!(
                        "no heartbeat within {READY_TIMEOUT:?} from {expected:?}"
                    ));
                }
                Err(_) => {}
            }
        };
        let _ = channel.close(200, "workers seen".into()).await;
        waited
    }

    /// Process ids of the dispatcher and of the workers, for sampling.
    pub(crate) fn pids(&self) -> (u32, Vec<u32>) {
        (
            self.dispatcher.pid,
            self.workers.iter().map(|w| w.pid).collect(),
        )
    }

    /// Reads CPU times, then stops the workers (in parallel) and the dispatcher with SIGTERM.
    pub(crate) async fn stop(self) -> FleetReport {
        let dispatcher_cpu_seconds = self.dispatcher.cpu_seconds();
        let worker_cpu: Option<Vec<f64>> = self.workers.iter().map(Child::cpu_seconds).collect();
        let workers_cpu_seconds = worker_cpu.map(|cpus| cpus.iter().sum());
        let stops = self
            .workers
            .into_iter()
            .map(|worker| tokio::spawn(worker.stop(STOP_TIMEOUT)));
        let mut processes = Vec::new();
        for stop in stops.collect::<Vec<_>>() {
            if let Ok(stopped) = stop.await {
                processes.push(stopped);
            }
        }
        processes.push(self.dispatcher.stop(STOP_TIMEOUT).await);
        FleetReport {
            dispatcher_cpu_seconds,
            workers_cpu_seconds,
            processes,
        }
    }
}
