# -*- test-case-name: tests.unit.test_signaling_singleuse -*-
"""Single-use auth tokens: a token (:mod:`holepunch.signaling.auth`) opens one
connection at a time.

With ``token_single_use`` the signaling server refuses a handshake whose token an open
connection holds (HTTP 409), and a ``renew`` whose fresh token another connection holds
(``invalid-token``). :class:`SingleUseTokens` is the record of the held tokens; the
server claims a token at the handshake, swaps it on ``renew`` and releases it when the
connection closes.

Sans-I/O and without a clock: whether a token is valid, and until when, is
:func:`holepunch.signaling.auth.check_token`'s to say (the time is its argument), and a
connection whose token expires is closed, which releases the token.
"""

from __future__ import annotations


class SingleUseTokens:
    """The tokens held by open connections, each by one connection."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: set[str] = set()

    def __contains__(self, token: object) -> bool:
        return token in self._held

    def __len__(self) -> int:
        return len(self._held)

    def claim(self, token: str) -> bool:
        """A connection opens with ``token``: True, or False when another holds it."""
        if token in self._held:
            return False
        self._held.add(token)
        return True

    def swap(self, held: str, fresh: str) -> bool:
        """The connection holding ``held`` renews with ``fresh``: it holds ``fresh`` from
        now on (True), unless another connection holds ``fresh`` (False: it keeps
        ``held``). Renewing with the token it holds is no change (True)."""
        if fresh == held:
            return True
        if fresh in self._held:
            return False
        self._held.discard(held)
        self._held.add(fresh)
        return True

    def release(self, token: str) -> None:
        """The connection holding ``token`` closed: another may open with it."""
        self._held.discard(token)


__all__ = ["SingleUseTokens"]
