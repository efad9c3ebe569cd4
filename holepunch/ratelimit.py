# -*- test-case-name: tests.unit.test_signaling_protocol,tests.unit.test_stun_server -*-
"""Token-bucket rate limiting, sans-I/O: the caller passes the time.

One :class:`TokenBucket` limits one sender (the signaling server keeps one per
connection); :class:`TokenBuckets` keeps a fixed table of them shared by key hash (the
STUN server's per-source-address limit), which no churn of keys can reset.
"""

from __future__ import annotations

import hashlib
import math
import os
from array import array


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
        tokens = self._tokens  # _refill, inline: this runs for every signaling message
        elapsed = now - self._updated
        if elapsed > 0.0:
            tokens += elapsed * self.rate
            if tokens > self.capacity:  # min(), which costs more than the rest here
                tokens = self.capacity
        self._updated = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class TokenBuckets:
    """Per-key token buckets in a fixed table of ``slots`` buckets, keyed by a secret hash.

    A key's bucket is the slot its BLAKE2b hash, under a random per-table secret, picks;
    keys that collide share that bucket. A ``rate`` of 0 or less means no limit.

    Why not one bucket per key with the least recently used forgotten when the table is
    full: then whoever sends from more addresses than the table holds (UDP source
    addresses are easily spoofed) pushes a victim's bucket out, and the victim's next
    request starts a full one again, so a flood from many sources resets the limit of
    the one it aims at. Here nothing is forgotten or reset, whatever the churn: a slot
    only refills at ``rate``. Sharing a slot can only make a limit stricter, never
    looser, since no key's traffic ever adds tokens; senders cannot aim at a slot
    without the secret, and with honest senders well under the rate a collision with a
    busy one is rare and costs at most that sender's rate. Memory is fixed: two arrays
    of doubles, 1 MiB for the default 65,536 slots.

    The hash costs about 0.7 µs, more than the rest of :meth:`allow`, so the slots of
    the last keys seen (up to ``cached_keys``) are remembered. This changes no slot:
    forgetting them all when the cache is full (a flood of new source addresses) only
    costs the hashes again, and never resets a bucket.
    """

    cached_keys = 4096

    def __init__(
        self, rate: float, burst: float, slots: int = 65536, secret: bytes | None = None
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.rate = rate
        self.burst = burst
        self.slots = slots
        self._secret = os.urandom(16) if secret is None else secret
        self._tokens = array("d", [float(burst)]) * slots
        # Never used: refilling from minus infinity gives a full bucket.
        self._updated = array("d", [-math.inf]) * slots
        self._slots: dict[str, int] = {}

    def slot(self, key: str) -> int:
        """The index of the bucket ``key`` uses."""
        i = self._slots.get(key)
        if i is None:
            digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._secret).digest()
            i = int.from_bytes(digest) % self.slots
            if len(self._slots) >= self.cached_keys:
                self._slots.clear()
            self._slots[key] = i
        return i

    def tokens(self, key: str, now: float) -> float:
        """How many tokens ``key``'s bucket holds at time ``now``."""
        return self._refill(self.slot(key), now)

    def _refill(self, i: int, now: float) -> float:
        elapsed = now - self._updated[i]
        if elapsed > 0.0:
            self._tokens[i] = min(self.burst, self._tokens[i] + elapsed * self.rate)
            self._updated[i] = now
        return self._tokens[i]

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket at time ``now``; False if it is empty."""
        rate = self.rate
        if rate <= 0:
            return True
        i = self._slots.get(key)
        if i is None:
            i = self.slot(key)
        # _refill and the take, inlined: this runs for every STUN request.
        tokens = self._tokens
        held = tokens[i]
        elapsed = now - self._updated[i]
        if elapsed > 0.0:
            held += elapsed * rate
            if held > self.burst:
                held = self.burst
            self._updated[i] = now
        if held >= 1.0:
            tokens[i] = held - 1.0
            return True
        tokens[i] = held
        return False


__all__ = ["TokenBucket", "TokenBuckets"]
