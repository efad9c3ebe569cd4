# -*- test-case-name: tests.integration.test_ice_negotiation -*-
"""Our own servers on loopback, for tests: a STUN server and a signaling server; and two
ICE agents connected to each other there.

Each starts on ephemeral ports of 127.0.0.1 (and 127.0.0.2 for RFC 5780) and registers
its own stop with the test case's cleanups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import defer

from holepunch.ice.agent import IceAgent
from holepunch.ice.config import IceConfig
from holepunch.ice.connection import PeerConnection
from holepunch.signaling.client import SignalingClient
from holepunch.signaling.server import SignalingConfig, SignalingService, make_signaling_service
from holepunch.stun.message import Address
from holepunch.stun.server import StunResponder, StunServerService


class _TestCaseLike(Protocol):
    def addCleanup(self, function: Any, *args: Any, **kwargs: Any) -> None: ...


def start_stun_server(
    testcase: _TestCaseLike, reactor: Any, *, rfc5780: bool = True, responder: Any = None
) -> StunServerService:
    """A STUN server on 127.0.0.1 (with 127.0.0.2 as the RFC 5780 alternate); its
    primary address is ``service.responder.primary``."""
    if responder is None:
        alternate = Address("127.0.0.2", 0) if rfc5780 else None
        responder = StunResponder(Address("127.0.0.1", 0), alternate)
    service = StunServerService(responder, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


async def start_signaling_server(
    testcase: _TestCaseLike, reactor: Any, **config: Any
) -> tuple[SignalingService, str]:
    """A signaling server on 127.0.0.1; returns it and its ``ws://`` URL.

    It relays between any two peers (``open_relay``) unless told otherwise: the tests
    that use it are about ICE between two clients, not about rooms.
    """
    config.setdefault("open_relay", True)
    service = make_signaling_service(
        SignalingConfig(endpoint="tcp:0:interface=127.0.0.1", **config), reactor
    )
    service.startService()
    testcase.addCleanup(service.stopService)
    listening = await service.when_listening()
    address: Any = listening.getHost()
    return service, f"ws://127.0.0.1:{address.port}/"


async def connect_loopback_agents(
    testcase: _TestCaseLike,
    reactor: Any,
    host: str | Sequence[str] = "127.0.0.1",
    peer_host: str | Sequence[str] | None = None,
    *,
    relay: Any = None,
) -> tuple[PeerConnection, PeerConnection]:
    """Two ICE agents (controlling first) with host candidates on ``host`` and
    ``peer_host`` (default: the same; one address or several, of either family) that
    exchange candidates and credentials directly, with no signaling; returns their
    connections. ``relay`` is the first agent's
    :class:`RelayConfig <holepunch.ice.config.RelayConfig>`, if it has TURN servers.
    The agents are closed by the test case's cleanups."""
    hosts = [host] if isinstance(host, str) else list(host)
    peer = (
        hosts
        if peer_host is None
        else [peer_host]
        if isinstance(peer_host, str)
        else list(peer_host)
    )
    config = IceConfig.on(*hosts)
    if relay is not None:
        config.relay = relay
    a = IceAgent(reactor, True, config)
    b = IceAgent(reactor, False, IceConfig.on(*peer))
    testcase.addCleanup(a.close)
    testcase.addCleanup(b.close)
    a.on_local_candidate = b.add_remote_candidate
    b.on_local_candidate = a.add_remote_candidate
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    await a.gather()
    await b.gather()
    connections: list[PeerConnection] = await defer.gatherResults([a.connect(), b.connect()])
    return connections[0], connections[1]


async def registered_client(
    testcase: _TestCaseLike, reactor: Any, url: str, peer_id: str
) -> SignalingClient:
    """A signaling client registered as ``peer_id`` at ``url``, stopped by the test
    case's cleanups."""
    client = SignalingClient(url, peer_id, reactor=reactor)
    client.startService()
    testcase.addCleanup(client.stopService)
    await client.register()
    return client
