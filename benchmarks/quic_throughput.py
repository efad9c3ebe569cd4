"""Bulk transfer over loopback: holepunch's QuicSession, aioquic's asyncio API, kernel TCP.

Each contender moves the same payload (``--mib`` MiB, a random 1 MiB block repeated)
from a client to a server on 127.0.0.1 over one stream, in its own child process with
both ends in that process, and reports MB/s (10^6 bytes a second, from the first byte
written to the server seeing FIN/EOF) and the CPU seconds both ends spent per GB
(10^9 bytes; user + system, from ``getrusage``). Both QUIC contenders use aioquic's
defaults: 1200-byte packets, Reno, 1 MiB initial windows; the sender keeps at most
1 MiB unacknowledged in the stream (a producer on our side, polling on aioquic's).

    python benchmarks/quic_throughput.py --mib 256
    python benchmarks/quic_throughput.py --mode holepunch --mib 64 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("holepunch", "aioquic-asyncio", "aioquic-asyncio-unthrottled", "tcp")
CHUNK = 64 * 1024
HIGH_WATER = 1 << 20


def payload_block() -> bytes:
    return os.urandom(1 << 20)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def result(mode: str, nbytes: int, elapsed: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "mode": mode,
        "bytes": nbytes,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(nbytes / 1e6 / elapsed, 1),
        "cpu_s_per_gb": round(cpu / (nbytes / 1e9), 2),
        **extra,
    }


# --- holepunch: QuicSession on Twisted UDP ports -------------------------------------


def run_holepunch(total: int) -> dict[str, Any]:
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
    from zope.interface import implementer

    from holepunch.quic.identity import PeerIdentity
    from holepunch.quic.udp import QuicDatagramProtocol

    udp_reactor: Any = reactor
    block = payload_block()
    client_id, server_id = PeerIdentity.generate(), PeerIdentity.generate()
    done: defer.Deferred[int] = defer.Deferred()
    marks: dict[str, float] = {}

    @implementer(IHalfCloseableProtocol)
    class Sink(protocol.Protocol):
        received = 0

        def dataReceived(self, data: bytes) -> None:
            self.received += len(data)

        def readConnectionLost(self) -> None:
            marks["end"] = time.perf_counter()
            done.callback(self.received)

        def writeConnectionLost(self) -> None:
            pass

    @implementer(IPushProducer)
    class Source(protocol.Protocol):
        sent = 0
        paused = False

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
            marks["start"] = time.perf_counter()
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            transport: Any = self.transport
            while not self.paused and self.sent < total:
                n = min(CHUNK, total - self.sent)
                offset = self.sent % len(block)
                chunk = block[offset : offset + n]
                if len(chunk) < n:
                    chunk += block[: n - len(chunk)]
                self.sent += n
                transport.write(chunk)
            if self.sent >= total and not self.paused:
                transport.unregisterProducer()
                transport.loseWriteConnection()

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True

    server = QuicDatagramProtocol(
        reactor, ("127.0.0.1", 0), False, server_id, client_id.fingerprint
    )
    server_port = udp_reactor.listenUDP(0, server, interface="127.0.0.1")
    client = QuicDatagramProtocol(
        reactor,
        ("127.0.0.1", server_port.getHost().port),
        True,
        client_id,
        server_id.fingerprint,
    )
    client_port = udp_reactor.listenUDP(0, client, interface="127.0.0.1")
    server.peer_address = ("127.0.0.1", client_port.getHost().port)
    assert server.session is not None and client.session is not None
    server.session.listen_streams(protocol.Factory.forProtocol(Sink))
    outcome: dict[str, Any] = {}
    cpu0 = cpu_seconds()

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            assert client.session is not None
            yield client.session.when_connected(timeout=10)
            yield client.session.open_stream(Source())
            received = yield done.addTimeout(600, reactor)
            outcome["received"] = received
        except Exception as e:
            outcome["error"] = repr(e)
        finally:
            outcome["cpu"] = cpu_seconds() - cpu0
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in outcome:
        raise SystemExit(outcome["error"])
    assert outcome["received"] == total, outcome
    return result(
        "holepunch",
        total,
        marks["end"] - marks["start"],
        outcome["cpu"],
        send_failures=client.send_failures,
        reactor=type(reactor).__name__,
    )


# --- aioquic's own asyncio API ----------------------------------------------------------


def run_aioquic(total: int, throttle: bool = True) -> dict[str, Any]:
    from aioquic.asyncio import connect, serve
    from aioquic.quic.configuration import QuicConfiguration

    from holepunch.quic.identity import PeerIdentity

    block = payload_block()
    identity = PeerIdentity.generate()

    async def main() -> dict[str, Any]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        tasks: list[asyncio.Future[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = 0
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                received += len(data)
            assert received == total, received
            done.set_result(time.perf_counter())

        server_config = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        server_config.certificate = identity.certificate
        server_config.private_key = identity.private_key
        server: Any = await serve(
            "127.0.0.1",
            0,
            configuration=server_config,
            stream_handler=lambda r, w: tasks.append(asyncio.ensure_future(handle(r, w))),
        )
        port = server._transport.get_extra_info("sockname")[1]
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE
        )
        cpu0 = cpu_seconds()
        async with connect("127.0.0.1", port, configuration=client_config) as client:
            _reader, writer = await client.create_stream()
            stream_id = writer.get_extra_info("stream_id")
            quic = client._quic
            start = time.perf_counter()
            sent = 0
            while sent < total:
                # aioquic's StreamWriter.drain() does not wait for the peer; keep at
                # most HIGH_WATER unacknowledged, as our producer does.
                stream = quic._streams.get(stream_id)
                while (
                    throttle
                    and stream is not None
                    and stream.sender._buffer_stop - stream.sender._buffer_start > HIGH_WATER
                ):
                    await asyncio.sleep(0.0005)
                n = min(CHUNK, total - sent)
                offset = sent % len(block)
                chunk = block[offset : offset + n]
                if len(chunk) < n:
                    chunk += block[: n - len(chunk)]
                writer.write(chunk)
                sent += n
            writer.write_eof()
            end = await asyncio.wait_for(done, 600)
            cpu = cpu_seconds() - cpu0
        server.close()
        name = "aioquic-asyncio" if throttle else "aioquic-asyncio-unthrottled"
        return result(name, total, end - start, cpu)

    return asyncio.run(main())


# --- kernel TCP -------------------------------------------------------------------------


def run_tcp(total: int) -> dict[str, Any]:
    block = payload_block()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    marks: dict[str, float] = {}

    def receive() -> None:
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        received = 0
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            received += n
        marks["end"] = time.perf_counter()
        assert received == total
        conn.close()

    thread = threading.Thread(target=receive)
    thread.start()
    cpu0 = cpu_seconds()
    sock = socket.create_connection(("127.0.0.1", port))
    marks["start"] = time.perf_counter()
    sent = 0
    view = memoryview(block)
    while sent < total:
        n = min(len(block), total - sent)
        sock.sendall(view[:n])
        sent += n
    sock.shutdown(socket.SHUT_WR)
    thread.join(600)
    cpu = cpu_seconds() - cpu0
    sock.close()
    listener.close()
    return result("tcp", total, marks["end"] - marks["start"], cpu)


RUNNERS = {
    "holepunch": run_holepunch,
    "aioquic-asyncio": run_aioquic,
    "aioquic-asyncio-unthrottled": lambda total: run_aioquic(total, throttle=False),
    "tcp": run_tcp,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="payload size in MiB")
    parser.add_argument("--mode", choices=MODES, help="run one contender in this process")
    parser.add_argument("--profile", action="store_true", help="cProfile the one --mode")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    total = args.mib << 20
    if args.mode:
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            outcome = profiler.runcall(RUNNERS[args.mode], total)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        else:
            outcome = RUNNERS[args.mode](total)
        print(json.dumps(outcome))
        return 0
    rows = []
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--mib", str(args.mib)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(f"{args.mib} MiB over 127.0.0.1, one stream, both ends in one process")
        print(f"{'contender':<30}{'MB/s':>10}{'CPU s/GB':>12}{'seconds':>10}")
        for row in rows:
            print(
                f"{row['mode']:<30}{row['mb_per_s']:>10}{row['cpu_s_per_gb']:>12}"
                f"{row['seconds']:>10}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
