# -*- test-case-name: tests.integration.test_workers -*-
"""Listening sockets that several processes share with ``SO_REUSEPORT``.

``twistd holepunch --workers N`` runs N processes that each listen on the same
signaling and STUN ports; the kernel spreads new TCP connections and UDP flows over
them by a hash of the addresses (a flow stays with one process). Twisted's
``listenTCP``/``listenUDP`` and strports cannot set ``SO_REUSEPORT`` before ``bind``,
so the socket is made here and handed to the reactor with ``adoptStreamPort`` /
``adoptDatagramPort`` (written by hand because neither Twisted nor a library offers it).

Every process sharing a port must set the option: one that binds without it makes the
others fail with "address in use", which is what keeps a stray second daemon out.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def _bound_socket(kind: socket.SocketKind, port: int, interface: str) -> socket.socket:
    family = _family(interface)
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp(
    reactor: Any, port: int, factory: Any, interface: str = "", backlog: int = 50
) -> IListeningPort:
    """Listen on TCP ``interface``:``port`` with ``SO_REUSEPORT``."""
    sock = _bound_socket(socket.SOCK_STREAM, port, interface)
    try:
        sock.listen(backlog)
        listening: IListeningPort = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()  # the reactor holds its own copy of the descriptor
    return listening


def listen_udp(
    reactor: Any, port: int, protocol: Any, interface: str = "", max_packet_size: int = 8192
) -> IListeningPort:
    """Receive UDP on ``interface``:``port`` with ``SO_REUSEPORT``."""
    sock = _bound_socket(socket.SOCK_DGRAM, port, interface)
    try:
        listening: IListeningPort = reactor.adoptDatagramPort(
            sock.fileno(), sock.family, protocol, max_packet_size
        )
    finally:
        sock.close()
    return listening


def parse_tcp_description(description: str) -> tuple[int, str, int]:
    """``tcp:PORT[:interface=ADDR][:backlog=N]`` as ``(port, interface, backlog)``;
    ``ValueError`` naming what is wrong for anything else (TLS, UNIX sockets...)."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6") or not rest:
        raise ValueError(
            f"with several workers the signaling endpoint must be tcp:PORT[:interface=ADDR]"
            f"[:backlog=N] (got {description!r}; terminate TLS in a proxy in front)"
        )
    fields = rest.split(":")
    try:
        port = int(fields[0])
    except ValueError:
        raise ValueError(f"bad port in {description!r}") from None
    interface, backlog = ("::" if kind == "tcp6" else ""), 50
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if not eq or key not in ("interface", "backlog"):
            raise ValueError(f"unsupported {field!r} in {description!r} with several workers")
        if key == "interface":
            interface = value.replace("\\", "")
        else:
            backlog = int(value)
    return port, interface, backlog


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose socket other processes may share (``SO_REUSEPORT``)."""

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 50) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    @classmethod
    def from_description(cls, reactor: Any, description: str) -> ReusePortEndpoint:
        """From a strports ``tcp:`` description (see :func:`parse_tcp_description`)."""
        return cls(reactor, *parse_tcp_description(description))

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        return defer.execute(
            listen_tcp, self.reactor, self.port, protocolFactory, self.interface, self.backlog
        )
