# -*- test-case-name: tests.unit.test_signaling_protocol,tests.unit.test_stun_server -*-
"""Token-bucket rate limiting, sans-I/O: the caller passes the time.

One :class:`TokenBucket` limits one sender (the signaling server keeps one per
connection); :class:`TokenBuckets` keeps one per key, a bounded number of them (the STUN
server keeps one per source address).
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """The token bucket rate limiter: ``rate`` tokens per second, at most ``capacity``.

    It starts full at time ``now``; times are seconds on any clock that does not go
    backwards (a time earlier than the last one adds no tokens).
    """

    __slots__ = ("_tokens", "_updated", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = float(capacity)
        self._updated = now

    def tokens(self, now: float) -> float:
        """How many tokens the bucket holds at time ``now``."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0.0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` if there is one; False: the caller is over its rate."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class TokenBuckets:
    """Per-key token buckets, at most ``max_keys`` remembered (least recently used go).

    A ``rate`` of 0 or less means no limit.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket at time ``now``; False if it is empty."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
        allowed = bucket.take(now)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed


__all__ = ["TokenBucket", "TokenBuckets"]
