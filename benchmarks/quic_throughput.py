"""Bulk transfer: holepunch's QuicSession, aioquic's asyncio API and kernel TCP, side by side.

Each contender moves the same payload (``--size``, 256 MiB by default: a random 1 MiB
block repeated) from a client (the sender) to a server (the receiver) over one stream.
The sender and the receiver are two processes; ``--path loopback`` puts both on
127.0.0.1, ``--path lab`` creates two network namespaces joined by a veth pair
(``hpb-<pid>-a`` 10.77.0.1 sends, ``hpb-<pid>-b`` 10.77.0.2 receives), runs each end
in its own namespace with ``ip netns exec`` and deletes the namespaces afterwards,
whatever happens (needs root and iproute2).

Reported per contender: MB/s (10^6 bytes a second, from the sender's first write to
the receiver seeing FIN/EOF; CLOCK_MONOTONIC, shared by the two processes) and CPU
seconds per GB (10^9 bytes; user + system of sender plus receiver, each counted by the
process itself from just before the connection to the end of the transfer, so
interpreter start-up and imports are left out; whole-process figures, from ``wait4``,
are in the JSON). Both QUIC contenders use aioquic's defaults: 1200-byte packets,
Reno, 1 MiB initial windows; each sender keeps at most 1 MiB unacknowledged in the
stream (a producer on our side, polling on aioquic's). The receiver answers the end of
the stream with one byte, the sender then closes.

    python benchmarks/quic_throughput.py                        # loopback, 256 MiB
    python benchmarks/quic_throughput.py --path lab --size 1G
    python benchmarks/quic_throughput.py --path lab --size 64M --profile
    python benchmarks/quic_throughput.py --mode holepunch --mib 2   # both ends in one process
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import json
import os
import pstats
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet import protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("holepunch", "aioquic-asyncio", "aioquic-asyncio-unthrottled", "tcp")
STACKS = ("holepunch", "aioquic-asyncio", "tcp")
CHUNK = 64 * 1024
HIGH_WATER = 1 << 20
ACK = b"k"
LAB_SENDER = "10.77.0.1"
LAB_RECEIVER = "10.77.0.2"


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
    from twisted.internet import defer, reactor

    from holepunch.quic.identity import PeerIdentity
    from holepunch.quic.udp import QuicDatagramProtocol

    udp_reactor: Any = reactor
    client_id, server_id = PeerIdentity.generate(), PeerIdentity.generate()
    done: defer.Deferred[int] = defer.Deferred()
    marks: dict[str, float] = {}

    def ended(sink: CountingSink) -> None:
        marks["end"] = time.perf_counter()
        done.callback(sink.received)

    def started() -> None:
        marks["start"] = time.perf_counter()

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
    server.session.listen_streams(SinkFactory(ended))
    outcome: dict[str, Any] = {}
    cpu0 = cpu_seconds()

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            assert client.session is not None
            yield client.session.when_connected(timeout=10)
            yield client.session.open_stream(ChunkSource(total, started))
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


RUNNERS: dict[str, Callable[[int], dict[str, Any]]] = {
    "holepunch": run_holepunch,
    "aioquic-asyncio": run_aioquic,
    "aioquic-asyncio-unthrottled": lambda total: run_aioquic(total, throttle=False),
    "tcp": run_tcp,
}


# --- one end in its own process (--role server / --role client) ------------------------


def say(**fields: Any) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


@implementer(IHalfCloseableProtocol)
class CountingSink(protocol.Protocol):
    """The receiving end of a stream: counts its bytes; ``on_end(sink)`` when the
    sender half-closes."""

    def __init__(self, on_end: Callable[[CountingSink], object]) -> None:
        self.received = 0
        self.on_end = on_end

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self.on_end(self)

    def writeConnectionLost(self) -> None:
        pass


class SinkFactory(protocol.Factory):
    """A :class:`CountingSink` for each stream."""

    def __init__(self, on_end: Callable[[CountingSink], object]) -> None:
        self.on_end = on_end

    def buildProtocol(self, addr: Any) -> CountingSink:
        return CountingSink(self.on_end)


@implementer(IPushProducer, IHalfCloseableProtocol)
class ChunkSource(protocol.Protocol):
    """The sending end: ``total`` bytes of :func:`chunks` as fast as the stream takes
    them (a push producer), then a half-close; ``on_start()`` when it begins and
    ``on_reply(data)`` for what the receiver writes back."""

    def __init__(
        self,
        total: int,
        on_start: Callable[[], object],
        on_reply: Callable[[bytes], object] | None = None,
    ) -> None:
        self.total = total
        self.on_start = on_start
        self.on_reply = on_reply
        self.paused = False
        self.pieces: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pieces = chunks(self.total)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.on_start()
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.transport
        if self.pieces is None:
            return
        for chunk in self.pieces:
            transport.write(chunk)
            if self.paused:
                return
        self.pieces = None
        transport.unregisterProducer()
        transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.on_reply is not None:
            self.on_reply(data)

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass


def chunks(total: int) -> Any:
    """The payload as CHUNK-sized pieces of a random 1 MiB block."""
    block = payload_block()
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        offset = sent % len(block)
        chunk = block[offset : offset + n]
        if len(chunk) < n:
            chunk += block[: n - len(chunk)]
        sent += n
        yield chunk


def holepunch_end(role: str, host: str, port: int, total: int, args: argparse.Namespace) -> None:
    from twisted.internet import defer, reactor

    from holepunch.quic.identity import PeerIdentity
    from holepunch.quic.udp import QuicDatagramProtocol

    udp_reactor: Any = reactor
    identity = PeerIdentity.load(args.identity)
    outcome: dict[str, Any] = {}
    done: defer.Deferred[None] = defer.Deferred()

    class LatchingProtocol(QuicDatagramProtocol):
        """The receiver learns the sender's address from its first datagram."""

        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            if self.peer_address[1] == 0:
                self.peer_address = (addr[0], addr[1])
            super().datagramReceived(datagram, addr)

    def ended(sink: CountingSink) -> None:
        outcome["end"] = time.monotonic()
        outcome["received"] = sink.received
        assert sink.transport is not None
        sink.transport.write(ACK)
        sink.transport.loseConnection()
        done.callback(None)

    def started() -> None:
        outcome["start"] = time.monotonic()

    def answered(_data: bytes) -> None:
        if not done.called:
            outcome["acked"] = time.monotonic()
            done.callback(None)

    peer_fp = args.peer_fingerprint
    if role == "server":
        endpoint = LatchingProtocol(reactor, ("0.0.0.0", 0), False, identity, peer_fp)
        listening = udp_reactor.listenUDP(port, endpoint, interface=host)
    else:
        endpoint = QuicDatagramProtocol(reactor, (host, port), True, identity, peer_fp)
        listening = udp_reactor.listenUDP(0, endpoint, interface=args.bind)
    assert endpoint.session is not None
    session = endpoint.session
    if role == "server":
        session.listen_streams(SinkFactory(ended))
    cpu0 = cpu_seconds()
    if role == "server":
        say(ready=listening.getHost().port)

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            if role == "client":
                yield session.when_connected(timeout=10)
                yield session.open_stream(ChunkSource(total, started, answered))
                yield done.addTimeout(600, reactor)
                session.close("done")
            else:
                yield done.addTimeout(600, reactor)
                # the sender closes once it has the answer; a lost close times out here
                yield session.when_closed().addTimeout(5, reactor).addErrback(lambda _: None)
        except Exception as e:
            outcome["error"] = repr(e)
        finally:
            outcome["cpu"] = cpu_seconds() - cpu0
            reactor.callLater(0, reactor.stop)

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in outcome:
        raise SystemExit(f"holepunch {role}: {outcome['error']}")
    say(
        role=role,
        send_failures=endpoint.send_failures,
        reactor=type(reactor).__name__,
        **outcome,
    )


def aioquic_end(role: str, host: str, port: int, total: int, args: argparse.Namespace) -> None:
    from aioquic.asyncio import connect, serve
    from aioquic.quic.configuration import QuicConfiguration

    from holepunch.quic.identity import PeerIdentity

    throttle = args.stack != "aioquic-asyncio-unthrottled"
    identity = PeerIdentity.load(args.identity)

    async def server() -> dict[str, Any]:
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        tasks: list[asyncio.Future[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = 0
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                received += len(data)
            end = time.monotonic()
            writer.write(ACK)
            writer.write_eof()
            done.set_result({"end": end, "received": received})

        config = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        config.certificate = identity.certificate
        config.private_key = identity.private_key
        quic_server: Any = await serve(
            host,
            port,
            configuration=config,
            stream_handler=lambda r, w: tasks.append(asyncio.ensure_future(handle(r, w))),
        )
        cpu0 = cpu_seconds()
        say(ready=quic_server._transport.get_extra_info("sockname")[1])
        outcome = await asyncio.wait_for(done, 600)
        # the sender closes once it has the answer
        for _ in range(500):
            if not quic_server._protocols:
                break
            await asyncio.sleep(0.01)
        outcome["cpu"] = cpu_seconds() - cpu0
        quic_server.close()
        return outcome

    async def client() -> dict[str, Any]:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE
        )
        config.certificate = identity.certificate
        config.private_key = identity.private_key
        cpu0 = cpu_seconds()
        async with connect(host, port, configuration=config) as conn:
            reader, writer = await conn.create_stream()
            stream_id = writer.get_extra_info("stream_id")
            quic = conn._quic
            start = time.monotonic()
            for chunk in chunks(total):
                # aioquic's StreamWriter.drain() does not wait for the peer; keep at
                # most HIGH_WATER unacknowledged, as our producer does.
                stream = quic._streams.get(stream_id)
                while (
                    throttle
                    and stream is not None
                    and stream.sender._buffer_stop - stream.sender._buffer_start > HIGH_WATER
                ):
                    await asyncio.sleep(0.0005)
                writer.write(chunk)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 600)
            assert answer == ACK, answer
            acked = time.monotonic()
        return {"start": start, "acked": acked, "cpu": cpu_seconds() - cpu0}

    outcome = asyncio.run(server() if role == "server" else client())
    say(role=role, **outcome)


def tcp_end(role: str, host: str, port: int, total: int, args: argparse.Namespace) -> None:
    if role == "server":
        listener = socket.create_server((host, port))
        cpu0 = cpu_seconds()
        say(ready=listener.getsockname()[1])
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        received = 0
        while n := conn.recv_into(buf):
            received += n
        end = time.monotonic()
        conn.sendall(ACK)
        conn.close()
        listener.close()
        say(role=role, end=end, received=received, cpu=cpu_seconds() - cpu0)
        return
    block = payload_block()
    view = memoryview(block)
    cpu0 = cpu_seconds()
    sock = socket.create_connection((host, port), source_address=(args.bind, 0))
    start = time.monotonic()
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        sock.sendall(view[:n])
        sent += n
    sock.shutdown(socket.SHUT_WR)
    answer = sock.recv(16)
    acked = time.monotonic()
    assert answer == ACK, answer
    sock.close()
    say(role=role, start=start, acked=acked, cpu=cpu_seconds() - cpu0)


ENDS: dict[str, Callable[[str, str, int, int, argparse.Namespace], None]] = {
    "holepunch": holepunch_end,
    "aioquic-asyncio": aioquic_end,
    "aioquic-asyncio-unthrottled": aioquic_end,
    "tcp": tcp_end,
}


def run_end(args: argparse.Namespace, total: int) -> None:
    host, _, port = (args.connect or f"{args.bind}:0").rpartition(":")
    end = ENDS[args.stack]
    if args.profile_out:
        # imported before profiling starts, so the profile shows the transfer, not imports
        import aioquic.asyncio  # noqa: F401
        import twisted.internet.reactor  # noqa: F401

        import holepunch.quic.udp  # noqa: F401

        profiler = cProfile.Profile()
        try:
            profiler.runcall(end, args.role, host, int(port), total, args)
        finally:
            profiler.dump_stats(args.profile_out)
    else:
        end(args.role, host, int(port), total, args)


# --- the lab path: two namespaces and a veth pair ---------------------------------------


class VethLab:
    """Two network namespaces joined by a veth pair, removed on exit whatever happens.

    Every link is made inside the lab's namespaces (``ip -n``), so the root namespace is
    never touched. The names carry this process's id, so runs and tests cannot collide.
    """

    def __init__(self, prefix: str | None = None) -> None:
        prefix = prefix or f"hpb-{os.getpid()}"
        self.sender, self.receiver = f"{prefix}-a", f"{prefix}-b"
        self._created: list[str] = []

    def start(self) -> VethLab:
        if shutil.which("ip") is None:
            raise SystemExit("--path lab needs iproute2 (`ip`)")
        if os.geteuid() != 0:
            raise SystemExit("--path lab needs root (it creates network namespaces)")
        atexit.register(self.stop)
        for ns in (self.sender, self.receiver):
            self._ip("netns", "add", ns)
            self._created.append(ns)
        self._ip(
            "-n", self.sender, "link", "add", "hpb0", "type", "veth",
            "peer", "name", "hpb0", "netns", self.receiver,
        )  # fmt: skip
        for ns, address in ((self.sender, LAB_SENDER), (self.receiver, LAB_RECEIVER)):
            self._ip("netns", "exec", ns, "sysctl", "-q", "-w",
                     "net.ipv6.conf.all.disable_ipv6=1")  # fmt: skip
            self._ip("-n", ns, "addr", "add", f"{address}/24", "dev", "hpb0")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", "hpb0", "up")
        return self

    def stop(self) -> None:
        while self._created:
            ns = self._created.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    @staticmethod
    def _ip(*argv: str) -> None:
        proc = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"ip {' '.join(argv)}: {proc.stderr.strip()}")

    def __enter__(self) -> VethLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# --- the orchestrator --------------------------------------------------------------------


class Child:
    """A sender or receiver process; its CPU time comes from ``wait4``."""

    def __init__(self, argv: list[str], log: IO[str]) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        self.rusage: resource.struct_rusage | None = None

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"no answer from {self.proc.args!r}: {self.stderr()}")
        return line

    def wait(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = rusage
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {self.proc.args!r}")
            time.sleep(0.01)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        if self.proc.returncode:
            raise RuntimeError(f"{self.proc.args!r} exited {self.proc.returncode}: {self.stderr()}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def kill(self) -> None:
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def process_cpu(self) -> float:
        assert self.rusage is not None
        return self.rusage.ru_utime + self.rusage.ru_stime


def transfer(
    stack: str,
    total: int,
    lab: VethLab | None,
    workdir: Path,
    profile: bool = False,
) -> dict[str, Any]:
    """One transfer of ``total`` bytes with ``stack``, sender and receiver in two processes."""
    script = [sys.executable, str(Path(__file__).resolve())]
    common = ["--stack", stack, "--size", f"{total}B", "--peer-fingerprint"]
    server_fp = (workdir / "receiver.fp").read_text()
    client_fp = (workdir / "sender.fp").read_text()
    if lab is None:
        server_prefix: list[str] = []
        client_prefix: list[str] = []
        server_host = client_host = "127.0.0.1"
    else:
        server_prefix, client_prefix = lab.prefix(lab.receiver), lab.prefix(lab.sender)
        server_host, client_host = LAB_RECEIVER, LAB_SENDER
    server_argv = [*server_prefix, *script, "--role", "server", *common, client_fp,
                   "--identity", str(workdir / "receiver"), "--bind", server_host]  # fmt: skip
    client_argv = [*client_prefix, *script, "--role", "client", *common, server_fp,
                   "--identity", str(workdir / "sender"), "--bind", client_host]  # fmt: skip
    if profile:
        server_argv += ["--profile-out", str(workdir / f"{stack}-receiver.prof")]
        client_argv += ["--profile-out", str(workdir / f"{stack}-sender.prof")]
    children: list[Child] = []
    try:
        server = Child(server_argv, tempfile.TemporaryFile("w+"))
        children.append(server)
        port = json.loads(server.readline(60))["ready"]
        client = Child([*client_argv, "--connect", f"{server_host}:{port}"],
                       tempfile.TemporaryFile("w+"))  # fmt: skip
        children.append(client)
        sent = client.wait(900)
        received = server.wait(60)
    finally:
        for child in children:
            child.kill()
    assert received["received"] == total, (stack, received)
    elapsed = received["end"] - sent["start"]
    gb = total / 1e9
    return {
        **result(stack, total, elapsed, sent["cpu"] + received["cpu"]),
        "path": "lab" if lab else "loopback",
        "sender_cpu_s_per_gb": round(sent["cpu"] / gb, 2),
        "receiver_cpu_s_per_gb": round(received["cpu"] / gb, 2),
        "process_cpu_s": round(client.process_cpu + server.process_cpu, 3),
        "namespaces": [lab.sender, lab.receiver] if lab else [],
        **({"send_failures": sent["send_failures"]} if "send_failures" in sent else {}),
    }


def parse_size(text: str) -> int:
    """``256M``, ``256MiB``, ``1G``, ``512K``, ``4096B``, or a bare number of MiB, in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G, 512K)")
    unit = match.group(2).upper() or ("B" if match.group(3) else "M")
    return int(match.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30}[unit]


def human_size(total: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if total >= 1 << shift and total % (1 << shift) == 0:
            return f"{total >> shift} {unit}"
    return f"{total} bytes"


# --- where the time goes ----------------------------------------------------------------

IDLE = "waiting in epoll (idle: wall time, not CPU)"
OTHER = "other (builtins called from all of the above: len, list.append, ...)"

#: (label, test on (file, function name)) in order; the first match takes the time.
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    (IDLE, lambda f, n: "'poll' of 'select.epoll'" in n or "_selector.poll" in n),
    ("AEAD + header protection (aioquic _crypto, quic/crypto; OpenSSL via cryptography)",
     lambda f, n: "aioquic/_crypto" in f or "aioquic/quic/crypto" in f
     or "cryptography" in f or "AESGCM" in n or "ChaCha" in n or "Cipher" in n
     or "'update' of" in n or "'encrypt' of" in n or "'decrypt' of" in n),
    ("packet building (aioquic packet_builder)", lambda f, n: "packet_builder" in f),
    ("ACK ranges (aioquic rangeset)", lambda f, n: "rangeset" in f),
    ("loss recovery + congestion control (aioquic recovery, congestion)",
     lambda f, n: "recovery" in f or "congestion" in f),
    ("stream send/receive buffers (aioquic stream)", lambda f, n: "aioquic/quic/stream" in f),
    ("packet parsing, frames, connection state (rest of aioquic)",
     lambda f, n: "aioquic" in f or "_buffer" in n or "Buffer" in n or "enum" in f),
    ("socket syscalls (sendto, recvfrom, send, recv)",
     lambda f, n: any(s in n for s in ("sendto", "recvfrom", "recv_into", "sendall",
                                         "'recv'", "'send'"))),
    ("Twisted reactor, UDP port, Deferreds (twisted)", lambda f, n: "twisted" in f),
    ("holepunch session and stream transports (holepunch.quic)", lambda f, n: "holepunch" in f),
    ("asyncio event loop and streams", lambda f, n: "asyncio" in f),
    ("benchmark script (payload slices)", lambda f, n: "quic_throughput" in f),
]  # fmt: skip


def where_time_goes(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Total (self) time of a profile by category, largest first."""
    totals: dict[str, float] = {}
    raw: Any = stats
    for (filename, _line, name), (_cc, _nc, tt, _ct, _callers) in raw.stats.items():
        label = next((lab for lab, test in CATEGORIES if test(filename, name)), OTHER)
        totals[label] = totals.get(label, 0.0) + tt
    return sorted(totals.items(), key=lambda item: -item[1])


def print_profile(path: Path, title: str, top: int) -> None:
    out = sys.stdout
    stats = pstats.Stats(str(path), stream=out)
    raw: Any = stats
    categories = where_time_goes(stats)
    idle = dict(categories).get(IDLE, 0.0)
    busy = raw.total_tt - idle
    print(f"\n=== {title}: {raw.total_tt:.2f} s profiled, {idle:.2f} s of it idle in epoll ===")
    print("where the busy time goes (self time by category, % of busy time):")
    for label, seconds in categories:
        if label != IDLE:
            print(f"  {seconds:7.2f} s {100 * seconds / busy:5.1f}%  {label}")
    stats.strip_dirs()
    print(f"\ntop {top} by total (self) time:")
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


def table(rows: list[dict[str, Any]], total: int, path: str, stacks: list[str]) -> str:
    """Per contender, the median run (by MB/s) of those made; the range if several."""
    where = {
        "loopback": "127.0.0.1 -> 127.0.0.1",
        "lab": f"{LAB_SENDER} -> {LAB_RECEIVER} over a veth pair between two namespaces",
    }[path]
    runs = sum(1 for row in rows if row["mode"] == stacks[0])
    lines = [
        f"{human_size(total)} over {path} ({where}), one stream, sender and receiver in "
        f"two processes; {runs} run(s) each, interleaved, the median shown",
        f"{'contender':<30}{'MB/s':>9}{'CPU s/GB':>10}{'sender':>8}{'receiver':>10}"
        f"{'seconds':>9}{'MB/s range':>18}",
    ]
    for stack in stacks:
        mine = sorted((r for r in rows if r["mode"] == stack), key=lambda r: r["mb_per_s"])
        row = mine[len(mine) // 2]
        spread = f"{mine[0]['mb_per_s']}-{mine[-1]['mb_per_s']}" if len(mine) > 1 else ""
        lines.append(
            f"{row['mode']:<30}{row['mb_per_s']:>9}{row['cpu_s_per_gb']:>10}"
            f"{row['sender_cpu_s_per_gb']:>8}{row['receiver_cpu_s_per_gb']:>10}"
            f"{row['seconds']:>9}{spread:>18}"
        )
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace, total: int) -> int:
    stacks = args.stacks.split(",") if args.stacks else (
        ["holepunch"] if args.profile else list(STACKS))  # fmt: skip
    for stack in stacks:
        if stack not in MODES:
            raise SystemExit(f"unknown stack {stack!r}; choose from {', '.join(MODES)}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    from holepunch.quic.identity import PeerIdentity

    with tempfile.TemporaryDirectory(prefix="hpb-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        for name in ("sender", "receiver"):
            identity = PeerIdentity.generate()
            (workdir / name).mkdir()
            identity.save(workdir / name)
            (workdir / f"{name}.fp").write_text(identity.fingerprint)
        lab = VethLab() if args.path == "lab" else None
        rows = []
        load0 = f"{os.getloadavg()[0]:.2f}"
        try:
            if lab is not None:
                lab.start()
            for _ in range(args.runs):
                for stack in stacks:
                    rows.append(transfer(stack, total, lab, workdir, profile=args.profile))
                    if args.json:
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            if lab is not None:
                lab.stop()
        if not args.json:
            print(table(rows, total, args.path, stacks))
            print(f"{os.cpu_count()} CPUs; load average at the start {load0}, at the end "
                  f"{os.getloadavg()[0]:.2f}")  # fmt: skip
        if args.profile:
            for stack in stacks:
                for role in ("sender", "receiver"):
                    prof = workdir / f"{stack}-{role}.prof"
                    if prof.exists():
                        print_profile(prof, f"{stack} {role}", args.top)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--path",
        choices=("loopback", "lab"),
        default="loopback",
        help="loopback (127.0.0.1) or lab (two namespaces, a veth pair)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=256 << 20,
        help="payload: 256M (default), 1G, 512K; a bare number is MiB",
    )
    parser.add_argument("--mib", type=int, help="payload in MiB (same as --size NM)")
    parser.add_argument(
        "--stacks",
        help=f"comma-separated, of {', '.join(MODES)} "
        f"(default {','.join(STACKS)}; holepunch alone with --profile)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run under cProfile and print where the time goes"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of each contender, interleaved (median shown)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument(
        "--mode", choices=MODES, help="both ends of one contender in this process (loopback only)"
    )
    # one end, started by the orchestrator
    parser.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--stack", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--bind", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--connect", help=argparse.SUPPRESS)
    parser.add_argument("--identity", help=argparse.SUPPRESS)
    parser.add_argument("--peer-fingerprint", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)  # fmt: skip
    total = args.mib << 20 if args.mib else args.size
    if args.role:
        run_end(args, total)
        return 0
    if args.mode:
        if args.profile:
            profiler = cProfile.Profile()
            outcome = profiler.runcall(RUNNERS[args.mode], total)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        else:
            outcome = RUNNERS[args.mode](total)
        print(json.dumps(outcome))
        return 0
    return orchestrate(args, total)


if __name__ == "__main__":
    raise SystemExit(main())
