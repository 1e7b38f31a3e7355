//! Built-in handlers every worker has: `noop`, `echo`, `sleep` and `fail`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::handler::{HandlerError, Handlers, TaskContext};

/// Adds the built-in handlers to `registry`.
pub fn register(registry: &mut Handlers) {
    registry
        .register("noop", |_: TaskContext| async { Ok(Value::Null) })
        .register("echo", |task: TaskContext| async move { Ok(task.payload) })
        .register("sleep", sleep)
        .register("fail", |task: TaskContext| async move {
            let message = task.payload["error"]
                .as_str()
                .unwrap_or("the fail handler always fails")
                .to_owned();
            Err(HandlerError::Failed(message))
        });
}

/// Sleeps for `payload.ms` milliseconds (or `payload` itself if it is a number), waking early
/// if the attempt is cancelled.
async fn sleep(task: TaskContext) -> Result<Value, HandlerError> {
    let ms = task.payload["ms"]
        .as_u64()
        .or_else(|| task.payload.as_u64())
        .ok_or_else(|| HandlerError::failed("sleep needs a payload like {\"ms\": 100}"))?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
        () = task.cancelled.cancelled() => Err(HandlerError::failed("cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn context(kind: &str, payload: Value) -> TaskContext {
        TaskContext {
            id: "t".into(),
            kind: kind.into(),
            payload,
            attempt: 1,
            cancelled: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn builtins_behave() {
        let mut registry = Handlers::new();
        register(&mut registry);
        assert_eq!(registry.kinds(), ["echo", "fail", "noop", "sleep"]);
        let echo = registry.get("echo").unwrap();
        assert_eq!(
            echo.call(context("echo", json!({"x": [1]}))).await,
            Ok(json!({"x": [1]}))
        );
        let sleep = registry.get("sleep").unwrap();
        assert_eq!(
            sleep.call(context("sleep", json!({"ms": 1}))).await,
            Ok(json!({"slept_ms": 1}))
        );
        assert!(sleep.call(context("sleep", json!("soon"))).await.is_err());
        let fail = registry.get("fail").unwrap();
        assert_eq!(
            fail.call(context("fail", json!({"error": "boom"}))).await,
            Err(HandlerError::failed("boom"))
        );
    }
}
