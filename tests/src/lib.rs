//! The harness of warren's integration tests: a private topology prefix per test, dispatchers
//! and workers started in-process (through the same `run` functions the binaries call) or as
//! real processes, and a plain AMQP client that submits tasks and collects results.
//!
//! Tests need a RabbitMQ broker: `WARREN_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_common::config::AmqpConfig;
use warren_common::{Config, TaskEvent, TaskResult, Topology, broker};

pub use warren_common;
pub use warren_worker::{HandlerError, Handlers, TaskContext};

/// The broker the tests use.
pub fn broker_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A fresh topology prefix, so tests never see each other's queues.
pub fn unique_prefix(test: &str) -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("test-{test}-{}", &short[..8])
}

/// Waits until `condition` holds, polling every 20 ms; fails after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A port free right now on loopback (for a metrics listener).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` from `127.0.0.1:port` over plain HTTP/1.0: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}

/// A dispatcher or worker running in this process.
pub struct Component {
    /// Cancelling it is the component's SIGTERM.
    pub shutdown: CancellationToken,
    /// The component's `run`.
    handle: JoinHandle<Result<()>>,
}

impl Component {
    /// Asks the component to stop and waits for its drain to finish.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .context("component did not stop within 60 s")??
    }
}

/// One test's private warren: its configuration and a client connection.
pub struct TestEnv {
    /// Configuration every component of this test starts from.
    pub config: Config,
    /// The test's topology.
    pub topology: Topology,
    /// The client's connection.
    pub connection: Connection,
    /// A confirm-mode channel for submitting.
    pub channel: Channel,
}

impl TestEnv {
    /// A new environment on a fresh prefix, with fast heartbeats; declares the topology.
    pub async fn new(test: &str) -> Result<TestEnv> {
        TestEnv::on(test, vec![broker_url()], &broker_url()).await
    }

    /// A new environment whose components use the broker nodes `urls` and whose client
    /// connects to `client_url`.
    pub async fn on(test: &str, urls: Vec<String>, client_url: &str) -> Result<TestEnv> {
        let amqp = AmqpConfig {
            urls,
            ..AmqpConfig::default()
        };
        TestEnv::with_amqp(test, amqp, client_url).await
    }

    /// A new environment whose components and client use the `amqp` settings (nodes, TLS
    /// files), the client connecting to `client_url`.
    pub async fn with_amqp(test: &str, amqp: AmqpConfig, client_url: &str) -> Result<TestEnv> {
        tracing_init();
        let mut config = Config {
            amqp,
            ..Config::default()
        };
        config.topology.prefix = unique_prefix(test);
        config.worker.heartbeat_ms = 200;
        config.dispatcher.heartbeat_timeout_ms = 2_000;
        // Tests run side by side: no fixed metrics port (a test that wants one sets it).
        config.dispatcher.metrics_listen = String::new();
        config.validate()?;
        let connection = broker::connect(client_url, &config.amqp, "warren-tests client")
            .await
            .context("no RabbitMQ reachable: start one (see README)")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let topology = config.topology();
        // Declared through the components' first node, as they would: quorum queues are led
        // by the node they were declared on.
        let first = &config.amqp.urls[0];
        if first == client_url {
            topology.declare(&connection).await?;
        } else {
            let declaring = broker::connect(first, &config.amqp, "warren-tests declare").await?;
            topology.declare(&declaring).await?;
            let _ = declaring.close(200, "declared".into()).await;
        }
        Ok(TestEnv {
            config,
            topology,
            connection,
            channel,
        })
    }

    /// Starts a dispatcher in this process.
    pub fn dispatcher(&self) -> Component {
        let shutdown = CancellationToken::new();
        let config = self.config.clone();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            warren_dispatcher::run(config, token).await?;
            Ok(())
        });
        Component { shutdown, handle }
    }

    /// Starts a worker in this process with the built-in handlers plus `extra`.
    pub fn worker(&self, id: &str, concurrency: u32, extra: Handlers) -> Component {
        let mut config = self.config.clone();
        config.worker.id = Some(id.to_owned());
        config.worker.concurrency = concurrency;
        self.worker_with(config, extra)
    }

    /// Starts a worker in this process with `config`, the built-in handlers plus `extra`.
    pub fn worker_with(&self, config: Config, extra: Handlers) -> Component {
        let mut handlers = Handlers::with_builtins(&config);
        handlers.merge(extra);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            warren_worker::run(config, handlers, token).await?;
            Ok(())
        });
        Component { shutdown, handle }
    }

    /// Environment variables that give a warren binary this test's configuration.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        vec![
            ("WARREN__AMQP__URLS".into(), self.config.amqp.urls.join(",")),
            (
                "WARREN__TOPOLOGY__PREFIX".into(),
                self.config.topology.prefix.clone(),
            ),
            (
                "WARREN__AMQP__CONSUMER_TIMEOUT_MS".into(),
                self.config.amqp.consumer_timeout_ms.to_string(),
            ),
            (
                "WARREN__WORKER__HEARTBEAT_MS".into(),
                self.config.worker.heartbeat_ms.to_string(),
            ),
            (
                "WARREN__DISPATCHER__HEARTBEAT_TIMEOUT_MS".into(),
                self.config.dispatcher.heartbeat_timeout_ms.to_string(),
            ),
            (
                "WARREN__DISPATCHER__METRICS_LISTEN".into(),
                self.config.dispatcher.metrics_listen.clone(),
            ),
            (
                "WARREN__WORKER__METRICS_LISTEN".into(),
                self.config.worker.metrics_listen.clone(),
            ),
        ]
        .into_iter()
        .chain(
            [
                ("TLS_CA_FILE", &self.config.amqp.tls_ca_file),
                (
                    "TLS_CLIENT_CERT_FILE",
                    &self.config.amqp.tls_client_cert_file,
                ),
                ("TLS_CLIENT_KEY_FILE", &self.config.amqp.tls_client_key_file),
            ]
            .into_iter()
            .filter_map(|(key, path)| {
                let path = path.as_ref()?.to_string_lossy().into_owned();
                Some((format!("WARREN__AMQP__{key}"), path))
            }),
        )
        .collect()
    }

    /// A private reply queue (server-named, exclusive) and a consumer on it.
    pub async fn reply_queue(&self) -> Result<Replies> {
        let channel = self.connection.create_channel().await?;
        let (name, consumer) = warren_common::publish::private_consumer(&channel, &[]).await?;
        Ok(Replies {
            name,
            consumer,
            _channel: channel,
            pending: std::collections::VecDeque::new(),
        })
    }

    /// A private queue bound to the events exchange with `keys`, to watch events.
    pub async fn watch_events(&self, keys: &[&str]) -> Result<Replies> {
        let replies = self.reply_queue().await?;
        for key in keys {
            replies
                ._channel
                .queue_bind(
                    replies.name.as_str().into(),
                    self.topology.events_exchange().as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(replies)
    }

    /// Publishes raw bytes to the submit exchange and waits for the broker's confirm.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) -> Result<()> {
        self.channel
            .basic_publish(
                self.topology.submit_exchange().as_str().into(),
                "task".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    /// Takes the first message of the dead queue: its properties and its attempt history
    /// (`x-warren-history`).
    pub async fn dead_letter(
        &self,
    ) -> Result<(BasicProperties, Vec<warren_core::retry::AttemptRecord>)> {
        let message = self
            .channel
            .basic_get(
                self.topology.dead_queue().as_str().into(),
                lapin::options::BasicGetOptions::default(),
            )
            .await?
            .context("the dead queue is empty")?;
        let properties = message.delivery.properties.clone();
        let history =
            warren_common::message::header_str(&properties, warren_common::HEADER_HISTORY)
                .context("no x-warren-history")?;
        Ok((properties, serde_json::from_str(&history)?))
    }

    /// Puts `tasks` straight into a worker's `queue`, in the dispatcher's normalized form, with
    /// results going to `reply_to`.
    pub async fn queue_directly(&self, queue: &str, tasks: &[Value], reply_to: &str) -> Result<()> {
        for task in tasks {
            let body = serde_json::to_vec(task)?;
            let normalized = warren_common::Task::decode(
                &body,
                &warren_common::envelope::SubmitProperties::default(),
                &self.config.tasks,
            )
            .map_err(|r| anyhow!("{r}"))?
            .to_json();
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to(reply_to.into());
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &normalized,
                    properties,
                )
                .await?
                .await?;
        }
        Ok(())
    }

    /// Submits one task (`fields` must hold `id` and `kind`) and waits up to `timeout` for its
    /// result on `replies`: the system is up and routing end to end.
    pub async fn round_trip(
        &self,
        replies: &mut Replies,
        fields: Value,
        timeout: Duration,
    ) -> Result<()> {
        let id = fields["id"]
            .as_str()
            .context("round_trip needs an id")?
            .to_owned();
        self.submit(fields, &replies.name).await?;
        replies.collect(&[id], timeout).await.map(|_| ())
    }

    /// Submits a task (`fields` must hold at least `kind`) with results going to `reply_to`.
    pub async fn submit(&self, fields: Value, reply_to: &str) -> Result<()> {
        let body = serde_json::to_vec(&fields)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_reply_to(reply_to.into());
        self.publish_raw(&body, properties).await
    }

    /// Submits many tasks, pipelining the publishes and waiting for all confirms at the end.
    pub async fn submit_many(&self, tasks: &[Value], reply_to: &str) -> Result<()> {
        let mut confirms = Vec::with_capacity(tasks.len());
        for fields in tasks {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to(reply_to.into());
            confirms.push(
                self.channel
                    .basic_publish(
                        self.topology.submit_exchange().as_str().into(),
                        "task".into(),
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(fields)?,
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            confirm.await?;
        }
        Ok(())
    }

    /// Ready messages in a queue (unacked ones are not counted).
    pub async fn depth(&self, queue: &str) -> Result<u32> {
        let channel = self.connection.create_channel().await?;
        let state = warren_common::publish::inspect_queue(&channel, queue).await?;
        let _ = channel.close(200, "".into()).await;
        Ok(state.message_count())
    }

    /// Consumers attached to a queue.
    pub async fn consumers(&self, queue: &str) -> Result<u32> {
        let channel = self.connection.create_channel().await?;
        let state = warren_common::publish::inspect_queue(&channel, queue).await?;
        let _ = channel.close(200, "".into()).await;
        Ok(state.consumer_count())
    }

    /// Deletes this test's shared queues and exchanges.
    pub async fn cleanup(self) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        let topology = &self.topology;
        for queue in topology.shared_queues() {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [topology.submit_exchange(), topology.events_exchange()] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = self.connection.close(200, "test over".into()).await;
        Ok(())
    }
}

/// A private queue and its consumer.
pub struct Replies {
    /// The queue's name, for `reply_to`.
    pub name: String,
    /// Its consumer.
    consumer: Consumer,
    /// Keeps the queue's channel open.
    _channel: Channel,
    /// Task events of a batch already received and not yet handed out.
    pending: std::collections::VecDeque<TaskEvent>,
}

impl Replies {
    /// The next task event, from a batch already received or the next message (one event or a
    /// batch: `warren_common::event_batch`), waiting at most `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<TaskEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(left, self.consumer.next())
                .await
                .with_context(|| format!("no event within {timeout:?}"))?
                .context("event consumer ended")??;
            self.pending
                .extend(warren_common::event_batch::decode_events(&delivery.data));
        }
    }

    /// Collects results until `done` says so (given the results so far, by id), or fails after
    /// `timeout`.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&HashMap<String, Vec<TaskResult>>) -> bool,
    ) -> Result<HashMap<String, Vec<TaskResult>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results: HashMap<String, Vec<TaskResult>> = HashMap::new();
        while !done(&results) {
            let next = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .with_context(|| {
                    format!(
                        "timed out after {timeout:?} with {} results",
                        results.values().map(Vec::len).sum::<usize>()
                    )
                })?
                .context("reply consumer ended")??;
            let result: TaskResult = serde_json::from_slice(&next.data)?;
            results.entry(result.id.clone()).or_default().push(result);
        }
        Ok(results)
    }

    /// Collects results until every id in `ids` has one.
    pub async fn collect(
        &mut self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, Vec<TaskResult>>> {
        self.collect_until(timeout, |results| {
            ids.iter().all(|id| results.contains_key(id))
        })
        .await
    }

    /// Collects events until none has arrived for `quiet` (everything published has been
    /// delivered), at most `timeout` in all.
    pub async fn drain_events(
        &mut self,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Vec<TaskEvent>> {
        let deadline = Instant::now() + timeout;
        let mut events: Vec<TaskEvent> = self.pending.drain(..).collect();
        while let Ok(next) = tokio::time::timeout(quiet, self.consumer.next()).await {
            let delivery = next.context("event consumer ended")??;
            events.extend(warren_common::event_batch::decode_events(&delivery.data));
            anyhow::ensure!(
                Instant::now() < deadline,
                "events kept coming for {timeout:?}"
            );
        }
        Ok(events)
    }

    /// The next message's JSON body, waiting at most `timeout` (for heartbeats; task events come
    /// one or many to a message: [`Replies::next_event`]).
    pub async fn next_json(&mut self, timeout: Duration) -> Result<Value> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .with_context(|| format!("nothing arrived within {timeout:?}"))?
            .context("consumer ended")??;
        Ok(serde_json::from_slice(&delivery.data)?)
    }

    /// Collects events until `count` have arrived.
    pub async fn events(&mut self, count: usize, timeout: Duration) -> Result<Vec<TaskEvent>> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let event = self
                .next_event(timeout)
                .await
                .with_context(|| format!("timed out with {} of {count} events", events.len()))?;
            events.push(event);
        }
        Ok(events)
    }
}

/// `n` tasks of `kind` with ids `<prefix>-<i>` and payload `payload(i)`.
pub fn tasks(n: usize, kind: &str, prefix: &str, payload: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "id": format!("{prefix}-{i}"), "kind": kind, "payload": payload(i) }))
        .collect()
}

/// The ids of `tasks`.
pub fn ids(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().expect("task has an id").to_owned())
        .collect()
}

/// Path of a warren binary (`warren-worker`, `warren-dispatcher`, or `examples/<name>` for
/// the worker crate's examples), built on first use.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "--bin",
                    "warren-worker",
                    "--bin",
                    "warren-dispatcher",
                    "--bin",
                    "warren",
                    "--bin",
                    "warren-bench",
                    "--example",
                    "custom_handler",
                ])
                .current_dir(&root)
                .status()
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("cargo build failed: {status}"))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug").join(name);
    if path.exists() {
        return Ok(path);
    }
    // Cargo does not always copy an up-to-date example to its plain name; take the newest
    // hashed build of it (`<name>-<hash>`).
    let dir = path.parent().context("binary path has a parent")?;
    let stem = format!(
        "{}-",
        path.file_name().and_then(|n| n.to_str()).unwrap_or(name)
    );
    std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            file.starts_with(&stem) && !file.ends_with(".d")
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
        .with_context(|| format!("no built binary for {name} in {}", dir.display()))
}

fn tracing_init() {
    warren_common::logging::init(&warren_common::config::LogConfig {
        format: warren_common::config::LogFormat::Text,
        level: "warn".into(),
    });
}

/// A warren binary running as a child process of the test; killed if the test ends early.
pub struct Process {
    /// The child; `kill_on_drop` is set.
    pub child: tokio::process::Child,
    /// What it is, for messages: the binary and its worker id, if any.
    pub name: String,
}

impl Process {
    /// Runs binary `name` with this environment's configuration and `args` to completion;
    /// returns its exit code and stdout.
    pub async fn output(env: &TestEnv, name: &str, args: &[&str]) -> Result<(i32, String)> {
        let (code, stdout, _) = Process::output_all(env, name, args).await?;
        Ok((code, stdout))
    }

    /// Runs binary `name` like [`Process::output`]; returns its exit code, stdout and stderr.
    pub async fn output_all(
        env: &TestEnv,
        name: &str,
        args: &[&str],
    ) -> Result<(i32, String, String)> {
        let output = tokio::process::Command::new(binary(name)?)
            .args(args)
            .envs(env.env_vars())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .with_context(|| format!("{name} {args:?} did not finish"))??;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        Ok((output.status.code().unwrap_or(-1), stdout, stderr))
    }

    /// Starts binary `name` with this environment's configuration plus `extra` variables.
    pub fn start(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> Result<Process> {
        Process::start_with_args(env, name, &[], extra)
    }

    /// Starts binary `name` with arguments `args`, this environment's configuration plus
    /// `extra` variables.
    pub fn start_with_args(
        env: &TestEnv,
        name: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> Result<Process> {
        let mut command = tokio::process::Command::new(binary(name)?);
        command
            .args(args)
            .envs(env.env_vars())
            .envs(extra.iter().copied())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        let label = extra
            .iter()
            .find(|(key, _)| *key == "WARREN__WORKER__ID")
            .map_or_else(|| name.to_owned(), |(_, id)| format!("{name} {id}"));
        Ok(Process {
            child: command
                .spawn()
                .with_context(|| format!("starting {name}"))?,
            name: label,
        })
    }

    /// Starts `count` worker processes with ids `w1`, `w2`, … and `concurrency` slots each.
    pub fn workers(env: &TestEnv, count: usize, concurrency: u32) -> Result<Vec<Process>> {
        let concurrency = concurrency.to_string();
        (1..=count)
            .map(|i| {
                let id = format!("w{i}");
                let extra = [
                    ("WARREN__WORKER__ID", id.as_str()),
                    ("WARREN__WORKER__CONCURRENCY", concurrency.as_str()),
                ];
                Process::start(env, "warren-worker", &extra)
            })
            .collect()
    }

    /// Sends SIGTERM, as an orchestrator stopping a container does.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.child.id().context("process already reaped")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.start_kill().context("kill -9")
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                // Say where it is stuck: every thread's stack, by gdb, if it is installed.
                let stacks = match self.child.id() {
                    Some(pid) => std::process::Command::new("gdb")
                        .args([
                            "-p",
                            &pid.to_string(),
                            "-batch",
                            "-ex",
                            "thread apply all bt",
                        ])
                        .output()
                        .map(|out| {
                            let (stdout, stderr) = (
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr),
                            );
                            format!("{stdout}{stderr}")
                        })
                        .unwrap_or_else(|err| format!("(no gdb: {err})")),
                    None => String::new(),
                };
                anyhow::bail!(
                    "{} still running after {timeout:?}; its threads:\n{stacks}",
                    self.name
                )
            }
        }
    }
}

/// The local 3-node cluster of `scripts/cluster.sh`, brought up for a test and down when
/// dropped. Tests using it must hold [`CLUSTER_LOCK`]: there is one cluster per machine.
pub static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running local cluster.
pub struct Cluster {
    /// The repository root, where the script lives.
    root: PathBuf,
}

impl Cluster {
    /// Runs `scripts/cluster.sh up` (idempotent; about 30 s from nothing).
    pub fn up() -> Result<Cluster> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace")
            .to_path_buf();
        let cluster = Cluster { root };
        cluster.run(&["up"])?;
        Ok(cluster)
    }

    /// The nodes' AMQP URLs, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        (1..=3)
            .map(|n| format!("amqp://warren:warren@127.0.0.1:{}/%2f", 5680 + n))
            .collect()
    }

    /// Runs the cluster script with `args`; its output goes to the test's stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        // A state directory of this test process's own, so no earlier run's leftovers matter.
        let state =
            std::env::temp_dir().join(format!("warren-cluster-test-{}", std::process::id()));
        let output = std::process::Command::new("bash")
            .arg(self.root.join("scripts/cluster.sh"))
            .args(args)
            .env("WARREN_CLUSTER_DIR", state)
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        anyhow::ensure!(
            output.status.success(),
            "cluster.sh {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// Which node (1–3) leads the most of the quorum queues whose names start with `prefix`.
    pub fn busiest_node(&self, prefix: &str) -> Result<usize> {
        let listing = self.run(&[
            "cli",
            "1",
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            "leader",
        ])?;
        let leads = |n: usize| {
            let node = format!("warren{n}@");
            listing
                .lines()
                .filter(|l| l.starts_with(prefix) && l.contains(&node))
                .count()
        };
        Ok((1..=3).max_by_key(|n| leads(*n)).expect("three nodes"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}
