# -*- test-case-name: tests.unit.test_stun_server -*-
"""Rate-limited logging of refused traffic, sans-I/O: the caller passes the time.

A server on the public internet refuses garbage, floods and scans all day; a log line
per refusal lets any sender fill the disk and the log pipeline (and costs CPU per
packet). :class:`RefusalSummary` counts refusals by reason and says when one summary
line is due: at most one per ``interval`` seconds, carrying the counts since the last
one and one example. The caller writes the line (so this module knows no logger) and
should also call :meth:`RefusalSummary.take` on a timer and at shutdown, so that the
last interval's counts are not lost when the refusals stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """What was refused over ``seconds``: counts by reason and the latest example."""

    counts: dict[str, int]
    seconds: float
    last_reason: str
    last_detail: str

    @property
    def total(self) -> int:
        """How many refusals in all."""
        return sum(self.counts.values())

    def describe(self) -> str:
        """The counts as ``reason=n, ...``, largest first."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{reason}={n}" for reason, n in ranked)

    def log_fields(self) -> dict[str, object]:
        """The fields a summary's log line formats (``total``, ``seconds``, ``counts``,
        ``last_reason``, ``last_detail``) and carries (``refusals``, the counts)."""
        return {
            "total": self.total,
            "seconds": self.seconds,
            "counts": self.describe(),
            "last_reason": self.last_reason,
            "last_detail": self.last_detail,
            "refusals": self.counts,
        }


class RefusalSummary:
    """Counts refusals by reason; a summary is due at most once per ``interval`` seconds.

    The first refusal after a quiet spell is due at once (an operator sees an attack
    start), later ones wait for the interval to pass. With ``write``, :meth:`record`
    and :meth:`flush` hand each due summary to it (the caller's log line).
    """

    def __init__(
        self, interval: float = 60.0, write: Callable[[Summary], None] | None = None
    ) -> None:
        self.interval = interval
        self.write = write
        self._counts: Counter[str] = Counter()
        self._started: float | None = None
        self._last_summary: float | None = None
        self._last_reason = ""
        self._last_detail = ""

    def note(self, reason: str, now: float, detail: str = "") -> Summary | None:
        """Count one refusal at ``now``; return the summary to write if one is due."""
        if self._started is None:
            self._started = now
        self._counts[reason] += 1
        self._last_reason = reason
        self._last_detail = detail
        if self._last_summary is None or now - self._last_summary >= self.interval:
            return self.take(now)
        return None

    def record(self, reason: str, now: float, detail: str = "") -> None:
        """:meth:`note`, writing the summary if one is due."""
        summary = self.note(reason, now, detail)
        if summary is not None and self.write is not None:
            self.write(summary)

    def flush(self, now: float) -> None:
        """:meth:`take`, writing the summary if there is one (on a timer, at stop)."""
        summary = self.take(now)
        if summary is not None and self.write is not None:
            self.write(summary)

    def take(self, now: float) -> Summary | None:
        """The summary of what was counted since the last one (None if nothing was)."""
        if not self._counts or self._started is None:
            return None
        summary = Summary(
            dict(self._counts), max(0.0, now - self._started), self._last_reason, self._last_detail
        )
        self._counts.clear()
        self._started = None
        self._last_summary = now
        return summary


__all__ = ["RefusalSummary", "Summary"]
