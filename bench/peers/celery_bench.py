#!/usr/bin/env python3
"""Celery 5 on the same broker as warren-bench: no-op tasks, acks_late, a quorum queue,
publisher confirms, persistent messages, no result backend.

The script declares a fresh durable quorum queue (`celery-bench-<8 hex>`), starts W Celery
workers as child processes (`celery worker` through `app.worker_main`, C tasks at once each),
waits until each consumes the queue, publishes N no-op tasks with `apply_async` from P threads
(confirms on), waits until every task has completed, and reports the publish rate, the
end-to-end rate (N over first publish to last completion), and the CPU seconds of the workers,
the broker and the publisher during that window. With --drain it publishes first and starts
the workers afterwards. It then stops the workers (SIGTERM, SIGKILL after a timeout), checks
that the queue is empty, and deletes it and whatever shared Celery entities the run created.

Completions are counted by a `task_success` receiver in every process that runs tasks: it
appends the completion time (8 bytes) to a file this script watches (O_APPEND, so the file's
size over 8 is the number of completions, whichever process wrote them). That costs one
write(2) per task.

See README.md beside this file for how it maps to warren-bench's figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import struct
import sys
import threading
import time
import uuid
from pathlib import Path

import celery
import kombu
import kombu.exceptions
import psutil
from celery import Celery, signals
from kombu import Connection, Exchange, Queue

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
TASK_NAME = "celery_bench.noop"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL = 0.01
STAMP = struct.Struct("<q")
ROOT = Path(__file__).resolve().parents[2]

# Names Celery >= 5.5 declares on the broker when a worker consumes a quorum queue (the
# DelayedDelivery bootstep, which cannot be given a prefix from Celery's settings): 28 quorum
# queues and topic exchanges `celery_delayed_0` .. `celery_delayed_27`, and the topic exchange
# `celery_delayed_delivery`; and the remote-control fanout exchange `celery.pidbox`. The
# benchmark deletes those that did not exist before it started.
DELAYED_LEVELS = [f"celery_delayed_{level}" for level in range(28)]
SHARED_EXCHANGES = DELAYED_LEVELS + ["celery_delayed_delivery", "celery.pidbox"]


def task_queue(name: str) -> Queue:
    """The run's durable quorum queue, bound to a direct exchange of the same name (what
    Celery's automatic routing would declare for a queue named in task_queues)."""
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def make_app(url: str, queue: str, prefetch_multiplier: int, publishers: int = 1) -> Celery:
    app = Celery("celery_bench", broker=url, set_as_current=True)
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        broker_pool_limit=max(10, publishers),
        broker_connection_retry_on_startup=True,
        task_queues=[task_queue(queue)],
        task_default_queue=queue,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_delivery_mode="persistent",
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        worker_prefetch_multiplier=prefetch_multiplier,
        # Default True since 5.5: with a quorum queue among task_queues the worker sets
        # per-consumer QoS (global QoS is not supported by quorum queues). Set explicitly.
        worker_detect_quorum_queues=True,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
    )

    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
    def noop():
        return None

    return app


# ---------------------------------------------------------------- worker side


class CompletionCounter:
    """Appends the completion time (8 bytes, little-endian ns since the epoch) to a shared file
    per successful task, from whichever process ran it: O_APPEND makes each append atomic, so
    the file's size over 8 is the number of completions."""

    def __init__(self, path: str):
        self.path = path
        self.fd = None
        self.pid = None
        self.lock = threading.Lock()

    def __call__(self, sender=None, **_):
        if getattr(sender, "name", None) != TASK_NAME:
            return
        pid = os.getpid()
        if self.pid != pid:  # first task in this process (a prefork child gets its own fd)
            with self.lock:
                if self.pid != pid:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self.pid = pid
        os.write(self.fd, STAMP.pack(time.time_ns()))


def run_worker(args) -> None:
    app = make_app(args.amqp_url, args.queue, args.prefetch_multiplier)
    counter = CompletionCounter(args.counter)
    signals.task_success.connect(counter, weak=False)
    argv = [
        "worker",
        f"--pool={args.pool}",
        f"--concurrency={args.concurrency}",
        f"--queues={args.queue}",
        f"--hostname={args.hostname}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv)


# ---------------------------------------------------------------- benchmark side


def broker_info(url: str) -> str:
    with Connection(url) as conn:
        conn.connect()
        props = conn.connection.server_properties
        product = props.get("product", "RabbitMQ")
        version = props.get("version", "?")
        if isinstance(product, bytes):
            product = product.decode()
        if isinstance(version, bytes):
            version = version.decode()
        return f"{product} {version}"


def queue_state(url: str, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) by a passive declare, or None if there is no such queue."""
    with Connection(url) as conn:
        channel = conn.channel()
        try:
            ok = channel.queue_declare(queue=name, passive=True)
        except Exception:
            return None
        return ok.message_count, ok.consumer_count


def existing(url: str, kind: str, names: list[str]) -> set[str]:
    """Which of these queues or exchanges exist (passive declares, a channel each)."""
    found = set()
    with Connection(url) as conn:
        for name in names:
            channel = conn.channel()
            try:
                if kind == "queue":
                    channel.queue_declare(queue=name, passive=True)
                else:
                    channel.exchange_declare(exchange=name, type="topic", passive=True)
                found.add(name)
            except Exception:
                pass
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return found


def delete_entities(url: str, queues: list[str], exchanges: list[str]) -> None:
    with Connection(url) as conn:
        for name in queues:
            channel = conn.channel()
            try:
                channel.queue_delete(queue=name)
            except Exception as err:
                print(f"warning: could not delete queue {name}: {err}", file=sys.stderr)
        for name in exchanges:
            channel = conn.channel()
            try:
                channel.exchange_delete(exchange=name)
            except Exception as err:
                print(f"warning: could not delete exchange {name}: {err}", file=sys.stderr)


def broker_pid() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            return proc.pid
    return None


def cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return None


def tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and every live descendant."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc] + proc.children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def machine_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(
        t, "steal", 0
    )


class Workers:
    def __init__(self, args, queue: str, counter: str, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        for i in range(1, args.workers + 1):
            log = log_dir / f"worker-{i}.log"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "_worker",
                "--amqp-url", args.amqp_url,
                "--queue", queue,
                "--counter", counter,
                "--pool", args.pool,
                "--concurrency", str(args.concurrency),
                "--prefetch-multiplier", str(args.prefetch_multiplier),
                "--hostname", f"bench-w{i}@{queue}",
                "--loglevel", args.loglevel,
            ]
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            self.procs.append(proc)
            self.logs.append(log)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, url: str, queue: str, count: int) -> None:
        """Until the queue has `count` consumers (each worker consumes it once)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            for proc, log in zip(self.procs, self.logs):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker pid {proc.pid} exited ({proc.returncode}) while starting; see {log}"
                    )
            state = queue_state(url, queue)
            if state and state[1] >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the queue had {state and state[1]} of {count} consumers after {READY_TIMEOUT}s"
                )
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """SIGTERM (Celery's warm shutdown) to all, then SIGKILL whatever is left after a timeout."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        outcomes = []
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                outcomes.append(f"pid {proc.pid}: exit {proc.returncode}")
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        child.kill()
                    except psutil.Error:
                        pass
                proc.kill()
                proc.wait()
                outcomes.append(f"pid {proc.pid}: killed after {STOP_TIMEOUT:.0f}s")
        return outcomes


def publish(app: Celery, n: int, publishers: int) -> tuple[int, int]:
    """Publishes n no-op tasks from `publishers` threads (one pooled connection each); returns
    (first publish, last confirm) in ns since the epoch. Each apply_async waits for its confirm."""
    noop = app.tasks[TASK_NAME]
    shares = [n // publishers + (1 if i < n % publishers else 0) for i in range(publishers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(publishers + 1)

    def run(count: int) -> None:
        try:
            with app.producer_pool.acquire(block=True) as producer:
                producer.connection.ensure_connection()
                barrier.wait()
                for _ in range(count):
                    noop.apply_async(producer=producer)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in shares]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.time_ns()
    for t in threads:
        t.join()
    end = time.time_ns()
    if errors:
        raise RuntimeError(f"publishing failed: {errors[0]!r}")
    return start, end


def completions(counter: str) -> int:
    try:
        return os.stat(counter).st_size // STAMP.size
    except FileNotFoundError:
        return 0


def wait_completions(args, counter: str, workers: Workers) -> int:
    """Polls the counter file until N completions, no progress for --stall-secs, or a worker
    exits; returns the completions seen."""
    last, last_change, reported = -1, time.monotonic(), time.monotonic()
    while True:
        done = completions(counter)
        if done >= args.n:
            return done
        now = time.monotonic()
        if done != last:
            last, last_change = done, now
        elif now - last_change > args.stall_secs:
            return done
        if any(proc.poll() is not None for proc in workers.procs):
            return completions(counter)
        if now - reported > 5:
            progress(args, f"{done} of {args.n} completed")
            reported = now
        time.sleep(POLL)


def completion_span(counter: str) -> tuple[int, int]:
    """(first, last) completion time in ns since the epoch."""
    data = Path(counter).read_bytes()
    stamps = [s for (s,) in STAMP.iter_unpack(data[: len(data) // STAMP.size * STAMP.size])]
    return min(stamps), max(stamps)


class Sample:
    """CPU counters at one moment."""

    def __init__(self, worker_pids: list[int], broker: int | None):
        self.workers = tree_cpu(worker_pids)
        self.broker = cpu_of(broker)
        self.machine = machine_busy()

    def minus(self, before: "Sample", n: int) -> dict:
        def delta(a, b):
            return None if a is None or b is None else a - b

        figures = {
            "worker_cpu_s": delta(self.workers, before.workers),
            "broker_cpu_s": delta(self.broker, before.broker),
            "machine_cpu_s": delta(self.machine, before.machine),
        }
        figures["worker_cpu_us_per_task"] = figures["worker_cpu_s"] * 1e6 / n
        if figures["broker_cpu_s"] is not None:
            figures["broker_cpu_us_per_task"] = figures["broker_cpu_s"] * 1e6 / n
        return figures


def bench(args) -> dict:
    run_id = uuid.uuid4().hex[:8]
    queue = f"celery-bench-{run_id}"
    url = args.amqp_url
    broker = broker_info(url)
    log_dir = ROOT / "target" / "peers-bench" / queue
    log_dir.mkdir(parents=True, exist_ok=True)
    counter = str(log_dir / "completions")
    Path(counter).touch()
    app = make_app(url, queue, args.prefetch_multiplier, args.publishers)
    pre_queues = existing(url, "queue", DELAYED_LEVELS)
    pre_exchanges = existing(url, "exchange", SHARED_EXCHANGES)
    with app.connection_for_write() as conn:
        task_queue(queue)(conn.default_channel).declare()
    progress(args, f"declared quorum queue {queue} on {broker}")

    bpid = broker_pid()
    result: dict = {}
    workers: Workers | None = None
    try:
        if not args.drain:
            workers = Workers(args, queue, counter, log_dir)
            workers.wait_ready(url, queue, args.workers)
            progress(args, f"{args.workers} workers consuming; publishing {args.n} tasks")
            before = Sample(workers.pids, bpid)
        else:
            progress(args, f"publishing {args.n} tasks with no worker running")
        me_0 = cpu_of(os.getpid())
        first_publish, last_confirm = publish(app, args.n, args.publishers)
        me_1 = cpu_of(os.getpid())
        progress(args, f"published in {(last_confirm - first_publish) / 1e9:.2f}s")
        if args.drain:
            before = Sample([], bpid)
            spawned = time.time_ns()
            workers = Workers(args, queue, counter, log_dir)
            progress(args, f"started {args.workers} workers; draining")
        done = wait_completions(args, counter, workers)
        after = Sample(workers.pids, bpid)
        if done < args.n:
            raise RuntimeError(
                f"only {done} of {args.n} tasks completed (stalled or a worker exited); "
                f"logs in {log_dir}"
            )
        first_done, last_done = completion_span(counter)
        publish_s = (last_confirm - first_publish) / 1e9
        result = {
            "system": "celery",
            "version": celery.__version__,
            "kombu": kombu.__version__,
            "mode": "drain" if args.drain else "e2e",
            "N": args.n,
            "W": args.workers,
            "concurrency": args.concurrency,
            "pool": args.pool,
            "prefetch": args.prefetch_multiplier * args.concurrency,
            "publishers": args.publishers,
        }
        if args.drain:
            drain_s = (last_done - first_done) / 1e9
            with_start_s = (last_done - spawned) / 1e9
            result.update(
                {
                    # First completion to last: the workers' steady rate.
                    "tasks_per_s": args.n / drain_s,
                    "seconds": drain_s,
                    # Worker spawn to last completion (what warren-bench backlog's "drained" is).
                    "drain_incl_start_per_s": args.n / with_start_s,
                    "drain_incl_start_seconds": with_start_s,
                }
            )
        else:
            seconds = (last_done - first_publish) / 1e9
            result.update({"tasks_per_s": args.n / seconds, "seconds": seconds})
        result.update(
            {
                "publish_per_s": args.n / publish_s,
                "publish_seconds": publish_s,
                "completed": done,
                "extra_completions": done - args.n,
            }
        )
        result.update(after.minus(before, args.n))
        result["publisher_cpu_s"] = me_1 - me_0
        result.update(
            {
                "worker_cpu_total_s": tree_cpu(workers.pids),
                "broker": broker,
                "amqp_url": redact(url),
                "queue": queue,
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
            }
        )
    finally:
        outcomes = workers.stop() if workers else []
        progress(args, "workers stopped; cleaning up")
        # Unacked deliveries return to the queue once the workers' channels close: an empty
        # queue after the stop means every task was acked.
        state = queue_state(url, queue)
        if result:
            result["left_in_queue"] = state[0] if state else None
            result["worker_exits"] = outcomes
        created_queues = [q for q in DELAYED_LEVELS if q not in pre_queues]
        created_exchanges = [e for e in SHARED_EXCHANGES if e not in pre_exchanges]
        if args.keep_shared:
            created_queues, created_exchanges = [], []
        created_queues = sorted(existing(url, "queue", created_queues))
        created_exchanges = sorted(existing(url, "exchange", created_exchanges))
        delete_entities(url, [queue] + created_queues, [queue] + created_exchanges)
        if not args.keep_logs and result:
            shutil.rmtree(log_dir, ignore_errors=True)
    return result


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


T0 = time.monotonic()


def progress(args, message: str) -> None:
    if not args.quiet:
        print(f"[celery-bench {time.monotonic() - T0:6.2f}s] {message}", file=sys.stderr, flush=True)


def human(r: dict) -> str:
    def per_task(cpu):
        return "-" if cpu is None else f"{cpu:.2f} s ({cpu * 1e6 / r['N']:.0f} us/task)"

    lines = [
        f"Celery {r['version']} (kombu {r['kombu']}) on {r['broker']}, {r['date']}",
        f"N = {r['N']}, W = {r['W']} workers x {r['concurrency']} ({r['pool']} pool, "
        f"prefetch {r['prefetch']}), {r['publishers']} publisher(s), queue {r['queue']} (quorum)",
        f"published  {r['publish_per_s']:>10,.0f} tasks/s  ({r['publish_seconds']:.2f} s, confirms on)",
    ]
    if r["mode"] == "drain":
        lines += [
            f"drained    {r['tasks_per_s']:>10,.0f} tasks/s  ({r['seconds']:.2f} s, first "
            f"completion to last; {r['completed']} completions)",
            f"           {r['drain_incl_start_per_s']:>10,.0f} tasks/s  "
            f"({r['drain_incl_start_seconds']:.2f} s, worker spawn to last completion)",
            "cpu (worker spawn to last completion; workers' startup included; publisher: "
            "while publishing):",
        ]
    else:
        lines += [
            f"completed  {r['tasks_per_s']:>10,.0f} tasks/s  ({r['seconds']:.2f} s, first "
            f"publish to last completion; {r['completed']} completions)",
            "cpu (first publish to last completion; publisher: while publishing):",
        ]
    lines += [
        f"  workers {per_task(r['worker_cpu_s'])}, broker {per_task(r['broker_cpu_s'])}, "
        f"publisher {per_task(r['publisher_cpu_s'])}, whole machine {r['machine_cpu_s']:.2f} s",
        f"left in queue after stop: {r.get('left_in_queue')}; workers: "
        + ", ".join(r.get("worker_exits", [])),
    ]
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["_worker"]:  # how the benchmark starts its workers
        w = argparse.ArgumentParser(prog="celery_bench.py _worker")
        w.add_argument("--amqp-url", required=True)
        w.add_argument("--queue", required=True)
        w.add_argument("--counter", required=True)
        w.add_argument("--pool", required=True)
        w.add_argument("--concurrency", type=int, required=True)
        w.add_argument("--prefetch-multiplier", type=int, required=True)
        w.add_argument("--hostname", required=True)
        w.add_argument("--loglevel", required=True)
        run_worker(w.parse_args(sys.argv[2:]))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", dest="n", type=int, default=20_000,
                        help="tasks to publish (default 20000)")
    parser.add_argument("-w", "--workers", type=int, default=2,
                        help="worker processes to start (default 2, as warren-bench)")
    parser.add_argument("-c", "--concurrency", type=int, default=16,
                        help="tasks each worker runs at once (default 16, as warren-bench)")
    parser.add_argument("--pool", choices=["threads", "prefork", "solo"], default="threads",
                        help="Celery execution pool (default threads)")
    parser.add_argument("--prefetch-multiplier", type=int, default=1,
                        help="worker_prefetch_multiplier; prefetch = this x concurrency "
                             "(default 1: prefetch = concurrency, as a warren worker)")
    parser.add_argument("--publishers", type=int, default=8,
                        help="publishing threads, one connection each (default 8); each "
                             "apply_async waits for its own confirm, so this is also the "
                             "number of confirms outstanding")
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_URL),
                        help="broker URL (env AMQP_URL; default %(default)s)")
    parser.add_argument("--stall-secs", type=float, default=60.0,
                        help="give up after this long without a completion (default 60)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the workers' logs under target/peers-bench/ after a good run")
    parser.add_argument("--keep-shared", action="store_true",
                        help="leave the celery_delayed_* queues and exchanges and the "
                             "celery.pidbox exchange the workers declared (deleted by default "
                             "if this run created them)")
    parser.add_argument("--loglevel", default="WARNING",
                        help="the workers' log level (default WARNING: INFO logs two lines "
                             "per task)")
    parser.add_argument("--drain", action="store_true",
                        help="publish all N with no worker running, then start the workers "
                             "and time the drain (as warren-bench backlog)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

    args = parser.parse_args()
    if args.n < 1 or args.workers < 1 or args.concurrency < 1 or args.publishers < 1:
        parser.error("-n, -w, -c and --publishers must be at least 1")
    if args.pool == "solo" and args.concurrency != 1:
        progress(args, "solo pool runs one task at a time: concurrency reported as 1")
        args.concurrency = 1
    try:
        result = bench(args)
    except (RuntimeError, OSError, kombu.exceptions.KombuError) as err:
        print(f"celery-bench: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
