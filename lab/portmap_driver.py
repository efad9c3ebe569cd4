# -*- test-case-name: tests.lab.test_portmap_lab -*-
"""Drive a :class:`holepunch.nat.portmap.PortMapper` inside a lab host, one JSON line per event.

Run in a lab host's namespace (``LabHost.popen(host.python_argv("lab.portmap_driver", ...))``)::

    python -m lab.portmap_driver map [--method pcp] [--timeout 1.0] [--lifetime 600]
    python -m lab.portmap_driver probe [--timeout 1.0]
    python -m lab.portmap_driver bench [--method upnp] [--rounds 10]

``map`` binds a UDP socket, prints ``{"event": "listening", "port": P}``, maps it and
prints ``mapped`` (with the mapping and ``elapsed_ms``) or ``failed`` (with ``attempts``).
Then every datagram the socket receives is printed as ``received``; stdin lines ``unmap``
and ``renew`` do that and print the outcome; end of stdin closes the mapper (which also
waits for abandoned UPnP calls to undo their mappings), prints ``closed`` and exits.
``probe`` prints the probe report. ``bench`` maps and deletes ``--rounds`` times, each time
with a new mapper (so UPnP discovers the gateway again, as a fresh application would), and
prints one ``round`` line per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol
from twisted.protocols.basic import LineReceiver

from holepunch.nat.portmap import PortMapper, PortMapping, PortMappingError
from holepunch.nat.portmap.mapper import DEFAULT_METHODS


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def mapping_fields(mapping: PortMapping) -> dict[str, Any]:
    return {
        "method": mapping.method.value,
        "internal": [mapping.internal_address, mapping.internal_port],
        "external": [mapping.external_address, mapping.external_port],
        "lifetime": mapping.lifetime,
    }


class Receiver(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        emit("received", data=datagram.decode(errors="replace"), source=list(addr))


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, mapper: PortMapper, done: defer.Deferred[None]) -> None:
        self.mapper = mapper
        self.done = done
        self.mapping: PortMapping | None = None

    def lineReceived(self, line: bytes) -> None:
        command = line.decode().strip()
        if self.mapping is None:
            emit("error", error="no mapping")
            return
        mapping = self.mapping
        if command == "unmap":
            self.mapping = None
            self.mapper.unmap(mapping, timeout=2.0).addCallbacks(
                lambda _: emit("unmapped"), lambda f: emit("unmap-failed", error=str(f.value))
            )
        elif command == "renew":

            def renewed(new: PortMapping) -> None:
                self.mapping = new
                emit("renewed", **mapping_fields(new))

            self.mapper.renew(mapping, timeout=2.0).addCallbacks(
                renewed, lambda f: emit("renew-failed", error=str(f.value))
            )

    def connectionLost(self, reason: Any = None) -> None:
        self.mapper.close(timeout=2.0).chainDeferred(self.done)


async def run_map(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import stdio

    port = reactor.listenUDP(0, Receiver())
    emit("listening", port=port.getHost().port)
    mapper = PortMapper(
        reactor,
        args.gateway,
        methods=args.method or DEFAULT_METHODS,
        upnp_root_url=args.upnp_root_url,
    )
    started = time.monotonic()
    done: defer.Deferred[None] = defer.Deferred()
    commands = Commands(mapper, done)
    try:
        commands.mapping = await mapper.map_udp(
            port.getHost().port, lifetime=args.lifetime, timeout=args.timeout
        )
    except PortMappingError as e:
        emit("failed", error=str(e), attempts=e.attempts, elapsed_ms=_ms(started))
    else:
        emit("mapped", elapsed_ms=_ms(started), **mapping_fields(commands.mapping))
    stdio.StandardIO(commands, reactor=reactor)
    await done  # end of stdin: close the mapper (deletes what it made)
    emit("closed")
    await port.stopListening()


async def run_probe(reactor: Any, args: argparse.Namespace) -> None:
    started = time.monotonic()
    report = await PortMapper(reactor, args.gateway).probe(timeout=args.timeout)
    emit("probe", report=report, elapsed_ms=_ms(started))


async def run_bench(reactor: Any, args: argparse.Namespace) -> None:
    port = reactor.listenUDP(0, DatagramProtocol())
    for index in range(args.rounds):
        mapper = PortMapper(reactor, args.gateway, methods=args.method or DEFAULT_METHODS)
        started = time.monotonic()
        try:
            mapping = await mapper.map_udp(port.getHost().port, timeout=args.timeout)
        except PortMappingError as e:
            emit("round", index=index, error=str(e))
            continue
        mapped = _ms(started)
        started = time.monotonic()
        await mapper.unmap(mapping, timeout=args.timeout)
        emit(
            "round", index=index, method=mapping.method.value, map_ms=mapped, unmap_ms=_ms(started)
        )
    await port.stopListening()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.portmap_driver")
    parser.add_argument("mode", choices=("map", "probe", "bench"))
    parser.add_argument("--method", action="append", choices=("pcp", "natpmp", "upnp"))
    parser.add_argument("--gateway", default=None)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--lifetime", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--upnp-root-url", default=None)
    args = parser.parse_args(argv)
    run = {"map": run_map, "probe": run_probe, "bench": run_bench}[args.mode]
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
