# -*- test-case-name: tests.lab.test_natlab -*-
"""A tiny UDP/TCP address observer and its probes, used only to validate the NAT lab.

It measures a NAT's mapping and filtering behaviour (the RFC 4787 section 4 and 5
properties that RFC 5780 section 4.3/4.4 tests discover) with nothing but the standard
library, so the lab can be checked independently of the project's own STUN code.

Server (one process in the lab's ``pub`` namespace)::

    python -m lab.udpobserver --bind 203.0.113.10:5001 --bind ... [--tcp IP:PORT]

prints ``{"ready": [...]}`` once every socket is bound, then answers each UDP request with
the source address it saw, as JSON: ``{"id", "seen", "from", "kind": "direct"}``. A request
``{"id": .., "reply_from": "IP:PORT"}`` naming another of its sockets is also answered from
that socket (``"kind": "alt"``), *before* the direct answer, so a client that gets the
direct answer and no alt answer shortly after knows the NAT filtered the alt one. Each TCP
connection gets one JSON line ``{"seen": ...}``.

Clients (run in a lab host) print one JSON object:

- ``--probe IP:PORT ...`` [``--reply-from IP:PORT``]: one socket, one request per target
  in order; the mapped address each target saw and whether the alt answer got through.
- ``--connect IP:PORT``: a TCP connection and the address the server saw.
- ``--stun IP:PORT ...``: an RFC 8489 Binding request to each target (exit status 1
  unless all answer); the lab uses this to wait for coturn.
- ``--punch OBSERVER``: learn this socket's mapped address from the observer, print it,
  read the peer's ``IP:PORT`` from stdin, then send to it until packets went both ways.
- ``--tcp-punch LOCAL``: bind a TCP socket to ``LOCAL``, print it, read the peer's
  ``IP:PORT`` from stdin and connect to it (a simultaneous open when both do).

Addresses are ``IP:PORT``, or ``[IPv6]:PORT``; every socket takes its address's family.
A send that fails (no route for that family) ends a probe with ``"error"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

Address = tuple[str, int]

RETRANSMIT_INTERVAL = 0.2
PUNCH_INTERVAL = 0.05
STUN_MAGIC_COOKIE = 0x2112A442


def parse_address(text: str) -> Address:
    """``"IP:PORT"`` or ``"[IPv6]:PORT"`` -> ``(IP, PORT)``."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [IP]:PORT, not {text!r}")
    if not host:
        raise ValueError(f"expected IP:PORT, not {text!r}")
    return host, int(port)


def _address_or_none(value: object) -> Address | None:
    try:
        return parse_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def format_address(address: Address) -> str:
    """``(IP, PORT)`` -> ``"IP:PORT"``, or ``"[IP]:PORT"`` for IPv6 (RFC 3986)."""
    host = address[0]
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def family(address: Address) -> socket.AddressFamily:
    """The socket family for ``address``: ``AF_INET6`` for an IPv6 address."""
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def _any_address(target: Address) -> Address:
    """The wildcard local address of ``target``'s family, port 0."""
    return ("::", 0) if family(target) == socket.AF_INET6 else ("0.0.0.0", 0)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _emit(out: IO[str], value: dict[str, Any]) -> None:
    out.write(json.dumps(value) + "\n")
    out.flush()


# --- server ----------------------------------------------------------------------------------


def serve(udp: Sequence[Address], tcp: Sequence[Address], out: IO[str]) -> None:
    """Answer UDP requests and TCP connections on the given addresses until killed."""
    selector = selectors.DefaultSelector()
    udp_sockets: dict[Address, socket.socket] = {}
    for address in udp:
        sock = socket.socket(family(address), socket.SOCK_DGRAM)
        sock.bind(address)
        udp_sockets[address] = sock
        selector.register(sock, selectors.EVENT_READ, "udp")
    for address in tcp:
        listener = socket.socket(family(address), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(16)
        selector.register(listener, selectors.EVENT_READ, "tcp")
    _emit(out, {"ready": [format_address(a) for a in [*udp, *tcp]]})
    while True:
        for key, _ in selector.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            if key.data == "tcp":
                conn, peer = ready.accept()
                with conn:
                    line = {"seen": format_address(peer), "to": format_address(ready.getsockname())}
                    conn.sendall(json.dumps(line).encode() + b"\n")
                continue
            data, peer = ready.recvfrom(2048)
            request = _decode(data)
            reply = {"id": request.get("id"), "seen": format_address(peer)}
            alt_address = _address_or_none(request.get("reply_from"))
            alt = udp_sockets.get(alt_address) if alt_address else None
            if alt is not None and alt is not ready:
                answer = {**reply, "kind": "alt", "from": format_address(alt.getsockname())}
                alt.sendto(json.dumps(answer).encode(), peer)
            answer = {**reply, "kind": "direct", "from": format_address(ready.getsockname())}
            ready.sendto(json.dumps(answer).encode(), peer)


# --- clients ---------------------------------------------------------------------------------


def observe(
    sock: socket.socket,
    target: Address,
    request_id: str,
    *,
    reply_from: Address | None = None,
    timeout: float = 2.0,
    grace: float = 0.3,
) -> dict[str, Any]:
    """Ask the observer at ``target`` what it sees of ``sock``; retransmit until ``timeout``.

    With ``reply_from``, also wait up to ``grace`` after the direct answer for the answer
    from that other observer address, and report whether it arrived.
    """
    request = json.dumps(
        {"id": request_id, "reply_from": reply_from and format_address(reply_from)}
    )
    result: dict[str, Any] = {
        "target": format_address(target),
        "seen": None,
        "reply_from": reply_from and format_address(reply_from),
        "alt_received": False,
        "alt_source": None,
    }
    start = time.monotonic()
    deadline = start + timeout
    next_send = start
    direct_at: float | None = None
    while True:
        now = time.monotonic()
        if direct_at is not None and (
            reply_from is None or result["alt_received"] or now >= direct_at + grace
        ):
            break
        if direct_at is None and now >= deadline:
            break
        if direct_at is None and now >= next_send:
            try:
                sock.sendto(request.encode(), target)
            except OSError as e:  # no route (a host without this family), say
                result["error"] = repr(e)
                break
            next_send = now + RETRANSMIT_INTERVAL
        until = direct_at + grace if direct_at is not None else min(next_send, deadline)
        sock.settimeout(max(until - now, 0.001))
        try:
            data, source = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            continue
        answer = _decode(data)
        if answer.get("id") != request_id:
            continue
        if answer.get("kind") == "alt":
            result["alt_received"] = True
            result["alt_source"] = format_address(source)
        elif direct_at is None:
            result["seen"] = answer.get("seen")
            direct_at = time.monotonic()
    result["elapsed_ms"] = round((time.monotonic() - start) * 1000)
    return result


def probe(
    targets: Sequence[Address],
    *,
    reply_from: Address | None = None,
    local: Address | None = None,
    timeout: float = 2.0,
    grace: float = 0.3,
) -> dict[str, Any]:
    """Observe one fresh socket (bound to ``local``, by default the wildcard address of
    the first target's family) from each target in turn."""
    local = local or _any_address(targets[0])
    with socket.socket(family(local), socket.SOCK_DGRAM) as sock:
        sock.bind(local)
        results = [
            observe(sock, target, str(i), reply_from=reply_from, timeout=timeout, grace=grace)
            for i, target in enumerate(targets)
        ]
        return {"local": format_address(sock.getsockname()), "results": results}


def connect(target: Address, *, timeout: float = 2.0) -> dict[str, Any]:
    """Open a TCP connection to an observer and return the address it saw."""
    try:
        with socket.create_connection(target, timeout=timeout) as conn:
            line = conn.makefile("rb").readline()
            return {"connected": True, "local": format_address(conn.getsockname()), **_decode(line)}
    except OSError as e:
        return {"connected": False, "error": repr(e)}


def stun_binding(targets: Sequence[Address], *, timeout: float = 2.0) -> dict[str, Any]:
    """Send RFC 8489 Binding requests to each target; return the mapped addresses seen."""
    mapped: dict[str, str | None] = {format_address(t): None for t in targets}
    transactions = {os.urandom(12): t for t in targets}
    deadline = time.monotonic() + timeout
    sockets = {f: socket.socket(f, socket.SOCK_DGRAM) for f in {family(t) for t in targets}}
    selector = selectors.DefaultSelector()
    for sock in sockets.values():
        selector.register(sock, selectors.EVENT_READ)
    with selector, contextlib.ExitStack() as stack:
        for sock in sockets.values():
            stack.enter_context(sock)
        next_send = 0.0
        while None in mapped.values() and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send:
                for txid, target in transactions.items():
                    if mapped[format_address(target)] is None:
                        with contextlib.suppress(OSError):
                            sockets[family(target)].sendto(
                                struct.pack("!HHI", 0x0001, 0, STUN_MAGIC_COOKIE) + txid, target
                            )
                next_send = now + 0.1
            for key, _ in selector.select(max(min(next_send, deadline) - now, 0.001)):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                data = ready.recv(2048)
                if len(data) < 20 or data[4:8] != struct.pack("!I", STUN_MAGIC_COOKIE):
                    continue
                answered = transactions.get(data[8:20])
                kind = struct.unpack("!H", data[:2])[0]
                if answered is not None and kind == 0x0101:
                    mapped[format_address(answered)] = stun_mapped_address(data) or "?"
    return {"mapped": mapped, "ok": None not in mapped.values()}


def stun_mapped_address(message: bytes) -> str | None:
    """The (XOR-)MAPPED-ADDRESS of a STUN message as ``IP:PORT`` / ``[IPv6]:PORT``."""
    offset = 20
    while offset + 4 <= len(message):
        kind, length = struct.unpack_from("!HH", message, offset)
        value = message[offset + 4 : offset + 4 + length]
        if kind in (0x0020, 0x0001) and len(value) >= 8 and value[1] in (0x01, 0x02):
            size = 4 if value[1] == 0x01 else 16
            port = struct.unpack_from("!H", value, 2)[0]
            raw = value[4 : 4 + size]
            if len(raw) < size:
                return None
            if kind == 0x0020:  # XOR with the magic cookie and, for IPv6, the transaction id
                port ^= STUN_MAGIC_COOKIE >> 16
                pad = struct.pack("!I", STUN_MAGIC_COOKIE) + message[8:20]
                raw = bytes(a ^ b for a, b in zip(raw, pad, strict=False))
            ip = socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw)
            return format_address((ip, port))
        offset += 4 + (length + 3) // 4 * 4
    return None


def punch(
    observer: Address, stdin: IO[str], out: IO[str], *, timeout: float = 5.0
) -> dict[str, Any]:
    """The naive hole punch: learn our mapping, get the peer's, send to it until both heard.

    Prints ``{"mapped": ...}`` first, then reads one line ``IP:PORT`` (the peer's mapped
    address) from ``stdin``, then sends ``{"punch": 1, "got": <heard the peer yet>}`` every
    50 ms until it has heard the peer and the peer has heard it, or ``timeout`` passes.
    """
    with socket.socket(family(observer), socket.SOCK_DGRAM) as sock:
        sock.bind(_any_address(observer))
        mapped = observe(sock, observer, "mapping", timeout=timeout)["seen"]
        _emit(out, {"mapped": mapped, "local": format_address(sock.getsockname())})
        line = stdin.readline().strip()
        result: dict[str, Any] = {"mapped": mapped, "peer": line, "received_from": None}
        if not line or mapped is None:
            return result
        peer = parse_address(line)
        start = time.monotonic()
        deadline = start + timeout
        heard_peer = peer_heard_us = False
        next_send = start
        while time.monotonic() < deadline and not (heard_peer and peer_heard_us):
            now = time.monotonic()
            if now >= next_send:
                sock.sendto(json.dumps({"punch": 1, "got": heard_peer}).encode(), peer)
                next_send = now + PUNCH_INTERVAL
            sock.settimeout(max(next_send - now, 0.001))
            try:
                data, source = sock.recvfrom(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            message = _decode(data)
            if "punch" not in message:
                continue
            if not heard_peer:
                heard_peer = True
                result["received_from"] = format_address(source)
                result["elapsed_ms"] = round((time.monotonic() - start) * 1000)
            peer_heard_us = peer_heard_us or bool(message.get("got"))
        for _ in range(3):  # make sure the peer learns that we heard it
            sock.sendto(json.dumps({"punch": 1, "got": heard_peer}).encode(), peer)
        result["peer_heard_us"] = peer_heard_us
        return result


def tcp_punch(
    local: Address, stdin: IO[str], out: IO[str], *, timeout: float = 5.0
) -> dict[str, Any]:
    """TCP simultaneous open (RFC 9293 section 3.5) from a plain socket.

    Binds ``local``, prints ``{"local": ...}``, reads the peer's ``IP:PORT`` from
    ``stdin``, connects to it from that port (both sides do so at about the same time),
    sends one JSON line and reads the peer's.
    """
    with socket.socket(family(local), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(local)
        bound = format_address(sock.getsockname())
        _emit(out, {"local": bound})
        line = stdin.readline().strip()
        result: dict[str, Any] = {"local": bound, "peer": line, "connected": False}
        if not line:
            return result
        sock.settimeout(timeout)
        start = time.monotonic()
        try:
            sock.connect(parse_address(line))
            sock.sendall(json.dumps({"from": bound}).encode() + b"\n")
            answer = sock.makefile("rb").readline()
        except OSError as e:
            result["error"] = repr(e)
            return result
        result["connected"] = True
        result["remote"] = format_address(sock.getpeername())
        result["peer_line"] = _decode(answer)
        result["elapsed_ms"] = round((time.monotonic() - start) * 1000)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.udpobserver")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bind", action="append", type=parse_address, metavar="IP:PORT")
    mode.add_argument("--probe", action="append", type=parse_address, metavar="IP:PORT")
    mode.add_argument("--connect", type=parse_address, metavar="IP:PORT")
    mode.add_argument("--stun", action="append", type=parse_address, metavar="IP:PORT")
    mode.add_argument("--punch", type=parse_address, metavar="OBSERVER")
    mode.add_argument("--tcp-punch", type=parse_address, metavar="LOCAL")
    parser.add_argument("--tcp", action="append", type=parse_address, default=[])
    parser.add_argument("--reply-from", type=parse_address, metavar="IP:PORT")
    parser.add_argument("--local", type=parse_address)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--grace", type=float, default=0.3)
    args = parser.parse_args(argv)
    out = sys.stdout
    if args.bind:
        serve(args.bind, args.tcp, out)
        return 0
    if args.probe:
        result = probe(
            args.probe,
            reply_from=args.reply_from,
            local=args.local,
            timeout=args.timeout,
            grace=args.grace,
        )
        _emit(out, result)
        return 0 if all(r["seen"] for r in result["results"]) else 1
    if args.connect:
        result = connect(args.connect, timeout=args.timeout)
        _emit(out, result)
        return 0 if result["connected"] else 1
    if args.stun:
        result = stun_binding(args.stun, timeout=args.timeout)
        _emit(out, result)
        return 0 if result["ok"] else 1
    if args.tcp_punch:
        result = tcp_punch(args.tcp_punch, sys.stdin, out, timeout=args.timeout)
        _emit(out, result)
        return 0 if result["connected"] else 1
    result = punch(args.punch, sys.stdin, out, timeout=args.timeout)
    _emit(out, result)
    return 0 if result["received_from"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
