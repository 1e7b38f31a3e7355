//! A binary's first steps: the configuration loaded and validated before any socket is opened
//! (an invalid one exits with code 64 naming the key), then logging installed.

use std::path::Path;

use crate::config::{Config, EXIT_CONFIG, LogFormat};

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
