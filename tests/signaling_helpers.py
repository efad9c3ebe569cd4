"""Helpers shared by the signaling tests: raw WebSocket clients, in memory and on sockets."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.test import iosim
from zope.interface import implementer

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)


class RawClientProtocol(WebSocketClientProtocol):
    """A WebSocket client that records what it gets and sends whatever it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.queue: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.opened: Deferred[None] = Deferred()
        self.lost: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.close_info: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.received.append(message)
        self.queue.put(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)
        if not self.lost.called:
            self.lost.callback(self.close_info)

    def send_json(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def send_raw(self, data: bytes, binary: bool = False) -> None:
        self.sendMessage(data, isBinary=binary)

    def take(self) -> list[dict[str, Any]]:
        """Everything received since the last take() (for in-memory tests)."""
        received, self.received = self.received, []
        while self.queue.pending:
            self.queue.pending.pop()
        return received

    async def next(self) -> dict[str, Any]:
        """The next message (for socket tests)."""
        message = await self.queue.get()
        self.received.remove(message)
        return message

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send and return the next message (socket tests, one request at a time)."""
        self.send_json(message)
        return await self.next()


def raw_client_factory(url: str, headers: dict[str, str] | None = None) -> WebSocketClientFactory:
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = RawClientProtocol
    factory.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=2)
    return factory


def connect_memory(
    server_factory: Any,
    url: str = "ws://127.0.0.1:8080/",
    headers: dict[str, str] | None = None,
    client_host: str = "192.0.2.7",
    client_port: int = 50000,
) -> tuple[RawClientProtocol, Any, iosim.IOPump]:
    """Connect a RawClientProtocol to a server factory's protocol through memory."""
    client_factory = raw_client_factory(url, headers)
    client_address = IPv4Address("TCP", client_host, client_port)
    server = server_factory.buildProtocol(client_address)
    client = client_factory.buildProtocol(SERVER_ADDRESS)
    server_transport = iosim.FakeTransport(
        server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=client_address
    )
    client_transport = iosim.FakeTransport(
        client, isServer=False, hostAddress=client_address, peerAddress=SERVER_ADDRESS
    )
    pump = iosim.connect(server, server_transport, client, client_transport)
    return client, server, pump


def disconnect_memory(client: Any, pump: iosim.IOPump) -> None:
    """Close an in-memory connection so that no timer is left behind."""
    if client.transport is not None:
        client.transport.loseConnection()
    pump.flush()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """A client endpoint whose every connection reaches a server factory in memory."""

    def __init__(self, server_factory: Any, client_host: str = "192.0.2.7") -> None:
        self.server_factory = server_factory
        self.client_host = client_host
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[Any] = []
        self.refuse = False
        self._next_port = 40000

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused by the test"))
        self._next_port += 1
        client_address = IPv4Address("TCP", self.client_host, self._next_port)
        server = self.server_factory.buildProtocol(client_address)
        client = protocol_factory.buildProtocol(SERVER_ADDRESS)
        server_transport = iosim.FakeTransport(
            server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=client_address
        )
        client_transport = iosim.FakeTransport(
            client, isServer=False, hostAddress=client_address, peerAddress=SERVER_ADDRESS
        )
        # greet=False: data moves on flush(), after the caller has the protocol (as with
        # a real connection, whose bytes never arrive within connect()).
        self.pumps.append(
            iosim.connect(server, server_transport, client, client_transport, greet=False)
        )
        self.servers.append(server)
        return defer.succeed(client)

    def flush(self) -> None:
        for _ in range(3):
            for pump in list(self.pumps):
                pump.flush()

    def drop(self, index: int = -1) -> None:
        """Drop one connection as a network failure would (no closing handshake)."""
        pump = self.pumps[index]
        pump.clientIO.abortConnection()
        self.flush()


class _Forwarder(Protocol):
    peer: _Forwarder | None = None

    def __init__(self) -> None:
        self.buffer: list[bytes] = []

    def connectionMade(self) -> None:
        if self.peer is not None and self.peer.buffer:
            for data in self.peer.buffer:
                assert self.transport is not None
                self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        elif self.peer is not None:
            self.buffer.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class FreezingProxy(Factory):
    """A TCP proxy that can cut the client side of its connections while keeping the
    server side open: the server goes on believing the client is there.
    """

    def __init__(self, reactor: Any, target_port: int) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.pairs: list[tuple[_Forwarder, _Forwarder]] = []
        self.frozen: list[_Forwarder] = []

    def buildProtocol(self, addr: Any) -> _Forwarder:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        front = _Forwarder()
        back = _Forwarder()
        front.peer, back.peer = back, front
        self.pairs.append((front, back))
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.target_port)
        endpoint.connect(Factory.forProtocol(lambda: back)).addErrback(
            lambda f: front.transport.loseConnection() if front.transport else None
        )
        return front

    def sever_clients(self) -> None:
        """Abort every client-side connection; keep the server sides open, silently."""
        for front, back in self.pairs:
            back.peer = None  # the server side no longer forwards, nor closes
            front.peer = None
            self.frozen.append(back)
            if front.transport is not None:
                front.transport.abortConnection()  # type: ignore[attr-defined]
        self.pairs = []

    def close_all(self) -> None:
        for front, back in self.pairs:
            for side in (front, back):
                if side.transport is not None:
                    side.transport.loseConnection()
        for back in self.frozen:
            if back.transport is not None:
                back.transport.loseConnection()


def next_event(client: Any, event: str) -> Deferred[dict[str, Any]]:
    """The next ``event`` of a :class:`holepunch.signaling.client.SignalingClient`
    (subscribed now, unsubscribed once it came)."""
    waiter: Deferred[dict[str, Any]] = Deferred()
    subscription = client.on(event, lambda e: waiter.called or waiter.callback(e))
    return waiter.addBoth(lambda result: (subscription.cancel(), result)[1])


def start_daemon(testcase: Any, *args: str, reactor: Any = None) -> Any:
    """``makeService`` of ``twistd holepunch`` with ``args`` (in-process), started and
    stopped by the test case's cleanups; its top service (``top.status`` is the
    :class:`DaemonStatus <holepunch.daemon.status.DaemonStatus>`)."""
    from holepunch.daemon.tap import Options, makeService

    if reactor is None:
        from twisted.internet import reactor
    options = Options(environ={})
    options.parseOptions(list(args))
    top = makeService(options, reactor)
    top.startService()
    testcase.addCleanup(top.stopService)
    return top


def needs_ipv6() -> None:
    """Skip the calling test on a host without IPv6 (holepunch.reuseport's own check)."""
    from twisted.trial.unittest import SkipTest

    from holepunch.reuseport import ipv6_unavailable

    reason = ipv6_unavailable()
    if reason is not None:
        raise SkipTest(f"this host has no IPv6: {reason}")


def hold_join_until_offered(registry: Any, peer_id: str) -> list[str]:
    """Make ``registry`` (a running server's) hold ``peer_id``'s joins until an offer to
    it has been relayed, as a server with ``--open-relay`` may order them; returns the
    list of rooms whose join was held (filled as they come)."""
    real_join, real_relay = registry.join, registry.relay
    offered: Deferred[None] = Deferred()
    held: list[str] = []

    def relay(from_peer: str, to_peer: str, kind: str, payload: Any) -> Any:
        result = real_relay(from_peer, to_peer, kind, payload)
        if to_peer == peer_id and kind == "offer" and not offered.called:
            offered.callback(None)
        return result

    def join(joining: str, room_id: str, now: float) -> Any:
        if joining != peer_id:
            return real_join(joining, room_id, now)
        held.append(room_id)
        return offered.addCallback(lambda _: real_join(joining, room_id, now))

    registry.relay, registry.join = relay, join
    return held
