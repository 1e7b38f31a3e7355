//! External-command handlers (`[handlers.<kind>] command = [...]`): the payload goes to the
//! program's stdin as JSON, its stdout is the result, a non-zero exit is a failure, and the
//! process is killed when the attempt is cancelled or times out. No shell is involved.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::handler::{Handler, HandlerError, HandlerFuture, TaskContext};

/// Most bytes of stdout kept as the result; more is a failure.
pub const MAX_STDOUT_BYTES: u64 = 4 * 1024 * 1024;
/// Most bytes of stderr kept for the error message.
pub const MAX_STDERR_BYTES: u64 = 4 * 1024;

/// Runs a program for each task.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    /// Program and arguments.
    command: Vec<String>,
}

impl ExecHandler {
    /// A handler running `command` (program first). Panics on an empty command, which config
    /// validation rules out.
    pub fn new(command: Vec<String>) -> ExecHandler {
        assert!(!command.is_empty(), "an exec handler needs a program");
        ExecHandler { command }
    }
}

impl Handler for ExecHandler {
    fn call(&self, task: TaskContext) -> HandlerFuture {
        let command = self.command.clone();
        Box::pin(async move { run(&command, task).await })
    }
}

async fn run(command: &[String], task: TaskContext) -> Result<Value, HandlerError> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("WARREN_TASK_ID", &task.id)
        .env("WARREN_TASK_KIND", &task.kind)
        .env("WARREN_ATTEMPT", task.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| HandlerError::failed(format!("cannot start {:?}: {err}", command[0])))?;
    let input = serde_json::to_vec(&task.payload).expect("JSON values serialize");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        // A program that does not read its stdin must not fail the task: ignore EPIPE.
        let feed = async {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out, err, status) = tokio::join!(
            feed,
            read_capped(stdout, MAX_STDOUT_BYTES),
            read_capped(stderr, MAX_STDERR_BYTES),
            child.wait()
        );
        (out, err, status)
    };
    let (out, err, status) = tokio::select! {
        result = work => result,
        () = task.cancelled.cancelled() => return Err(HandlerError::failed("cancelled")),
    };
    let status =
        status.map_err(|e| HandlerError::failed(format!("waiting for the command: {e}")))?;
    let (stdout, truncated) =
        out.map_err(|e| HandlerError::failed(format!("reading stdout: {e}")))?;
    let (stderr, _) = err.unwrap_or_default();
    if !status.success() {
        return Err(HandlerError::failed(format!(
            "command exited with {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    if truncated {
        return Err(HandlerError::failed(format!(
            "command wrote more than {MAX_STDOUT_BYTES} bytes to stdout"
        )));
    }
    Ok(match serde_json::from_slice(&stdout) {
        Ok(value) => value,
        Err(_) => Value::String(String::from_utf8_lossy(&stdout).trim_end().to_owned()),
    })
}

/// Reads at most `limit` bytes, then drains the rest so the child never blocks on a full pipe.
/// Returns the bytes and whether there was more.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    limit: u64,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut reader).take(limit).read_to_end(&mut kept).await?;
    let extra = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    Ok((kept, extra > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    fn context(payload: Value) -> TaskContext {
        TaskContext {
            id: "t".into(),
            kind: "exec".into(),
            payload,
            attempt: 1,
            cancelled: CancellationToken::new(),
        }
    }

    fn handler(command: &[&str]) -> ExecHandler {
        ExecHandler::new(command.iter().map(|s| s.to_string()).collect())
    }

    #[tokio::test]
    async fn stdout_is_the_result() {
        let upper = handler(&["tr", "a-z", "A-Z"]);
        assert_eq!(
            upper.call(context(json!("hello"))).await,
            Ok(json!("HELLO"))
        );
        let cat = handler(&["cat"]);
        assert_eq!(
            cat.call(context(json!({"a": 1}))).await,
            Ok(json!({"a": 1}))
        );
    }

    #[tokio::test]
    async fn failures_and_cancellation() {
        let failing = handler(&["sh", "-c", "echo oops >&2; exit 3"]);
        let err = failing.call(context(Value::Null)).await.unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        let missing = handler(&["/nonexistent/program"]);
        assert!(missing.call(context(Value::Null)).await.is_err());
        let slow = handler(&["sleep", "30"]);
        let task = context(Value::Null);
        let cancel = task.cancelled.clone();
        let started = std::time::Instant::now();
        let run = tokio::spawn(slow.call(task));
        cancel.cancel();
        assert!(run.await.unwrap().is_err());
        assert!(started.elapsed().as_secs() < 10);
    }
}
