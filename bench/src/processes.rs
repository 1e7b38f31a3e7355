//! Child processes and what /proc tells about them: CPU seconds (utime + stime), resident
//! memory, a SIGTERM-and-wait stop, and the warnings a child logged (JSON log lines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// A warren binary running as a child of the benchmark, its stderr going to a log file.
pub(crate) struct Child {
    /// Readable name (`dispatcher`, `worker bench-w1`).
    pub(crate) name: String,
    /// The process; killed if the benchmark ends without stopping it.
    child: tokio::process::Child,
    /// Its pid, for /proc and signals.
    pub(crate) pid: u32,
    /// Where its logs go.
    pub(crate) log: PathBuf,
}

/// What a stopped child left behind.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stopped {
    /// Readable name.
    pub(crate) name: String,
    /// CPU seconds used up to the moment before SIGTERM.
    pub(crate) cpu_seconds: Option<f64>,
    /// Resident memory in KiB the moment before SIGTERM.
    pub(crate) rss_kib: Option<u64>,
    /// How it exited (`exit status: 0`, or what went wrong).
    pub(crate) exit: String,
    /// Seconds from SIGTERM to exit.
    pub(crate) stop_seconds: f64,
    /// WARN and ERROR log messages, with how often each was logged.
    pub(crate) warnings: BTreeMap<String, u64>,
}

impl Child {
    /// Starts `binary` with `env`, JSON logs at `info` into `log`.
    pub(crate) fn spawn(
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Child> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let child = tokio::process::Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .env("WARREN__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("child has a pid")?;
        Ok(Child {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    /// CPU seconds used so far.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// Whether it already exited (and how).
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(format!("unknown: {err}")),
        }
    }

    /// Reads its CPU time, sends SIGTERM and waits up to `timeout` for it to exit (then kills
    /// it).
    pub(crate) async fn stop(mut self, timeout: Duration) -> Stopped {
        let cpu_seconds = self.cpu_seconds();
        let rss_kib = rss_kib(self.pid);
        let started = Instant::now();
        let exit = match self.exited() {
            Some(status) => format!("had already exited: {status}"),
            None => {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &self.pid.to_string()])
                    .status();
                match tokio::time::timeout(timeout, self.child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(err)) => format!("wait failed: {err}"),
                    Err(_) => {
                        let _ = self.child.kill().await;
                        format!("still running {timeout:?} after SIGTERM; killed")
                    }
                }
            }
        };
        Stopped {
            name: self.name,
            cpu_seconds,
            rss_kib,
            exit,
            stop_seconds: started.elapsed().as_secs_f64(),
            warnings: warnings(&self.log),
        }
    }
}

/// CPU seconds (user + system) process `pid` used so far, from /proc/<pid>/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime, in clock ticks, of a /proc/<pid>/stat line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // Then field 3 (state) has index 0, utime (field 14) index 11, stime (field 15) index 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds the whole machine spent busy (all cores, all processes) since boot, from the
/// first line of /proc/stat: user, nice, system, irq, softirq and steal time.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy as f64 / clock_ticks())
}

/// Resident memory of process `pid` in KiB, from /proc/<pid>/status.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The pid of the local RabbitMQ node (`beam.smp`), if one runs on this machine.
pub(crate) fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
}

/// The WARN and ERROR messages of a JSON log file, with how often each appeared.
fn warnings(log: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(log) else {
        return counts;
    };
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            // Not a log line (a panic message, for instance): keep it as it is.
            if !line.trim().is_empty() {
                *counts.entry(format!("(raw) {line}")).or_insert(0) += 1;
            }
            continue;
        };
        let level = entry["level"].as_str().unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            let message = entry["message"].as_str().unwrap_or("(no message)");
            *counts.entry(format!("{level} {message}")).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_past_a_command_name_with_spaces() {
        let stat = "42 (warren (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 5 0 9 1 2";
        assert_eq!(parse_cpu_ticks(stat), Some(280));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(machine_busy_seconds().is_some_and(|busy| busy > 0.0));
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
    }
}
