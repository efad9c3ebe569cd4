# -*- test-case-name: tests.benchmarks.test_benchmarks_signaling -*-
"""Signaling relay benchmark: our server, PeerJS, Python floors, a null echo.

One command, one run, everything on 127.0.0.1::

    python benchmarks/signaling_load.py [--pairs 200] [--duration 10] [--rate 2000]
        [--idle-connections 10000] [--targets holepunch,bare,peerjs,echo] [--json]

For each target in turn, a fresh server process is started and the same load generator
(``benchmarks/signaling/loadgen.c``: one C process with epoll, compiled with gcc at run
time, speaking each server's dialect; it batches frames per connection and spends a few
µs of CPU per message, so it leaves most of the second core to the server) measures

- **full load**: ``pairs`` pairs of connections relay offers to each other with a window
  of offers in flight per connection; delivered offers per second, with the CPU share of
  the server and of the generator over the measurement window;
- **paced latency**: ``rate`` offers per second in total, each sent at its scheduled
  time, p50/p99 of arrival minus scheduled send time (the medians of each run's, and the
  p99 of all runs' offers together), with the VM's steal time over the phase, and the
  p99 of the offers in flight while the host stalled this VM neither by steal (read
  every 20 ms) nor as a real-time canary on each CPU sees it (``signaling/canary.c``);
- **idle memory**: in a second fresh server process, the growth of the server's RSS per
  connection with ``idle-connections`` registered, idle connections.

Targets: ``holepunch`` (our daemon, ``twistd -n holepunch --no-stun`` with its defaults
except the per-connection message rate and the connection and peer limits),
``holepunch-2w`` (the same with ``--workers 2``; ``holepunch-Nw`` for any N),
``holepunch-2n`` (two daemons on one redis-server, half the pairs split across them),
``peerjs`` (the npm ``peer`` server), ``bare`` (a 40-line Autobahn relay without
validation, ``signaling/bare_relay.py``), ``floor`` and ``floor-epoll`` (the least a
relay in Python does, on Twisted's reactor and on a bare ``select.epoll`` loop,
``signaling/floor_relay.py``) and ``echo`` (a Node.js server that echoes each message to
its sender). Node packages come from ``benchmarks/signaling/package-lock.json``;
``npm ci`` is run there if they are missing. Every process started is stopped before the
script exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_DIR = HERE / "signaling"
TARGETS = (
    "holepunch",
    "holepunch-2w",
    "holepunch-2n",
    "bare",
    "floor",
    "floor-epoll",
    "peerjs",
    "echo",
)
TITLES = {
    "holepunch": "holepunch",
    "holepunch-2n": "holepunch, 2 nodes+Redis",
    "bare": "bare Autobahn relay",
    "floor": "Python floor, Twisted",
    "floor-epoll": "Python floor, epoll",
    "peerjs": "PeerJS (peer 1.0.2)",
    "echo": "null echo (Node.js)",
}
WORKERS = re.compile(r"holepunch-(\d+)w")  # holepunch-2w, holepunch-4w: --workers N


def workers_of(target: str) -> int:
    """N for a ``holepunch-Nw`` target, else 0."""
    match = WORKERS.fullmatch(target)
    return int(match.group(1)) if match else 0


def title(target: str) -> str:
    workers = workers_of(target)
    return f"holepunch --workers {workers}" if workers else TITLES[target]


def dialect(target: str) -> str:
    """The generator's dialect for ``target``."""
    return target if target in ("peerjs", "echo") else "holepunch"


START_TIMEOUT = 30.0
STEAL_NOTICE_MS = 50.0
"""Steal time in a paced phase that the table points out (the p99 it can move)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchmarkError(RuntimeError):
    """A server or the generator failed; the message says which and why."""


# --- processes -----------------------------------------------------------------------------


# ``twistd holepunch`` with the daemon's defaults except the limits a single-host load test
# hits: the per-connection message rate and the connection and peer counts; and relays
# between peers in no common room (the generator's dialect has no rooms).
HOLEPUNCH_LIMITS = [
    "--message-rate=1e9",
    "--message-burst=1000000000",
    "--max-connections=50000",
    "--max-connections-per-address=50000",
    "--max-peers=50000",
    "--open-relay",  # the generator's pairs relay without joining a room
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot say)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def holepunch_argv(port: int, log: Path, *extra: str) -> list[str]:
    """``twistd holepunch`` on 127.0.0.1:``port`` (see :data:`HOLEPUNCH_LIMITS`)."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        f"--logfile={log}",
        "holepunch",
        "--no-stun",
        f"--signaling=tcp:{port}:interface=127.0.0.1:backlog=1024",
        *HOLEPUNCH_LIMITS,
        *extra,
    ]


def server_argv(target: str, port: int, log_dir: Path) -> list[str]:
    """The command that runs ``target``; 0 lets a server that prints its port choose."""
    if target == "holepunch":
        return holepunch_argv(port, log_dir / "twistd-holepunch.log")
    if workers_of(target):
        log = log_dir / f"twistd-{target}.log"
        return holepunch_argv(port, log, f"--workers={workers_of(target)}")
    if target == "bare":
        return [sys.executable, str(NODE_DIR / "bare_relay.py"), str(port)]
    if target in ("floor", "floor-epoll"):
        bare_loop = ["--no-twisted"] if target == "floor-epoll" else []
        return [sys.executable, str(NODE_DIR / "floor_relay.py"), str(port), *bare_loop]
    if target == "peerjs":
        return ["node", str(NODE_DIR / "peerjs_server.mjs"), str(port)]
    if target == "echo":
        return ["node", str(NODE_DIR / "echo_server.mjs"), str(port)]
    raise ValueError(f"unknown target {target!r}")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class LineReader:
    """Reads whole lines from a child's stdout with a deadline, without blocking past it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def line(self, deadline: float) -> bytes | None:
        """The next line, or None at end of file; raises TimeoutError after ``deadline``."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


class Processes:
    """Every child process of the run; :meth:`stop_all` ends each one by its own id."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        name: str,
        stdin: bool = False,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (on ``cpus`` only, with its children, when given)."""
        stderr = open(self.log_dir / f"{name}.log", "ab")  # closed below, the child keeps it
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(),
            cwd=str(NODE_DIR),
            start_new_session=True,
            preexec_fn=pin,
        )
        stderr.close()
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc)


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, user + system CPU seconds), from /proc."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants (workers, a private redis-server)."""
    table = _processes()
    found, queue = set(pids), list(pids)
    while queue:
        parent = queue.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                queue.append(pid)
    return sorted(found)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` and their descendants, from /proc."""
    table = _processes()
    return sum(table[p][1] for p in tree(pids) if p in table)


def steal_ms() -> dict[int, float]:
    """Each CPU's steal time so far (ms): time the hypervisor ran something else while
    this virtual CPU had work. A process on a CPU with steal stalls for that long, and
    its latencies with it, whatever the process is."""
    stolen: dict[int, float] = {}
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and len(fields) > 7:
                stolen[int(name[3:])] = int(fields[7]) * 1000 / CLK_TCK
    return stolen


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of the sorted ``ordered``, nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]


def read_offers(path: Path) -> list[tuple[float, float]]:
    """The ``(send time, latency)`` of each offer the generator dumped to ``path`` (ms;
    send times from the start of the paced phase)."""
    with contextlib.suppress(OSError), path.open() as f:
        rows = (line.split() for line in f if line.strip())
        return [(float(sent), float(latency)) for sent, latency in rows]
    return []


STEAL_READING = 0.02
"""Seconds between two readings of the steal time during a paced phase."""


class StealReadings:
    """Reads the VM's steal time (all CPUs) every :data:`STEAL_READING` seconds, in a
    thread, from :meth:`start` until :meth:`stop`: when, not only how much, the host took
    CPU time from this VM. Each reading is ``(time.monotonic() in ms, steal in ms)``; the
    clock is the generator's (``CLOCK_MONOTONIC``)."""

    def __init__(self) -> None:
        self.readings: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, name="steal", daemon=True)

    def _read(self) -> None:
        while True:
            self.readings.append((time.monotonic() * 1e3, sum(steal_ms().values())))
            if self._done.wait(STEAL_READING):
                self.readings.append((time.monotonic() * 1e3, sum(steal_ms().values())))
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        if self._thread.is_alive():
            self._done.set()
            self._thread.join(5.0)
        return self.readings


def stalled_spans(readings: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The spans (ms) when the host may have stalled this VM, one per rise of the steal
    time: from the reading before the one it rose from to the reading after the one it
    rose to. The kernel shows steal in ticks of 10 ms, so a stall shows in the first
    reading after its tick ended: the span reaches back one reading to cover it.
    (:func:`merged` makes the ones that overlap one.)"""
    last = len(readings) - 1
    return [
        (readings[max(i - 2, 0)][0], readings[min(i + 1, last)][0])
        for i in range(1, len(readings))
        if readings[i][1] > readings[i - 1][1]
    ]


def steady_latencies(
    offers: Sequence[tuple[float, float]], start_ms: float, spans: Sequence[tuple[float, float]]
) -> list[float]:
    """The latencies of the ``offers`` (send time from ``start_ms``, latency) that were in
    flight during none of the stalled ``spans``."""
    ends = [end for _, end in spans]
    kept = []
    for sent, latency in offers:
        sent += start_ms
        i = bisect_left(ends, sent)  # the first span that ends at or after the send
        if i == len(spans) or spans[i][0] > sent + latency:
            kept.append(latency)
    return kept


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of ``pids`` and their descendants."""
    total = 0
    for pid in tree(pids):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def wait_for_port(proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    while proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.1)
    raise BenchmarkError(f"the server exited at startup (status {proc.returncode})")


def wait_for_workers(port: int, count: int, deadline: float) -> None:
    """Wait until the daemon's ``/p2p/stats`` counts ``count`` workers reporting."""
    import urllib.request

    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/p2p/stats", timeout=2) as r:
                if json.load(r)["workers"]["reporting"] >= count:
                    return
        time.sleep(0.2)
    raise TimeoutError


@contextlib.contextmanager
def running_server(
    processes: Processes, target: str, cpus: set[int] | None = None
) -> Iterator[tuple[list[int], str]]:
    """Start ``target`` (on ``cpus``, when given); yield its process ids and its ws://
    URL(s); stop it afterwards."""
    if target == "holepunch-2n":
        with two_nodes(processes) as running:
            yield running
        return
    # twistd cannot say which port it got, so it is given one; the others print theirs.
    port = free_port() if target.startswith("holepunch") else 0
    proc = processes.start(
        server_argv(target, port, processes.log_dir), f"server-{target}", cpus=cpus
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        if port:
            wait_for_port(proc, port, deadline)
        else:
            line = LineReader(proc).line(deadline)
            if line is None:
                raise BenchmarkError(f"{target} server exited at startup (see its log)")
            port = int(json.loads(line)["port"])
        if workers_of(target):
            wait_for_workers(port, workers_of(target), deadline)
        yield [proc.pid], f"ws://127.0.0.1:{port}/"
        if proc.poll() is not None:
            raise BenchmarkError(f"{target} server died during the run (see its log)")
    except TimeoutError:
        raise BenchmarkError(f"{target} server did not start in {START_TIMEOUT:g} s") from None
    finally:
        processes.stop(proc)


@contextlib.contextmanager
def two_nodes(processes: Processes) -> Iterator[tuple[list[int], str]]:
    """A redis-server and two ``twistd holepunch --redis`` daemons on it."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise BenchmarkError("holepunch-2n needs redis-server (Debian package redis-server)")
    redis_port, ports = free_port(), [free_port(), free_port()]
    argv = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis = processes.start([*argv, "--save", "", "--appendonly", "no"], "redis")
    nodes = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        wait_for_port(redis, redis_port, deadline)
        url = f"redis://127.0.0.1:{redis_port}/0"
        for i, port in enumerate(ports):
            log = processes.log_dir / f"twistd-node{i + 1}.log"
            nodes.append(
                processes.start(holepunch_argv(port, log, f"--redis={url}"), f"node{i + 1}")
            )
            wait_for_port(nodes[-1], port, deadline)
        yield (
            [redis.pid, *(n.pid for n in nodes)],
            ",".join(f"ws://127.0.0.1:{p}/" for p in ports),
        )
    except TimeoutError:
        raise BenchmarkError(f"the two nodes did not start in {START_TIMEOUT:g} s") from None
    finally:
        for proc in (*nodes, redis):
            processes.stop(proc)


# --- measurements --------------------------------------------------------------------------


def build_generator(directory: Path, name: str = "loadgen") -> Path:
    """Compile ``signaling/NAME.c`` (the load generator, or the ``canary``) into
    ``directory``; the path of the binary."""
    if shutil.which("gcc") is None:
        raise BenchmarkError("needs gcc to build the load generator (Debian package gcc)")
    binary = directory / name
    proc = subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(NODE_DIR / f"{name}.c"), "-lm"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"gcc could not build {name}.c: {proc.stderr[-2000:]}")
    return binary


CANARY_PERIOD_US = 2000
CANARY_LATE_US = 500
"""The canaries (``signaling/canary.c``) wake every 2 ms at real-time priority and note
each wake more than 0.5 ms late: a CPU that ran nothing of this VM's for that long."""


Canaries = list[tuple[subprocess.Popen[bytes], Path]]


def start_canaries(processes: Processes, canary: Path, run: str) -> Canaries | None:
    """One canary on each CPU, noting its late wakes in ``canary-RUN-CPU.txt``; None when
    they cannot run at real-time priority (not root): then stalls are known from the steal
    time alone."""
    started: Canaries = []
    for cpu in sorted(os.sched_getaffinity(0)):
        note = processes.log_dir / f"canary-{run}-{cpu}.txt"
        proc = processes.start(
            [str(canary), str(cpu), str(CANARY_PERIOD_US), str(CANARY_LATE_US), str(note)],
            f"canary-{cpu}",
        )
        started.append((proc, note))
        try:
            line = LineReader(proc).line(time.monotonic() + 10.0)
        except TimeoutError:
            line = None
        if line != b"ready":
            stop_canaries(processes, started)
            return None
    return started


def stop_canaries(processes: Processes, canaries: Canaries) -> list[tuple[float, float]]:
    """Stop the canaries; when they saw their CPU taken (:func:`canary_spans`)."""
    for proc, _ in canaries:
        processes.stop(proc)
    return canary_spans([note for _, note in canaries])


def canary_spans(notes: Sequence[Path]) -> list[tuple[float, float]]:
    """When the canaries' notes say their CPU was taken (ms): each late wake, from one
    period before it was due until it came."""
    spans = []
    for note in notes:
        with contextlib.suppress(OSError), note.open() as f:
            for woken, late in (map(float, line.split()) for line in f if line.strip()):
                spans.append((woken - late - CANARY_PERIOD_US / 1e3, woken))
    return spans


def merged(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` in order, those that overlap made one."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


@dataclass
class Options:
    generator: Path
    pairs: int
    window: int
    warmup: float
    duration: float
    rate: float
    idle_connections: int
    payload_bytes: int
    dump_dir: Path
    """Where the generator writes each measured offer's send time and latency
    (``latencies-TARGET-RUN.txt``, two columns in ms): the pooled percentiles are read
    from them, and they are there for looking at the tail."""
    canary: Path | None = None
    """The canary binary (``signaling/canary.c``), None once it could not run."""
    placement: str = "free"
    """Where the relay phases run the server and the generator: ``free`` (where the
    scheduler puts them), ``same`` (both on CPU 0) or ``split`` (server on CPU 1,
    generator on CPU 0)."""

    def generator_args(
        self, target: str, url: str, mode: str, dump: Path | None = None
    ) -> list[str]:
        return [
            str(self.generator),
            "--url",
            url,
            "--protocol",
            dialect(target),
            "--mode",
            mode,
            "--pairs",
            str(self.pairs),
            "--window",
            str(self.window),
            "--warmup",
            str(self.warmup),
            "--duration",
            str(self.duration),
            "--rate",
            str(self.rate),
            "--connections",
            str(self.idle_connections),
            "--payload-bytes",
            str(self.payload_bytes),
            *(["--dump", str(dump)] if dump is not None else []),
        ]

    def cpus(self) -> tuple[set[int] | None, set[int] | None]:
        """The CPUs of the server and of the generator in the relay phases."""
        if self.placement == "same":
            return {0}, {0}
        if self.placement == "split":
            return {1}, {0}
        return None, None

    def relay_deadline(self) -> float:
        return 60.0 + 2 * (self.warmup + self.duration) + 25.0


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over ``runs`` (``lost``: the largest), others the first."""
    if not runs:
        return {}
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) != len(values):
            merged[key] = first
        elif key == "lost":
            merged[key] = max(numbers)
        else:
            merged[key] = statistics.median(numbers)
    return merged


@dataclass
class TargetResult:
    """One target's runs (each ``{"fullLoad": ..., "paced": ...}``), idle memory, errors."""

    target: str
    runs: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    idle: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    """Every measured offer's latency (ms), all runs together."""
    steady: list[float] = field(default_factory=list)
    """The latencies of the offers in flight while the host took no time (ms), all runs."""

    @property
    def pooled(self) -> dict[str, Any]:
        """Percentiles of all runs' latencies together: steadier than the median of each
        run's p99, which one stall can move."""
        if not self.latencies:
            return {}
        ordered = sorted(self.latencies)
        pooled = {
            "offers": len(ordered),
            "p50Ms": percentile(ordered, 0.5),
            "p99Ms": percentile(ordered, 0.99),
            "p999Ms": percentile(ordered, 0.999),
        }
        if self.steady:
            steady = sorted(self.steady)
            pooled["steady"] = {
                "offers": len(steady),
                "share": len(steady) / len(ordered),
                "p50Ms": percentile(steady, 0.5),
                "p99Ms": percentile(steady, 0.99),
                "p999Ms": percentile(steady, 0.999),
            }
        return pooled

    @property
    def full_load(self) -> dict[str, Any]:
        return medians([run["fullLoad"] for run in self.runs])

    @property
    def paced(self) -> dict[str, Any]:
        return medians([run["paced"] for run in self.runs])


def cpus_of(pid: int) -> list[int]:
    """The CPUs process ``pid`` may run on."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:  # already gone
        return []


def measure_relay(
    processes: Processes, target: str, options: Options, result: TargetResult
) -> None:
    """One run of both relay phases against a fresh ``target``, added to ``result.runs``."""
    full_load: dict[str, Any] = {}
    server_cpus, generator_cpus = options.cpus()
    with running_server(processes, target, server_cpus) as (pids, url):
        dump = options.dump_dir / f"latencies-{target}-{len(result.runs) + 1}.txt"
        generator = processes.start(
            options.generator_args(target, url, "relay", dump), "loadgen", cpus=generator_cpus
        )
        reader = LineReader(generator)
        deadline = time.monotonic() + options.relay_deadline()
        placed = {"server": cpus_of(pids[0]), "generator": cpus_of(generator.pid)}
        cpu_start = wall_start = paced_cpu_start = paced_start = 0.0
        paced_cpu = paced_seconds = 0.0
        steal_start: dict[int, float] = {}
        steal: dict[int, float] = {}
        final: dict[str, Any] | None = None
        readings = StealReadings()
        canaries = (
            None
            if options.canary is None
            else start_canaries(processes, options.canary, f"{target}-{len(result.runs) + 1}")
        )
        if options.canary is not None and canaries is None:
            print("signaling_load: the canaries cannot run at real-time priority (not root?): "
                  "stalls are known from the steal time alone", file=sys.stderr)  # fmt: skip
            options.canary = None
        try:
            while (line := reader.line(deadline)) is not None:
                event = json.loads(line)
                if event["event"] == "window-start":
                    cpu_start, wall_start = cpu_seconds(pids), time.monotonic()
                elif event["event"] == "window-end":
                    elapsed = time.monotonic() - wall_start
                    full_load["serverCpu"] = (cpu_seconds(pids) - cpu_start) / elapsed
                elif event["event"] == "paced-start":
                    steal_start = steal_ms()
                    readings.start()
                    paced_cpu_start, paced_start = cpu_seconds(pids), time.monotonic()
                elif event["event"] == "result":
                    final = event
                    steal = {cpu: ms - steal_start.get(cpu, ms) for cpu, ms in steal_ms().items()}
                    paced_cpu = cpu_seconds(pids) - paced_cpu_start
                    paced_seconds = time.monotonic() - paced_start
        except TimeoutError:
            raise BenchmarkError(f"the generator did not finish against {target}") from None
        finally:
            processes.stop(generator)
            spans = stalled_spans(readings.stop())
            if canaries is not None:
                spans += stop_canaries(processes, canaries)
            spans = merged(spans)
        if final is None:
            raise BenchmarkError(f"the generator printed no result against {target}")
        if final.get("error"):
            raise BenchmarkError(f"{target}: {final['error']}")
        full_load.update(final["fullLoad"])
        rate = full_load.get("messagesPerSecond") or 0.0
        if rate > 0 and "serverCpu" in full_load:
            full_load["serverCpuMicrosecondsPerMessage"] = full_load["serverCpu"] / rate * 1e6
        paced = {**final["paced"], "stealMs": round(sum(steal.values()), 1)}
        sent = paced.get("sent") or 0
        if paced_seconds > 0 and sent > 0:
            # from the first paced offer until the generator has every answer
            paced["serverCpu"] = paced_cpu / paced_seconds
            paced["serverCpuMicrosecondsPerMessage"] = paced_cpu / sent * 1e6
        result.runs.append(
            {"fullLoad": full_load, "paced": paced, "cpus": placed, "pacedStealMs": steal}
        )
        offers = read_offers(dump)
        result.latencies.extend(latency for _, latency in offers)
        start = final["paced"].get("startMs", 0.0)
        result.runs[-1]["stalledMs"] = [[a - start, b - start] for a, b in spans]
        steady = steady_latencies(offers, start, spans)
        result.steady.extend(steady)
        if steady:
            paced["p99SteadyMs"] = percentile(sorted(steady), 0.99)
            paced["steadyShare"] = len(steady) / len(offers)
        if final.get("errors"):
            result.errors.append(f"{final['errors']} errors, last: {final.get('lastError')}")


def measure_idle(processes: Processes, target: str, options: Options, result: TargetResult) -> None:
    with running_server(processes, target) as (pids, url):
        time.sleep(1.0)
        before = rss_bytes(pids)
        generator = processes.start(
            options.generator_args(target, url, "idle"), "loadgen", stdin=True
        )
        reader = LineReader(generator)
        deadline = time.monotonic() + 180.0
        try:
            line = reader.line(deadline)
            if line is None:
                raise BenchmarkError(f"the idle generator exited early against {target}")
            ready = json.loads(line)
            if ready.get("event") != "ready":
                raise BenchmarkError(f"idle generator against {target}: {ready}")
            time.sleep(2.0)  # let the last handshakes settle
            after = rss_bytes(pids)
            assert generator.stdin is not None
            generator.stdin.write(b"close\n")
            generator.stdin.flush()
            while (line := reader.line(deadline)) is not None:
                pass
        except TimeoutError:
            raise BenchmarkError(f"the idle generator did not finish against {target}") from None
        finally:
            processes.stop(generator)
        connected = int(ready["connected"])
        result.idle = {
            "connections": connected,
            "failed": ready["failed"],
            "firstFailure": ready.get("firstFailure"),
            "setupSeconds": ready["setupSeconds"],
            "rssBeforeBytes": before,
            "rssAfterBytes": after,
            "bytesPerConnection": (after - before) / connected if connected else None,
        }


# --- setup and report ---------------------------------------------------------------------------


def ensure_node_packages() -> None:
    """The PeerJS and echo servers' packages (``npm ci`` if they are missing)."""
    if shutil.which("node") is None:
        raise BenchmarkError("needs Node.js ('node' on PATH; Debian package nodejs)")
    if not (NODE_DIR / "node_modules" / "peer").is_dir():
        if shutil.which("npm") is None:
            raise BenchmarkError("needs npm to install benchmarks/signaling's packages")
        print("installing Node packages: npm ci in benchmarks/signaling", file=sys.stderr)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
        )


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
    except (ValueError, OSError) as e:
        raise BenchmarkError(f"cannot raise the open file limit to {needed}: {e}") from None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in ("twisted", "autobahn"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    with contextlib.suppress(Exception):
        versions["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    for package in ("peer", "ws"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())
            versions[package] = meta["version"]
    return {
        "loadAverage": os.getloadavg(),
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "versions": versions,
    }


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def table(results: Sequence[TargetResult], options: Options) -> str:
    head = (
        f"{'target':<22} {'full-load msg/s':>15} {'server CPU':>10} {'µs/msg':>7} {'gen CPU':>8} "
        f"{'paced µs/msg':>12} {'p50 ms':>7} {'p99 ms':>7} {'all runs':>8} {'steady':>6} "
        f"{'lost':>5} "
        f"{'KiB/idle conn':>13}  "
        "p99 ms of each run"
    )
    runs = max((len(r.runs) for r in results), default=0)
    lines = [
        f"{options.pairs} pairs ({2 * options.pairs} connections), window {options.window}, "
        f"{options.payload_bytes}-byte offers; latency at {options.rate:g} offers/s; "
        f"idle memory at {options.idle_connections} connections; "
        f"median of {runs} run{'s' if runs != 1 else ''} per target"
        + ("" if options.placement == "free" else f"; placement {options.placement}"),
        head,
        "-" * len(head),
    ]
    for r in results:
        per_conn = r.idle.get("bytesPerConnection")
        lines.append(
            f"{title(r.target):<22} "
            f"{_fmt(r.full_load.get('messagesPerSecond'), ',.0f'):>15} "
            f"{_fmt(r.full_load.get('serverCpu'), '.0%'):>10} "
            f"{_fmt(r.full_load.get('serverCpuMicrosecondsPerMessage'), '.1f'):>7} "
            f"{_fmt(r.full_load.get('generatorCpu'), '.0%'):>8} "
            f"{_fmt(r.paced.get('serverCpuMicrosecondsPerMessage'), '.1f'):>12} "
            f"{_fmt(r.paced.get('p50Ms'), '.2f'):>7} "
            f"{_fmt(r.paced.get('p99Ms'), '.2f'):>7} "
            f"{_fmt(r.pooled.get('p99Ms'), '.2f'):>8} "
            f"{_fmt(r.pooled.get('steady', {}).get('p99Ms'), '.2f'):>6} "
            f"{_fmt(r.paced.get('lost'), 'd'):>5} "
            f"{_fmt(None if per_conn is None else per_conn / 1024, '.1f'):>13}  "
            + " ".join(_fmt(run["paced"].get("p99Ms"), ".2f") for run in r.runs)
        )
        for error in r.errors:
            lines.append(f"  {r.target}: {error}")
    stolen = [
        (r.target, i + 1, run["paced"]["stealMs"])
        for r in results
        for i, run in enumerate(r.runs)
        if run["paced"].get("stealMs", 0) >= STEAL_NOTICE_MS
    ]
    if stolen:
        lines.append(
            "the hypervisor took CPU time from this VM during the paced phase (steal, ms, "
            "all CPUs): "
            + ", ".join(f"{target} run {run} {ms:.0f}" for target, run, ms in stolen)
            + "; a process on a CPU with steal stalls, so those runs' p99 measure the host"
        )
    kept = [(r.target, r.pooled["steady"]["share"]) for r in results if "steady" in r.pooled]
    if kept:
        lines.append(
            "steady: p99 of all runs' offers in flight while the host took no CPU time from "
            "this VM (steal read every 20 ms"
            + (", and no real-time canary woke 0.5 ms late" if options.canary else "")
            + "), the share kept: "
            + ", ".join(f"{target} {share:.0%}" for target, share in kept)
        )
    echo = next((r for r in results if r.target == "echo"), None)
    if echo is not None and echo.full_load.get("generatorCpu"):
        rate, share = echo.full_load["messagesPerSecond"], echo.full_load["generatorCpu"]
        lines.append(
            f"generator ceiling: {rate:,.0f} msg/s against the null echo, using {share:.0%} "
            f"of a core (about {rate / share:,.0f} msg/s at 100%)"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="peer pairs (default 200)")
    parser.add_argument("--window", type=int, default=8, help="offers in flight per connection")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--rate", type=float, default=2000.0, help="paced offers/s in total")
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=10_000,
        help="connections for the memory measurement (0: skip it)",
    )
    parser.add_argument("--payload-bytes", type=int, default=256, help="SDP filler per offer")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of " + ",".join(TARGETS) + " (holepunch-Nw: N workers)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="relay runs per target, interleaved; the table gives medians (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="keep server/generator logs here, and each paced run's latencies "
        "(latencies-TARGET-RUN.txt: send time and latency of every measured offer, ms)",
    )
    parser.add_argument(
        "--placement",
        choices=("free", "same", "split"),
        default="free",
        help="relay phases: server and generator where the scheduler puts them (free, "
        "the default), both on CPU 0 (same), or server on CPU 1 and generator on CPU 0 "
        "(split); single-process targets only",
    )
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = {t for t in targets if t not in TARGETS and workers_of(t) < 2}
    if unknown or not targets:
        parser.error(
            f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}, "
            "or holepunch-Nw for --workers N"
        )
    multi = [t for t in targets if t == "holepunch-2n" or workers_of(t)]
    if args.placement != "free" and multi:
        parser.error(f"--placement {args.placement} pins one server process: not for {multi}")
    if args.placement == "split" and len(os.sched_getaffinity(0)) < 2:
        parser.error("--placement split needs two CPUs")
    args.targets = targets
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import tempfile

    log_dir = (args.log_dir or Path(tempfile.mkdtemp(prefix="signaling-bench-"))).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        generator = build_generator(log_dir)
        canary = build_generator(log_dir, "canary")
    except BenchmarkError as e:
        print(f"signaling_load: {e}", file=sys.stderr)
        return 2
    options = Options(
        generator=generator,
        pairs=args.pairs,
        window=args.window,
        warmup=args.warmup,
        duration=args.duration,
        rate=args.rate,
        idle_connections=args.idle_connections,
        payload_bytes=args.payload_bytes,
        dump_dir=log_dir,
        placement=args.placement,
        canary=canary,
    )
    processes = Processes(log_dir)
    # SIGTERM/SIGINT unwind through ``finally``, which stops every child.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    results: list[TargetResult] = []
    status = 0
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(
            f"signaling_load: load average {load_before[0]:.2f} before the run: other "
            "processes are using the CPU, figures will be low and noisy",
            file=sys.stderr,
        )
    try:
        if {"peerjs", "echo"} & set(args.targets):
            ensure_node_packages()
        raise_file_limit(max(4096, options.idle_connections + 1024))  # per process
        results = [TargetResult(target) for target in args.targets]
        # Runs take the targets in turn, each run starting one further along, so that
        # whatever else the machine does falls on all of them alike.
        for run in range(args.runs):
            shift = run % len(results)
            for result in results[shift:] + results[:shift]:
                try:
                    measure_relay(processes, result.target, options, result)
                except BenchmarkError as e:
                    result.errors.append(str(e))
                    status = 1
                if not args.json:
                    print(f"run {run + 1}: {result.target} done", file=sys.stderr, flush=True)
        for result in results:
            if options.idle_connections > 0 and result.target != "echo":
                try:
                    measure_idle(processes, result.target, options, result)
                except BenchmarkError as e:
                    result.errors.append(str(e))
                    status = 1
    except BenchmarkError as e:
        print(f"signaling_load: {e}", file=sys.stderr)
        return 2
    finally:
        processes.stop_all()
    report: dict[str, Any] = {
        "machine": {**machine(), "loadAverageBefore": load_before},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "logs": str(log_dir),
        "results": {
            r.target: {
                "fullLoad": r.full_load,
                "paced": r.paced,
                "pacedAllRuns": r.pooled,
                "runs": r.runs,
                "idle": r.idle,
                "errors": r.errors,
            }
            for r in results
        },
    }
    (log_dir / "report.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        m = report["machine"]
        print(f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['versions']}")
        print(
            "load average before: {:.2f} {:.2f} {:.2f}; at the end: {:.2f} {:.2f} {:.2f}".format(
                *m["loadAverageBefore"], *m["loadAverage"]
            )
        )
        print(table(results, options))
        print(f"logs and report.json: {log_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
