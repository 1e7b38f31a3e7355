#!/usr/bin/env bash
# A RabbitMQ 4.x node for running the tests against 4.x on a machine whose own packages are
# older (Debian 12 has 3.10). Debian 13 (trixie) has rabbitmq-server 4.0.5, but its Erlang
# needs a newer glibc than Debian 12's, so this script installs it into a trixie chroot
# (debootstrap) and runs it from there, side by side with any broker already on 5672, which
# it never touches. Needs root (debootstrap, chroot, mount).
#
#   scripts/rabbit4.sh up          create the chroot if missing, start the node, wait until it
#                                  accepts AMQP connections, print its URL (idempotent)
#   scripts/rabbit4.sh down        stop the node, unmount proc and dev from the chroot, delete
#                                  the node's data (each `up` starts an empty broker); the
#                                  chroot stays cached on disk, so the next `up` is fast
#   scripts/rabbit4.sh status      whether the node runs, and the broker's version
#   scripts/rabbit4.sh url         the AMQP URL only, for WARREN_TEST_AMQP_URL
#   scripts/rabbit4.sh ctl ARGS... rabbitmqctl inside the chroot against the node, e.g.
#                                  scripts/rabbit4.sh ctl eval 'application:set_env(rabbit, consumer_timeout, 10000).'
#   scripts/rabbit4.sh cli TOOL ARGS...
#                                  the same for rabbitmq-queues, rabbitmq-diagnostics, ...
#
#   WARREN_TEST_AMQP_URL=$(scripts/rabbit4.sh url) cargo test ...
#
#   node               AMQP  management (guest/guest)  Erlang distribution
#   rabbit4@localhost  5700  http://127.0.0.1:15700    25700
#
# Ports: WARREN_RABBIT4_PORT (default 5700) sets the AMQP port; management is that + 10000 and
# Erlang distribution + 20000, so none collides with the machine's broker (5672, 15672,
# 25672) or with scripts/cluster.sh (5681-5683, 15681-15683, 25681-25683). With another port
# the node is rabbit4-PORT@localhost, with its own state. Everything listens on 127.0.0.1.
#
# Settings: RabbitMQ's defaults except the listeners, plus rabbitmq_management. The defaults
# include consumer_timeout (30 min); WARREN_RABBIT4_CONSUMER_TIMEOUT (milliseconds) sets it in
# the config at the next start, or change it on the running node with
# `ctl eval 'application:set_env(rabbit, consumer_timeout, MS).'` (new channels; not kept).
#
# The chroot: ${WARREN_RABBIT4_DIR:-/var/cache/warren/rabbit4-trixie}, made once by
# `debootstrap --variant=minbase --include=rabbitmq-server trixie` from the Debian mirror of
# this machine's apt sources (WARREN_RABBIT4_MIRROR overrides it; debootstrap is installed
# with apt-get if missing). The chroot shares the machine's network and processes: `up`
# mounts proc and binds /dev into it, `down` unmounts both once no process runs in it.
# The node's state (data, logs, pid file, config, its own Erlang cookie in home/) is in
# <chroot>/srv/warren-rabbit4-PORT; the server and the CLI tools run with that HOME and a
# clean environment, so neither the machine's cookie nor its rabbitmq-env.conf is used.
# The node registers with the machine's epmd (port 4369) like any Erlang node here; if none
# runs, the node starts one inside the chroot, which `down` stops again once no node is
# registered with it.
#
# Each command gives up with a message after WARREN_RABBIT4_TIMEOUT seconds (default 90; the
# first `up`'s debootstrap does not count) and exits non-zero on failure.
set -euo pipefail

CHROOT="${WARREN_RABBIT4_DIR:-/var/cache/warren/rabbit4-trixie}"
PORT="${WARREN_RABBIT4_PORT:-5700}"
TIMEOUT="${WARREN_RABBIT4_TIMEOUT:-90}"
SUITE=trixie
HOST=localhost

say() { printf 'rabbit4.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "$PORT" in
  ''|*[!0-9]*) die "WARREN_RABBIT4_PORT must be a port number, got '$PORT'" ;;
esac
if [ "$PORT" -lt 1024 ] || [ "$PORT" -gt 45535 ]; then die "WARREN_RABBIT4_PORT must be 1024-45535"; fi
case "${WARREN_RABBIT4_CONSUMER_TIMEOUT:-0}" in
  *[!0-9]*) die "WARREN_RABBIT4_CONSUMER_TIMEOUT must be milliseconds, got '$WARREN_RABBIT4_CONSUMER_TIMEOUT'" ;;
esac
case "$CHROOT" in
  /*) CHROOT=${CHROOT%/} ;;
  *) die "WARREN_RABBIT4_DIR must be an absolute path, got '$CHROOT'" ;;
esac
[ -n "$CHROOT" ] || die "refusing to use / as the chroot"

MGMT_PORT=$((PORT + 10000))
DIST_PORT=$((PORT + 20000))
if [ "$PORT" = 5700 ]; then NAME=rabbit4; else NAME="rabbit4-$PORT"; fi
NODE="$NAME@$HOST"
URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
STATE="/srv/warren-$NAME"          # inside the chroot; on this machine: $CHROOT$STATE
PID_FILE="$STATE/$NAME.pid"        # written by RabbitMQ: the beam's pid
READY="$CHROOT/.warren-rabbit4"    # written once debootstrap has succeeded
# The environment of everything run inside the chroot, and nothing else.
ENV=(
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "HOME=$STATE/home"
  "LANG=C.UTF-8" "LC_ALL=C.UTF-8"
  "RABBITMQ_CONF_ENV_FILE=$STATE/rabbitmq-env.conf"
)

# --- deadline: one per command -----------------------------------------------------------
DEADLINE=$((SECONDS + TIMEOUT))
restart_deadline() { DEADLINE=$((SECONDS + TIMEOUT)); }
remaining() { echo $((DEADLINE - SECONDS)); }
check_deadline() {
  [ "$(remaining)" -gt 0 ] || die "gave up after ${TIMEOUT} s: $1"
}

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount); run it with sudo"
}

# One command at a time per chroot (two `up`s at once would both debootstrap or launch).
lock() {
  mkdir -p "$(dirname "$CHROOT")"
  exec 9>"$CHROOT.lock"
  flock -w "$TIMEOUT" 9 || die "another rabbit4.sh holds $CHROOT.lock"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# True if process PID runs inside the chroot (or DIR): its root directory is that.
in_chroot() {
  [ "$(readlink "/proc/$1/root" 2>/dev/null)" = "${2:-$CHROOT}" ]
}

# Pids of all processes running inside the chroot (or DIR), one a line.
chroot_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if in_chroot "$pid" "${1:-$CHROOT}"; then echo "$pid"; fi
  done
  return 0
}

# The node's beam.smp pid, if that process is alive (RabbitMQ writes it into the pid file).
# A stale pid file's number may since have gone to another process, even another broker's
# beam: the process must also run in the chroot with this node's RABBITMQ_PID_FILE.
beam_pid() {
  local f="$CHROOT$PID_FILE" pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  alive "$pid" && in_chroot "$pid" || return 1
  case "$(ps -o comm= -p "$pid" 2>/dev/null)" in
    beam*) ;;
    *) return 1 ;;
  esac
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_PID_FILE=$PID_FILE" ||
    return 1
  echo "$pid"
}

# The pid of the launcher (chroot, then the rabbitmq-server script) while it runs in the
# chroot. (Right after `launch` it may not have entered the chroot yet: see $LAUNCHER.)
LAUNCHER=""
launcher_pid() {
  local f="$CHROOT$STATE/launcher.pid" pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  alive "$pid" && in_chroot "$pid" && echo "$pid"
}

# The package's own scripts (Debian's /usr/sbin/rabbitmq-* switch to the rabbitmq user),
# as a path inside the chroot.
sbin() {
  local d
  d=$(find "$CHROOT/usr/lib/rabbitmq/lib" -maxdepth 2 -type d -name sbin \
        -path '*/rabbitmq_server-*' 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$d" ] || [ ! -x "$d/rabbitmq-server" ]; then
    die "no RabbitMQ in $CHROOT (remove the directory and run 'scripts/rabbit4.sh up' again)"
  fi
  echo "${d#"$CHROOT"}"
}

# Runs CMD ARGS... inside the chroot with the node's environment.
in_root() { chroot "$CHROOT" /usr/bin/env -i "${ENV[@]}" "$@"; }

# Runs RabbitMQ CLI tool TOOL against the node, bounded by the deadline: cli TOOL ARGS...
cli() {
  local tool=$1
  shift
  check_deadline "$tool $*"
  timeout --kill-after=5 "$(remaining)" chroot "$CHROOT" /usr/bin/env -i "${ENV[@]}" \
    "$(sbin)/$tool" -n "$NODE" "$@"
}
ctl() { cli rabbitmqctl "$@"; }

# --- the chroot ----------------------------------------------------------------------------
# The Debian archive this machine's apt uses (deb822 or one-line sources), else deb.debian.org.
mirror() {
  if [ -n "${WARREN_RABBIT4_MIRROR:-}" ]; then echo "$WARREN_RABBIT4_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null |
      sed -n -e 's/^[[:space:]]*URIs:[[:space:]]*//p' \
             -e 's/^[[:space:]]*deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}//p' |
      tr -s ' \t' '\n' | grep -E '^(https?|file)://.*/debian/?$' | head -n 1) || true
  echo "${m:-http://deb.debian.org/debian}"
}

# True if anything is mounted at or below DIR.
has_mounts() {
  findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1 { f = 1 } END { exit !f }'
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return
  command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and there is no apt-get"
  say "installing debootstrap from Debian's packages"
  if ! apt-cache show debootstrap >/dev/null 2>&1; then apt-get update -q >/dev/null; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
    die "could not install debootstrap"
}

# Makes the chroot if it is missing: debootstrap into <dir>.partial, then rename, so a
# half-made one is never taken for a ready one.
ensure_chroot() {
  if [ -e "$READY" ]; then return; fi
  [ ! -e "$CHROOT" ] || [ -z "$(ls -A "$CHROOT")" ] ||
    die "$CHROOT exists but was not made by this script; remove it or set WARREN_RABBIT4_DIR"
  ensure_debootstrap
  local tmp="$CHROOT.partial" m t0=$SECONDS
  if [ -e "$tmp" ]; then
    has_mounts "$tmp" && die "$tmp (a failed debootstrap) still has mounts; unmount them first"
    say "removing $tmp, left by a failed debootstrap"
    rm -rf --one-file-system "$tmp"
  fi
  m=$(mirror)
  say "creating the $SUITE chroot with rabbitmq-server in $CHROOT from $m (about a minute)"
  mkdir -p "$tmp"
  if ! debootstrap --variant=minbase --include=rabbitmq-server "$SUITE" "$tmp" "$m" \
      >"$tmp.log" 2>&1; then
    say "debootstrap failed; the end of its log ($tmp.log):"
    tail -n 20 "$tmp.log" >&2
    [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 20 "$tmp/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  # Whatever a package's install script may have started in there must not keep running.
  local pids
  pids=$(chroot_pids "$tmp" | tr '\n' ' ')
  [ -z "$pids" ] || die "processes left running in $tmp by the package installs: $pids"
  has_mounts "$tmp" && die "debootstrap left mounts in $tmp"
  if [ -d "$CHROOT" ]; then rmdir "$CHROOT"; fi   # empty, as checked above
  mv "$tmp" "$CHROOT"
  mv "$tmp.log" "$CHROOT/.warren-debootstrap.log"
  date -u +%FT%TZ >"$READY"
  say "chroot ready in $((SECONDS - t0)) s"
}

mount_fs() {
  mountpoint -q "$CHROOT/proc" || mount -t proc proc "$CHROOT/proc"
  mountpoint -q "$CHROOT/dev" || mount --bind /dev "$CHROOT/dev"
}

unmount_fs() {
  local m
  for m in dev proc; do
    if mountpoint -q "$CHROOT/$m"; then
      umount "$CHROOT/$m" || die "could not unmount $CHROOT/$m"
    fi
  done
}

# The node's files: state directory, cookie, an empty rabbitmq-env.conf (Debian's would set
# the node name), the config with this node's listeners, the plugins.
prepare_state() {
  local dir="$CHROOT$STATE"
  mkdir -p "$dir/home" "$dir/log" "$dir/mnesia" "$dir/conf.d"
  local cookie="$dir/home/.erlang.cookie"
  if [ ! -s "$cookie" ]; then
    (umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie")
    chmod 400 "$cookie"
  fi
  echo "# empty on purpose: keeps Debian's rabbitmq-env.conf away from this node" \
    >"$dir/rabbitmq-env.conf"
  {
    echo "# generated by scripts/rabbit4.sh for $NODE: RabbitMQ's defaults but the listeners"
    echo "listeners.tcp.local = 127.0.0.1:$PORT"
    echo "management.tcp.ip = 127.0.0.1"
    echo "management.tcp.port = $MGMT_PORT"
    if [ -n "${WARREN_RABBIT4_CONSUMER_TIMEOUT:-}" ]; then
      echo "consumer_timeout = $WARREN_RABBIT4_CONSUMER_TIMEOUT"
    fi
  } >"$dir/rabbitmq.conf"
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  # `localhost` must resolve inside the chroot (debootstrap does not write /etc/hosts).
  if ! grep -qsE '^[[:space:]]*127\.0\.0\.1[[:space:]].*\blocalhost\b' "$CHROOT/etc/hosts"; then
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
      >>"$CHROOT/etc/hosts"
  fi
}

# Starts the node in the background, detached from this shell (its own session, output in
# <state>/log/console.log, without the lock's descriptor). Returns at once.
launch() {
  local p s
  for p in "$PORT" "$MGMT_PORT" "$DIST_PORT"; do
    port_open "$p" && die "port $p is taken by something else; cannot start $NODE"
  done
  prepare_state
  s=$(sbin)
  rm -f "$CHROOT$PID_FILE"
  p=${s%/sbin}
  say "starting $NODE (RabbitMQ ${p##*/rabbitmq_server-}; AMQP $PORT, management $MGMT_PORT, \
distribution $DIST_PORT)"
  s="$s/rabbitmq-server"
  setsid nohup chroot "$CHROOT" /usr/bin/env -i "${ENV[@]}" \
    "RABBITMQ_NODENAME=$NODE" \
    "RABBITMQ_DIST_PORT=$DIST_PORT" \
    "RABBITMQ_MNESIA_BASE=$STATE/mnesia" \
    "RABBITMQ_LOG_BASE=$STATE/log" \
    "RABBITMQ_PID_FILE=$PID_FILE" \
    "RABBITMQ_CONFIG_FILE=$STATE/rabbitmq.conf" \
    "RABBITMQ_CONFIG_FILES=$STATE/conf.d" \
    "RABBITMQ_ADVANCED_CONFIG_FILE=$STATE/advanced.config" \
    "RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/enabled_plugins" \
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}" \
    "ERL_EPMD_ADDRESS=127.0.0.1" \
    "ERL_CRASH_DUMP=$STATE/log/erl_crash.dump" \
    "$s" >>"$CHROOT$STATE/log/console.log" 2>&1 </dev/null 9>&- &
  LAUNCHER=$!
  echo "$LAUNCHER" >"$CHROOT$STATE/launcher.pid"
}

# Prints the first error lines of the node's logs (the cause, not the crash report after it).
show_errors() {
  local f
  for f in "$CHROOT$STATE/log/console.log" "$CHROOT$STATE/log/$NODE.log"; do
    if [ -f "$f" ] && grep -q '\[error\]' "$f"; then
      grep -m 12 '\[error\]' "$f" >&2
      return
    fi
  done
  tail -n 12 "$CHROOT$STATE/log/console.log" >&2 2>/dev/null || true
}

# Waits until the node has finished booting (AMQP port open, then await_startup).
wait_booted() {
  until port_open "$PORT"; do
    # $LAUNCHER is this shell's own child, so its pid cannot have been reused.
    if ! beam_pid >/dev/null && ! alive "$LAUNCHER" && ! launcher_pid >/dev/null; then
      say "$NODE exited while starting; its first errors (logs in $CHROOT$STATE/log/):"
      show_errors
      exit 1
    fi
    check_deadline "$NODE did not open AMQP port $PORT (see $CHROOT$STATE/log/)"
    sleep 0.5
  done
  ctl -q await_startup --timeout "$(remaining)" >/dev/null ||
    die "$NODE did not finish booting (see $CHROOT$STATE/log/)"
}

# PIDS and all their descendants, but any epmd (it outlives nodes), on one line.
family() {
  ps -e -o pid=,ppid=,comm= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2; name[$1] = $3 }
    END {
      do {
        grew = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
      } while (grew)
      for (p in keep) if (name[p] != "epmd") printf "%s ", p
    }'
}

# The names of other nodes of this script (other WARREN_RABBIT4_PORTs) running in the chroot.
other_nodes() {
  local pid f
  for pid in $(chroot_pids); do
    case "$(ps -o comm= -p "$pid" 2>/dev/null)" in beam*) ;; *) continue ;; esac
    f=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^RABBITMQ_NODENAME=//p')
    [ -n "$f" ] && [ "$f" != "$NODE" ] && echo "$f"
  done
  return 0
}

# An epmd that the node started inside the chroot (because none ran here) is stopped once no
# node is registered with it; one that other nodes use is left, as epmd always is.
stop_chroot_epmd() {
  local pid names
  for pid in $(chroot_pids); do
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = epmd ] || continue
    names=$(in_root epmd -names 2>/dev/null | grep -c '^name ' || true)
    if [ "${names:-0}" = 0 ]; then
      say "stopping the epmd the node started in the chroot (pid $pid)"
      in_root epmd -kill >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      while alive "$pid"; do
        check_deadline "epmd (pid $pid) did not exit"
        sleep 0.2
      done
    else
      say "epmd (pid $pid, started in the chroot) still has $names node(s) registered; leaving it"
    fi
  done
}

# --- commands ------------------------------------------------------------------------------
cmd_up() {
  need_root
  lock
  ensure_chroot
  restart_deadline
  local pid
  if pid=$(beam_pid); then
    if port_open "$PORT"; then
      say "$NODE is already running (pid $pid)"
    else
      say "$NODE (pid $pid) is running; waiting for it to accept connections"
      mount_fs
      wait_booted
    fi
  else
    port_open "$PORT" && die "port $PORT answers, but not $NODE from $CHROOT; set WARREN_RABBIT4_PORT"
    mount_fs
    launch
    wait_booted
    say "$NODE is up ($(ctl -q eval 'rabbit_misc:version().' | tr -d '"'))"
  fi
  echo "$URL"
}

cmd_down() {
  need_root
  if [ ! -e "$READY" ]; then
    say "no chroot in $CHROOT; nothing to do"
    return 0
  fi
  lock
  local pid lp stopper="" helpers=() left
  if pid=$(beam_pid); then
    # The launcher and the beam's helpers (erl_child_setup, inet_gethost, memsup, ...) exit
    # with the beam; an exited process may linger a moment (no longer in the chroot by its
    # root, yet still in the process table), so wait for these very pids to go.
    lp=$(launcher_pid) || lp=""
    read -r -a helpers <<<"$(family "$pid" "$lp")"
    say "stopping $NODE (pid $pid)"
    ctl -q stop >/dev/null 2>&1 &
    stopper=$!
    while alive "$pid"; do
      if [ "$(remaining)" -le 5 ]; then
        say "$NODE still running after ${TIMEOUT} s; killing pid $pid"
        kill -9 "$pid" 2>/dev/null || true
        sleep 1
        break
      fi
      sleep 0.5
    done
    wait "$stopper" 2>/dev/null || true
  else
    say "$NODE is not running"
    if pid=$(launcher_pid); then helpers+=("$pid"); fi
  fi
  for pid in "${helpers[@]}"; do
    while alive "$pid"; do
      check_deadline "pid $pid ($(ps -o args= -p "$pid" 2>/dev/null)) did not exit with the node"
      sleep 0.2
    done
  done
  # Each `up` starts an empty broker (as scripts/cluster.sh does): no queues left from before.
  rm -rf --one-file-system "${CHROOT:?}$STATE"
  if [ -n "$(other_nodes)" ]; then
    say "stopped, removed the node's data; proc and dev stay mounted for the other node(s)" \
      "still running in $CHROOT: $(other_nodes | paste -sd' ' -)"
    return 0
  fi
  stop_chroot_epmd
  left=$(chroot_pids | paste -sd, -)
  if [ -n "$left" ]; then
    ps -o pid,args -p "$left" >&2 || true
    die "processes still run in $CHROOT (pids: $left); proc and dev stay mounted"
  fi
  unmount_fs
  say "stopped; unmounted proc and dev, removed the node's data (the chroot stays in $CHROOT)"
}

cmd_status() {
  local pid
  if [ ! -e "$READY" ]; then
    echo "$NODE: not running (no chroot in $CHROOT yet; 'scripts/rabbit4.sh up' makes it)"
    return 1
  fi
  if ! pid=$(beam_pid); then
    echo "$NODE: not running (chroot $CHROOT)"
    return 1
  fi
  if port_open "$PORT"; then
    echo "$NODE: running (pid $pid), $URL, http://127.0.0.1:$MGMT_PORT"
  else
    echo "$NODE: running (pid $pid) but not accepting AMQP connections on $PORT (booting?)"
  fi
  echo "RabbitMQ $(ctl -q eval 'rabbit_misc:version().' | tr -d '"'), Erlang/OTP \
$(ctl -q eval 'erlang:system_info(otp_release).' | tr -d '"')"
}

cmd_cli() {
  local tool=${1:-}
  case "$tool" in
    rabbitmqctl|rabbitmq-queues|rabbitmq-diagnostics|rabbitmq-plugins|rabbitmq-upgrade|rabbitmq-streams) ;;
    *) die "cli: expected a RabbitMQ tool (rabbitmqctl, rabbitmq-queues, rabbitmq-diagnostics, ...), got '$tool'" ;;
  esac
  shift
  need_root
  beam_pid >/dev/null || die "$NODE is not running; run 'scripts/rabbit4.sh up' first"
  cli "$tool" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  ctl) shift; cmd_cli rabbitmqctl "$@" ;;
  cli) shift; cmd_cli "$@" ;;
  *) usage ;;
esac
