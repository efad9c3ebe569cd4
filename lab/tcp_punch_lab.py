# -*- test-case-name: tests.integration.test_tcp_punch -*-
"""Drive TCP hole punching between lab hosts and measure it (tests, docs/tcp-hole-punching.md).

:class:`PunchDriver` runs :mod:`lab.tcp_punch_driver` in a
:class:`LabHost <lab.natlab.LabHost>` and talks to it through its stdin and stdout
(background reader threads, as in :mod:`lab.peers`): this process plays the
signaling server. :func:`punch_round` runs one DCUtR-style round between an initiator and
a responder; :func:`measure` runs many pairs at once; :func:`summary` makes the table.

``python -m lab.tcp_punch_lab [--rounds N] [--no-listen]`` (as root) builds
a lab with two hosts per preset, runs every ordered pair of presets and prints the table
that docs/tcp-hole-punching.md quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from holepunch.punch.tcp import sync_moment
from lab.natlab import PRESETS, PUBLIC_A, LabHost, NatLab

STUN_PORT = 3480


class DriverError(AssertionError):
    """The driver did not answer as expected; carries its stderr."""


class PunchDriver:
    """One driver process; events are sorted by session id as they arrive."""

    def __init__(self, host: LabHost, stun_server: str, extra_args: Sequence[str] = ()) -> None:
        self.host = host
        argv = host.python_argv("lab.tcp_punch_driver", "--stun", stun_server, *extra_args)
        self.proc = host.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[dict[str, Any] | None]] = {}
        self._write_lock = threading.Lock()
        self.stderr_lines: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for target, stream in (
            (self._read_events, self.proc.stdout),
            (self._read_stderr, self.proc.stderr),
        ):
            threading.Thread(target=target, args=(stream,), daemon=True).start()

    def _queue(self, session: str) -> queue.Queue[dict[str, Any] | None]:
        with self._lock:
            if session not in self._queues:
                self._queues[session] = queue.Queue()
            return self._queues[session]

    def _read_events(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                event = json.loads(raw)
            except ValueError:
                self.stderr_lines.append(f"(stdout) {raw!r}")
                continue
            self._queue(str(event.get("id", ""))).put(event)
        with self._lock:
            queues = list(self._queues.values())
        for q in queues:
            q.put(None)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.stderr_lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines[-30:])

    def send(self, session: str, op: str, **fields: Any) -> None:
        """Write one command."""
        assert self.proc.stdin is not None
        line = json.dumps({"id": session, "op": op, **fields}).encode() + b"\n"
        with self._write_lock:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def event(self, session: str, timeout: float) -> dict[str, Any]:
        """The next event of ``session``; raises DriverError on timeout or exit."""
        q = self._queue(session)
        if self.proc.poll() is not None and q.empty():
            raise DriverError(f"driver exited {self.proc.returncode}; stderr: {self.stderr}")
        try:
            event = q.get(timeout=timeout)
        except queue.Empty:
            raise DriverError(
                f"no event for {session} within {timeout}s; stderr: {self.stderr}"
            ) from None
        if event is None:
            raise DriverError(f"driver exited; stderr: {self.stderr}")
        return event

    def close(self, timeout: float = 5.0) -> None:
        """End input; the driver exits once its sessions are done (killed after ``timeout``)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class RoundResult:
    """One punch between an initiator and a responder."""

    initiator: dict[str, Any]
    responder: dict[str, Any]
    rtt: float = 0.0

    @property
    def ok(self) -> bool:
        """Both sides connected and each read the other's line."""
        return bool(self.initiator.get("ok") and self.responder.get("ok"))

    @property
    def connect_time(self) -> float | None:
        """Seconds from the agreed moment until both sides were connected."""
        if not self.ok:
            return None
        return max(self.initiator["connect_time"], self.responder["connect_time"])

    @property
    def dials(self) -> int:
        """Dials used (the larger of the two sides)."""
        return max(len(self.initiator.get("attempts", [])), len(self.responder.get("attempts", [])))

    def describe(self) -> str:
        def side(r: dict[str, Any]) -> str:
            if r.get("ok"):
                return f"ok via {r['via']} in {r['connect_time']:.3f}s {r['attempts']}"
            return f"FAILED at {r.get('stage')}: {r.get('error')}"

        return f"initiator {side(self.initiator)}; responder {side(self.responder)}"


def punch_round(
    initiator: PunchDriver,
    responder: PunchDriver,
    session: str,
    *,
    lead: float = 0.1,
    timeout: float = 15.0,
) -> RoundResult:
    """One DCUtR-style round through the drivers; this process is the signaling channel.

    Both learn a mapping; the round trip to the responder is measured with a ping; then the
    responder is told to dial ``lead`` after reading its command, and the initiator to dial
    at :func:`sync_moment <holepunch.punch.tcp.sync_moment>` of that send.
    """  # fmt: skip
    initiator.send(session, "mapping")
    responder.send(session, "mapping")
    mi = initiator.event(session, timeout)
    mr = responder.event(session, timeout)
    if mi["event"] != "mapping" or mr["event"] != "mapping":
        return RoundResult(mi, mr)
    sent = time.time()
    responder.send(session, "ping")
    responder.event(session, timeout)
    rtt = time.time() - sent
    now = time.time()
    responder.send(session, "punch", remote=mi["mapped"], delay=lead, line=f"{session} responder")
    initiator.send(
        session, "punch", remote=mr["mapped"], start=sync_moment(now, rtt, lead),
        line=f"{session} initiator",
    )  # fmt: skip
    ri = initiator.event(session, timeout)
    rr = responder.event(session, timeout)
    if ri.get("ok") and ri.get("peer_line") != f"{session} responder":
        ri = {**ri, "ok": False, "stage": "exchange", "error": f"read {ri.get('peer_line')!r}"}
    if rr.get("ok") and rr.get("peer_line") != f"{session} initiator":
        rr = {**rr, "ok": False, "stage": "exchange", "error": f"read {rr.get('peer_line')!r}"}
    return RoundResult(ri, rr, rtt)


@dataclass
class PairResults:
    """Every round of one ordered pair of presets."""

    initiator: str
    responder: str
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(r.ok for r in self.rounds)

    def times(self) -> list[float]:
        return [t for r in self.rounds if (t := r.connect_time) is not None]


def build_hosts(lab: NatLab, presets: Iterable[str]) -> dict[tuple[str, str], LabHost]:
    """Two hosts per preset: ``("i", preset)`` initiates, ``("r", preset)`` responds."""
    hosts: dict[tuple[str, str], LabHost] = {}
    for n, preset in enumerate(presets):
        for role in ("i", "r"):
            hosts[(role, preset)] = lab.add_host(f"{role}{n}", preset)
    return hosts


def measure(
    hosts: dict[tuple[str, str], LabHost],
    pairs: Sequence[tuple[str, str]],
    *,
    rounds: int = 3,
    stun_server: str = f"{PUBLIC_A}:{STUN_PORT}",
    driver_args: Sequence[str] = (),
    workers: int = 8,
    lead: float = 0.1,
    rounds_by_pair: dict[tuple[str, str], int] | None = None,
) -> list[PairResults]:
    """Run ``rounds`` rounds of every ``(initiator preset, responder preset)`` pair.

    ``rounds_by_pair`` overrides ``rounds`` for some pairs. Pairs run concurrently
    (``workers`` at a time), the rounds of a pair one after another. One driver per host
    serves all the pairs that host is in.
    """
    drivers: dict[tuple[str, str], PunchDriver] = {}
    try:
        for key, host in hosts.items():
            drivers[key] = PunchDriver(host, stun_server, driver_args)
        results = [PairResults(a, b) for a, b in pairs]

        def run(index: int) -> None:
            pair = results[index]
            a, b = drivers[("i", pair.initiator)], drivers[("r", pair.responder)]
            count = (rounds_by_pair or {}).get((pair.initiator, pair.responder), rounds)
            for n in range(count):
                pair.rounds.append(punch_round(a, b, f"p{index}r{n}", lead=lead))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run, i) for i in range(len(pairs))]:
                future.result()
        return results
    finally:
        for driver in drivers.values():
            driver.close()


def summary(results: Sequence[PairResults]) -> str:
    """A markdown table: successes, median and worst connect time, dials, how it connected."""
    lines = [
        "| initiator → responder | connected | median time | worst time | dials (max) | via |",
        "|---|---|---|---|---|---|",
    ]
    for pair in results:
        times = pair.times()
        vias: dict[str, int] = defaultdict(int)
        for r in pair.rounds:
            for side in (r.initiator, r.responder):
                if side.get("ok"):
                    vias[side["via"]] += 1
        median = f"{statistics.median(times) * 1000:.0f} ms" if times else "-"
        worst = f"{max(times) * 1000:.0f} ms" if times else "-"
        dials = max((r.dials for r in pair.rounds), default=0)
        via = ", ".join(f"{k} {v}" for k, v in sorted(vias.items())) or "-"
        lines.append(
            f"| {pair.initiator} → {pair.responder} | {pair.successes}/{len(pair.rounds)} "
            f"| {median} | {worst} | {dials} | {via} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.tcp_punch_lab")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--no-listen", action="store_true")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--verbose", action="store_true", help="print every failed round")
    options = parser.parse_args(argv)
    driver_args = [
        f"--attempts={options.attempts}",
        f"--interval={options.interval}",
        f"--connect-timeout={options.connect_timeout}",
    ]
    if options.no_listen:
        driver_args.append("--no-listen")
    with NatLab() as lab:
        hosts = build_hosts(lab, options.presets)
        lab.start_holepunch_daemon(stun_port=STUN_PORT, stun_alt_port=STUN_PORT + 1)
        pairs = list(itertools.product(options.presets, repeat=2))
        began = time.monotonic()
        results = measure(
            hosts, pairs, rounds=options.rounds, driver_args=driver_args, workers=options.workers
        )
        took = time.monotonic() - began
    print(summary(results))
    print(f"\n{len(pairs)} pairs x {options.rounds} rounds in {took:.1f}s", file=sys.stderr)
    if options.verbose:
        for pair in results:
            for r in pair.rounds:
                if not r.ok:
                    print(f"{pair.initiator} → {pair.responder}: {r.describe()}", file=sys.stderr)


if __name__ == "__main__":
    main()
