#!/usr/bin/env python3
# -*- test-case-name: tests.benchmarks.test_benchmarks -*-
"""STUN Binding throughput: our daemon against coturn, with the same load generator.

One command, one run (issue 2, item 8)::

    python benchmarks/stun_throughput.py            # --duration 5 --runs 3 --window 64

starts, on 127.0.0.1 only,

- ``holepunch``: the real daemon, ``twistd -n holepunch --stun-rate 0`` (the
  per-source token bucket would otherwise throttle a generator that has one source IP;
  ``--holepunch-stun-rate 1e9`` keeps it on at a rate that refuses nothing, to measure
  its cost);
- ``coturn``: ``turnserver`` in a temporary directory, with its defaults for Binding;
- ``reflector``: a null reflector that echoes every datagram unchanged
  (``benchmarks/udp_reflector.c``, recvmmsg/sendmmsg, compiled with gcc at run time; a
  clearly labelled Python fallback if gcc is missing). Whatever the generator reaches
  against it is the generator's own ceiling: a target that gets close to it is
  generator-bound, and its real capacity is only known to be at least that figure.

then drives each with the same generator: one connected UDP socket, a fixed window of
outstanding Binding requests (RFC 8489 section 6.1; pre-encoded with our codec, every
transaction id distinct), each answer matched by transaction id and message type
(Binding success response; for the reflector the echoed request), for ``--duration``
seconds after ``--warmup`` seconds, ``--runs`` times, the targets interleaved so that a
change in the background load hits them alike. A second, paced phase measures latency at
a rate every target sustains (``--latency-rate``, 2000 req/s by default).

Next to the rates it reads from ``/proc`` the CPU time each server used per answered
request, the generator's CPU use, and how much CPU other processes and the hypervisor took
meanwhile: on a shared machine the CPU time per request is the figure least disturbed.

The generator is plain blocking sockets, not Twisted: its per-request cost must be as
small as Python allows, since it bounds every figure. With two or more CPUs it runs on
CPU 0 and every server on CPU 1 (``taskset``); ``--no-pin`` turns that off.

Every process started is stopped at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from holepunch.stun.message import StunMessage, decode, encode  # noqa: E402
from holepunch.stun.wire import (  # noqa: E402
    Address,
    Attr,
    MessageClass,
    Method,
    StunDecodeError,
)

HOST = "127.0.0.1"
TARGETS = ("holepunch", "coturn", "reflector")
BINDING_SUCCESS = b"\x01\x01"
BINDING_REQUEST = b"\x00\x01"
POOL_SIZE = 1 << 16
MAX_RUNS = 20
MAX_DURATION = 60.0
READY_TIMEOUT = 20.0
# A target reaching this share of the generator ceiling is taken as generator-bound.
GENERATOR_BOUND = 0.8


# -- processes -----------------------------------------------------------------------------


class Processes:
    """The child processes of a run; :meth:`stop_all` ends each of them, by its id."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` in its own session, so a Ctrl-C reaches us and not it; on Linux
        the child also gets SIGTERM if we die without cleaning up (even by SIGKILL)."""
        proc = subprocess.Popen(
            list(args), start_new_session=True, preexec_fn=_die_with_parent, **kwargs
        )
        self._children.append(proc)
        return proc

    def pids(self) -> list[int]:
        """The ids of the children still running."""
        return [p.pid for p in self._children if p.poll() is None]

    def stop_all(self) -> None:
        """SIGTERM every child still running, then SIGKILL what is left after 5 s."""
        children, self._children = self._children, []
        for proc in children:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5.0
        for proc in children:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    """A port free for both UDP and TCP on :data:`HOST` (the servers bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = READY_TIMEOUT
) -> None:
    """Wait until ``port`` answers a Binding request; raise with the log if it never does."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
            request = StunMessage.request()
            sock.sendto(encode(request), (HOST, port))
            try:
                data = sock.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if data[8:20] == request.transaction_id:
                return
    raise RuntimeError(f"{proc.args!r} did not answer on port {port}:\n{_tail(log)}")


@dataclass
class Target:
    """A server under test: its name, what it is, and where it listens."""

    name: str
    label: str
    port: int
    expect: bytes  # the first two bytes of a valid answer
    pid: int  # whose CPU time is the server's (taskset execs, so it is the server itself)
    note: str = ""


def _pinned(args: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return args
    return ["taskset", "-c", str(cpu), *args]


def start_holepunch(procs: Processes, tmp: Path, cpu: int | None, stun_rate: float = 0) -> Target:
    """Our daemon, as deployed: twistd with the holepunch plugin, rate limit off (or at
    ``stun_rate`` requests/s per source: a rate far above the load measures the limiter's
    cost without refusing anything)."""
    port = free_port()
    log = tmp / "holepunch.log"
    args = [
        sys.executable,
        "-c",  # twistd, with this interpreter and the repository first on sys.path
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        f"--logfile={log}",
        "holepunch",
        "--stun-interface",
        HOST,
        "--stun-port",
        str(port),
        "--stun-rate",
        f"{stun_rate:g}",
        "--stun-burst",
        f"{max(100.0, stun_rate):g}",
        "--no-signaling",
    ]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = procs.start(_pinned(args, cpu), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_ready(proc, port, log)
    from holepunch.version import __version__

    label = f"holepunch {__version__} (twistd)"
    if stun_rate:
        label += f" --stun-rate {stun_rate:g}"
    return Target("holepunch", label, port, BINDING_SUCCESS, proc.pid)


def coturn_version() -> str:
    """``turnserver --version``, or ``?``."""
    try:
        out = subprocess.run(
            ["turnserver", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout.strip() or out.stderr.strip() or "?").splitlines()[-1]


def start_coturn(procs: Processes, tmp: Path, cpu: int | None) -> Target:
    """coturn with its defaults for Binding (no auth needed), UDP/TCP only, on loopback."""
    port = free_port()
    log = tmp / "turnserver.log"
    args = [
        "turnserver",
        "-n",
        f"--listening-ip={HOST}",
        f"--listening-port={port}",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        f"--log-file={log}",
        "--simple-log",
        "--no-stdout-log",
        f"--pidfile={tmp / 'turnserver.pid'}",
        f"--userdb={tmp / 'turndb'}",
        "--allow-loopback-peers",
    ]
    proc = procs.start(
        _pinned(args, cpu), cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_ready(proc, port, log)
    return Target("coturn", f"coturn {coturn_version()}", port, BINDING_SUCCESS, proc.pid)


def start_reflector(
    procs: Processes, tmp: Path, cpu: int | None, force_python: bool = False
) -> Target:
    """The null reflector: C if gcc is here, else the Python fallback (clearly labelled)."""
    source = Path(__file__).resolve().parent / "udp_reflector.c"
    binary = tmp / "udp_reflector"
    note = ""
    args: list[str]
    if not force_python and shutil.which("gcc") and source.exists():
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True, timeout=60
        )
        args = [str(binary), HOST, "0"]
        label = "null reflector (C)"
    else:
        args = [sys.executable, str(Path(__file__).resolve()), "--serve-python-reflector"]
        label = "null reflector (PYTHON fallback)"
        note = "gcc missing: the reflector is Python, the ceiling may be the reflector's"
    proc = procs.start(_pinned(args, cpu), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    match = re.fullmatch(r"PORT (\d+)", line)
    if match is None:
        raise RuntimeError(f"reflector did not start: {line!r}")
    port = int(match.group(1))
    wait_ready(proc, port, tmp / "none")
    return Target("reflector", label, port, BINDING_REQUEST, proc.pid, note)


def serve_python_reflector() -> None:
    """The fallback reflector: echo every datagram to its sender (prints ``PORT n``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    buf = bytearray(2048)
    view = memoryview(buf)
    recvfrom_into, sendto = sock.recvfrom_into, sock.sendto
    try:
        while True:
            n, addr = recvfrom_into(buf)
            sendto(view[:n], addr)
    except (SystemExit, KeyboardInterrupt):
        pass


# -- how busy the machine was ---------------------------------------------------------------


def _ticks_of(pid: int | str) -> int:
    """utime + stime of a process (every thread), in clock ticks; 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


class CpuAccount:
    """How much CPU other processes (not ours) and the hypervisor took while we measured.

    The figures are only worth something on an otherwise idle machine; this says how idle
    it was, in CPUs (0.5 = half a CPU on average).
    """

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[float, int, int, int]:
        busy, steal = _machine_ticks()
        ours = _ticks_of("self") + sum(_ticks_of(pid) for pid in self.procs.pids())
        return time.monotonic(), busy, steal, ours

    def others(self) -> dict[str, float]:
        """CPUs used by other processes, and stolen, on average since construction."""
        t0, busy0, steal0, ours0 = self.start
        t1, busy1, steal1, ours1 = self._snapshot()
        hz = os.sysconf("SC_CLK_TCK") * max(t1 - t0, 1e-9)
        return {
            "other_processes_cpus": max(0.0, (busy1 - busy0) - (ours1 - ours0)) / hz,
            "steal_cpus": (steal1 - steal0) / hz,
        }


# -- the load generator -----------------------------------------------------------------


@dataclass
class WindowRun:
    """One saturating run: what was sent and answered in the measured interval."""

    rate: float  # answers per second received in the measured interval
    sent: int  # requests sent in the measured interval
    answered: int  # of those, how many were answered (by the end of the drain)
    lost: int
    unexpected: int  # answers whose transaction id was not outstanding (late, duplicate)
    invalid: int  # answers with a known transaction id but the wrong message type
    server_cpu: float  # CPUs the server used while loaded (warm-up included; 1.0 = one CPU)
    server_us: float  # server CPU time per answered request, in microseconds
    generator_cpu: float  # CPUs this process (the generator) used meanwhile

    @property
    def loss(self) -> float:
        """Share of the measured interval's requests never answered, in %."""
        return 100.0 * self.lost / self.sent if self.sent else 0.0


@dataclass
class LatencyRun:
    """The paced run: round-trip times of the answered requests, in seconds."""

    rate: float
    sent: int
    answered: int
    rtts: list[float] = field(repr=False)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (nearest rank) of the round-trip times, in seconds."""
        if not self.rtts:
            return float("nan")
        ordered = sorted(self.rtts)
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


class LoadGenerator:
    """Binding requests to one target over one connected UDP socket.

    A pool of :data:`POOL_SIZE` requests is encoded once per run with
    :func:`holepunch.stun.message.encode`; each has its own transaction id (a random
    per-run prefix and a counter). Slots are used round-robin, so a transaction id only
    comes back after 65536 requests; a slot still unanswered by then counts as lost.
    """

    def __init__(self, target: Target, timeout: float = 0.5) -> None:
        self.target = target
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.sock.bind((HOST, 0))
        self.sock.connect((HOST, target.port))
        self.local = Address(*self.sock.getsockname())
        prefix = secrets.token_bytes(8)
        self._ids = [prefix + i.to_bytes(4, "big") for i in range(POOL_SIZE)]
        self._datagrams = [encode(StunMessage.request(Method.BINDING, t)) for t in self._ids]
        self._slot = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _next(self, now: float, outstanding: dict[bytes, float]) -> bytes:
        """The next pooled request, its transaction id recorded as outstanding at ``now``."""
        slot = self._slot
        self._slot = (slot + 1) % POOL_SIZE
        outstanding[self._ids[slot]] = now
        return self._datagrams[slot]

    def verify(self) -> str:
        """One request, fully decoded: check the target really answers Binding."""
        request = StunMessage.request()
        self.sock.settimeout(2.0)
        self.sock.send(encode(request))
        data = self.sock.recv(2048)
        if self.target.expect == BINDING_REQUEST:
            if data != encode(request):
                raise RuntimeError("the reflector did not echo the request unchanged")
            return "echo verified"
        try:
            response = decode(data)
        except StunDecodeError as e:
            raise RuntimeError(f"{self.target.name}: undecodable answer: {e}") from None
        if (
            response.transaction_id != request.transaction_id
            or response.message_class != MessageClass.SUCCESS
            or response.method != Method.BINDING
        ):
            raise RuntimeError(f"{self.target.name}: not a Binding success: {response!r}")
        mapped = response.get_address(Attr.XOR_MAPPED_ADDRESS)
        if mapped != self.local:
            raise RuntimeError(f"{self.target.name}: XOR-MAPPED-ADDRESS {mapped} != {self.local}")
        return f"XOR-MAPPED-ADDRESS {mapped.host}:{mapped.port} verified"

    def _drain(self, budget: float = 0.05) -> None:
        """Discard whatever is still queued from an earlier phase."""
        self.sock.settimeout(budget)
        try:
            while True:
                self.sock.recv(2048)
        except (TimeoutError, ConnectionRefusedError):
            pass

    def saturate(self, window: int, warmup: float, duration: float) -> WindowRun:
        """Keep ``window`` requests outstanding; count answers during ``duration``."""
        self._drain()
        sock = self.sock
        send, recv_into = sock.send, sock.recv_into
        ids, datagrams = self._ids, self._datagrams
        expect = self.target.expect
        clock = time.perf_counter
        timeout = self.timeout
        outstanding: dict[bytes, float] = {}
        buf = bytearray(2048)
        view = memoryview(buf)
        slot = self._slot
        sent_in = answered_in = received_in = unexpected = invalid = 0

        server_ticks = _ticks_of(self.target.pid)
        own = os.times()
        start = clock()
        measure_from = start + warmup
        measure_to = measure_from + duration
        received_all = 0
        sock.settimeout(0.05)
        for _ in range(window):
            send(self._next(start, outstanding))
        slot = self._slot
        count = 0
        while True:
            try:
                n = recv_into(buf)
            except (TimeoutError, ConnectionRefusedError):
                n = 0
            now = clock()
            if n:
                sent_at = outstanding.pop(bytes(view[8:20]), None) if n >= 20 else None
                if sent_at is None:
                    unexpected += 1
                    continue
                if view[:2] != expect:
                    invalid += 1
                else:
                    received_all += 1
                    if now >= measure_from:
                        received_in += now < measure_to
                    answered_in += sent_at >= measure_from
                if now >= measure_to:
                    break
                # The hot path: one answer in, the next request out.
                outstanding[ids[slot]] = now
                send(datagrams[slot])
                slot = (slot + 1) % POOL_SIZE
                sent_in += now >= measure_from
                count += 1
                if count & 1023:
                    continue
            elif now >= measure_to:
                break
            # Requests unanswered after ``timeout`` are lost; keep the window full.
            for tid, sent_at in list(outstanding.items()):
                if now - sent_at < timeout:
                    break
                del outstanding[tid]
            while len(outstanding) < window:
                outstanding[ids[slot]] = now
                send(datagrams[slot])
                slot = (slot + 1) % POOL_SIZE
                sent_in += now >= measure_from
        self._slot = slot
        elapsed = clock() - start
        server_cpu = (_ticks_of(self.target.pid) - server_ticks) / os.sysconf("SC_CLK_TCK")
        mine = os.times()
        generator_cpu = (mine.user + mine.system - own.user - own.system) / elapsed

        # Drain: answers to the measured interval's requests still in flight.
        sock.settimeout(0.01)
        drain_until = clock() + timeout
        while outstanding and clock() < drain_until:
            try:
                n = recv_into(buf)
            except (TimeoutError, ConnectionRefusedError):
                continue
            sent_at = outstanding.pop(bytes(view[8:20]), None) if n >= 20 else None
            if sent_at is not None and view[:2] == expect and sent_at >= measure_from:
                answered_in += 1
        return WindowRun(
            rate=received_in / duration,
            sent=sent_in,
            answered=answered_in,
            lost=sent_in - answered_in,
            unexpected=unexpected,
            invalid=invalid,
            server_cpu=server_cpu / elapsed,
            server_us=1e6 * server_cpu / received_all if received_all else float("nan"),
            generator_cpu=generator_cpu,
        )

    def paced(self, rate: float, duration: float, warmup: float = 0.2) -> LatencyRun:
        """Send at ``rate`` requests/s for ``duration`` s and record each round trip.

        The generator busy-polls (its CPU is its own) so that its own wake-up time is
        not part of the figure and pacing is not rounded to poll()'s millisecond.
        """
        self._drain()
        sock = self.sock
        send = sock.send
        recv_into = sock.recv_into
        clock = time.perf_counter
        expect = self.target.expect
        interval = 1.0 / rate
        outstanding: dict[bytes, float] = {}
        rtts: list[float] = []
        buf = bytearray(2048)
        view = memoryview(buf)
        sock.setblocking(False)
        sent = answered = 0
        start = clock()
        measure_from = start + warmup
        stop_sending = measure_from + duration
        stop = stop_sending + self.timeout
        next_send = start
        try:
            while True:
                now = clock()
                if now >= stop or (now >= stop_sending and not outstanding):
                    break
                if now >= next_send and now < stop_sending:
                    send(self._next(now, outstanding))
                    sent += now >= measure_from
                    next_send += interval
                    if now - next_send > 10 * interval:
                        next_send = now  # fell behind: do not burst to catch up
                    continue
                try:
                    n = recv_into(buf)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                now = clock()
                sent_at = outstanding.pop(bytes(view[8:20]), None) if n >= 20 else None
                if sent_at is not None and view[:2] == expect and sent_at >= measure_from:
                    answered += 1
                    rtts.append(now - sent_at)
        finally:
            sock.setblocking(True)
        return LatencyRun(rate, sent, answered, rtts)


# -- the benchmark ------------------------------------------------------------------------


@dataclass
class TargetResult:
    """Everything measured for one target."""

    name: str
    label: str
    verified: str
    note: str
    runs: list[WindowRun] = field(default_factory=list)
    latency: LatencyRun | None = None

    @property
    def rates(self) -> list[float]:
        """The answered rate of every run."""
        return [r.rate for r in self.runs]

    @property
    def median(self) -> float:
        """The median answered rate."""
        return statistics.median(self.rates) if self.runs else 0.0

    def median_of(self, attribute: str) -> float:
        """The median over the runs of a :class:`WindowRun` field."""
        values = [getattr(r, attribute) for r in self.runs]
        return statistics.median(values) if values else float("nan")

    @property
    def loss(self) -> float:
        """Loss over every run, in %."""
        sent = sum(r.sent for r in self.runs)
        return 100.0 * sum(r.lost for r in self.runs) / sent if sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        lat = self.latency
        return {
            "name": self.name,
            "label": self.label,
            "verified": self.verified,
            "note": self.note,
            "rate_median": self.median,
            "rates": self.rates,
            "loss_percent": self.loss,
            "server_cpu_median": self.median_of("server_cpu"),
            "server_us_per_request_median": self.median_of("server_us"),
            "generator_cpu_median": self.median_of("generator_cpu"),
            "runs": [asdict(r) for r in self.runs],
            "latency": None
            if lat is None
            else {
                "rate": lat.rate,
                "sent": lat.sent,
                "answered": lat.answered,
                "p50_us": lat.percentile(50) * 1e6,
                "p99_us": lat.percentile(99) * 1e6,
            },
        }


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import twisted

        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "?"
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted_version,
        "coturn": coturn_version() if shutil.which("turnserver") else "not installed",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _fmt_rate(rate: float) -> str:
    return f"{rate:.0f}"


def _fmt_us(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e6:.0f}"


def report(results: list[TargetResult], settings: dict[str, Any], info: dict[str, str]) -> str:
    """The human-readable table and its reading."""
    labels = [r.label if r.name != "reflector" else f"ceiling: {r.label}" for r in results]
    width = max(len(label) for label in [*labels, "target"])
    lines = [
        "STUN Binding throughput on 127.0.0.1",
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Linux {info['kernel']}, "
        f"Python {info['python']}, Twisted {info['twisted']}, coturn {info['coturn']}; "
        f"load average at start {info['loadavg']}",
        f"background during the measurements: other processes {info['other_processes_cpus']} "
        f"CPUs, hypervisor steal {info['steal_cpus']} CPUs (both should be near 0)",
        f"generator: window {settings['window']}, {settings['runs']} runs x "
        f"{settings['duration']:g} s after {settings['warmup']:g} s warm-up, targets "
        f"interleaved; latency paced at {settings['latency_rate']:g} req/s for "
        f"{settings['latency_duration']:g} s; {settings['pinning']}",
        "",
        f"{'target':<{width}}  {'answered req/s':>14} {'(min-max)':>15} {'loss %':>6} "
        f"{'server CPU':>10} {'us/req':>6} {'gen CPU':>7} {'p50 us':>6} {'p99 us':>6}",
    ]
    ceiling = next((r for r in results if r.name == "reflector"), None)
    for r, label in zip(results, labels, strict=True):
        lat = r.latency
        span = f"{_fmt_rate(min(r.rates))}-{_fmt_rate(max(r.rates))}" if r.runs else "-"
        lines.append(
            f"{label:<{width}}  {_fmt_rate(r.median):>14} {span:>15} {r.loss:>6.2f} "
            f"{r.median_of('server_cpu'):>10.2f} {r.median_of('server_us'):>6.1f} "
            f"{r.median_of('generator_cpu'):>7.2f} "
            f"{_fmt_us(lat.percentile(50) if lat else float('nan')):>6} "
            f"{_fmt_us(lat.percentile(99) if lat else float('nan')):>6}"
        )
    lines += [
        "",
        "answered req/s: median of the runs; server CPU, gen CPU: CPUs used under load "
        "(1.00 = one CPU busy); us/req: server CPU time per answer; p50/p99: round trip "
        "at the paced rate",
        "",
    ]
    for r in results:
        lines.append(f"{r.name}: {r.verified}" + (f"; {r.note}" if r.note else ""))
    ours = next((r for r in results if r.name == "holepunch" and r.runs), None)
    coturn = next((r for r in results if r.name == "coturn" and r.runs), None)
    if ours is not None and coturn is not None:
        mine, theirs = ours.median_of("server_us"), coturn.median_of("server_us")
        lines.append(
            f"server CPU per answer: holepunch {mine:.1f} us, coturn {theirs:.1f} us: "
            f"holepunch takes {mine / theirs:.2f}x coturn's (issue 15: at most 2x)"
        )
    if ceiling is not None and ceiling.median > 0:
        lines.append(f"generator ceiling: {_fmt_rate(ceiling.median)} req/s")
        for r in results:
            if r is ceiling:
                continue
            share = r.median / ceiling.median
            if share > 1.05:
                verdict = (
                    "above the ceiling: background load disturbed the reflector's runs, "
                    "rerun on an idle machine"
                )
            elif share >= GENERATOR_BOUND:
                verdict = (
                    f"generator-bound: {r.name} >= {_fmt_rate(r.median)} req/s, "
                    "its real capacity is not measured here"
                )
            else:
                verdict = "server-bound: the figure is the server's"
            lines.append(f"{r.name}: {100 * share:.0f}% of the generator ceiling, {verdict}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Start the targets, measure them, stop them, print the results."""
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise SystemExit(f"--targets: unknown {unknown}; choose from {', '.join(TARGETS)}")
    if "coturn" in targets and shutil.which("turnserver") is None:
        raise SystemExit("coturn (turnserver) is not installed; leave it out of --targets")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    server_cpu = 1 if pin else None
    if pin:
        os.sched_setaffinity(0, {0})
    settings = {
        "duration": args.duration,
        "warmup": args.warmup,
        "runs": args.runs,
        "window": args.window,
        "latency_rate": args.latency_rate,
        "latency_duration": args.latency_duration,
        "pinning": "generator on CPU 0, servers on CPU 1 (taskset)" if pin else "not pinned",
    }
    info = machine()
    starters: dict[str, Callable[[Processes, Path, int | None], Target]] = {
        "holepunch": lambda p, t, c: start_holepunch(p, t, c, args.holepunch_stun_rate),
        "coturn": start_coturn,
        "reflector": lambda p, t, c: start_reflector(p, t, c, args.python_reflector),
    }
    procs = Processes()
    atexit.register(procs.stop_all)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    generators: list[LoadGenerator] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hp-stun-bench-") as tmpdir:
            tmp = Path(tmpdir)
            results: list[TargetResult] = []
            for name in targets:
                target = starters[name](procs, tmp, server_cpu)
                gen = LoadGenerator(target, timeout=args.timeout)
                generators.append(gen)
                results.append(TargetResult(name, target.label, gen.verify(), target.note))
            account = CpuAccount(procs)
            for _ in range(args.runs):
                for gen, result in zip(generators, results, strict=True):
                    result.runs.append(gen.saturate(args.window, args.warmup, args.duration))
            for gen, result in zip(generators, results, strict=True):
                result.latency = gen.paced(args.latency_rate, args.latency_duration)
            info.update((k, f"{v:.2f}") for k, v in account.others().items())
            procs.stop_all()
    finally:
        for gen in generators:
            gen.close()
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        doc = {
            "machine": info,
            "settings": settings,
            "command": " ".join(["python", "benchmarks/stun_throughput.py", *sys.argv[1:]]),
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(report(results, settings, info))
    return 0


def _bounded(low: float, high: float, kind: type = float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low:g}..{high:g}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=_bounded(0.1, MAX_DURATION), default=5.0, help="seconds per run"
    )
    parser.add_argument(
        "--warmup", type=_bounded(0.0, 10.0), default=1.0, help="seconds before measuring"
    )
    parser.add_argument("--runs", type=_bounded(1, MAX_RUNS, int), default=3)
    parser.add_argument(
        "--window", type=_bounded(1, 4096, int), default=64, help="requests outstanding"
    )
    parser.add_argument(
        "--latency-rate", type=_bounded(10, 100000), default=2000.0, help="paced req/s"
    )
    parser.add_argument("--latency-duration", type=_bounded(0.1, MAX_DURATION), default=2.0)
    parser.add_argument(
        "--timeout", type=_bounded(0.05, 5.0), default=0.5, help="a request is lost after this"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--holepunch-stun-rate",
        type=_bounded(0, 1e9),
        default=0.0,
        help="our daemon's --stun-rate (0: no limit; 1e9: the limiter runs, refusing nothing)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument(
        "--python-reflector", action="store_true", help="use the Python reflector even with gcc"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--serve-python-reflector", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_python_reflector:
        serve_python_reflector()
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
