"""``holepunch:`` endpoints over real sockets: a real signaling server on 127.0.0.1, ICE
on 127.0.0.1 only, unmodified Twisted protocols (LineReceiver, twisted.web) on top."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import getPlugins
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from holepunch.endpoints import (
    DEFAULT_REGISTRY,
    EndpointStringError,
    HolepunchAddress,
    HolepunchClientEndpoint,
    HolepunchConnectError,
    HolepunchServerEndpoint,
    SignalingFailed,
    parse_client_string,
    parse_server_string,
)
from holepunch.quic.streams import QuicStreamAddress
from holepunch.testing.loopback import start_signaling_server
from tests.signaling_helpers import hold_join_until_offered


def escaped(url: str) -> str:
    return url.replace(":", "\\:")


class LineServer(LineReceiver):
    """Answers every line with ``echo: <line>``."""

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"echo: " + line)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.append(reason.value)  # type: ignore[attr-defined]
        if not self.factory.gone.called:  # type: ignore[attr-defined]
            self.factory.gone.callback(reason.value)  # type: ignore[attr-defined]


class LineClient(LineReceiver):
    """Sends two lines, collects the answers, closes after the second."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.done: defer.Deferred[list[bytes]] = defer.Deferred()
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendLine(b"hello")
        self.sendLine(b"world")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if len(self.lines) == 2:
            self.done.callback(self.lines)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(reason.value)


class HttpFetch(protocol.Protocol):
    """A plain HTTP/1.0 request; ``done`` fires with the whole response."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /hello HTTP/1.0\r\nHost: bob\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class EndpointTests(TestCase):
    """clientFromString / serverFromString with ``holepunch:``."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))
        self.addCleanup(DEFAULT_REGISTRY.when_stopped)

    def server(self, peer_id: str = "bob", extra: str = "") -> Any:
        return serverFromString(
            reactor, f"holepunch:signaling={escaped(self.url)}:id={peer_id}:host=127.0.0.1{extra}"
        )

    def client(self, peer: str = "bob", own: str = "alice", extra: str = "") -> Any:
        return clientFromString(
            reactor,
            f"holepunch:peer={peer}:signaling={escaped(self.url)}:id={own}:host=127.0.0.1{extra}",
        )

    @defer.inlineCallbacks
    def listen(self, factory: Any, **kw: Any) -> Any:
        port = yield self.server(**kw).listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def test_plugins_found(self) -> None:
        """The parsers are found by twisted.plugin and build holepunch endpoints."""
        clients = [
            p
            for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
            if p.prefix == "holepunch"
        ]
        servers = [
            p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "holepunch"
        ]
        self.assertEqual((len(clients), len(servers)), (1, 1))
        client = self.client()
        server = self.server()
        self.assertIsInstance(client, HolepunchClientEndpoint)
        self.assertIsInstance(server, HolepunchServerEndpoint)
        self.assertTrue(IStreamClientEndpoint.providedBy(client))
        self.assertTrue(IStreamServerEndpoint.providedBy(server))

    @defer.inlineCallbacks
    def test_line_receivers(self) -> Any:
        """Unmodified LineReceivers exchange lines both ways; closing the client's
        connection ends both protocols (connectionLost on each side)."""
        factory = protocol.Factory.forProtocol(LineServer)
        factory.lost = []  # type: ignore[attr-defined]
        factory.gone = defer.Deferred()  # type: ignore[attr-defined]
        port = yield self.listen(factory)
        host = port.getHost()
        self.assertIsInstance(host, HolepunchAddress)
        self.assertEqual(host.peer_id, "bob")
        client = yield self.client().connect(protocol.Factory.forProtocol(LineClient))
        self.assertIsInstance(client, LineClient)
        lines = yield client.done
        self.assertEqual(lines, [b"echo: hello", b"echo: world"])
        peer = client.transport.getPeer()
        self.assertIsInstance(peer, QuicStreamAddress)
        self.assertEqual(peer.peer_id, "bob")
        self.assertEqual(peer.fingerprint, host.fingerprint)
        client.transport.loseConnection()
        self.assertIsInstance((yield client.lost), ConnectionDone)
        self.assertIsInstance((yield factory.gone), ConnectionDone)  # type: ignore[attr-defined]
        self.assertEqual(len(factory.lost), 1)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_twisted_web(self) -> Any:
        """A twisted.web Site served through serverFromString answers a plain HTTP/1.0
        request sent over clientFromString."""
        root = Resource()
        root.putChild(b"hello", Data(b"hello through the hole\n", "text/plain"))
        yield self.listen(Site(root))
        fetch = yield self.client().connect(protocol.Factory.forProtocol(HttpFetch))
        response = yield fetch.done
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200"), head)
        self.assertEqual(body, b"hello through the hole\n")

    @defer.inlineCallbacks
    def test_two_clients_one_server(self) -> Any:
        """The server accepts sessions in a loop: two clients, one after the other."""
        factory = protocol.Factory.forProtocol(LineServer)
        factory.lost = []  # type: ignore[attr-defined]
        factory.gone = defer.Deferred()  # type: ignore[attr-defined]
        yield self.listen(factory)
        first = yield self.client(own="alice").connect(protocol.Factory.forProtocol(LineClient))
        second = yield self.client(own="carol").connect(protocol.Factory.forProtocol(LineClient))
        for c in (first, second):
            self.assertEqual((yield c.done), [b"echo: hello", b"echo: world"])
            c.transport.loseConnection()
            yield c.lost

    @defer.inlineCallbacks
    def test_offer_while_joining_is_accepted(self) -> Any:
        """The server holds the listener's join until a client's offer has reached it
        (a server with --open-relay relays before any join): the listener accepts it,
        and the client's lines are echoed."""
        held = hold_join_until_offered(self.service.registry, "bob")
        factory = protocol.Factory.forProtocol(LineServer)
        factory.lost = []  # type: ignore[attr-defined]
        factory.gone = defer.Deferred()  # type: ignore[attr-defined]
        connecting = self.client(extra=":wait=10").connect(protocol.Factory.forProtocol(LineClient))
        yield self.listen(factory)
        self.assertEqual(held, ["direct:bob"])
        client = yield connecting
        self.assertEqual((yield client.done), [b"echo: hello", b"echo: world"])
        client.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_cancel_connect(self) -> Any:
        """Cancelling connect() while it waits for the peer stops the attempt."""
        d = self.client(peer="nobody", extra=":wait=30").connect(
            protocol.Factory.forProtocol(LineClient)
        )
        self.assertFalse(d.called)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)

    @defer.inlineCallbacks
    def test_cancel_during_negotiation(self) -> Any:
        """Cancelling once the offer reached the server side stops ICE and releases the
        client's registration."""
        port = yield self.listen(protocol.Factory.forProtocol(LineServer))
        d = self.client().connect(protocol.Factory.forProtocol(LineClient))
        offered: defer.Deferred[None] = defer.Deferred()
        port.registration.client.on("offer", lambda _m: offered.callback(None))
        yield offered
        self.assertFalse(d.called)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield DEFAULT_REGISTRY.when_stopped()
        self.assertEqual([key[2] for key in DEFAULT_REGISTRY.registrations], ["bob"])

    @defer.inlineCallbacks
    def test_absent_peer_is_a_signaling_error(self) -> Any:
        """A peer not on the signaling server: a ConnectError naming the signaling stage."""
        d = self.client(peer="nobody").connect(protocol.Factory.forProtocol(LineClient))
        error = yield self.assertFailure(d, SignalingFailed)
        self.assertIsInstance(error, HolepunchConnectError)
        self.assertEqual(error.stage, "signaling")
        self.assertIn("nobody", str(error))

    @defer.inlineCallbacks
    def test_stop_listening_refuses_new_sessions(self) -> Any:
        """After stopListening, nobody answers: a connect fails rather than hangs."""
        port = yield self.server().listen(protocol.Factory.forProtocol(LineServer))
        yield port.stopListening()
        d = self.client().connect(protocol.Factory.forProtocol(LineClient))
        yield self.assertFailure(d, HolepunchConnectError)


class EndpointStringTests(SynchronousTestCase):
    """The string syntax, without sockets."""

    URL = "ws\\://127.0.0.1\\:8080/"

    def test_bad_strings(self) -> None:
        """Missing or bad options raise EndpointStringError naming the option."""
        cases = {
            f"holepunch:signaling={self.URL}:id=alice": "peer= is required",
            "holepunch:peer=bob:id=alice": "signaling= is required",
            "holepunch:peer=bob:signaling=http\\://x/": "ws:// or wss://",
            f"holepunch:peer=bob:signaling={self.URL}:timeout=soon": "timeout=",
            f"holepunch:peer=bob:signaling={self.URL}:hots=127.0.0.1": "did you mean 'host'",
            f"holepunch:peer=bob:signaling={self.URL}:stun=a\\:99999": "stun=",
            f"holepunch:bob:signaling={self.URL}:peer=carol": "given twice",
        }
        for text, expected in cases.items():
            e = self.assertRaises(EndpointStringError, clientFromString, reactor, text)
            self.assertIn(expected, str(e), text)
        e = self.assertRaises(
            EndpointStringError, serverFromString, reactor, f"holepunch:signaling={self.URL}"
        )
        self.assertIn("id= is required", str(e))

    def test_options(self) -> None:
        """Every option lands where it should."""
        peer, options = parse_client_string(
            ["bob"],
            {
                "signaling": "ws://h:1/",
                "id": "alice",
                "token": "t",
                "identity": "/tmp/x",
                "stun": "s1:3478,s2",
                "host": "127.0.0.1,10.0.0.1",
                "timeout": "5",
                "wait": "2.5",
            },
        )
        self.assertEqual(peer, "bob")
        self.assertEqual(options.stun_servers, (("s1", 3478), ("s2", 3478)))
        self.assertEqual(options.hosts, ("127.0.0.1", "10.0.0.1"))
        self.assertEqual((options.timeout, options.wait), (5.0, 2.5))
        self.assertEqual((options.token, options.identity_dir), ("t", "/tmp/x"))
        config = options.ice_config()
        self.assertEqual(list(config.gathering.addresses or ()), ["127.0.0.1", "10.0.0.1"])
        self.assertEqual(config.checks.connection_timeout, 5.0)
        server = parse_server_string(["bob"], {"signaling": "ws://h:1/"})
        self.assertEqual(server.peer_id, "bob")
        _, anonymous = parse_client_string([], {"peer": "bob", "signaling": "ws://h:1/"})
        self.assertTrue(anonymous.peer_id.startswith("endpoint-"))
