"""Signaling soak: many connections and steady offer traffic for a long time; is the
daemon's memory flat, and its relay latency?

One command, everything on 127.0.0.1::

    python benchmarks/soak.py [--connections 10000] [--duration 600] [--rate 200]
        [--interval 10] [--json]

It starts ``twistd -n holepunch --no-stun`` (the daemon's defaults, except the connection
and peer limits a single-host test hits: see ``signaling_load.HOLEPUNCH_LIMITS``), opens
``connections`` WebSocket connections to it, registers them in pairs that share a room
(``soak-<k>``), then for ``duration`` seconds sends ``rate`` offers per second in total,
round-robin over the pairs, each stamped with its scheduled send time. Every
``interval`` seconds it prints a row: the daemon's RSS (``/proc/PID/status``, VmRSS),
offers delivered in the interval, and relay latency p50/p99 (arrival minus scheduled
send). Flat means no trend. The client is this process (Twisted and Autobahn), so at
large sizes it needs a core of its own; the open file limit is raised as needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.failure import Failure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from signaling_load import Processes, percentile, raise_file_limit, running_server

_OFFER_PAD = "x" * 400
"""An offer about the size of a native peer's (ufrag, pwd, a few candidates)."""


def vm_rss(pid: int) -> int:
    """The process's resident set size in bytes (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class SoakClient(WebSocketClientProtocol):
    """One registered peer: records the latency of each offer it receives."""

    soak: Soak

    def onOpen(self) -> None:
        self.ready: defer.Deferred[None] = self.factory.ready  # type: ignore[attr-defined]
        self.peer_id: str = self.factory.peer_id  # type: ignore[attr-defined]
        self.room: str = self.factory.room  # type: ignore[attr-defined]
        self.soak = self.factory.soak  # type: ignore[attr-defined]
        self.send({"type": "register", "peerId": self.peer_id, "id": 1})

    def send(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "offer":
            self.soak.delivered(time.monotonic() - message["offer"]["t"])
        elif kind == "registered":
            self.send({"type": "join-room", "roomId": self.room, "id": 2})
        elif kind == "room-joined":
            self.ready.callback(None)
        elif kind == "error":
            self.soak.errors += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.soak.closed += 1
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"closed while connecting: {code} {reason}"))


class Soak:
    def __init__(self, reactor: Any, port: int, pid: int, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.port = port
        self.pid = pid
        self.options = options
        self.clients: list[SoakClient] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.closed = 0
        self.rows: list[dict[str, Any]] = []

    def delivered(self, seconds: float) -> None:
        self.latencies.append(seconds)

    async def connect(self, index: int) -> SoakClient:
        url = f"ws://127.0.0.1:{self.port}/"
        factory = WebSocketClientFactory(url)
        factory.protocol = SoakClient
        factory.setProtocolOptions(autoPingInterval=None, failByDrop=False)
        factory.ready = defer.Deferred()  # type: ignore[attr-defined]
        factory.peer_id = f"soak-{index}"  # type: ignore[attr-defined]
        factory.room = f"soak-{index // 2}"  # type: ignore[attr-defined]
        factory.soak = self  # type: ignore[attr-defined]
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=30)
        proto: SoakClient = await endpoint.connect(factory)
        await factory.ready  # type: ignore[attr-defined]
        return proto

    async def run(self) -> None:
        n = self.options.connections - self.options.connections % 2
        started = time.monotonic()
        batch = 200
        for first in range(0, n, batch):
            self.clients += await defer.gatherResults(
                [defer.ensureDeferred(self.connect(i)) for i in range(first, min(n, first + batch))]
            )
        print(f"# {n} connections registered in {time.monotonic() - started:.1f} s; "
              f"daemon RSS {vm_rss(self.pid) / 2**20:.1f} MiB", flush=True)  # fmt: skip
        print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'offers':>8} {'p50 (ms)':>9} {'p99 (ms)':>9} "
              f"{'errors':>7} {'closed':>7}", flush=True)  # fmt: skip
        rate, interval = self.options.rate, self.options.interval
        per_tick = max(1, round(rate / 100))
        tick = per_tick / rate
        cursor = [0]
        begin = time.monotonic()

        def send_some() -> None:
            now = time.monotonic()
            for _ in range(per_tick):
                i = cursor[0] % n
                cursor[0] += 1
                sender, partner = self.clients[i], self.clients[i ^ 1]
                sender.send({"type": "offer", "to": partner.peer_id,
                             "offer": {"type": "offer", "sdp": _OFFER_PAD, "t": now}})  # fmt: skip

        def sample() -> None:
            window, self.latencies = self.latencies, []
            ordered = sorted(window)
            p50 = percentile(ordered, 0.5) if ordered else None
            p99 = percentile(ordered, 0.99) if ordered else None
            row = {
                "t": round(time.monotonic() - begin),
                "rss_mib": round(vm_rss(self.pid) / 2**20, 1),
                "offers": len(window),
                "p50_ms": None if p50 is None else round(p50 * 1000, 2),
                "p99_ms": None if p99 is None else round(p99 * 1000, 2),
                "errors": self.errors,
                "closed": self.closed,
            }
            self.rows.append(row)
            print(f"{row['t']:>6} {row['rss_mib']:>10} {row['offers']:>8} "
                  f"{row['p50_ms']!s:>9} {row['p99_ms']!s:>9} {row['errors']:>7} "
                  f"{row['closed']:>7}", flush=True)  # fmt: skip

        sender = task.LoopingCall(send_some)
        sender.clock = self.reactor
        sampler = task.LoopingCall(sample)
        sampler.clock = self.reactor
        sender.start(tick, now=False)
        sampler.start(interval, now=False)
        await task.deferLater(self.reactor, self.options.duration + 0.01, lambda: None)
        sender.stop()
        sampler.stop()
        for client in self.clients:
            client.sendClose(1000)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=200.0, help="offers per second in total")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    raise_file_limit(options.connections + 512)  # each side holds one end; the daemon inherits it
    from twisted.internet import reactor

    with tempfile.TemporaryDirectory(prefix="holepunch-soak-") as logs:
        processes = Processes(Path(logs))
        try:
            with running_server(processes, "holepunch") as (pids, url):
                port = int(url.rsplit(":", 1)[1].strip("/"))
                soak = Soak(reactor, port, pids[0], options)
                outcome: list[Any] = []

                def done(result: object) -> None:
                    outcome.append(result)
                    reactor.stop()  # type: ignore[attr-defined]

                reactor.callWhenRunning(  # type: ignore[attr-defined]
                    lambda: defer.ensureDeferred(soak.run()).addBoth(done)
                )
                reactor.run()  # type: ignore[attr-defined]
                if outcome and isinstance(outcome[0], Failure):
                    print(f"soak failed: {outcome[0]}", file=sys.stderr)
                    return 1
        finally:
            processes.stop_all()
    if options.json:
        print(json.dumps(soak.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
