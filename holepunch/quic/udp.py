# -*- test-case-name: tests.integration.test_quic_udp -*-
"""A :class:`QuicSession <holepunch.quic.session.QuicSession>` on a plain Twisted UDP port.

For a path that is just a UDP socket and a peer address (tests, benchmarks, a peer
reached without ICE). With ICE, use
:func:`session_over_channel <holepunch.quic.session.session_over_channel>` on the agent's
connection instead: the agent owns the socket and its demultiplexing.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from holepunch.quic.identity import Fingerprint, PeerIdentity
from holepunch.quic.session import QuicOptions, QuicSession

_log = Logger()

#: Socket buffer size asked for (the kernel may cap it at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 << 20


class QuicDatagramProtocol(protocol.DatagramProtocol):
    """Carries one :class:`QuicSession` between a UDP port and one peer address.

    Datagrams from other addresses are dropped and counted (``foreign_datagrams``);
    a send the kernel refuses (a full socket buffer) counts as a lost packet, which
    QUIC retransmits.
    """

    def __init__(
        self,
        reactor: Any,
        peer_address: tuple[str, int],
        is_client: bool,
        identity: PeerIdentity,
        peer_fingerprint: str | Fingerprint,
        options: QuicOptions | None = None,
    ) -> None:
        self.peer_address = peer_address
        self.foreign_datagrams = 0
        self.send_failures = 0
        self._reactor = reactor
        self._args = (is_client, identity, peer_fingerprint, options)
        self.session: QuicSession | None = None

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        is_client, identity, peer_fingerprint, options = self._args
        self.session = QuicSession(
            self._reactor, self._send, is_client, identity, peer_fingerprint, options
        )

    def _send(self, data: bytes) -> None:
        if self.transport is None:  # the port is closing
            self.send_failures += 1
            return
        try:
            self.transport.write(data, self.peer_address)
        except OSError:
            self.send_failures += 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if tuple(addr[:2]) != tuple(self.peer_address):
            self.foreign_datagrams += 1
            return
        if self.session is not None:
            self.session.datagram_received(datagram)

    def stopProtocol(self) -> None:
        if self.session is not None and self.session.closed is None:
            self.session.close("UDP port closed")
