# -*- test-case-name: tests.integration.test_connect_cli -*-
"""``holepunch send FILE`` and ``holepunch receive [DIR]``: one file, verified, over an
encrypted QUIC stream through NATs.

Both sides name each other as ``holepunch connect`` does (``--signaling``, ``--id``, and
``--to PEER`` on one side, ``--accept`` on the other; either side may offer). On the
one stream the offerer opens (after a preamble), the two talk in JSON lines::

    sender   -> {"name": "photo.jpg", "size": 1234, "sha256": "ab12..."}
    receiver -> {"offset": 0}            (bytes of DIR/name.part already there), or
                {"error": "..."}         (refused: a bad name, an existing file)
    sender   -> the file's bytes from offset, then FIN
    receiver -> {"ok": true} or {"error": "..."}, then FIN

The receiver writes ``DIR/NAME.part``, checks the size and the SHA-256 of the whole
file, and renames it to ``DIR/NAME``; both exit 0 only on a verified file. A name with
a path separator or ``..`` is refused, and so is an existing file unless
``--overwrite``. If the transfer breaks, the ``.part`` file stays, and the same two
commands run again resume where it ended.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer, interfaces, protocol, threads
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.cli.peer import (
    SecurePeer,
    StageError,
    add_peer_arguments,
    carry_one_stream,
)

PREAMBLE = b"holepunch-transfer/1\n"
MAX_LINE = 65536
CHUNK = 256 << 10


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch send``."""
    parser.add_argument("file", metavar="FILE", help="the file to send")
    add_peer_arguments(parser)
    parser.add_argument(
        "--name", metavar="NAME", help="the name the receiver saves it under (FILE's name)"
    )


def add_receive_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch receive``."""
    parser.add_argument(
        "directory", nargs="?", default=".", metavar="DIR", help="where to save it (.)"
    )
    add_peer_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a file of the same name")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal",
    )


def check_name(name: object) -> str:
    """``name`` if it is a plain file name; raises ValueError saying why not."""
    if not isinstance(name, str) or not name:
        raise ValueError("no file name")
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name) or os.sep in name:
        raise ValueError(f"refused name {name!r}: it has a path separator")
    if ".." in name or name == ".":
        raise ValueError(f"refused name {name!r}: it has '..'")
    if "\0" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"refused name {name!r}: it has control characters")
    return name


@implementer(interfaces.IHalfCloseableProtocol)
class _Exchange(protocol.Protocol):
    """The transfer stream: JSON lines, then raw bytes to a sink; the offerer writes
    the preamble first, the acceptor checks it."""

    def __init__(self, offerer: bool, session: Any = None) -> None:
        self.offerer = offerer
        self.session = session
        self.preamble = b"" if offerer else PREAMBLE
        self.buffer = b""
        self.sink: Any = None
        self.read_done = False
        self.write_done = False
        self.lost: Failure | None = None
        self.made: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.offerer:
            self.transport.write(PREAMBLE)
        self.made.callback(None)
        self._wake()

    def dataReceived(self, data: bytes) -> None:
        if self.preamble:
            self.buffer += data
            n = min(len(self.buffer), len(self.preamble))
            if self.buffer[:n] != self.preamble[:n]:
                self.abort("the peer is not a holepunch send/receive (stream preamble)")
                return
            if len(self.buffer) < len(self.preamble):
                return
            data, self.buffer, self.preamble = self.buffer[len(self.preamble) :], b"", b""
        if self.sink is not None:
            if data:
                self.sink(data)
        else:
            self.buffer += data
            if len(self.buffer) > MAX_LINE and b"\n" not in self.buffer:
                self.abort("the peer sent a line too long")
        self._wake()

    def readConnectionLost(self) -> None:
        self.read_done = True
        self._wake()

    def writeConnectionLost(self) -> None:
        self.write_done = True
        self._wake()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.read_done = self.write_done = True
        if self.lost is None:
            self.lost = reason or Failure(Exception("stream lost"))
        self._wake()

    def session_closed(self, reason: Exception) -> None:
        """The QUIC session ended (before or during the stream)."""
        if self.lost is None:
            self.lost = Failure(reason)
        self._wake()

    def abort(self, why: str) -> None:
        """Give up on the stream with ``why`` as the reason."""
        if self.lost is None:
            self.lost = Failure(StageError("transfer", why))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> defer.Deferred[None]:
        """Fires at the next change: data, FIN, loss."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def broken(self) -> StageError:
        """Why the stream broke, as a :class:`StageError`."""
        assert self.lost is not None
        value = self.lost.value
        if isinstance(value, StageError):
            return value
        closed = getattr(self.session, "closed", None)
        if closed is not None:  # the session's reason says more than the stream's
            return StageError("connection", str(closed))
        return StageError("connection", self.lost.getErrorMessage())

    async def read_message(self) -> dict[str, Any]:
        """The next JSON line from the peer."""
        while b"\n" not in self.buffer:
            if self.lost is not None and not self.lost.check(ConnectionDone):
                raise self.broken()
            if self.read_done:
                raise StageError("transfer", "the peer ended the stream early")
            await self.wait()
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise StageError("transfer", "the peer sent something that is not JSON") from None
        if not isinstance(message, dict):
            raise StageError("transfer", "the peer sent something that is not a JSON object")
        return message

    def send_message(self, message: dict[str, Any]) -> None:
        """One JSON line to the peer."""
        assert self.transport is not None
        self.transport.write(json.dumps(message).encode() + b"\n")

    def raw(self, sink: Any) -> None:
        """From now on, what the peer sends goes to ``sink(data)``."""
        self.sink = sink
        leftover, self.buffer = self.buffer, b""
        if leftover:
            sink(leftover)

    async def until_read_done(self) -> None:
        """Wait for the peer's FIN; raise if the stream broke instead."""
        while not self.read_done:
            await self.wait()
        if self.lost is not None and not self.lost.check(ConnectionDone):
            raise self.broken()

    async def until_write_done(self) -> None:
        """Wait until our FIN is out; raise if the stream broke instead."""
        while not self.write_done:
            await self.wait()
        if self.lost is not None and not self.lost.check(ConnectionDone):
            raise self.broken()


@implementer(interfaces.IPullProducer)
class _FileProducer:
    """A file, from an offset, to a stream, as fast as its send buffer drains."""

    def __init__(self, file: Any, consumer: Any, remaining: int) -> None:
        self.file = file
        self.consumer = consumer
        self.remaining = remaining
        self.done: defer.Deferred[None] = defer.Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        chunk = self.file.read(min(CHUNK, self.remaining)) if self.remaining > 0 else b""
        if not chunk:
            self.consumer.unregisterProducer()
            if self.remaining > 0:
                self.done.errback(StageError("transfer", "the file got shorter while sending"))
            else:
                self.done.callback(None)
            return
        self.remaining -= len(chunk)
        self.consumer.write(chunk)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.errback(StageError("connection", "the stream ended while sending"))


async def _open_exchange(peer: SecurePeer) -> _Exchange:
    """The one stream of the transfer: opened by the offerer, taken by the acceptor."""
    session = peer.session
    exchange = _Exchange(peer.offerer, session)
    session.on_closed(exchange.session_closed)
    await carry_one_stream(peer, exchange)
    while not exchange.made.called:
        if exchange.lost is not None:
            raise exchange.broken()
        await exchange.wait()
    return exchange


def _sha256_of(path: Path, limit: int | None = None) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest


async def send_command(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``holepunch send``; returns the exit status."""
    from holepunch.cli.peer import with_secure_peer

    path = Path(args.file)
    if not path.is_file():
        err.write(f"holepunch send: {args.file}: not a readable file\n")
        return 2
    name = args.name if args.name is not None else path.name
    size = path.stat().st_size
    sha256 = _sha256_of(path).hexdigest()

    async def body(peer: SecurePeer) -> int:
        exchange = await _open_exchange(peer)
        exchange.send_message({"name": name, "size": size, "sha256": sha256})
        reply = await exchange.read_message()
        if "error" in reply:
            raise StageError("transfer", f"the receiver refused: {reply['error']}")
        offset = reply.get("offset")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise StageError("transfer", f"the receiver asked for a bad offset {offset!r}")
        assert exchange.transport is not None
        with path.open("rb") as f:
            f.seek(offset)
            producer = _FileProducer(f, exchange.transport, size - offset)
            exchange.transport.registerProducer(producer, False)  # type: ignore[attr-defined]
            try:
                await producer.done
            except StageError as e:
                raise StageError(
                    e.stage,
                    f"{e.detail}; the receiver keeps what arrived: run the same send again "
                    "to resume",
                ) from e
        exchange.transport.loseWriteConnection()  # type: ignore[attr-defined]
        try:
            verdict = await exchange.read_message()
        except StageError as e:
            raise StageError(e.stage, f"{e.detail}; run the same send again to resume") from e
        if verdict.get("ok") is not True:
            raise StageError("transfer", f"the receiver says: {verdict.get('error', verdict)}")
        await exchange.until_read_done()
        await peer.session.when_acknowledged(exchange.transport.stream_id)  # type: ignore[attr-defined]
        resumed = f", resumed at {offset}" if offset else ""
        out.write(f"sent {name} ({size} bytes{resumed}), verified (sha256 {sha256})\n")
        out.flush()
        return 0

    return await with_secure_peer(reactor, args, err, "send", body)


class _Progress:
    """Percent, MB/s and ETA on stderr, at most five times a second."""

    def __init__(self, reactor: Any, err: TextIO, name: str, size: int, start: int) -> None:
        self.reactor = reactor
        self.err = err
        self.name = name
        self.size = size
        self.start = start
        self.started = reactor.seconds()
        self.shown = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = self.reactor.seconds()
        if not final and now - self.shown < 0.2:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = (done - self.start) / elapsed
        percent = 100.0 * done / self.size if self.size else 100.0
        eta = (self.size - done) / rate if rate > 0 else 0.0
        self.err.write(
            f"\r{self.name}: {percent:5.1f}% {done / 1e6:.1f}/{self.size / 1e6:.1f} MB "
            f"{rate / 1e6:.2f} MB/s ETA {eta:.0f}s" + ("\n" if final else "")
        )
        self.err.flush()


async def receive_command(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``holepunch receive``; returns the exit status."""
    from holepunch.cli.peer import with_secure_peer

    directory = Path(args.directory)
    if not directory.is_dir():
        err.write(f"holepunch receive: {args.directory}: not a directory\n")
        return 2
    show_progress = bool(args.progress or err.isatty())

    async def body(peer: SecurePeer) -> int:
        exchange = await _open_exchange(peer)
        header = await exchange.read_message()
        size, sha256 = header.get("size"), header.get("sha256")
        try:
            name = check_name(header.get("name"))
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"bad size {size!r}")
            if not isinstance(sha256, str) or len(sha256) != 64:
                raise ValueError("bad sha256")
            final = directory / name
            if final.exists() and not args.overwrite:
                raise ValueError(f"{final} exists (--overwrite replaces it)")
        except ValueError as e:
            exchange.send_message({"error": str(e)})
            assert exchange.transport is not None
            exchange.transport.loseWriteConnection()  # type: ignore[attr-defined]
            await peer.session.when_acknowledged(exchange.transport.stream_id)  # type: ignore[attr-defined]
            raise StageError("transfer", str(e)) from None
        part = directory / (name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            offset = 0
        # Hashing a large .part takes a while: off the reactor thread, so that ICE
        # consent and QUIC's timers keep running meanwhile.
        digest = (
            await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), _sha256_of, part, offset
            )
            if offset
            else hashlib.sha256()
        )
        if offset:
            err.write(f"holepunch receive: resuming {name} at {offset} of {size} bytes\n")
            err.flush()
        received = offset
        progress = _Progress(reactor, err, name, size, offset) if show_progress else None
        with part.open("r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()

            def write(data: bytes) -> None:
                nonlocal received
                if received + len(data) > size:
                    exchange.abort(f"the sender sent more than the {size} bytes it announced")
                    return
                f.write(data)
                digest.update(data)
                received += len(data)
                if progress is not None:
                    progress.update(received)

            exchange.raw(write)
            exchange.send_message({"offset": offset})
            try:
                await exchange.until_read_done()
            except StageError as e:
                f.flush()
                if progress is not None:
                    err.write("\n")
                raise StageError(
                    e.stage,
                    f"{e.detail}; {received} of {size} bytes are kept in "
                    f"{part}: run the same receive (and send) again to resume",
                ) from e
        if progress is not None:
            progress.update(received, final=True)
        if received != size:
            problem = f"got {received} of {size} bytes"
        elif digest.hexdigest() != sha256:
            part.unlink()
            problem = f"SHA-256 mismatch ({digest.hexdigest()}, expected {sha256}); {part} removed"
        else:
            problem = ""
        assert exchange.transport is not None
        if problem:
            exchange.send_message({"error": problem})
        else:
            os.replace(part, final)
            exchange.send_message({"ok": True})
        exchange.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await peer.session.when_acknowledged(exchange.transport.stream_id)  # type: ignore[attr-defined]
        if problem:
            raise StageError("transfer", f"{problem}; send again to retry")
        out.write(f"{final}\n")
        out.flush()
        return 0

    return await with_secure_peer(reactor, args, err, "receive", body)


def run_send(args: argparse.Namespace) -> int:
    """Entry point of ``holepunch send``."""
    from holepunch.cli import react

    return react(lambda reactor: send_command(reactor, args, sys.stdout, sys.stderr))


def run_receive(args: argparse.Namespace) -> int:
    """Entry point of ``holepunch receive``."""
    from holepunch.cli import react

    return react(lambda reactor: receive_command(reactor, args, sys.stdout, sys.stderr))
