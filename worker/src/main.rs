//! `warren-worker`: runs a worker with the built-in and configured handlers.

use std::path::PathBuf;

use clap::Parser;
use warren_common::startup::load_or_exit;

/// Runs warren tasks from the worker's own queue until SIGINT/SIGTERM, then drains.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version)]
struct Args {
    /// TOML configuration file; `WARREN__SECTION__KEY` environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log one JSON object per line instead of text.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load_or_exit("warren-worker", args.config.as_deref(), args.json_logs);
    let handlers = warren_worker::Handlers::with_builtins(&config);
    let shutdown = warren_common::shutdown::on_signal();
    warren_worker::run(config, handlers, shutdown).await?;
    Ok(())
}
