//! Typed configuration: defaults, then an optional TOML file (`--config FILE`), then the
//! environment (`WARREN__SECTION__KEY`, lists comma-separated). Validated before any socket
//! is opened; every error names the key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use warren_core::settings::{BalancerName, LOOKAHEAD_SLOTS, LevelMode, PolicyName};

mod amqp;
mod roles;

pub use amqp::{AmqpConfig, redact};
pub use roles::{DispatcherConfig, ExecHandlerConfig, WorkerConfig};

use crate::envelope::{TaskDefaults, is_valid_kind};
use crate::topology::{Level, Retention, Topology, default_levels};

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

/// `[topology]`: the names warren uses on the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Priority levels, most urgent first.
    pub levels: Vec<Level>,
    /// `[topology.history]`: the task history stream.
    pub history: HistoryConfig,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            prefix: "warren".into(),
            levels: default_levels(),
            history: HistoryConfig::default(),
        }
    }
}

/// `[topology.history]`: the stream `<prefix>.history` that keeps every task event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep a history at all (`warren task ID` needs it).
    pub enabled: bool,
    /// Events older than this go: a number and `Y`, `M`, `D`, `h`, `m` or `s` (`7D`).
    pub max_age: String,
    /// Or once the stream holds more than this many bytes (5 GiB), whichever comes first.
    pub max_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let retention = Retention::default();
        HistoryConfig {
            enabled: true,
            max_age: retention.max_age,
            max_bytes: retention.max_bytes,
        }
    }
}

impl HistoryConfig {
    /// The stream's retention.
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: self.max_age.clone(),
            max_bytes: self.max_bytes,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

warren_core::named_values!(LogFormat, { Text => "text", Json => "json" });

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

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
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
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|err| invalid("amqp.urls", format!("{}: {err}", redact(url))))?;
        }
        self.amqp.tls()?;
        if self.amqp.consumer_timeout_ms < 2_000 {
            return Err(invalid(
                "amqp.consumer_timeout_ms",
                "must be at least 2000 (RabbitMQ checks it once a second or so)",
            ));
        }
        self.topology()
            .validate()
            .map_err(|message| invalid("topology", message))?;
        self.topology
            .history
            .retention()
            .validate()
            .map_err(|message| invalid("topology.history", message))?;
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
        let history = &self.topology.history;
        Topology {
            prefix: self.topology.prefix.clone(),
            levels: self.topology.levels.clone(),
            history: history.enabled.then(|| history.retention()),
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
