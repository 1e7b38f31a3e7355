#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest): returns at once if
# one does, starts the installed rabbitmq-server if not, and installs Debian's package first
# if there is none (as root, with apt-get). Enables the management plugin (console on :15672).
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for_port() {
  for _ in $(seq 1 120); do
    port_open && return 0
    sleep 0.5
  done
  echo "broker.sh: RabbitMQ did not open 127.0.0.1:5672 within 60 s" >&2
  return 1
}

if ! port_open; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "broker.sh: installing rabbitmq-server from Debian's packages" >&2
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null
    else
      echo "broker.sh: no RabbitMQ on 127.0.0.1:5672 and none installed; install rabbitmq-server" >&2
      exit 1
    fi
  fi
  if ! port_open; then
    echo "broker.sh: starting rabbitmq-server" >&2
    rabbitmq-server -detached
  fi
  wait_for_port
fi

if command -v rabbitmq-plugins >/dev/null 2>&1; then
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 ||
    echo "broker.sh: could not enable rabbitmq_management (the console); continuing" >&2
fi
