//! `warren-dispatcher`: runs the dispatcher.

use std::path::PathBuf;

use clap::Parser;
use warren_common::startup::load_or_exit;

/// Validates submitted tasks, orders them by priority and routes them to workers, until
/// SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "warren-dispatcher", version)]
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
    let config = load_or_exit("warren-dispatcher", args.config.as_deref(), args.json_logs);
    let shutdown = warren_common::shutdown::on_signal();
    warren_dispatcher::run(config, shutdown).await?;
    Ok(())
}
