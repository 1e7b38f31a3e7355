//! The handler registry: which code runs which task kind. Handlers are async functions from a
//! task's context to a JSON result or a typed failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a handler is given for one attempt of a task.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task id.
    pub id: String,
    /// Task kind.
    pub kind: String,
    /// The task's payload.
    pub payload: Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Cancelled when the attempt times out or the worker stops; long handlers should watch it.
    pub cancelled: CancellationToken,
}

/// Why an attempt failed; the variant decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The attempt failed; the task is retried with backoff until `max_attempts` is reached,
    /// then it is dead.
    #[error("{0}")]
    Failed(String),
    /// The task cannot succeed (bad payload, say): no retry, the result is `failed`.
    #[error("{0}")]
    Abort(String),
}

impl From<HandlerError> for warren_core::retry::Failure {
    fn from(error: HandlerError) -> Self {
        match error {
            HandlerError::Failed(message) => warren_core::retry::Failure::Retryable(message),
            HandlerError::Abort(message) => warren_core::retry::Failure::Abort(message),
        }
    }
}

impl HandlerError {
    /// A retryable failure with this message.
    pub fn failed(message: impl Into<String>) -> HandlerError {
        HandlerError::Failed(message.into())
    }

    /// A failure that retrying cannot fix.
    pub fn abort(message: impl Into<String>) -> HandlerError {
        HandlerError::Abort(message.into())
    }
}

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;

/// Runs tasks of one kind. Implemented for every `Fn(TaskContext) -> impl Future`.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn call(&self, task: TaskContext) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    fn call(&self, task: TaskContext) -> HandlerFuture {
        Box::pin(self(task))
    }
}

/// Handlers by task kind.
#[derive(Clone, Default)]
pub struct Handlers {
    /// Kind → handler. Ordered so heartbeats list kinds stably.
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Handlers {
    /// An empty registry.
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Registers (or replaces) the handler of `kind`.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Handlers {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// Adds every handler of `other`, replacing handlers of the same kinds.
    pub fn merge(&mut self, other: Handlers) -> &mut Handlers {
        self.handlers.extend(other.handlers);
        self
    }

    /// The handler of `kind`, if any.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// The kinds this registry handles, sorted.
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }
}
