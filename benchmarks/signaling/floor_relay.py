"""The floor of a relay in Python: the least work that relays the generator's offers.

Speaks just enough of our protocol for the load generator, as ``bare_relay.py`` does
(welcome, register, relays with ``to``), with nothing a service needs: no validation,
limits, rooms, ordering, counters or backpressure, and none of Autobahn. Each read is
taken as whole frames (the generator never splits one), unmasked with one C call (the
``websockets`` library's ``apply_mask``, as our server does), parsed and re-encoded with
orjson and written with one ``send``. The WebSocket handshake
and framing are written here by hand on purpose: a floor is what this measures, and any
WebSocket library would add its own work to it. It is not a server: what a ``send`` does
not take is lost, and nothing is checked.

    python floor_relay.py [port] [--no-twisted]

On Twisted's epoll reactor by default (a plain ``Protocol``); ``--no-twisted`` runs the
same handling under a bare ``select.epoll`` loop. Side by side with our server and
PeerJS, at 5,000 lone offers a second, they show what a wake-up costs in Python with
and without Twisted's reactor, and so what our own layers add (docs/benchmarks.md,
"Lone offers"). Prints ``{"port": N}`` once listening.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import sys

import orjson
from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
WELCOME = b'{"type":"welcome"}'


def frame(payload: bytes) -> bytes:
    """A server text frame (unmasked), for payloads under 64 KiB."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return bytes((0x81, 126, n >> 8, n & 0xFF)) + payload


class Connection:
    """One client: its socket, what it sent that is not handled yet, its peer id."""

    peers: dict[str, Connection] = {}

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.open = False
        self.peer_id: str | None = None

    def received(self, data: bytes) -> None:
        data = self.buffer + data
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            key = b""
            for line in data[:end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept
                + b"\r\n\r\n"
                + frame(WELCOME)
            )
            self.open = True
            data = data[end + 4 :]
        pos = 0
        while len(data) - pos >= 6:
            n, start = data[pos + 1] & 0x7F, pos + 6
            if n == 126:
                n, start = (data[pos + 2] << 8) | data[pos + 3], pos + 8
            if start + n > len(data):
                break
            if data[pos] & 0x0F == 1:
                self.message(apply_mask(data[start : start + n], data[start - 4 : start]))
            pos = start + n
        self.buffer = data[pos:]

    def message(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("type") == "register":
            self.peer_id = message["peerId"]
            self.peers[message["peerId"]] = self
            reply = {"type": "registered", "peerId": self.peer_id, "id": message.get("id")}
            self.sock.send(frame(orjson.dumps(reply)))
            return
        target = self.peers.get(message.pop("to", None))
        if target is not None:
            message["from"] = self.peer_id
            target.sock.send(frame(orjson.dumps(message)))


def run_epoll(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    print(orjson.dumps({"port": listener.getsockname()[1]}).decode(), flush=True)
    connections: dict[int, Connection] = {}
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    connections[sock.fileno()] = Connection(sock)
                    poller.register(sock.fileno(), select.EPOLLIN)
                continue
            connection = connections[fd]
            try:
                data = connection.sock.recv(65536)
            except BlockingIOError:
                continue
            if data:
                connection.received(data)
            else:
                poller.unregister(fd)
                connection.sock.close()
                del connections[fd]


def run_twisted(port: int) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import endpoints, protocol, reactor

    class Relay(protocol.Protocol):
        def connectionMade(self) -> None:
            self.connection = Connection(self.transport.socket)  # type: ignore[attr-defined]

        def dataReceived(self, data: bytes) -> None:
            self.connection.received(data)

    endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1:backlog=1024")
    listening = endpoint.listen(protocol.Factory.forProtocol(Relay))
    listening.addCallback(
        lambda p: print(orjson.dumps({"port": p.getHost().port}).decode(), flush=True)
    )
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    chosen = int(args[0]) if args else 0
    if "--no-twisted" in sys.argv:
        run_epoll(chosen)
    else:
        run_twisted(chosen)
