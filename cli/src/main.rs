//! `warren`: the operator's command line — submit a task, see queue depths and live workers,
//! list, requeue or purge dead and rejected messages.

/// `println!` that ends the program quietly, with exit code 0, once standard output is closed
/// (`warren status | head -1`) instead of panicking with "failed printing to stdout".
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod batch;
mod history;
mod inspect;
mod queues;
mod submit;
mod waiting;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use warren_common::{Config, Pool, Topology};

/// Operate a warren: submit tasks, inspect queues and workers, handle dead and rejected tasks.
#[derive(Debug, Parser)]
#[command(name = "warren", version)]
struct Cli {
    /// TOML configuration file (amqp.urls, topology.prefix); WARREN__* variables override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit one task, or with --file many.
    Submit {
        /// Task kind.
        #[arg(required_unless_present = "file")]
        kind: Option<String>,
        /// Payload, as JSON.
        #[arg(default_value = "null")]
        payload: String,
        /// Submit every task of FILE instead: one JSON object per line (`-` reads standard
        /// input), each with at least `kind`; shows a progress bar.
        #[arg(long, short, conflicts_with_all = ["kind", "priority"])]
        file: Option<PathBuf>,
        /// Priority 0–9.
        #[arg(long, short)]
        priority: Option<u8>,
        /// Wait for the result and print it (exit 1 unless it succeeded).
        #[arg(long, short)]
        wait: bool,
        /// How long to wait for the result(s), in seconds; if one does not come, says why the
        /// task waits.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// With --file: write the submitted tasks' ids to IDS, one a line, instead of printing
        /// them.
        #[arg(long, requires = "file")]
        ids: Option<PathBuf>,
    },
    /// A task's timeline from the history: when it was accepted, dispatched (to which worker),
    /// started, retried (why), and how it ended (result, error). Exit code 0 if found, 1 if not.
    Task {
        /// The task's id.
        id: String,
        /// Read the history from then: an RFC 3339 time or an age such as 90m, 6h, 3d (needed
        /// only for ids that are not UUIDv7, whose time says where to start).
        #[arg(long)]
        since: Option<String>,
        /// The events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The tasks the routing dispatcher holds, oldest first, with why each waits.
    Waiting {
        /// At most this many tasks (counts cover all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The dispatcher's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Depth of every queue, live workers and whether a dispatcher leads.
    Status,
    /// Live workers, from their heartbeats.
    Workers,
    /// Tasks that exhausted their attempts, missed their deadline or that their handler aborted.
    Dead {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Messages that were not valid tasks.
    Rejected {
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// List the messages (they stay in the queue).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Send tasks back for a fresh set of attempts (dead only): the given ids, or all.
    Requeue {
        /// Task ids.
        ids: Vec<String>,
        /// Every task in the queue.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete every message in the queue.
    Purge,
}

/// What every command needs: settings, names and a connection.
pub(crate) struct Session {
    /// Settings.
    pub(crate) config: Config,
    /// Names on the broker.
    pub(crate) topology: Topology,
    /// A live connection.
    pub(crate) connection: warren_common::broker::PooledConnection,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("warren: {err}");
            std::process::exit(warren_common::config::EXIT_CONFIG);
        }
    };
    let prefix = config.topology.prefix.clone();
    let code = match run(cli, config).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("warren: {}", chain(&err));
            if let Some(hint) = hint(&format!("{err:#}"), &prefix) {
                eprintln!("warren: {hint}");
            }
            1
        }
    };
    std::process::exit(code);
}

/// An error and its causes, each said once (lapin's errors repeat their source in their own
/// text).
fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

/// What to do about an error a user meets often, from the broker's words.
fn hint(error: &str, prefix: &str) -> Option<String> {
    if error.contains("NOT_FOUND") {
        Some(format!(
            "no dispatcher with topology.prefix '{prefix}' has declared its exchanges and queues \
             on this broker: is the prefix right (topology.prefix, WARREN__TOPOLOGY__PREFIX)? \
             Has a dispatcher run?"
        ))
    } else if error.contains("ACCESS_REFUSED") && error.contains("Login") {
        Some("the broker refused the user and password of amqp.urls".into())
    } else {
        None
    }
}

/// Runs one command; returns its exit code.
async fn run(cli: Cli, config: Config) -> Result<i32> {
    let pool = Pool::new(&config.amqp, "warren-cli")?;
    let connection = pool.get().await.context("connecting to the broker")?;
    let context = Session {
        topology: config.topology(),
        config,
        connection,
    };
    let code = match cli.command {
        Command::Submit {
            file: Some(file),
            ids,
            wait,
            timeout,
            ..
        } => batch::run(&context, &file, ids.as_deref(), wait, timeout).await?,
        Command::Submit {
            kind,
            payload,
            priority,
            wait,
            timeout,
            ..
        } => {
            let kind = kind.unwrap_or_default();
            submit::run(&context, &kind, &payload, priority, wait, timeout).await?
        }
        Command::Status => inspect::status(&context).await?,
        Command::Waiting { limit, json } => waiting::run(&context, limit, json).await?,
        Command::Task { id, since, json } => {
            history::run(&context, &id, since.as_deref(), json).await?
        }
        Command::Workers => inspect::workers(&context).await?,
        Command::Dead { action } => {
            let queue = context.topology.dead_queue();
            queues::run(&context, &queue, action, true).await?
        }
        Command::Rejected { action } => {
            let queue = context.topology.rejected_queue();
            queues::run(&context, &queue, action, false).await?
        }
    };
    let _ = context.connection.close(200, "done".into()).await;
    Ok(code)
}
