# -*- test-case-name: tests.lab.test_natlab_connect -*-
"""Run ``holepunch connect`` peers in lab hosts and talk to them (tests, benchmarks).

A :class:`ConnectProcess` starts the command in a
:class:`LabHost <lab.natlab.LabHost>` (or locally), reads its stdout and
stderr in background threads, and lets the caller write lines, wait for lines, and end
input. :func:`connect_pair` starts one accepting
and one offering peer, the way a user would.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from lab.natlab import PUBLIC_A, PUBLIC_B, PUBLIC_B6, CoturnInfo, LabHost, NatLab, lab_env

SIGNALING_PORT = 8080
STUN_PORT = 3480


class PeerProcessError(AssertionError):
    """The peer did not do what was expected; carries its stderr."""


class EventLines:
    """The ``--json`` events (``{"event": ...}`` lines) a stream-mode ``holepunch
    connect`` writes to stderr, each with the :func:`time.monotonic` it was read at."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []

    def offer(self, line: str) -> None:
        """A stderr line: kept if it is an event."""
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict) and "event" in event:
            event["at"] = time.monotonic()
            self.seen.append(event)
            self.queue.put(event)

    def next(self, timeout: float, stderr: str = "") -> dict[str, Any]:
        """The next event; raises PeerProcessError after ``timeout``."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise PeerProcessError(f"no event within {timeout}s; stderr: {stderr}") from None


class ConnectProcess:
    """One ``holepunch connect`` process."""

    def __init__(self, host: LabHost | None, args: Sequence[str]) -> None:
        self.host = host
        self.args = list(args)
        argv = [sys.executable, "-m", "holepunch", "connect", *self.args]
        pipes: dict[str, Any] = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
        }
        if host is not None:
            self.proc = host.popen(argv, **pipes)
        else:
            self.proc = subprocess.Popen(argv, env=lab_env(None), **pipes)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self.events = EventLines()
        self.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: IO[bytes], is_stdout: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if is_stdout:
                self.lines.put(line)
            else:
                self.stderr_lines.append(line)
                self.events.offer(line)
        if is_stdout:
            self.lines.put(None)

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        return "\n".join(self.stderr_lines)

    def next_line(self, timeout: float) -> str:
        """The next stdout line; raises PeerProcessError on timeout or end of output."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise PeerProcessError(f"no output within {timeout}s; stderr: {self.stderr}") from None
        if line is None:
            self.proc.wait(5)
            raise PeerProcessError(
                f"exited {self.proc.returncode} before the expected output; stderr: {self.stderr}"
            )
        return line

    def info(self, timeout: float) -> dict[str, Any]:
        """The ``--json`` connection line."""
        line = self.next_line(timeout)
        try:
            data: dict[str, Any] = json.loads(line)
        except ValueError:
            raise PeerProcessError(f"not JSON: {line!r}; stderr: {self.stderr}") from None
        return data

    def next_event(self, timeout: float) -> dict[str, Any]:
        """The next ``--json`` event from stderr (``path-changed``, ``closed``)."""
        return self.events.next(timeout, self.stderr)

    def send_lines(self, lines: Sequence[str]) -> None:
        """Write lines to stdin (onto the stream; with ``--datagram``, one datagram each)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.proc.stdin.flush()

    def read_lines(self, count: int, timeout: float) -> list[str]:
        """Read ``count`` stdout lines, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            got.append(line)
        return got

    def end_input(self) -> None:
        """Close stdin: the command half-closes its stream, and exits once the peer's
        input has ended too (with ``--datagram``: sends its end marker and exits)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float) -> int:
        """Wait for exit; kill and raise PeerProcessError after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PeerProcessError(
                f"did not exit within {timeout}s; stderr: {self.stderr}"
            ) from None

    def kill(self) -> None:
        """Stop it now."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_lab_daemon(lab: NatLab) -> str:
    """``twistd holepunch`` in the lab's public namespace: STUN (RFC 5780) and signaling.

    Returns the signaling URL.
    """
    lab.start_holepunch_daemon(
        stun_port=STUN_PORT,
        stun_alt_port=STUN_PORT + 1,
        extra_args=["--signaling", f"tcp:{SIGNALING_PORT}", "--message-rate", "200",
                    "--message-burst", "400"],
    )  # fmt: skip
    return f"ws://{PUBLIC_A}:{SIGNALING_PORT}/"


SETUPS = ("rfc5780", "one-address", "public-style")
"""The server setups a user may have (docs/nat-matrix.md):

- ``rfc5780``: the daemon on two public addresses (RFC 5780), clients told its STUN port;
- ``one-address``: the daemon as the README starts it (one address, its defaults),
  clients given only the signaling URL;
- ``public-style``: two one-address STUN servers without RFC 5780 (the daemon on
  :data:`PUBLIC_A`, coturn on :data:`PUBLIC_B`), given to clients as ``--stun-server``.
"""


@dataclass
class LabServers:
    """What the clients of one setup are given."""

    url: str
    stun_servers: list[str] = field(default_factory=list)
    turn_servers: list[str] = field(default_factory=list)
    daemon: subprocess.Popen[Any] | None = None
    """The ``twistd holepunch`` process (for :meth:`NatLab.restart_holepunch_daemon
    <lab.natlab.NatLab.restart_holepunch_daemon>`)."""
    coturn: CoturnInfo | None = None
    """The coturn started for ``turn`` (to restart it, say)."""

    def turn_args(self) -> list[str]:
        """``holepunch connect`` options for the TURN servers."""
        return [arg for t in self.turn_servers for arg in ("--turn-server", t)]


def start_lab_servers(
    lab: NatLab, setup: str = "rfc5780", turn: bool = False, coturn_args: Sequence[str] = ()
) -> LabServers:
    """Start the servers of ``setup`` (one of :data:`SETUPS`) in the lab's public namespace;
    with ``turn``, coturn too (on one address unless the setup is ``rfc5780``), given
    ``coturn_args`` besides its usual options (``--denied-peer-ip=...``, say)."""
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, not {setup!r}")
    signaling = ["--signaling", f"tcp:{SIGNALING_PORT}", "--message-rate", "200",
                 "--message-burst", "400"]  # fmt: skip
    url = f"ws://{PUBLIC_A}:{SIGNALING_PORT}/"
    if setup == "rfc5780":
        daemon = lab.start_holepunch_daemon(
            stun_port=STUN_PORT, stun_alt_port=STUN_PORT + 1, extra_args=signaling
        )
        servers = LabServers(url, [f"{PUBLIC_A}:{STUN_PORT}"], daemon=daemon)
    elif setup == "one-address":
        daemon = lab.start_holepunch_daemon(stun_port=3478, rfc5780=False, extra_args=signaling)
        servers = LabServers(url, daemon=daemon)
    else:
        # A public-style STUN server: one address, one port, no hints in welcome.
        one_port = ["--stun-interface", PUBLIC_A, "--stun-alternate-port=0", "--no-ice-servers"]
        daemon = lab.start_holepunch_daemon(
            stun_port=3478, rfc5780=False, extra_args=[*signaling, *one_port]
        )
        servers = LabServers(url, [f"{PUBLIC_A}:3478", f"{PUBLIC_B}:3478"], daemon=daemon)
    if turn or setup == "public-style":
        if setup == "rfc5780":
            coturn = lab.start_coturn(extra_args=coturn_args)
        elif setup == "one-address":
            # The daemon holds 3478 and 3479 on every address: coturn goes beside it.
            # In an IPv6 lab on PUBLIC_B6 too: it relays between the families.
            coturn = lab.start_coturn(
                addresses=(PUBLIC_B, *(a for a in lab.public.addresses6 if a == PUBLIC_B6)),
                port=3578,
                alt_port=3579,
                extra_args=coturn_args,
            )
        else:
            coturn = lab.start_coturn(addresses=(PUBLIC_B,), extra_args=coturn_args)
        servers.coturn = coturn
        if turn:
            uri = f"turn:u:p@{coturn.address}:{coturn.port}"
            # UDP first, TCP for hosts whose UDP is blocked (as the seed's example 4).
            servers.turn_servers = [uri, uri + "?transport=tcp"]
    return servers


MINIUPNPD_STUN_PORT = 3490
"""Where the coturn that miniupnpd's own STUN test needs listens (two addresses)."""


def start_port_mapping(lab: NatLab, hosts: Sequence[LabHost]) -> list[Any]:
    """miniupnpd (UPnP IGD, NAT-PMP, PCP) on each host's router (lab.miniupnpd), with the
    two-address coturn its STUN self-test needs beside the other servers."""
    from lab.miniupnpd import start_miniupnpd

    coturn = lab.start_coturn(port=MINIUPNPD_STUN_PORT, alt_port=MINIUPNPD_STUN_PORT + 1)
    return [
        start_miniupnpd(host, stun_host=coturn.address, stun_port=MINIUPNPD_STUN_PORT)
        for host in hosts
    ]


def connect_pair(
    offerer: LabHost,
    answerer: LabHost,
    signaling_url: str,
    *,
    names: tuple[str, str],
    stun_servers: Sequence[str] = (f"{PUBLIC_A}:{STUN_PORT}",),
    timeout: float = 20.0,
    extra_args: Sequence[str] = (),
    answerer_url: str | None = None,
    answerer_args: Sequence[str] | None = None,
) -> tuple[ConnectProcess, ConnectProcess]:
    """Start ``--accept`` in ``answerer``, then ``--to`` in ``offerer``; return (offerer, answerer).

    ``answerer_url`` and ``answerer_args`` give the answerer its own signaling URL and
    extra options (a host of another address family, say); by default it has the
    offerer's. The offerer retries until the answerer is registered, so no sleep is
    needed between.
    """
    stun = [arg for s in stun_servers for arg in ("--stun-server", s)]

    def common(url: str, extra: Sequence[str]) -> list[str]:
        return ["--signaling", url, "--json", "--timeout", str(timeout), *stun, *extra]

    b_common = common(
        answerer_url or signaling_url, extra_args if answerer_args is None else answerer_args
    )
    b = ConnectProcess(answerer, ["--id", names[1], "--accept", *b_common])
    a_common = common(signaling_url, extra_args)
    a = ConnectProcess(offerer, ["--id", names[0], "--to", names[1], *a_common])
    return a, b


def run_connect(
    offerer: LabHost,
    answerer: LabHost,
    signaling_url: str,
    *,
    names: tuple[str, str],
    timeout: float,
    stun_servers: Sequence[str] = (f"{PUBLIC_A}:{STUN_PORT}",),
    extra_args: Sequence[str] = (),
    answerer_url: str | None = None,
    answerer_args: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One connect and one line across, then a clean end (both inputs end); the
    answerer may have its own URL and options (see :func:`connect_pair`).

    Returns the offerer's ``--json`` object plus ``other`` (the answerer's), ``ok``
    (True), ``seconds`` (wall time); or ``ok`` False with ``reason`` (the last stderr
    line) and ``seconds``.
    """
    started = time.monotonic()
    a, b = connect_pair(
        offerer,
        answerer,
        signaling_url,
        names=names,
        timeout=timeout,
        stun_servers=stun_servers,
        extra_args=extra_args,
        answerer_url=answerer_url,
        answerer_args=answerer_args,
    )
    try:
        info = a.info(timeout + 10)
        other = b.info(10)
        a.send_lines(["ping"])
        if b.read_lines(1, 5) != ["ping"]:
            raise PeerProcessError("the line did not arrive")
        a.end_input()
        b.end_input()
        a.wait(10)
        b.wait(10)
        return {**info, "other": other, "ok": True, "seconds": time.monotonic() - started}
    except PeerProcessError as e:
        a.kill()
        b.kill()
        lines = (a.stderr + "\n" + b.stderr).strip().splitlines() or [str(e)]
        return {"ok": False, "reason": lines[-1], "seconds": time.monotonic() - started}
    finally:
        a.kill()
        b.kill()


def random_file(size: int, directory: str | None = None) -> tuple[str, str]:
    """A file of ``size`` random bytes; returns (path, SHA-256 hex). The caller removes it."""
    digest = hashlib.sha256()
    handle, path = tempfile.mkstemp(prefix="hp-payload-", dir=directory)
    with os.fdopen(handle, "wb") as sink:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            digest.update(chunk)
            sink.write(chunk)
            left -= len(chunk)
    return path, digest.hexdigest()


class StreamPeer:
    """``holepunch connect --json`` in stream mode: a file on stdin, stdout hashed.

    The first stdout line is the connection's JSON; every byte after it is the peer's
    stream, counted and hashed (SHA-256) as it arrives, never kept. stderr is kept.
    """

    def __init__(
        self, host: LabHost, args: Sequence[str], payload: str, rate: float | None = None
    ) -> None:
        self.args = list(args)
        argv = [sys.executable, "-m", "holepunch", "connect", *self.args]
        if rate is None:
            with open(payload, "rb") as stdin:
                self.proc = host.popen(
                    argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
        else:
            self.proc = host.popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            threading.Thread(target=self._feed, args=(payload, rate), daemon=True).start()
        self.arrivals: list[tuple[float, int]] = []
        """``(time.monotonic(), bytes so far)`` at each read of stdout."""
        self.info: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.received = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self._digest = hashlib.sha256()
        self.stderr_lines: list[str] = []
        self._stderr_grew = threading.Condition()
        self.events = EventLines()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        try:
            self.info.put(json.loads(first))
        except ValueError:
            self.info.put(None)
            return
        stdout = self.proc.stdout
        assert isinstance(stdout, io.BufferedReader)
        while chunk := stdout.read1(1 << 20):
            now = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = now
            self.last_byte_at = now
            self.received += len(chunk)
            self.arrivals.append((now, self.received))
            self._digest.update(chunk)

    def _feed(self, payload: str, rate: float) -> None:
        """Write the payload to stdin at ``rate`` bytes a second (then end it)."""
        stdin = self.proc.stdin
        assert stdin is not None
        chunk = 1 << 16
        start = time.monotonic()
        sent = 0
        try:
            with open(payload, "rb") as source:
                while data := source.read(chunk):
                    stdin.write(data)
                    stdin.flush()
                    sent += len(data)
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
            stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the process ended early: the test reports why

    def longest_stall(self, since: float) -> float:
        """The longest wait between two reads of the peer's bytes from ``since`` on
        (``time.monotonic()``), counting the wait from ``since`` to the first read."""
        times = [since] + [t for t, _ in self.arrivals if t > since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._stderr_grew:
                self.stderr_lines.append(line)
                self._stderr_grew.notify_all()
            self.events.offer(line)

    def wait_for_stderr(self, text: str, timeout: float) -> str:
        """The first stderr line containing ``text`` (waiting up to ``timeout`` seconds
        for it); raises PeerProcessError without one."""
        deadline = time.monotonic() + timeout
        with self._stderr_grew:
            while True:
                line = next((s for s in self.stderr_lines if text in s), None)
                if line is not None:
                    return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerProcessError(
                        f"no {text!r} on stderr within {timeout}s; {self.stderr}"
                    )
                self._stderr_grew.wait(left)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def connection(self, timeout: float) -> dict[str, Any]:
        """The ``--json`` line; raises PeerProcessError without one."""
        try:
            info = self.info.get(timeout=timeout)
        except queue.Empty:
            raise PeerProcessError(f"no connection within {timeout}s; {self.stderr}") from None
        if info is None:
            raise PeerProcessError(f"the first line was not JSON; {self.stderr}")
        return info

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for exit and the end of stdout: (exit status, SHA-256 of what arrived)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PeerProcessError(
                f"did not finish within {timeout}s ({self.received} bytes in); {self.stderr}"
            ) from None
        for t in self._threads:
            t.join(10)
        return status, self._digest.hexdigest()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def transfer_pair(
    offerer: LabHost,
    answerer: LabHost,
    signaling_url: str,
    *,
    names: tuple[str, str],
    size: int,
    timeout: float = 20.0,
    transfer_timeout: float = 120.0,
    stun_servers: Sequence[str] = (f"{PUBLIC_A}:{STUN_PORT}",),
    extra_args: Sequence[str] = (),
    payloads: tuple[tuple[str, str], tuple[str, str]] | None = None,
    on_connected: Callable[[dict[str, Any], dict[str, Any]], object] | None = None,
    rate: float | None = None,
    on_flowing: Callable[[StreamPeer, StreamPeer], object] | None = None,
) -> dict[str, Any]:
    """``size`` random bytes each way through two ``holepunch connect`` streams.

    Returns ``ok`` (both exited 0 and both directions arrived byte-exact), the
    offerer's connection JSON as ``connection`` and the answerer's as ``other``,
    ``seconds`` (first to last byte, the slower direction), ``mb_per_s`` (each way),
    ``exit`` codes and ``stderr`` of both; ``payloads`` reuses files made by
    :func:`random_file` (else they are made and removed here); ``on_connected(offerer's
    JSON, answerer's JSON)`` runs once both are connected, while the bytes flow;
    ``on_flowing(offerer, answerer)`` (the :class:`StreamPeer` s) runs after it, once
    bytes arrived on both sides. With ``rate`` each side writes its file at that many
    bytes a second (a transfer that lasts). The result also has ``peers`` (the two
    :class:`StreamPeer` s, for their ``arrivals``).
    """
    made = payloads is None
    if payloads is None:
        payloads = (random_file(size), random_file(size))
    (a_file, a_sum), (b_file, b_sum) = payloads
    stun = [arg for s in stun_servers for arg in ("--stun-server", s)]
    common = ["--signaling", signaling_url, "--json", "--timeout", str(timeout), *stun, *extra_args]
    b = StreamPeer(answerer, ["--id", names[1], "--accept", *common], b_file, rate)
    a = StreamPeer(offerer, ["--id", names[0], "--to", names[1], *common], a_file, rate)
    try:
        connection = a.connection(timeout + 10)
        other = b.connection(10)
        if on_connected is not None:
            on_connected(connection, other)
        if on_flowing is not None:
            deadline = time.monotonic() + 30
            while (not a.received or not b.received) and time.monotonic() < deadline:
                time.sleep(0.05)
            on_flowing(a, b)
        a_status, a_got = a.finish(transfer_timeout)
        b_status, b_got = b.finish(30)
        starts = [p.first_byte_at for p in (a, b) if p.first_byte_at is not None]
        ends = [p.last_byte_at for p in (a, b) if p.last_byte_at is not None]
        seconds = max(ends) - min(starts) if starts and ends else 0.0
        return {
            "ok": a_status == 0 and b_status == 0 and a_got == b_sum and b_got == a_sum,
            "connection": connection,
            "other": other,
            "exit": (a_status, b_status),
            "byte_exact": (b_got == a_sum, a_got == b_sum),
            "received": (a.received, b.received),
            "seconds": seconds,
            "mb_per_s": size / seconds / 1e6 if seconds else None,
            "bytes_window": (min(starts), max(ends)) if starts and ends else None,
            "events": (a.events.seen, b.events.seen),
            "stderr": (a.stderr, b.stderr),
            "peers": (a, b),
        }
    except PeerProcessError as e:
        return {"ok": False, "reason": str(e), "stderr": (a.stderr, b.stderr)}
    finally:
        a.kill()
        b.kill()
        if made:
            os.unlink(a_file)
            os.unlink(b_file)
