//! TLS to the broker: a standalone RabbitMQ node of this test's own, with only a TLS listener
//! that demands a client certificate, and certificates made here with rcgen (a CA, a server
//! certificate for localhost, a client certificate). A dispatcher, a worker and the client run
//! a task over `amqps://`; without the CA file, or without the client certificate, no
//! connection is made, which proves that both sides verify.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use serde_json::json;
use warren_common::Status;
use warren_common::broker;
use warren_common::config::AmqpConfig;
use warren_tests::{Handlers, TestEnv};

/// The node's name; registered with the machine's epmd.
const NODE: &str = "warren-tls@localhost";
/// The TLS listener (the only one: plain AMQP is off). Clear of 5672 and the local cluster's
/// 5681–5683, 15681–15683 and 25681–25683.
const TLS_PORT: u16 = 5692;
/// The node's Erlang distribution port, which `rabbitmqctl` talks to.
const DIST_PORT: u16 = 25692;
/// How long the node may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_task_runs_over_tls_with_a_client_certificate() -> Result<()> {
    let started = Instant::now();
    let mut node = TlsNode::start()?;
    node.wait_until_booted().await?;
    eprintln!("{NODE} booted in {:.1} s", started.elapsed().as_secs_f64());

    let url = format!("amqps://guest:guest@localhost:{TLS_PORT}/%2f");
    let certificates = &node.certificates;
    let amqp = AmqpConfig {
        urls: vec![url.clone()],
        tls_ca_file: Some(certificates.ca.clone()),
        tls_client_cert_file: Some(certificates.client_cert.clone()),
        tls_client_key_file: Some(certificates.client_key.clone()),
        ..AmqpConfig::default()
    };

    // The system's roots alone do not trust the test CA: the client checks the server.
    let untrusted = AmqpConfig {
        tls_ca_file: None,
        ..amqp.clone()
    };
    let refused = broker::connect(&url, &untrusted, "warren-tests untrusted")
        .await
        .err()
        .context("connected to a server signed by an unknown CA")?
        .to_string();
    eprintln!("without the CA: {refused}");
    ensure!(
        refused.contains("UnknownIssuer"),
        "expected a certificate error, got: {refused}"
    );
    ensure!(
        !refused.contains("guest:guest@"),
        "the error shows the password: {refused}"
    );
    // The broker demands a client certificate: the server checks the client.
    let anonymous = AmqpConfig {
        tls_client_cert_file: None,
        tls_client_key_file: None,
        ..amqp.clone()
    };
    let refused = broker::connect(&url, &anonymous, "warren-tests anonymous")
        .await
        .err()
        .context("connected without a client certificate")?;
    eprintln!("without a client certificate: {refused}");

    let env = TestEnv::with_amqp("tls", amqp, &url).await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("tls-w1", 2, Handlers::new());
    let mut replies = env.reply_queue().await?;
    let payload = json!({"over": "tls"});
    env.submit(
        json!({"id": "secure", "kind": "echo", "payload": payload.clone()}),
        &replies.name,
    )
    .await?;
    let results = replies
        .collect(&["secure".into()], Duration::from_secs(60))
        .await?;
    let result = &results["secure"][0];
    assert_eq!(result.status, Status::Succeeded, "{:?}", result.error);
    assert_eq!(result.result, payload);

    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await?;
    drop(node);
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The PEM files one run made.
struct Certificates {
    /// The CA that signed both certificates below.
    ca: PathBuf,
    /// The server's certificate, for localhost and 127.0.0.1.
    server_cert: PathBuf,
    /// Its key.
    server_key: PathBuf,
    /// The client's certificate.
    client_cert: PathBuf,
    /// Its key.
    client_key: PathBuf,
}

impl Certificates {
    /// Makes a CA and a server and a client certificate signed by it, valid from last year to
    /// the year after next, into `dir`.
    fn make(dir: &Path) -> Result<Certificates> {
        let year = chrono::Utc::now().year();
        let validity = |params: &mut CertificateParams| {
            params.not_before = date_time_ymd(year - 1, 1, 1);
            params.not_after = date_time_ymd(year + 2, 1, 1);
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "warren test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

        let leaf = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| -> Result<_> {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            validity(&mut params);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf("warren-client", &[], ExtendedKeyUsagePurpose::ClientAuth)?;

        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Certificates {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }
}

/// Runs the node (`$1`) and stops it (SIGTERM to `rabbitmq-server`, which stops the VM
/// gracefully) once this shell's stdin closes: the test holds the other end, so the node goes
/// away with the test process however that ends. Exits when the node does.
const WATCHDOG: &str = r#""$1" </dev/null &
while [ -n "$(jobs -pr)" ]; do
  read -r -t 1 _
  [ $? -gt 128 ] || { kill -TERM %1 2>/dev/null; break; }
done
wait"#;

/// A standalone RabbitMQ node started by this test, in a temporary directory; stopped, and the
/// directory deleted, when dropped.
struct TlsNode {
    /// The PEM files, inside `dir`.
    certificates: Certificates,
    /// The watchdog shell running `rabbitmq-server`.
    watchdog: Child,
    /// Its stdin; closing it stops the node.
    stdin: Option<ChildStdin>,
    /// Where RabbitMQ writes the VM's pid.
    pid_file: PathBuf,
    /// Environment for `rabbitmqctl`: the node's HOME (its cookie) and no system env file.
    cli_env: Vec<(String, PathBuf)>,
    /// The RabbitMQ scripts.
    sbin: PathBuf,
    /// Everything of the node's; dropped last.
    dir: tempfile::TempDir,
}

impl TlsNode {
    /// Makes certificates and configuration and launches the node; returns at once.
    fn start() -> Result<TlsNode> {
        let sbin = rabbitmq_sbin()?;
        for port in [TLS_PORT, DIST_PORT] {
            ensure!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port} is taken (by a {NODE} node left over from an earlier run? \
                 ss -ltnp | grep {port})"
            );
        }
        let dir = tempfile::Builder::new().prefix("warren-tls-").tempdir()?;
        let root = dir.path();
        let certificates = Certificates::make(root)?;
        let home = root.join("home");
        for sub in ["home", "conf.d", "log", "mnesia"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let cookie = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        std::fs::write(home.join(".erlang.cookie"), cookie)?;
        let cookie_mode = std::os::unix::fs::PermissionsExt::from_mode(0o400);
        std::fs::set_permissions(home.join(".erlang.cookie"), cookie_mode)?;
        let env_file = root.join("rabbitmq-env.conf");
        std::fs::write(
            &env_file,
            "# empty: keeps the system's rabbitmq-env.conf away\n",
        )?;
        std::fs::write(root.join("enabled_plugins"), "[].\n")?;
        let config = format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{TLS_PORT}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            certificates.ca.display(),
            certificates.server_cert.display(),
            certificates.server_key.display(),
        );
        std::fs::write(root.join("rabbitmq.conf"), config)?;

        let pid_file = root.join("node.pid");
        let console = std::fs::File::create(root.join("log/console.log"))?;
        let cli_env = vec![
            ("HOME".to_owned(), home.clone()),
            ("RABBITMQ_CONF_ENV_FILE".to_owned(), env_file.clone()),
        ];
        let mut command = Command::new("bash");
        command
            .args(["-c", WATCHDOG, "warren-tls-watchdog"])
            .arg(sbin.join("rabbitmq-server"))
            .current_dir(root)
            .envs(cli_env.iter().map(|(k, v)| (k, v)))
            .env("RABBITMQ_NODENAME", NODE)
            .env("RABBITMQ_DIST_PORT", DIST_PORT.to_string())
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .env("RABBITMQ_PID_FILE", &pid_file)
            .env("RABBITMQ_CONFIG_FILE", root.join("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", root.join("conf.d"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                root.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                root.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_CRASH_DUMP", root.join("log/erl_crash.dump"))
            .stdin(Stdio::piped())
            .stdout(console.try_clone()?)
            .stderr(console);
        for name in FOREIGN_SETTINGS {
            command.env_remove(name);
        }
        let mut watchdog = command.spawn().context("starting rabbitmq-server")?;
        let stdin = watchdog.stdin.take();
        Ok(TlsNode {
            certificates,
            watchdog,
            stdin,
            pid_file,
            cli_env,
            sbin,
            dir,
        })
    }

    /// Waits until the TLS port is open and `rabbitmqctl await_startup` says the node has
    /// booted; fails with the end of the node's log if it exits or takes over [`BOOT_TIMEOUT`].
    async fn wait_until_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", TLS_PORT)).is_err() {
            if !self.is_running() {
                bail!("{NODE} exited while booting:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "{NODE} did not open port {TLS_PORT} within {BOOT_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(5);
        let mut command = tokio::process::Command::new(self.sbin.join("rabbitmqctl"));
        command
            .args(["-q", "-n", NODE, "await_startup", "--timeout"])
            .arg(left.to_string())
            .envs(self.cli_env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        for name in FOREIGN_SETTINGS {
            command.env_remove(name);
        }
        let output = tokio::time::timeout(Duration::from_secs(left + 10), command.output())
            .await
            .context("rabbitmqctl await_startup did not return")??;
        ensure!(
            output.status.success(),
            "rabbitmqctl await_startup failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        Ok(())
    }

    /// Whether the watchdog, and so the node, still runs.
    fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// The last lines of the node's console output and log.
    fn log_tail(&self) -> String {
        let log = self.dir.path().join("log");
        [log.join("console.log"), log.join(format!("{NODE}.log"))]
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- {} ---\n{tail}", path.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The VM's pid from the pid file, if that process is alive and is this node's (its
    /// environment names this pid file), so a recycled pid is never signalled.
    fn beam_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let mine = format!("RABBITMQ_PID_FILE={}", self.pid_file.display());
        environ
            .split(|b| *b == 0)
            .any(|entry| entry == mine.as_bytes())
            .then_some(pid)
    }
}

impl Drop for TlsNode {
    /// Closes the watchdog's stdin, which stops the node gracefully; after 30 s, kills the VM
    /// and the watchdog with SIGKILL, by pid.
    fn drop(&mut self) {
        let beam = self.beam_pid();
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pid) = beam.filter(|_| self.beam_pid().is_some()) {
            eprintln!("{NODE} did not stop within 30 s; killing its VM (pid {pid})");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Settings of the caller's environment that would change where or how the node runs (as in
/// `scripts/cluster.sh`).
const FOREIGN_SETTINGS: &[&str] = &[
    "RABBITMQ_NODE_PORT",
    "RABBITMQ_NODE_IP_ADDRESS",
    "RABBITMQ_USE_LONGNAME",
    "RABBITMQ_BASE",
    "RABBITMQ_MNESIA_DIR",
    "RABBITMQ_LOGS",
    "RABBITMQ_PLUGINS_EXPAND_DIR",
    "RABBITMQ_FEATURE_FLAGS_FILE",
    "RABBITMQ_QUORUM_DIR",
    "RABBITMQ_STREAM_DIR",
    "RABBITMQ_ERLANG_COOKIE",
    "RABBITMQ_SERVER_START_ARGS",
    "RABBITMQ_SERVER_ERL_ARGS",
    "RABBITMQ_CTL_ERL_ARGS",
    "ERL_FLAGS",
    "ERL_AFLAGS",
    "ERL_ZFLAGS",
];

/// The directory of RabbitMQ's own scripts (`rabbitmq-server`, `rabbitmqctl`), as
/// `scripts/cluster.sh` finds it: `RABBITMQ_SBIN`, Debian's package directory (not the
/// `/usr/sbin` wrappers, which switch user), or the real scripts behind `rabbitmq-server` on
/// the PATH.
fn rabbitmq_sbin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RABBITMQ_SBIN") {
        let dir = PathBuf::from(dir);
        ensure!(
            dir.join("rabbitmq-server").exists(),
            "no rabbitmq-server in RABBITMQ_SBIN={}",
            dir.display()
        );
        return Ok(dir);
    }
    let version = |dir: &Path| -> Vec<u32> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let number = name.trim_start_matches("rabbitmq_server-");
        number.split('.').filter_map(|n| n.parse().ok()).collect()
    };
    let packaged = std::fs::read_dir("/usr/lib/rabbitmq/lib")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|dir| {
            dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rabbitmq_server-"))
                && dir.join("sbin/rabbitmq-server").exists()
        })
        .max_by_key(|dir| version(dir));
    if let Some(dir) = packaged {
        return Ok(dir.join("sbin"));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("rabbitmq-server"))
        .find(|file| file.exists())
        .and_then(|file| std::fs::canonicalize(file).ok())
        .and_then(|file| file.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("rabbitmq-env").exists());
    on_path.context(
        "RabbitMQ is not installed: this test starts a node of its own \
         (Debian: apt-get install rabbitmq-server; or set RABBITMQ_SBIN)",
    )
}
