//! What a simulated run measured: waits, response times, makespan, utilisation and the
//! longest wait of the lowest level, and the table they are printed in.

use super::engine::Run;
use super::workload::SimTask;

/// Figures of one run, times in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Row label: policy.
    pub policy: String,
    /// Row label: balancer.
    pub balancer: String,
    /// Mean, p50 and p99 of start − arrival.
    pub wait: [f64; 3],
    /// Mean, p50 and p99 of end − arrival.
    pub response: [f64; 3],
    /// First arrival to last completion.
    pub makespan_ms: f64,
    /// Share of the workers' core time used.
    pub utilisation: f64,
    /// Longest wait of a task on the lowest priority level (`None`: no task was filed there).
    pub lowest_max_wait_ms: Option<f64>,
    /// Tasks whose deadline passed before they started.
    pub expired: usize,
    /// Tasks that never finished (must be 0 unless expired).
    pub unfinished: usize,
}

impl Metrics {
    /// Measures `run` of `tasks`; `lowest` is the lowest level's index.
    pub fn measure(
        policy: &str,
        balancer: &str,
        tasks: &[SimTask],
        run: &Run,
        lowest: usize,
    ) -> Metrics {
        let mut waits = Vec::with_capacity(tasks.len());
        let mut responses = Vec::with_capacity(tasks.len());
        let (mut lowest_max_wait_ms, mut expired, mut unfinished, mut last_end) =
            (None::<f64>, 0, 0, 0.0_f64);
        for (task, record) in tasks.iter().zip(&run.records) {
            match (record.start_ms, record.end_ms) {
                (Some(start), Some(end)) => {
                    let wait = start - task.arrival_ms;
                    waits.push(wait);
                    responses.push(end - task.arrival_ms);
                    last_end = last_end.max(end);
                    if record.level == lowest {
                        lowest_max_wait_ms = Some(lowest_max_wait_ms.map_or(wait, |m| m.max(wait)));
                    }
                }
                _ if record.expired => expired += 1,
                _ => unfinished += 1,
            }
        }
        let first = tasks.first().map_or(0.0, |t| t.arrival_ms);
        let makespan_ms = last_end - first;
        let utilisation = if makespan_ms > 0.0 {
            run.busy_ms.iter().sum::<f64>() / (run.busy_ms.len() as f64 * makespan_ms)
        } else {
            0.0
        };
        Metrics {
            policy: policy.to_owned(),
            balancer: balancer.to_owned(),
            wait: summary(&mut waits),
            response: summary(&mut responses),
            makespan_ms,
            utilisation,
            lowest_max_wait_ms,
            expired,
            unfinished,
        }
    }
}

/// Mean, p50 and p99.
fn summary(values: &mut [f64]) -> [f64; 3] {
    if values.is_empty() {
        return [0.0; 3];
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [mean, at(0.50), at(0.99)]
}

/// The results as one Markdown table.
pub fn table(rows: &[Metrics]) -> String {
    let mut out = String::from(
        "| policy | balancer | wait mean | wait p50 | wait p99 | resp mean | resp p50 | resp p99 | makespan s | util | lowest level max wait | expired |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {} | {} |\n",
            r.policy,
            r.balancer,
            r.wait[0],
            r.wait[1],
            r.wait[2],
            r.response[0],
            r.response[1],
            r.response[2],
            r.makespan_ms / 1000.0,
            r.utilisation * 100.0,
            r.lowest_max_wait_ms
                .map_or_else(|| "–".to_owned(), |ms| format!("{:.0}", ms)),
            r.expired,
        ));
    }
    out
}
