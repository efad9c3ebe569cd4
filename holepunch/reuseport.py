# -*- test-case-name: tests.integration.test_workers,tests.integration.test_dual_stack -*-
"""The daemon's listening sockets: on both address families, shared between processes.

Twisted's ``listenTCP``/``listenUDP`` and strports cannot set socket options before
``bind``, so the sockets are made here and handed to the reactor with
``adoptStreamPort`` / ``adoptDatagramPort``. Two options matter:

- ``IPV6_V6ONLY``, always set on IPv6 sockets. Listening on "every interface" (an empty
  interface) means **two sockets**, ``0.0.0.0`` and ``::``, on the same port, rather than
  one dual-stack ``::`` socket: IPv4 peers then arrive on an IPv4 socket as plain IPv4
  addresses, so STUN answers them with an IPv4 XOR-MAPPED-ADDRESS and signaling's
  ``yourAddress`` is IPv4 with no ``::ffff:a.b.c.d`` translation anywhere (rate limits,
  per-address limits and logs included); the behaviour does not depend on the host's
  ``net.ipv6.bindv6only``; and a host without IPv6 simply gets the IPv4 socket (with a
  log line) instead of failing. An explicit address (``0.0.0.0``, ``::``, ``::1``,
  ``192.0.2.1``) is one socket of that family only. The one exception is the ICE agent's
  socket (:mod:`holepunch.ice.sockets`), which asks for ``dual_stack``: one ``::``
  socket with ``IPV6_V6ONLY`` off, so host candidates of both families share one port;
  it translates ``::ffff:`` addresses itself.
- ``SO_REUSEPORT``, with ``--workers N``: N processes listen on the same signaling and
  STUN ports and the kernel spreads new TCP connections and UDP flows over them by a hash
  of the addresses (a flow stays with one process), per family. Every process sharing a
  port must set it: one that binds without it makes the others fail with "address in
  use", which is what keeps a stray second daemon out.

TLS (``ssl:PORT:privateKey=...``) listens the same way: Twisted's own parser reads the
description and the certificates, and is handed :class:`TLSListener` as its reactor, whose
``listenSSL`` makes these sockets and runs TLS over each connection as Twisted's
``listenSSL`` does (``TLSMemoryBIOFactory``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorSSL, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

_log = Logger()

ANY_IPV4 = "0.0.0.0"
ANY_IPV6 = "::"


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def ipv6_unavailable() -> str | None:
    """Why this host cannot use IPv6, or None when it can.

    A kernel without IPv6 refuses the socket; with ``net.ipv6.conf.*.disable_ipv6=1`` the
    wildcard ``::`` still binds, but ``::1`` is gone, which is what is tried.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"cannot bind ::1: {e.strerror or e}; is net.ipv6.conf.all.disable_ipv6 set?"
    return None


def listen_interfaces(interface: str, what: str) -> list[str]:
    """The addresses to listen on for ``interface``: itself, or for "" (every interface)
    ``0.0.0.0`` and ``::``, the latter only when the host has IPv6 (else a log line
    naming ``what`` says it listens on IPv4 only)."""
    if interface:
        return [interface]
    reason = ipv6_unavailable()
    if reason is not None:
        _log.warn("no IPv6 on this host ({reason}): {what} on IPv4 only", reason=reason, what=what)
        return [ANY_IPV4]
    return [ANY_IPV4, ANY_IPV6]


def _needs_options(interface: str, reuse_port: bool) -> bool:
    """Whether the socket needs an option the reactor's own listen calls cannot set:
    ``SO_REUSEPORT``, or ``IPV6_V6ONLY`` on the IPv6 wildcard (for any other address it
    makes no difference)."""
    return reuse_port or interface == ANY_IPV6


def _bound_socket(
    kind: socket.SocketKind, port: int, interface: str, reuse_port: bool, dual_stack: bool = False
) -> socket.socket:
    family = _family(interface)
    host = interface or (ANY_IPV6 if family == socket.AF_INET6 else ANY_IPV4)
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM or reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            # getaddrinfo keeps a zone (fe80::1%eth0) as the scope id.
            address = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST)[0][4]
        else:
            address = (host, port)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(host, port, e) from e
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp(
    reactor: Any,
    port: int,
    factory: Any,
    interface: str = "",
    backlog: int = 50,
    *,
    reuse_port: bool = False,
) -> IListeningPort:
    """Listen on TCP ``interface``:``port`` (one family: "" is ``0.0.0.0``).

    :raises CannotListenError: the address is in use or not ours.
    """
    if not _needs_options(interface, reuse_port):
        tcp: IListeningPort = reactor.listenTCP(port, factory, backlog, interface)
        return tcp
    sock = _bound_socket(socket.SOCK_STREAM, port, interface, reuse_port)
    try:
        sock.listen(backlog)
        listening: IListeningPort = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()  # the reactor holds its own copy of the descriptor
    return listening


def listen_udp(
    reactor: Any,
    port: int,
    protocol: Any,
    interface: str = "",
    max_packet_size: int = 8192,
    *,
    reuse_port: bool = False,
    dual_stack: bool = False,
) -> IListeningPort:
    """Receive UDP on ``interface``:``port`` (one family: "" is ``0.0.0.0``; with
    ``dual_stack``, ``::`` carries IPv4 too, as ``::ffff:a.b.c.d``).

    :raises CannotListenError: the address is in use or not ours.
    """
    if not _needs_options(interface, reuse_port):
        udp: IListeningPort = reactor.listenUDP(port, protocol, interface, max_packet_size)
        return udp
    sock = _bound_socket(socket.SOCK_DGRAM, port, interface, reuse_port, dual_stack)
    try:
        listening: IListeningPort = reactor.adoptDatagramPort(
            sock.fileno(), sock.family, protocol, max_packet_size
        )
    finally:
        sock.close()
    return listening


def listen_on_each(
    listen: Callable[[int, str], IListeningPort], port: int, interfaces: list[str]
) -> list[IListeningPort]:
    """``listen(port, interface)`` for each interface, all on one port: with ``port`` 0
    the kernel picks it for the first and the others take the same (tried again, a few
    times, if another socket of the other family happens to hold it)."""
    attempts = 5 if port == 0 and len(interfaces) > 1 else 1
    for attempt in range(attempts):
        ports: list[IListeningPort] = []
        chosen = port
        try:
            for interface in interfaces:
                listening = listen(chosen, interface)
                ports.append(listening)
                chosen = chosen or listening.getHost().port  # type: ignore[attr-defined]
        except CannotListenError:
            for listening in ports:
                listening.stopListening()
            if not ports or attempt == attempts - 1:
                raise
            continue
        return ports
    raise AssertionError("unreachable")


@implementer(IListeningPort)
class ListeningPorts:
    """Several listening sockets on one port (one per family) as one listening port:
    ``getHost()`` is the first's, ``stopListening()`` stops all of them."""

    def __init__(self, ports: list[IListeningPort]) -> None:
        self.ports = ports

    def startListening(self) -> None:
        for port in self.ports:
            port.startListening()

    def stopListening(self) -> defer.Deferred[None]:
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        d = defer.gatherResults(stopping, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def getHost(self) -> Any:
        return self.ports[0].getHost()


def _fields(description: str) -> list[str]:
    """A strports description split on ``:``, honouring ``\\:`` escapes."""
    fields, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields


def parse_tcp_description(description: str) -> tuple[int, str, int]:
    """``tcp:PORT[:interface=ADDR][:backlog=N]`` (or ``tcp6:``) as ``(port, interface,
    backlog)``; ``ValueError`` naming what is wrong for anything else (TLS, UNIX
    sockets...). ``tcp6:`` without an interface is ``::``; escape the colons of an IPv6
    interface as strports do (``tcp6:8080:interface=\\:\\:1``)."""
    kind, *fields = _fields(description)
    if kind not in ("tcp", "tcp6") or not fields:
        raise ValueError(
            f"with several workers the signaling endpoint must be tcp:PORT[:interface=ADDR]"
            f"[:backlog=N] or ssl:PORT:... (got {description!r})"
        )
    try:
        port = int(fields[0])
    except ValueError:
        raise ValueError(f"bad port in {description!r}") from None
    interface, backlog = (ANY_IPV6 if kind == "tcp6" else ""), 50
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if not eq or key not in ("interface", "backlog"):
            raise ValueError(f"unsupported {field!r} in {description!r}")
        if key == "interface":
            interface = value
        else:
            backlog = int(value)
    return port, interface, backlog


@implementer(IStreamServerEndpoint)
class TCPListenEndpoint:
    """A TCP server endpoint on both families for an empty interface (see the module
    docstring), optionally shared with other processes (``SO_REUSEPORT``)."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "",
        backlog: int = 50,
        reuse_port: bool = False,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.reuse_port = reuse_port

    @classmethod
    def from_description(
        cls, reactor: Any, description: str, reuse_port: bool = False
    ) -> TCPListenEndpoint:
        """From a strports ``tcp:``/``tcp6:`` description (see :func:`parse_tcp_description`)."""
        return cls(reactor, *parse_tcp_description(description), reuse_port=reuse_port)

    def _listen(self, factory: Any) -> IListeningPort:
        def listen(port: int, interface: str) -> IListeningPort:
            return listen_tcp(
                self.reactor, port, factory, interface, self.backlog, reuse_port=self.reuse_port
            )

        interfaces = listen_interfaces(self.interface, f"TCP port {self.port}")
        ports = listen_on_each(listen, self.port, interfaces)
        return ports[0] if len(ports) == 1 else ListeningPorts(ports)

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        return defer.execute(self._listen, protocolFactory)


@implementer(IReactorSSL)
class TLSListener:
    """The "reactor" Twisted's ``ssl:`` endpoint parser is given: ``listenSSL`` listens
    as :class:`TCPListenEndpoint` does (both families for an empty interface,
    ``SO_REUSEPORT`` when shared), with TLS over each connection. It listens only."""

    def __init__(self, reactor: Any, reuse_port: bool = False) -> None:
        self.reactor = reactor
        self.reuse_port = reuse_port

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        endpoint = TCPListenEndpoint(self.reactor, port, interface, backlog, self.reuse_port)
        return endpoint._listen(TLSMemoryBIOFactory(contextFactory, False, factory))

    def connectSSL(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("TLSListener only listens")


def check_shareable(description: str) -> None:
    """Whether several processes can share the listener ``description`` names
    (``tcp:``, ``tcp6:``, ``ssl:``); ``ValueError`` saying why not."""
    if description.partition(":")[0] != "ssl":
        parse_tcp_description(description)


def server_endpoint(
    reactor: Any, description: str, reuse_port: bool = False
) -> IStreamServerEndpoint:
    """The listener a strports ``description`` names: ``tcp:``/``tcp6:`` ones by
    :class:`TCPListenEndpoint` (``tcp:PORT`` listens on both families), ``ssl:`` ones by
    Twisted's parser over :class:`TLSListener` (``ssl:PORT`` on both families too),
    anything else (``unix:``...) by Twisted's ``serverFromString``.

    :raises ValueError: ``reuse_port`` with anything but ``tcp:``/``tcp6:``/``ssl:``, or
        a malformed ``tcp:`` description.
    """
    kind = description.partition(":")[0]
    if kind == "ssl":
        tls: IStreamServerEndpoint = serverFromString(TLSListener(reactor, reuse_port), description)
        return tls
    if kind in ("tcp", "tcp6") or reuse_port:
        return TCPListenEndpoint.from_description(reactor, description, reuse_port)
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint
