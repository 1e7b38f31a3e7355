//! Broker connections: a deadpool pool over a *list* of AMQP URLs that fails over between
//! cluster nodes (lapin itself reconnects to one URI only), and the confirmed-publish helper
//! every hop of the pipeline uses.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

use crate::config::{AmqpConfig, ConfigError, redact};

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No node in `amqp.urls` accepted a connection.
    #[error("no broker reachable at any of {urls}: {last}")]
    Unreachable {
        /// The redacted URL list.
        urls: String,
        /// The last node's error.
        last: String,
    },
    /// An AMQP operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused a publish (nack), or it could not be routed to any queue.
    #[error("broker did not take the message for {0}: {1}")]
    NotConfirmed(String, &'static str),
    /// The pool could not hand out a connection.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The `amqp` settings cannot work (say, a TLS file is unreadable).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The TLS settings of `amqps://` connections, read once from the `amqp.tls_*` files. Its
/// `Debug` shows what is set, never the key.
#[derive(Clone, Default)]
struct Tls(OwnedTLSConfig);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("extra_roots", &self.0.cert_chain.is_some())
            .field("client_certificate", &self.0.identity.is_some())
            .finish()
    }
}

/// Opens one connection to `uri`, named `name` in the management console; an `amqps://` URI
/// goes over TLS with `tls`, an `amqp://` one ignores it.
async fn open(uri: AMQPUri, tls: &Tls, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_uri_with_config(uri, properties, tls.0.clone(), runtime).await
}

/// Opens one connection to `url` with the TLS settings of `config`, named `name` in the
/// management console. For tools and tests that need a plain connection; services use a
/// [`Pool`], which also fails over and applies `amqp.heartbeat_secs`.
pub async fn connect(
    url: &str,
    config: &AmqpConfig,
    name: &str,
) -> Result<Connection, BrokerError> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|err| BrokerError::Pool(format!("{}: {err}", redact(url))))?;
    let tls = Tls(config.tls()?);
    open(uri, &tls, name)
        .await
        .map_err(|err| BrokerError::Unreachable {
            urls: redact(url),
            last: err.to_string(),
        })
}

/// Creates connections, trying the configured nodes in turn, starting after the last one that
/// worked or failed, so a dead node is skipped on the next attempt.
#[derive(Debug)]
pub struct Manager {
    /// Parsed node URIs, with the configured AMQP heartbeat applied.
    uris: Vec<AMQPUri>,
    /// The redacted URL list, for logs and errors.
    display: String,
    /// Name shown in the management console's connection list.
    connection_name: String,
    /// CA certificates and client identity for `amqps://` nodes.
    tls: Tls,
    /// Index of the node to try first next time.
    next: AtomicUsize,
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = BrokerError;

    async fn create(&self) -> Result<Connection, BrokerError> {
        let start = self.next.load(Ordering::Relaxed);
        let mut last = String::from("no URL configured");
        for offset in 0..self.uris.len() {
            let index = (start + offset) % self.uris.len();
            let uri = self.uris[index].clone();
            match open(uri, &self.tls, &self.connection_name).await {
                Ok(connection) => {
                    self.next.store(index, Ordering::Relaxed);
                    info!(node = index, "connected to broker");
                    return Ok(connection);
                }
                Err(err) => {
                    warn!(node = index, cause = %err, "broker node unreachable");
                    self.next
                        .store((index + 1) % self.uris.len(), Ordering::Relaxed);
                    last = err.to_string();
                }
            }
        }
        Err(BrokerError::Unreachable {
            urls: self.display.clone(),
            last,
        })
    }

    async fn recycle(
        &self,
        connection: &mut Connection,
        _: &Metrics,
    ) -> RecycleResult<BrokerError> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("connection closed"))
        }
    }
}

/// A pool of broker connections over the cluster's nodes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pool {
    /// The deadpool pool; each object is one AMQP connection.
    inner: managed::Pool<Manager>,
    /// Longest wait between reconnection attempts.
    max_backoff: Duration,
}

/// A pooled connection. Dropping it returns it to the pool (or discards it if it died).
pub type PooledConnection = managed::Object<Manager>;

impl Pool {
    /// Builds a pool for `config`; `connection_name` shows in the management console.
    pub fn new(config: &AmqpConfig, connection_name: &str) -> Result<Pool, BrokerError> {
        let uris = config
            .urls
            .iter()
            .map(|url| {
                let mut uri: AMQPUri = url
                    .parse()
                    .map_err(|err| BrokerError::Pool(format!("{}: {err}", redact(url))))?;
                uri.query.heartbeat = Some(config.heartbeat_secs);
                Ok(uri)
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        let display = config
            .urls
            .iter()
            .map(|url| redact(url))
            .collect::<Vec<_>>()
            .join(", ");
        let manager = Manager {
            uris,
            display,
            connection_name: connection_name.to_owned(),
            tls: Tls(config.tls()?),
            next: AtomicUsize::new(0),
        };
        let inner = managed::Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|err| BrokerError::Pool(err.to_string()))?;
        Ok(Pool {
            inner,
            max_backoff: Duration::from_millis(config.max_backoff_ms.max(1)),
        })
    }

    /// A live connection, trying each node once.
    pub async fn get(&self) -> Result<PooledConnection, BrokerError> {
        self.inner.get().await.map_err(|err| match err {
            managed::PoolError::Backend(err) => err,
            other => BrokerError::Pool(other.to_string()),
        })
    }

    /// A live connection, retrying with capped exponential backoff until one is had or
    /// `shutdown` fires (then `None`).
    pub async fn get_or_wait(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<PooledConnection> {
        let mut backoff = self.reconnect_backoff();
        loop {
            let delay = backoff.next_pause();
            match self.get().await {
                Ok(connection) => return Some(connection),
                Err(err) => {
                    warn!(cause = %err, retry_in_ms = delay.as_millis() as u64, "waiting for the broker")
                }
            }
            if !crate::shutdown::pause(shutdown, delay).await {
                return None;
            }
        }
    }

    /// The pauses between reconnection attempts: 100 ms doubling up to `amqp.max_backoff_ms`.
    pub fn reconnect_backoff(&self) -> warren_core::retry::Backoff {
        warren_core::retry::Backoff::new(Duration::from_millis(100), self.max_backoff)
    }

    /// The longest wait between reconnection attempts.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }
}
