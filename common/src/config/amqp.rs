//! `[amqp]`: how to reach the broker — the URLs of the cluster's nodes, TLS files — and how
//! to show a URL without its password.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

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
    /// The broker's `consumer_timeout`, in milliseconds (RabbitMQ's default: 30 min): a channel
    /// that keeps a delivery unacked longer is closed. warren renews every delivery it holds
    /// (a running or waiting task, a held task, the leader baton) after half of this, so set it
    /// to your broker's value, or lower.
    pub consumer_timeout_ms: u64,
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
            consumer_timeout_ms: 1_800_000,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

impl AmqpConfig {
    /// How long warren holds a delivery before it renews it: half the broker's
    /// `consumer_timeout`.
    pub fn renew_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.consumer_timeout_ms / 2)
    }

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

/// A URL with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &url[scheme_end + 3 + at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("amqp://user@host/v"), "amqp://user@host/v");
    }
}
