# -*- test-case-name: tests.unit.test_ice_core -*-
"""Named deadlines for the sans-I/O ICE core.

The core keeps every timer it needs (pacing, nomination, relay wait, probing, consent,
keepalive, the overall timeout) as a name and an absolute time, not as reactor calls;
:meth:`Timers.get_timer` gives the earliest, and :meth:`Timers.due` hands back the ones
that have come, earliest first. The Twisted adapter turns that into one ``callLater``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable


class Timers:
    """Deadlines keyed by name; setting a name again moves it."""

    def __init__(self) -> None:
        self._at: dict[Hashable, float] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._at

    def __len__(self) -> int:
        return len(self._at)

    def set(self, name: Hashable, at: float) -> None:
        """Fire ``name`` at ``at`` (replacing an earlier setting of it)."""
        self._at[name] = at

    def cancel(self, *names: Hashable) -> None:
        """Forget these deadlines (unknown names are fine)."""
        for name in names:
            self._at.pop(name, None)

    def cancel_where(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget the deadlines whose name satisfies ``predicate``."""
        for name in [n for n in self._at if predicate(n)]:
            del self._at[name]

    def clear(self) -> None:
        """Forget every deadline."""
        self._at.clear()

    def get_timer(self) -> float | None:
        """The earliest deadline, or None."""
        return min(self._at.values()) if self._at else None

    def due(self, now: float) -> list[Hashable]:
        """Remove and return the names whose time has come, earliest first."""
        ready = sorted((at, i, name) for i, (name, at) in enumerate(self._at.items()) if at <= now)
        for _, _, name in ready:
            del self._at[name]
        return [name for _, _, name in ready]
