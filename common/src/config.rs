//! Typed configuration: defaults, then an optional TOML file (`--config FILE`), then the
//! environment (`WARREN__SECTION__KEY`, lists comma-separated). Validated before any socket
//! is opened; every error names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use serde::{Deserialize, Serialize};

use crate::envelope::{TaskDefaults, is_valid_kind};
use crate::topology::{Level, Topology, default_levels};

/// The exit code of a binary started with an invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Everything a warren process can be configured with. Each binary reads the sections it needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Broker connection.
    pub amqp: AmqpConfig,
    /// Names on the broker.
    pub topology: TopologyConfig,
    /// Logging.
    pub log: LogConfig,
    /// Defaults for fields a submitted task leaves out.
    pub tasks: TaskDefaults,
    /// Dispatcher settings.
    pub dispatcher: DispatcherConfig,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// External-command handlers, by task kind.
    pub handlers: BTreeMap<String, ExecHandlerConfig>,
}

/// `[amqp]`: how to reach the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// AMQP URLs of the cluster's nodes; connections fail over between them in order.
    pub urls: Vec<String>,
    /// AMQP heartbeat in seconds: a peer silent for two of these is dead, which bounds how
    /// fast a cut-off dispatcher is replaced.
    pub heartbeat_secs: u16,
    /// Longest wait between two reconnection attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// For `amqps://` URLs: a PEM file of CA certificates trusted in addition to the system's
    /// roots (for a broker whose certificate a private CA signed). Read at startup.
    pub tls_ca_file: Option<PathBuf>,
    /// For `amqps://` URLs: the client's certificate (PEM, the chain leaf first), presented to
    /// a broker that asks for one. Needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// The private key of `tls_client_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub tls_client_key_file: Option<PathBuf>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            urls: vec!["amqp://guest:guest@127.0.0.1:5672/%2f".into()],
            heartbeat_secs: 2,
            max_backoff_ms: 5_000,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

impl AmqpConfig {
    /// The TLS settings of `amqps://` connections, read from the files the `tls_*` keys name:
    /// extra trusted CAs and the client's identity. With no key set, the system's roots and no
    /// client certificate. Errors name the key and the file.
    pub fn tls(&self) -> Result<OwnedTLSConfig, ConfigError> {
        let cert_chain = match &self.tls_ca_file {
            Some(path) => Some(read_pem("amqp.tls_ca_file", path, CERTIFICATE)?),
            None => None,
        };
        let identity = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_pem("amqp.tls_client_cert_file", cert, CERTIFICATE)?.into_bytes(),
                key: read_pem("amqp.tls_client_key_file", key, PRIVATE_KEY)?.into_bytes(),
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "amqp.tls_client_key_file",
                    "must be set along with amqp.tls_client_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "amqp.tls_client_cert_file",
                    "must be set along with amqp.tls_client_key_file",
                ));
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// PEM labels of a certificate.
const CERTIFICATE: &[&str] = &["CERTIFICATE"];
/// PEM labels of an unencrypted private key: PKCS#8, PKCS#1 (RSA), SEC1 (EC).
const PRIVATE_KEY: &[&str] = &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// Reads the PEM file `path` that config key `key` names, which must hold a block with one of
/// `labels`.
fn read_pem(key: &'static str, path: &Path, labels: &[&str]) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|err| invalid(key, format!("cannot read {}: {err}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(invalid(
            key,
            format!(
                "{} is encrypted; give an unencrypted key (openssl pkey -in KEY -out KEY.pem)",
                path.display()
            ),
        ));
    }
    if !labels
        .iter()
        .any(|label| text.contains(&format!("-----BEGIN {label}-----")))
    {
        return Err(invalid(
            key,
            format!("{} holds no PEM {} block", path.display(), labels[0]),
        ));
    }
    Ok(text)
}

/// `[topology]`: the names warren uses on the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Priority levels, most urgent first.
    pub levels: Vec<Level>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            prefix: "warren".into(),
            levels: default_levels(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: what to log and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `warren_worker=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[dispatcher]`: scheduling and liveness settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Tasks the dispatcher holds per priority level (its scheduling window). Memory is bounded
    /// by this, never by the backlog.
    pub window: u16,
    /// Submissions validated concurrently (intake prefetch).
    pub intake_prefetch: u16,
    /// A worker whose heartbeats stop for this long is dead, in milliseconds.
    pub heartbeat_timeout_ms: u64,
    /// After becoming the leader, how long to listen to heartbeats (adopting the tasks workers
    /// are running) before routing, in milliseconds.
    pub adopt_ms: u64,
    /// How held tasks are ordered.
    pub policy: PolicyName,
    /// How the next priority level is chosen.
    pub levels: LevelMode,
    /// Per-level weights for `levels = "weighted"`, most urgent first (one per level).
    pub weights: Vec<u32>,
    /// Under `weighted`, a task waiting longer than this goes next whatever its level, in
    /// milliseconds (0: never).
    pub aging_ms: u64,
    /// How a worker is chosen among those able to take a task.
    pub balancer: BalancerName,
    /// Address of the `/metrics` and `/healthz` HTTP server (empty: none).
    pub metrics_listen: String,
    /// Idempotency window in milliseconds: a task id submitted again this long after the first
    /// was dispatched does not run again; its submitter gets the first one's result (0: off).
    pub dedupe_window_ms: u64,
    /// Task ids the idempotency window holds at most (the oldest go first).
    pub dedupe_max: usize,
    /// While a dispatcher routes, its intake hands valid submissions straight to the router,
    /// which sends one directly to a worker that has room (skipping the priority queue) and
    /// files the rest to their priority queues.
    pub fast_path: bool,
    /// How much work, in milliseconds of a worker's mean run time, may wait in its queue beyond
    /// its free slots, so that a worker of short tasks never idles while the dispatcher learns
    /// of a finished task and sends the next one. Bounds how long a more urgent task can wait
    /// behind queued ones (0: credit is exactly the free slots).
    pub lookahead_ms: u64,
}

/// A worker's lookahead (tasks the dispatcher may queue for it beyond its free slots) is at most
/// this many times its concurrency: enough to keep a worker of sub-millisecond tasks busy across
/// a dispatch round trip (measured: `warren-bench`). A worker prefetches its concurrency plus
/// that many, so everything queued for it is delivered and waits in the worker for a slot.
pub const LOOKAHEAD_SLOTS: u32 = 3;

/// `dispatcher.policy`: the order of the tasks the dispatcher holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// First come, first served: arrival order, all tasks on one level.
    Fcfs,
    /// Priority levels, arrival order within a level.
    #[default]
    Priority,
    /// Shortest job first: `estimated_ms`, else the kind's learned run time.
    Sjf,
    /// Earliest deadline first; tasks without a deadline last.
    Edf,
}

/// `dispatcher.levels`: which priority level goes next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelMode {
    /// Always the most urgent level that has a runnable task.
    #[default]
    Strict,
    /// Smooth weighted round robin over the levels with runnable tasks, plus aging.
    Weighted,
}

/// `dispatcher.balancer`: which worker gets a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerName {
    /// Each able worker in turn.
    #[default]
    RoundRobin,
    /// A uniformly random able worker.
    Random,
    /// The able worker with the most free capacity.
    LeastLoaded,
    /// The freer of two random able workers.
    PowerOfTwo,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            window: 64,
            intake_prefetch: 256,
            heartbeat_timeout_ms: 3_000,
            adopt_ms: 1_500,
            policy: PolicyName::Priority,
            levels: LevelMode::Strict,
            weights: vec![6, 3, 1],
            aging_ms: 30_000,
            balancer: BalancerName::RoundRobin,
            metrics_listen: "127.0.0.1:9464".into(),
            dedupe_window_ms: 600_000,
            dedupe_max: 50_000,
            fast_path: true,
            lookahead_ms: 20,
        }
    }
}

/// `[worker]`: what a worker advertises and how it runs tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unique worker id; default `<hostname>-<pid>-<short uuid>`.
    pub id: Option<String>,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Capacity in units that tasks' `cost` fills (default: `concurrency`, one unit a task).
    pub capacity: Option<u32>,
    /// Capability tags advertised to the dispatcher (matched against a task's `requires`).
    pub tags: Vec<String>,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// On SIGTERM, how long running tasks may take to finish before they are handed back,
    /// in milliseconds.
    pub grace_ms: u64,
    /// Address of the `/metrics` and `/healthz` HTTP server (empty: none). Off by default,
    /// since several workers often share a host; e.g. `0.0.0.0:9465` in a container.
    pub metrics_listen: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: None,
            concurrency: 4,
            capacity: None,
            tags: Vec::new(),
            heartbeat_ms: 1_000,
            grace_ms: 30_000,
            metrics_listen: String::new(),
        }
    }
}

impl WorkerConfig {
    /// The configured id, or `<hostname>-<pid>-<8 hex digits>`.
    pub fn resolved_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let host: String = gethostname::gethostname()
            .to_string_lossy()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let short = &uuid::Uuid::new_v4().simple().to_string()[..8];
        format!("{host}-{}-{short}", std::process::id())
    }
}

/// `[handlers.<kind>]`: a task kind run by an external command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecHandlerConfig {
    /// Program and arguments, run directly (never through a shell). The payload arrives as
    /// JSON on stdin; stdout is the result; a non-zero exit is a failure.
    pub command: Vec<String>,
}

/// A configuration that could not be loaded, naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key holds a value that cannot work.
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid {
        /// The offending key, e.g. `worker.concurrency`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// What a binary does first: loads the configuration (exiting with code 64 and a message
/// naming the key if it is invalid), applies `--json-logs`, and installs logging.
pub fn load_or_exit(binary: &str, file: Option<&Path>, json_logs: bool) -> Config {
    let mut config = match Config::load(file) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{binary}: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if json_logs {
        config.log.format = LogFormat::Json;
    }
    crate::logging::init(&config.log);
    config
}

impl Config {
    /// Loads defaults, then `file` if given, then `WARREN__*` environment variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("WARREN")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("amqp.urls")
                .with_list_parse_key("worker.tags")
                .try_parsing(true),
        );
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that could make a process misbehave later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.urls.is_empty() {
            return Err(invalid("amqp.urls", "at least one AMQP URL is needed"));
        }
        for url in &self.amqp.urls {
            url.parse::<lapin::uri::AMQPUri>().map_err(|err| {
                invalid(
                    "amqp.urls",
                    format!("{}: {err}", crate::broker::redact(url)),
                )
            })?;
        }
        self.amqp.tls()?;
        self.topology()
            .validate()
            .map_err(|message| invalid("topology", message))?;
        if self.tasks.max_attempts == 0 {
            return Err(invalid("tasks.max_attempts", "must be at least 1"));
        }
        if self.tasks.timeout_ms == 0 {
            return Err(invalid("tasks.timeout_ms", "must be at least 1"));
        }
        if self.dispatcher.window == 0 {
            return Err(invalid("dispatcher.window", "must be at least 1"));
        }
        if self.dispatcher.levels == LevelMode::Weighted {
            if self.dispatcher.weights.len() != self.topology.levels.len() {
                return Err(invalid(
                    "dispatcher.weights",
                    format!(
                        "needs one weight per level ({})",
                        self.topology.levels.len()
                    ),
                ));
            }
            if self.dispatcher.weights.iter().all(|w| *w == 0) {
                return Err(invalid(
                    "dispatcher.weights",
                    "at least one weight must be positive",
                ));
            }
        }
        if self.dispatcher.intake_prefetch == 0 {
            return Err(invalid("dispatcher.intake_prefetch", "must be at least 1"));
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > u32::from(u16::MAX) {
            return Err(invalid("worker.concurrency", "must be 1–65535"));
        }
        if self.worker.heartbeat_ms == 0 {
            return Err(invalid("worker.heartbeat_ms", "must be at least 1"));
        }
        if let Some(id) = &self.worker.id
            && !is_valid_kind(id)
        {
            return Err(invalid(
                "worker.id",
                "must be 1–128 characters of A-Za-z0-9._:-",
            ));
        }
        for (kind, handler) in &self.handlers {
            if !is_valid_kind(kind) {
                return Err(invalid("handlers", format!("{kind:?} is not a valid kind")));
            }
            if handler.command.is_empty() || handler.command[0].is_empty() {
                return Err(invalid(
                    "handlers.<kind>.command",
                    format!("handler {kind:?} needs a program to run"),
                ));
            }
        }
        Ok(())
    }

    /// The topology these settings describe.
    pub fn topology(&self) -> Topology {
        Topology {
            prefix: self.topology.prefix.clone(),
            levels: self.topology.levels.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.topology.prefix, "warren");
        assert_eq!(config.worker.concurrency, 4);
    }

    #[test]
    fn file_values_override_defaults_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("warren-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("good.toml");
        std::fs::write(
            &file,
            "[worker]\nconcurrency = 8\n[handlers.upper]\ncommand = [\"tr\", \"a-z\", \"A-Z\"]\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.worker.concurrency, 8);
        assert_eq!(config.handlers["upper"].command, ["tr", "a-z", "A-Z"]);

        std::fs::write(&file, "[worker]\nconcurrency = 0\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("worker.concurrency"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../warren.example.toml");
        assert_eq!(Config::load(Some(&file)).unwrap(), Config::default());
    }

    #[test]
    fn tls_files_are_read_and_checked_at_load() {
        let dir = std::env::temp_dir().join(format!("warren-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut config = Config::default();
        config.amqp.tls_ca_file = Some(pem.clone());
        let tls = config.amqp.tls().unwrap();
        assert!(tls.cert_chain.unwrap().contains("BEGIN CERTIFICATE"));
        assert!(tls.identity.is_none());

        let missing = dir.join("missing.pem");
        config.amqp.tls_ca_file = Some(missing.clone());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("amqp.tls_ca_file"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        config.amqp.tls_ca_file = None;
        config.amqp.tls_client_cert_file = Some(pem.clone());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("amqp.tls_client_key_file"), "{err}");
        config.amqp.tls_client_key_file = Some(pem);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("amqp.tls_client_key_file") && err.contains("no PEM"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn worker_id_defaults_to_host_pid_uuid() {
        let id = WorkerConfig::default().resolved_id();
        assert!(is_valid_kind(&id), "{id}");
        assert!(id.contains(&std::process::id().to_string()));
    }
}
