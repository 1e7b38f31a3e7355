//! Observability over HTTP, shared by the dispatcher and the worker: `GET /metrics` in the
//! Prometheus text format and `GET /healthz` (200 while the process has a live broker session,
//! 503 otherwise). Each binary registers its own metrics in a `prometheus_client` registry;
//! label values come from validated tasks (kinds) and warren's own names, never from URLs or
//! credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels of the task counters: status and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task status reached (`accepted`, `dispatched`, `succeeded`, ...).
    pub status: String,
    /// The task kind; empty for a rejected message whose kind could not be read.
    pub kind: String,
}

impl TaskLabels {
    /// Labels for one status and kind.
    pub fn new(status: crate::Status, kind: &str) -> TaskLabels {
        TaskLabels {
            status: status.as_str().to_owned(),
            kind: kind.to_owned(),
        }
    }
}

/// Whether the process is healthy, as `/healthz` reports it.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
}

impl Health {
    /// Records whether a broker session is up.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Whether a broker session is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What the HTTP handlers read.
#[derive(Clone)]
struct Exposed {
    registry: Arc<Registry>,
    health: Arc<Health>,
    role: Arc<dyn Fn() -> &'static str + Send + Sync>,
}

/// Serves `/metrics` and `/healthz` on `listen` (e.g. `127.0.0.1:9464`) until `shutdown`;
/// returns the bound address (useful with port 0). `role` names what the process is doing
/// right now, for `/healthz` (e.g. `leader`, `standby`, `worker`).
pub async fn serve(
    listen: &str,
    registry: Registry,
    health: Arc<Health>,
    role: impl Fn() -> &'static str + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let exposed = Exposed {
        registry: Arc::new(registry),
        health,
        role: Arc::new(role),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(exposed);
    info!(%address, "serving /metrics and /healthz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(cause = %err, "the metrics server stopped");
        }
    });
    Ok(address)
}

async fn metrics(State(exposed): State<Exposed>) -> impl IntoResponse {
    let mut text = String::with_capacity(4096);
    match prometheus_client::encoding::text::encode(&mut text, &exposed.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding the metrics failed\n".to_owned(),
        ),
    }
}

async fn healthz(State(exposed): State<Exposed>) -> impl IntoResponse {
    let connected = exposed.health.connected();
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "unavailable" },
        "broker": if connected { "connected" } else { "disconnected" },
        "role": (exposed.role)(),
    });
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Starts the server if `listen` is not empty; a port that cannot be bound is logged and the
/// process goes on without metrics (serving work matters more than being watched).
pub async fn start(
    listen: &str,
    registry: Registry,
    health: Arc<Health>,
    role: impl Fn() -> &'static str + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Option<SocketAddr> {
    if listen.is_empty() {
        return None;
    }
    match serve(listen, registry, health, role, shutdown).await {
        Ok(address) => Some(address),
        Err(err) => {
            tracing::error!(%listen, cause = %err, "cannot serve metrics; going on without them");
            None
        }
    }
}
