//! `warren submit --file FILE`: submits many tasks, one JSON object per line (`-` for standard
//! input), with pipelined publisher confirms and a progress bar; with `--wait`, collects every
//! result too.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use warren_common::publish::{check_confirmation, private_consumer};
use warren_common::{Status, TaskResult, confirmed_channel};

use crate::Session;
use crate::submit::publish_task;

/// Publishes in flight (unconfirmed) at most.
const IN_FLIGHT: usize = 512;

/// Reads the tasks of `path`: every non-empty line a JSON object with at least `kind`; an `id`
/// is added where missing.
fn read_tasks(path: &Path) -> Result<Vec<serde_json::Value>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut tasks = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut task: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON", number + 1))?;
        let Some(fields) = task.as_object_mut() else {
            bail!("line {}: not a JSON object", number + 1);
        };
        if !fields.get("kind").is_some_and(|k| k.is_string()) {
            bail!("line {}: no `kind`", number + 1);
        }
        fields
            .entry("id")
            .or_insert_with(|| uuid::Uuid::now_v7().to_string().into());
        tasks.push(task);
    }
    Ok(tasks)
}

fn bar(length: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{rate}})"
        ))
        .expect("a valid template")
        // Whole tasks per second: indicatif's own `per_sec` prints four decimals.
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar
}

/// Submits every task of `path`; returns the exit code (with `wait`: 0 if all succeeded).
/// The ids go to `ids` (one a line) if given, else to standard output once submitted.
pub(crate) async fn run(
    context: &Session,
    path: &Path,
    ids: Option<&Path>,
    wait: bool,
    timeout: u64,
) -> Result<i32> {
    let tasks = read_tasks(path)?;
    let channel = confirmed_channel(&context.connection).await?;
    let mut replies = None;
    let mut reply_to = None;
    if wait {
        let (queue, consumer) = private_consumer(&channel, &[]).await?;
        reply_to = Some(queue);
        replies = Some(consumer);
    }
    let exchange = context.topology.submit_exchange();
    let submitting = bar(tasks.len(), "submitted");
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for task in &tasks {
        let confirm = publish_task(&channel, &exchange, task, reply_to.as_deref()).await?;
        pending.push_back(confirm);
        if pending.len() >= IN_FLIGHT
            && let Some(oldest) = pending.pop_front()
        {
            check_confirmation(oldest.await?, &exchange)?;
            submitting.inc(1);
        }
    }
    for confirm in pending {
        check_confirmation(confirm.await?, &exchange)?;
        submitting.inc(1);
    }
    submitting.finish();
    let listed: String = tasks
        .iter()
        .filter_map(|t| t["id"].as_str())
        .map(|id| format!("{id}\n"))
        .collect();
    match ids {
        Some(file) => std::fs::write(file, listed)
            .with_context(|| format!("writing the ids to {}", file.display()))?,
        None => {
            for id in listed.lines() {
                out!("{id}");
            }
        }
    }
    let Some(mut replies) = replies else {
        return Ok(0);
    };
    let mut waiting: HashSet<String> = tasks
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    let finishing = bar(waiting.len(), "finished");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut failed = 0usize;
    while !waiting.is_empty() {
        let delivery = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => bail!("the reply consumer ended"),
            Err(_) => break,
        };
        let Ok(result) = serde_json::from_slice::<TaskResult>(&delivery.data) else {
            continue;
        };
        if waiting.remove(&result.id) {
            finishing.inc(1);
            if result.status != Status::Succeeded {
                failed += 1;
                finishing.println(format!(
                    "{} {}: {}",
                    result.id,
                    result.status.as_str(),
                    result.error.unwrap_or_default()
                ));
            }
        }
    }
    finishing.finish();
    if !waiting.is_empty() {
        eprintln!(
            "warren: {} of {} results did not arrive within {timeout} s",
            waiting.len(),
            tasks.len()
        );
        let mut missing: Vec<String> = waiting.iter().cloned().collect();
        missing.sort();
        crate::waiting::explain(context, &missing).await;
    }
    out!(
        "{} submitted, {} succeeded, {failed} did not, {} without a result",
        tasks.len(),
        tasks.len() - failed - waiting.len(),
        waiting.len()
    );
    Ok(i32::from(failed > 0 || !waiting.is_empty()))
}
