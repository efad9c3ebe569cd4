# -*- test-case-name: tests.unit.test_peraddress,tests.integration.test_signaling_hardening -*-
"""How many connections each address holds open, and a cap on them.

The HTTP guard (:mod:`holepunch.httpguard`, connections in the HTTP phase) and the
signaling server (:mod:`holepunch.signaling.server`, WebSocket connections) both count
a connection per address when they let it in, forget it when it closes, and refuse one
more from an address at the cap: :class:`ConnectionsPerAddress` is that count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class ConnectionsPerAddress(Mapping[str, int]):
    """Open connections by address (host): a read-only mapping of the addresses that
    hold at least one, changed through :meth:`add` and :meth:`remove`.

    ``limit`` is the most one address may hold (None: no cap); :meth:`full` says
    whether an address is at it.
    """

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def full(self, host: str) -> bool:
        """Whether ``host`` holds as many connections as the cap allows (never without one)."""
        limit = self.limit
        return limit is not None and self._counts.get(host, 0) >= limit

    def add(self, host: str) -> None:
        """``host`` opened one more connection."""
        counts = self._counts
        counts[host] = counts.get(host, 0) + 1

    def remove(self, host: str) -> None:
        """One connection of ``host`` closed (or is counted elsewhere from now on)."""
        counts = self._counts
        left = counts.get(host, 0) - 1
        if left > 0:
            counts[host] = left
        else:
            counts.pop(host, None)

    def __getitem__(self, host: str) -> int:
        return self._counts[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)


__all__ = ["ConnectionsPerAddress"]
