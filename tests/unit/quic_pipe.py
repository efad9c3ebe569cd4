"""Two QuicSessions wired in memory: a list-based pipe and a task.Clock."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import task

from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import QuicOptions, QuicSession

_IDENTITIES: list[PeerIdentity] = []


def identities(n: int = 3) -> list[PeerIdentity]:
    """A few identities, made once per test run (key generation is the slow part)."""
    while len(_IDENTITIES) < n:
        _IDENTITIES.append(PeerIdentity.generate())
    return _IDENTITIES[:n]


class Pipe:
    """Datagrams between a client and a server session, queued in lists.

    ``route`` names the path datagrams take ("direct", "relay"...); ``drop(n, direction)``
    says whether the n-th datagram in that direction is lost.
    """

    def __init__(
        self,
        client_expects: str | None = None,
        server_expects: str | None = None,
        options: QuicOptions | None = None,
        client_identity: PeerIdentity | None = None,
    ) -> None:
        client_id, server_id, _ = identities()
        client_id = client_identity or client_id
        self.clock = task.Clock()
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.route = "direct"
        self.routes_used: dict[str, int] = {}
        self.drop: Callable[[int, str], bool] = lambda n, direction: False
        self.counts = {"to_server": 0, "to_client": 0}
        self.dropped = 0
        self.server = QuicSession(
            self.clock,
            lambda d: self._carry("to_client", d),
            is_client=False,
            identity=server_id,
            peer_fingerprint=server_expects or client_id.fingerprint,
            options=options,
        )
        self.client = QuicSession(
            self.clock,
            lambda d: self._carry("to_server", d),
            is_client=True,
            identity=client_id,
            peer_fingerprint=client_expects or server_id.fingerprint,
            options=options,
        )

    def _carry(self, direction: str, data: bytes) -> None:
        n = self.counts[direction]
        self.counts[direction] = n + 1
        if self.drop(n, direction):
            self.dropped += 1
            return
        self.routes_used[self.route] = self.routes_used.get(self.route, 0) + 1
        getattr(self, direction).append(data)

    def deliver(self) -> bool:
        """Deliver every queued datagram, and run what is due now; whether any moved."""
        moved = False
        while self.to_server or self.to_client:
            moved = True
            batch, self.to_server = self.to_server, []
            for d in batch:
                self.server.datagram_received(d)
            batch, self.to_client = self.to_client, []
            for d in batch:
                self.client.datagram_received(d)
            self.clock.advance(0)
        self.clock.advance(0)
        return moved or bool(self.to_server or self.to_client)

    def pump(
        self, until: Callable[[], bool] | None = None, limit: float = 120.0, step: float = 0.005
    ) -> None:
        """Deliver and advance the clock ``step`` at a time until ``until()`` holds (or,
        without ``until``, until nothing moved for a simulated second); fails after
        ``limit`` simulated seconds."""
        start = self.clock.seconds()
        quiet_since = start
        while self.clock.seconds() - start < limit:
            if self.deliver():
                quiet_since = self.clock.seconds()
            if until is not None and until():
                return
            if until is None and self.clock.seconds() - quiet_since > 1.0:
                return
            self.clock.advance(step)
        raise AssertionError(f"pipe: condition not met within {limit} simulated seconds")
