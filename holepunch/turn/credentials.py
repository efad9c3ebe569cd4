# -*- test-case-name: tests.test_turn_client -*-
"""RFC 8489 section 9.2 long-term credentials, as a TURN client uses them.

:class:`LongTermCredentials` holds what the server told us (REALM, NONCE) and the key,
adds them to each request and decides what a 401 or 438 answer means, with no I/O.
:class:`AuthenticatedTransactions` checks responses as 9.2.5 says.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from holepunch.stun.client import TransactionTable
from holepunch.stun.credentials import long_term_key
from holepunch.stun.message import StunMessage
from holepunch.stun.wire import Address, Attr, MessageClass
from holepunch.turn.model import TurnAuthError, TurnError

_log = Logger()

MAX_STALE_NONCE_RETRIES = 3
"""How many 438 answers in a row one request accepts before failing."""


class LongTermCredentials:
    """A client's long-term credentials on one server: the first request goes without
    them, the 401 gives REALM and NONCE, later requests carry USERNAME, REALM, NONCE and
    MESSAGE-INTEGRITY under :attr:`key`.

    :param where: ``host:port`` of the server, for error messages.
    """

    def __init__(self, username: str, password: str, where: str) -> None:
        self.username = username
        self._password = password
        self.where = where
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        """The MESSAGE-INTEGRITY key, once the server named its realm."""

    def forget(self, where: str) -> None:
        """Start over with another server (after a redirect)."""
        self.where = where
        self.realm = self.nonce = None
        self.key = None

    def learn(self, realm: str, nonce: str) -> None:
        """Use ``realm`` and ``nonce`` from now on (the key follows the realm).

        :raises TurnAuthError: the password cannot be made into a key (SASLprep).
        """
        if self.key is None or realm != self.realm:
            try:
                self.key = long_term_key(self.username, realm, self._password)
            except ValueError as e:
                raise TurnAuthError(0, f"unusable TURN password: {e}") from None
        self.realm = realm
        self.nonce = nonce

    def add_to(self, request: StunMessage) -> bytes | None:
        """Add USERNAME, REALM and NONCE when known; return the key to seal with."""
        key = self.key
        if key is not None:
            assert self.realm is not None and self.nonce is not None
            request.add_string(Attr.USERNAME, self.username)
            request.add_string(Attr.REALM, self.realm)
            request.add_string(Attr.NONCE, self.nonce)
        return key

    def unauthorized(self, response: StunMessage, key_used: bytes | None, retried: bool) -> None:
        """A 401 answered a request sealed with ``key_used``: learn what to retry with.

        :param retried: a 401 already answered this request once.
        :raises TurnError: the 401 has no REALM or NONCE.
        :raises TurnAuthError: no credentials were given, or they were refused.
        """
        realm = response.get_string(Attr.REALM)
        nonce = response.get_string(Attr.NONCE)
        if realm is None or nonce is None:
            raise TurnError(401, "401 without REALM or NONCE", response)
        if not self.username:
            raise TurnAuthError(
                401,
                f"TURN server {self.where} needs credentials (realm {realm!r}) and none were given",
                response,
            )
        if key_used is not None and (retried or nonce == self.nonce):
            raise TurnAuthError(
                401,
                f"TURN server {self.where} refused the credentials of user "
                f"{self.username!r} (realm {realm!r}): wrong username or password",
                response,
            )
        self.learn(realm, nonce)

    def stale_nonce(self, response: StunMessage, reason: str, retries: int) -> None:
        """A 438 answered: learn the new nonce, unless ``retries`` is already the most.

        :raises TurnError: no nonce in the answer, or too many 438 in a row.
        """
        nonce = response.get_string(Attr.NONCE)
        realm = response.get_string(Attr.REALM) or self.realm
        if nonce is None or realm is None or retries >= MAX_STALE_NONCE_RETRIES:
            raise TurnError(438, reason or "Stale Nonce", response)
        self.learn(realm, nonce)


class AuthenticatedTransactions(TransactionTable):
    """A :class:`TransactionTable` that checks MESSAGE-INTEGRITY as RFC 8489 9.2.5 says
    for long-term credentials (the base class would also drop the unprotected 401 and
    438 answers, which carry what we need to go on)."""

    def __init__(self, send: Callable[[bytes, Address], None], clock: IReactorTime) -> None:
        super().__init__(send, clock)
        self.keys: dict[bytes, bytes] = {}

    def handle(self, message: StunMessage, source: Address) -> bool:
        key = self.keys.get(message.transaction_id)
        if (
            key is not None
            and message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR)
            and (
                message.message_class == MessageClass.SUCCESS or message.has(Attr.MESSAGE_INTEGRITY)
            )
            and not message.check_integrity(key)
        ):
            _log.info("ignored a TURN response from {s} failing MESSAGE-INTEGRITY", s=source)
            return True
        return super().handle(message, source)


__all__ = ["MAX_STALE_NONCE_RETRIES", "AuthenticatedTransactions", "LongTermCredentials"]
