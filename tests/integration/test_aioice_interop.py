"""Interop: an unmodified aioice.Connection is the other peer, in both roles.

aioice runs in its own process (asyncio) and speaks our signaling protocol; our side is
the library in this process. Both on 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from holepunch.ice.config import IceConfig
from holepunch.ice.negotiation import Negotiator
from holepunch.signaling.client import SignalingClient
from holepunch.testing.loopback import start_signaling_server
from lab.natlab import lab_env
from lab.processes import JsonLinesProcess


class AioiceInteropTests(TestCase):
    """Our agent against aioice over our signaling messages."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))
        self.client = SignalingClient(self.url, "ours", reactor=reactor)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.register()
        self.negotiator = Negotiator(reactor, self.client, IceConfig.on("127.0.0.1"))
        self.addCleanup(self.negotiator.stop)

    def aioice(self, *args: str) -> JsonLinesProcess:
        proto = JsonLinesProcess()
        argv = [sys.executable, "-m", "lab.aioice_peer", "--signaling", self.url,
                "--id", "theirs", "--duration", "60", *args]  # fmt: skip
        transport = reactor.spawnProcess(proto, sys.executable, argv, env=lab_env(None))

        def stop() -> Any:
            if proto.ended.called:
                return None
            transport.signalProcess("KILL")
            return proto.ended

        self.addCleanup(stop)
        return proto

    @defer.inlineCallbacks
    def exercise(self, connection: Any, peer: JsonLinesProcess) -> Any:
        """Data both ways now, then again after 36 s of consent checks only."""
        self.addCleanup(connection.close)
        status = yield peer.lines.get()
        self.assertEqual(status.get("connected"), True, peer.stderr)
        received: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        connection.on_datagram(received.put)
        hello = yield received.get()
        self.assertEqual(hello, b"hello-from-aioice")
        connection.send(b"first")
        echo = yield received.get()
        self.assertEqual(echo, b"echo:first")
        yield task.deferLater(reactor, 36, lambda: None)  # consent freshness over time is the point
        self.assertFalse(connection.closed, connection.close_reason)
        connection.send(b"after 36 s")
        echo = yield received.get()
        self.assertEqual(echo, b"echo:after 36 s")
        self.assertGreaterEqual(connection.agent.stats.consent_checks, 5)
        connection.send(b"quit")
        code = yield peer.ended
        self.assertEqual(code, 0, peer.stderr)

    @defer.inlineCallbacks
    def test_we_offer_aioice_answers(self) -> Any:
        """We are controlling (offerer), aioice is controlled: connect, data both ways, consent past 35 s."""
        peer = self.aioice("--accept")
        connection = yield self.negotiator.connect_when_present("theirs", timeout=20)
        self.assertTrue(connection.agent.controlling)
        yield self.exercise(connection, peer)

    @defer.inlineCallbacks
    def test_aioice_offers_we_answer(self) -> Any:
        """aioice is controlling (offerer), we are controlled: connect, data both ways, consent past 35 s."""
        accepted = self.negotiator.accept("theirs")
        peer = self.aioice("--to", "ours")
        connection = yield accepted
        self.assertFalse(connection.agent.controlling)
        yield self.exercise(connection, peer)
