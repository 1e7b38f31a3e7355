//! A worker with your own Rust handlers next to the built-in ones.
//!
//! ```text
//! cargo run -p warren-worker --example custom_handler
//! python3 examples/python/submit.py add '{"a": 2, "b": 3}'     # → "result": 5
//! ```
//!
//! Configuration comes from `WARREN__*` environment variables (or pass a file path as the
//! first argument), as for `warren-worker`.

use std::time::Duration;

use serde_json::json;
use warren_common::Config;
use warren_worker::{HandlerError, Handlers, TaskContext};

/// Adds two integers: `{"a": 2, "b": 3}` → `5`.
async fn add(task: TaskContext) -> Result<serde_json::Value, HandlerError> {
    let number = |name: &str| {
        task.payload[name]
            .as_i64()
            // Retrying cannot fix a bad payload: abort (the result is `failed`, no retry).
            .ok_or_else(|| HandlerError::abort(format!("payload.{name} must be an integer")))
    };
    Ok(json!(number("a")? + number("b")?))
}

/// A long task that stops early when its attempt is cancelled (timeout or shutdown).
async fn countdown(task: TaskContext) -> Result<serde_json::Value, HandlerError> {
    let from = task.payload["from"].as_u64().unwrap_or(3);
    for left in (0..from).rev() {
        tokio::select! {
            () = task.cancelled.cancelled() => return Err(HandlerError::failed("cancelled")),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        tracing::debug!(task = %task.id, left, "counting down");
    }
    Ok(json!("liftoff"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args().nth(1).map(std::path::PathBuf::from);
    let config = Config::load(file.as_deref())?;
    warren_common::logging::init(&config.log);
    let mut handlers = Handlers::with_builtins(&config);
    handlers
        .register("add", add)
        .register("countdown", countdown);
    warren_worker::run(config, handlers, warren_common::shutdown::on_signal()).await?;
    Ok(())
}
