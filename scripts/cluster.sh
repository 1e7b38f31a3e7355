#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for tests, CI and trying failover on one machine. No Docker:
# it runs the installed RabbitMQ (3.10+) three times, side by side with any broker already on
# 5672, which it never touches.
#
#   scripts/cluster.sh up        start the nodes, cluster them, print the AMQP URLs (idempotent)
#   scripts/cluster.sh down      stop the nodes and delete the state directory
#   scripts/cluster.sh kill N    kill -9 node N (1-3): a crash
#   scripts/cluster.sh start N   start node N again; it rejoins the cluster by itself
#   scripts/cluster.sh status    each node's state, then cluster_status from a running node
#   scripts/cluster.sh urls      the AMQP URL list only, for WARREN__AMQP__URLS
#   scripts/cluster.sh cli N TOOL ARGS...
#                                run rabbitmqctl, rabbitmq-queues, rabbitmq-diagnostics, ...
#                                against node N with the cluster's cookie, e.g.
#                                scripts/cluster.sh cli 1 rabbitmq-queues quorum_status QUEUE
#
#   node      AMQP  management (warren/warren)  Erlang distribution
#   warren1   5681  http://127.0.0.1:15681     25681
#   warren2   5682  http://127.0.0.1:15682     25682
#   warren3   5683  http://127.0.0.1:15683     25683
#
# Node names are warrenN@localhost: `localhost` resolves everywhere, whereas `hostname -s` may
# not resolve (laptops, containers). Everything listens on 127.0.0.1 only.
#
# Settings: deploy/rabbitmq/rabbitmq.conf (shared; copied as each node's main config) plus a
# generated conf.d/10-node.conf per node (ports, cluster name, peer list, the path of
# deploy/rabbitmq/definitions.json, whose users replace guest: log in as warren/warren);
# plugins from deploy/rabbitmq/enabled_plugins.
#
# State (data, logs, pid files, configs, the cookie): ${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}.
# The three nodes share an Erlang cookie that is generated into <state>/home/.erlang.cookie;
# this script runs the servers and the CLI tools with HOME=<state>/home, so the cookie of
# the machine's own broker (and ~/.erlang.cookie) is neither used nor changed.
# The nodes register with the epmd on port 4369 (shared with any other Erlang node here); if
# none runs, the first node starts one, and it stays after `down`, as epmd always does.
#
# Each command gives up with a message after WARREN_CLUSTER_TIMEOUT seconds (default 90) and
# exits non-zero on failure. RABBITMQ_SBIN overrides where the RabbitMQ scripts are found.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF_SRC="$ROOT/deploy/rabbitmq"
STATE_DIR="${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}"
TIMEOUT="${WARREN_CLUSTER_TIMEOUT:-90}"
HOST=localhost
NODES=(1 2 3)
MARKER=.warren-cluster   # marks a directory this script made, so `down` may delete it

# Settings from the caller's environment that would change where or how the nodes run.
unset RABBITMQ_NODE_PORT RABBITMQ_NODE_IP_ADDRESS RABBITMQ_USE_LONGNAME RABBITMQ_BASE \
  RABBITMQ_MNESIA_DIR RABBITMQ_LOGS RABBITMQ_PLUGINS_EXPAND_DIR RABBITMQ_FEATURE_FLAGS_FILE \
  RABBITMQ_QUORUM_DIR RABBITMQ_STREAM_DIR RABBITMQ_ERLANG_COOKIE RABBITMQ_SERVER_START_ARGS \
  RABBITMQ_SERVER_ERL_ARGS RABBITMQ_CTL_ERL_ARGS ERL_FLAGS ERL_AFLAGS ERL_ZFLAGS

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# --- deadline: one per command -----------------------------------------------------------
DEADLINE=$((SECONDS + TIMEOUT))
remaining() { echo $((DEADLINE - SECONDS)); }
check_deadline() {
  [ "$(remaining)" -gt 0 ] || die "gave up after ${TIMEOUT} s: $1"
}

# --- where RabbitMQ lives ------------------------------------------------------------------
find_sbin() {
  if [ -n "${RABBITMQ_SBIN:-}" ]; then
    [ -x "$RABBITMQ_SBIN/rabbitmq-server" ] || die "no rabbitmq-server in RABBITMQ_SBIN=$RABBITMQ_SBIN"
    echo "$RABBITMQ_SBIN"
    return
  fi
  # Debian/Ubuntu: /usr/sbin/rabbitmq-* are wrappers that switch to the rabbitmq user and
  # redirect the server's output; use the package's own scripts instead.
  local d
  d=$(find /usr/lib/rabbitmq/lib -maxdepth 2 -type d -name sbin -path '*/rabbitmq_server-*' \
        2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/rabbitmq-server" ]; then echo "$d"; return; fi
  # Generic install or Homebrew: the real scripts sit next to rabbitmq-env.
  local s
  if s=$(command -v rabbitmq-server 2>/dev/null); then
    s=$(readlink -f "$s" 2>/dev/null || echo "$s")
    if [ -f "$(dirname "$s")/rabbitmq-env" ]; then dirname "$s"; return; fi
  fi
  die "RabbitMQ not found (Debian: apt-get install rabbitmq-server); or set RABBITMQ_SBIN"
}
SBIN=$(find_sbin)

# --- per-node facts ------------------------------------------------------------------------
node_name() { echo "warren$1@$HOST"; }
node_dir()  { echo "$STATE_DIR/warren$1"; }
amqp_port() { echo $((5680 + $1)); }
mgmt_port() { echo $((15680 + $1)); }
dist_port() { echo $((25680 + $1)); }
pid_file()  { echo "$(node_dir "$1")/warren$1.pid"; }
urls() {
  local n out=""
  for n in "${NODES[@]}"; do
    out="${out:+$out,}amqp://warren:warren@127.0.0.1:$(amqp_port "$n")/%2f"
  done
  echo "$out"
}

valid_node() {
  case "${1:-}" in 1|2|3) ;; *) die "expected a node number 1, 2 or 3, got '${1:-}'" ;; esac
}

# The CLI tools and the servers all run with the cluster's HOME (the cookie) and without the
# system's rabbitmq-env.conf (Debian's sets NODENAME=rabbit@localhost and ERL_FLAGS).
export HOME="$STATE_DIR/home"
export RABBITMQ_CONF_ENV_FILE="$STATE_DIR/rabbitmq-env.conf"

# Runs RabbitMQ CLI tool TOOL against node N, bounded by the deadline: cli N TOOL ARGS...
cli() {
  local n=$1 tool=$2
  shift 2
  check_deadline "$tool $*"
  if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=5 "$(remaining)" "$SBIN/$tool" -n "$(node_name "$n")" "$@"
  else
    "$SBIN/$tool" -n "$(node_name "$n")" "$@"
  fi
}
ctl() { local n=$1; shift; cli "$n" rabbitmqctl "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# The node's beam.smp pid, if that process is alive (RabbitMQ writes it into the pid file).
# A stale pid file's number may since have gone to another process, even another broker's
# beam: on Linux the process must also carry this node's RABBITMQ_PID_FILE in its environment.
beam_pid() {
  local f pid
  f=$(pid_file "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  alive "$pid" || return 1
  case "$(ps -o comm= -p "$pid" 2>/dev/null)" in
    beam*) ;;
    *) return 1 ;;
  esac
  if [ -r "/proc/$pid/environ" ]; then
    tr '\0' '\n' <"/proc/$pid/environ" | grep -qxF "RABBITMQ_PID_FILE=$f" || return 1
  fi
  echo "$pid"
}

# The pid of the shell script that launched node N, while it runs (it exits with the node).
launcher_pid() {
  local f pid
  f="$(node_dir "$1")/launcher.pid"
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  alive "$pid" && echo "$pid"
}

# --- state directory -----------------------------------------------------------------------
prepare_state() {
  case "$STATE_DIR" in
    /|"") die "refusing to use '$STATE_DIR' as the state directory" ;;
  esac
  if [ -d "$STATE_DIR" ] && [ ! -e "$STATE_DIR/$MARKER" ] && [ -n "$(ls -A "$STATE_DIR")" ]; then
    die "$STATE_DIR exists and was not made by this script; set WARREN_CLUSTER_DIR elsewhere"
  fi
  mkdir -p "$STATE_DIR/home"
  touch "$STATE_DIR/$MARKER"
  [ -f "$RABBITMQ_CONF_ENV_FILE" ] ||
    echo "# empty on purpose: keeps the system's rabbitmq-env.conf away from these nodes" \
      >"$RABBITMQ_CONF_ENV_FILE"
  local cookie="$STATE_DIR/home/.erlang.cookie"
  if [ ! -s "$cookie" ]; then
    (umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie")
    chmod 400 "$cookie"
  fi
}

# Writes node N's config: the shared file as the main config (copied at every start, so edits
# take effect on restart) and its ports and the cluster name in conf.d/.
prepare_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/conf.d" "$dir/log" "$dir/mnesia"
  cp "$CONF_SRC/rabbitmq.conf" "$dir/rabbitmq.conf"
  cp "$CONF_SRC/enabled_plugins" "$dir/enabled_plugins"
  cat >"$dir/conf.d/10-node.conf" <<EOF
# generated by scripts/cluster.sh for $(node_name "$n")
cluster_name = warren-local
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
# What deploy/rabbitmq/compose.conf says for the compose cluster: the node list for classic
# peer discovery, and the shared definitions (users, permissions, policies).
cluster_formation.classic_config.nodes.1 = $(node_name 1)
cluster_formation.classic_config.nodes.2 = $(node_name 2)
cluster_formation.classic_config.nodes.3 = $(node_name 3)
load_definitions = $CONF_SRC/definitions.json
EOF
}

# Starts node N in the background, detached from this shell (its own session, output in
# <node>/log/console.log). Returns at once.
launch() {
  local n=$1 dir p
  dir=$(node_dir "$n")
  for p in "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(dist_port "$n")"; do
    port_open "$p" && die "port $p is taken by something else; cannot start $(node_name "$n")"
  done
  prepare_node "$n"
  rm -f "$(pid_file "$n")"
  say "starting $(node_name "$n") (AMQP $(amqp_port "$n"), management $(mgmt_port "$n"), distribution $(dist_port "$n"))"
  (
    cd "$dir"
    export RABBITMQ_NODENAME RABBITMQ_DIST_PORT RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE \
      RABBITMQ_PID_FILE RABBITMQ_CONFIG_FILE RABBITMQ_CONFIG_FILES \
      RABBITMQ_ADVANCED_CONFIG_FILE RABBITMQ_ENABLED_PLUGINS_FILE \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS ERL_EPMD_ADDRESS ERL_CRASH_DUMP
    RABBITMQ_NODENAME=$(node_name "$n")
    RABBITMQ_DIST_PORT=$(dist_port "$n")
    RABBITMQ_MNESIA_BASE="$dir/mnesia"
    RABBITMQ_LOG_BASE="$dir/log"
    RABBITMQ_PID_FILE=$(pid_file "$n")
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    RABBITMQ_CONFIG_FILES="$dir/conf.d"
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"   # absent: none
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    ERL_EPMD_ADDRESS=127.0.0.1   # only used if this node has to start epmd itself
    ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
    if command -v setsid >/dev/null 2>&1; then
      setsid nohup "$SBIN/rabbitmq-server" >>"$dir/log/console.log" 2>&1 </dev/null &
    else
      nohup "$SBIN/rabbitmq-server" >>"$dir/log/console.log" 2>&1 </dev/null &
    fi
    echo $! >"$dir/launcher.pid"
  )
}

# Prints the first error lines of node N's logs (the cause, not the crash report after it).
show_errors() {
  local f
  for f in "$(node_dir "$1")/log/console.log" "$(node_dir "$1")/log/$(node_name "$1").log"; do
    if [ -f "$f" ] && grep -q '\[error\]' "$f"; then
      grep -m 12 '\[error\]' "$f" >&2
      return
    fi
  done
  tail -n 12 "$(node_dir "$1")/log/console.log" >&2 2>/dev/null || true
}

# Waits until node N has finished booting (AMQP port open, then await_startup).
wait_booted() {
  local n=$1 name
  name=$(node_name "$n")
  until port_open "$(amqp_port "$n")"; do
    if ! beam_pid "$n" >/dev/null && ! launcher_pid "$n" >/dev/null; then
      say "$name exited while starting; its first errors (logs in $(node_dir "$n")/log/):"
      show_errors "$n"
      exit 1
    fi
    check_deadline "$name did not open AMQP port $(amqp_port "$n") (see $(node_dir "$n")/log/; \
a node that stopped before its peers waits for them to start: try 'scripts/cluster.sh up')"
    sleep 0.5
  done
  ctl "$n" -q await_startup --timeout "$(remaining)" >/dev/null ||
    die "$name did not finish booting (see $(node_dir "$n")/log/)"
}

# Prints the nodes node N sees as running cluster members, one a line.
running_members() {
  local out
  out=$(ctl "$1" -q eval 'rabbit_nodes:all_running().') || return 1
  printf '%s\n' "$out" | tr -d "[]' \n" | tr ',' '\n'
  echo
}

# True if node N is a member (running or not) of node 1's cluster.
is_member_of_1() {
  local out
  out=$(ctl 1 -q eval "lists:member('$(node_name "$1")', rabbit_nodes:all()).") ||
    die "could not ask $(node_name 1) for its cluster members"
  [ "$out" = true ]
}

# rabbitmqctl against node N, its output shown only if it fails.
quietly() {
  local out
  if out=$(ctl "$@" 2>&1); then return 0; fi
  say "rabbitmqctl -n $(node_name "$1") ${*:2} failed:"
  printf '%s\n' "$out" >&2
  return 1
}

# True if node N's beam runs but its RabbitMQ application is stopped (not merely booting).
app_stopped() {
  [ "$(ctl "$1" -q eval 'rabbit_boot_state:get().' 2>/dev/null)" = stopped ]
}

# --- commands ------------------------------------------------------------------------------
cmd_up() {
  prepare_state
  local n started=()
  for n in "${NODES[@]}"; do
    if beam_pid "$n" >/dev/null; then
      say "$(node_name "$n") is already running"
    else
      launch "$n"
      started+=("$n")
    fi
  done
  for n in "${NODES[@]}"; do
    # A node that was already up but had its app stopped (say, an `up` interrupted while
    # joining) gets it started again.
    if [[ " ${started[*]} " != *" $n "* ]] && ! port_open "$(amqp_port "$n")" && app_stopped "$n"; then
      say "starting the RabbitMQ application on $(node_name "$n")"
      ctl "$n" -q start_app >/dev/null || die "start_app failed on $(node_name "$n")"
    fi
    wait_booted "$n"
    say "$(node_name "$n") is up"
  done
  for n in "${NODES[@]:1}"; do
    if is_member_of_1 "$n"; then
      say "$(node_name "$n") is already clustered with $(node_name 1)"
      continue
    fi
    say "joining $(node_name "$n") to $(node_name 1)"
    # join_cluster logs harmless feature-flag warnings on 3.10; show its output only if it fails.
    quietly "$n" stop_app
    quietly "$n" reset || quietly "$n" force_reset
    quietly "$n" join_cluster "$(node_name 1)" || die "$(node_name "$n") could not join $(node_name 1)"
    quietly "$n" start_app || die "start_app failed on $(node_name "$n")"
  done
  local members
  members=$(running_members 1 | sort | tr '\n' ' ')
  for n in "${NODES[@]}"; do
    [[ " $members" == *" $(node_name "$n") "* ]] ||
      die "$(node_name "$n") is not a running member of the cluster (running: $members)"
  done
  print_summary
}

print_summary() {
  local n
  echo "cluster running: $(for n in "${NODES[@]}"; do node_name "$n"; done | tr "\n" " " | sed "s/ $//")"
  for n in "${NODES[@]}"; do
    echo "  $(node_name "$n")  amqp://127.0.0.1:$(amqp_port "$n")  http://127.0.0.1:$(mgmt_port "$n")  (warren/warren)"
  done
  echo "state: $STATE_DIR   CLI: scripts/cluster.sh cli N rabbitmqctl cluster_status"
  echo "WARREN__AMQP__URLS=$(urls)"
}

cmd_down() {
  if [ ! -d "$STATE_DIR" ]; then
    say "no cluster state in $STATE_DIR; nothing to do"
    return 0
  fi
  [ -e "$STATE_DIR/$MARKER" ] || die "$STATE_DIR was not made by this script; not touching it"
  local n pid pids=() stoppers=()
  for n in "${NODES[@]}"; do
    if pid=$(beam_pid "$n"); then
      say "stopping $(node_name "$n") (pid $pid)"
      pids+=("$pid")
      ctl "$n" -q stop >/dev/null 2>&1 &
      stoppers+=("$!")
    fi
  done
  # Wait for the beam processes to exit; past the deadline, kill them.
  local left
  while :; do
    left=()
    for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$(remaining)" -le 5 ]; then
      say "nodes still running after ${TIMEOUT} s; killing pids ${left[*]}"
      kill -9 "${left[@]}" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  for pid in "${stoppers[@]}"; do wait "$pid" 2>/dev/null || true; done
  for n in "${NODES[@]}"; do
    if pid=$(beam_pid "$n"); then die "$(node_name "$n") (pid $pid) is still running; state kept"; fi
  done
  rm -rf "$STATE_DIR"
  say "stopped; removed $STATE_DIR"
}

cmd_kill() {
  valid_node "${1:-}"
  local n=$1 pid
  pid=$(beam_pid "$n") || die "$(node_name "$n") is not running"
  kill -9 "$pid"
  while alive "$pid"; do
    check_deadline "pid $pid did not exit after kill -9"
    sleep 0.2
  done
  say "killed $(node_name "$n") (beam pid $pid, SIGKILL)"
}

cmd_start() {
  valid_node "${1:-}"
  local n=$1
  if [ ! -e "$STATE_DIR/$MARKER" ] || [ ! -d "$(node_dir "$n")/mnesia" ]; then
    die "no cluster state in $STATE_DIR; run 'scripts/cluster.sh up' first"
  fi
  if beam_pid "$n" >/dev/null; then
    say "$(node_name "$n") is already running"
  else
    launch "$n"
  fi
  wait_booted "$n"
  local members
  members=$(running_members "$n" | sort | tr '\n' ' ')
  say "$(node_name "$n") is up; running cluster members: ${members% }"
}

cmd_status() {
  local n pid any=""
  for n in "${NODES[@]}"; do
    if pid=$(beam_pid "$n"); then
      echo "$(node_name "$n"): running (pid $pid), amqp 127.0.0.1:$(amqp_port "$n")"
      [ -n "$any" ] || any=$n
    else
      echo "$(node_name "$n"): not running"
    fi
  done
  [ -n "$any" ] || die "no node is running (state: $STATE_DIR)"
  ctl "$any" cluster_status
}

cmd_cli() {
  valid_node "${1:-}"
  local n=$1 tool=${2:-}
  case "$tool" in
    rabbitmqctl|rabbitmq-queues|rabbitmq-diagnostics|rabbitmq-plugins|rabbitmq-upgrade|rabbitmq-streams) ;;
    *) die "cli: expected a RabbitMQ tool (rabbitmqctl, rabbitmq-queues, rabbitmq-diagnostics, ...), got '$tool'" ;;
  esac
  shift 2
  cli "$n" "$tool" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  kill) cmd_kill "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  status) cmd_status ;;
  urls) urls ;;
  cli) shift; cmd_cli "$@" ;;
  *) usage ;;
esac
