# -*- test-case-name: tests.unit.test_stun_client -*-
"""STUN client transactions without I/O (RFC 8489 section 6.2.1).

:class:`ClientTransactions` keeps the client transactions of one endpoint: what to send,
when to send it again, which response answers which request. It owns no socket and no
clock: requests go in with ``now``, datagrams to send come out of
:meth:`ClientTransactions.datagrams_to_send`, :meth:`ClientTransactions.get_timer` says
when it next needs time, and every transaction ends in exactly one
:class:`TransactionOutcome` (a response, an error response, or a timeout) returned by
:meth:`ClientTransactions.receive` or :meth:`ClientTransactions.handle_timer`. This is
the shape of aioquic's ``QuicConnection``; the Deferred-returning
:class:`holepunch.stun.client.TransactionTable` and the ICE core both drive it.

Retransmission follows RFC 8489 6.2.1: the first retransmission after RTO, each later one
after twice the previous interval, ``Rc`` sends in all, then a last wait of ``Rm`` times
RTO. Each transaction names the socket it goes out on (``via``, an opaque key), so one
table can serve an agent with several sockets and relays.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from holepunch.stun.message import StunMessage, encode
from holepunch.stun.wire import Address, MessageClass, StunDecodeError, StunError


class StunTimeout(StunError):
    """No response arrived within the transaction's retransmission schedule."""


class StunErrorResponse(StunError):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str, response: StunMessage) -> None:
        super().__init__(f"STUN error {code}: {reason}")
        self.code = code
        self.reason = reason
        self.response = response


@dataclass(frozen=True)
class RetransmissionPolicy:
    """RFC 8489 6.2.1 timers: initial RTO in seconds, Rc sends, last wait Rm * RTO."""

    rto: float = 0.5
    rc: int = 7
    rm: int = 16

    def __post_init__(self) -> None:
        if self.rto <= 0 or self.rc < 1 or self.rm < 1:
            raise ValueError(f"invalid retransmission policy {self}")

    def waits(self) -> list[float]:
        """Time to wait after each send before the next send (or the final give-up)."""
        waits = [self.rto * (2**i) for i in range(self.rc - 1)]
        waits.append(self.rto * self.rm)
        return waits

    @property
    def total(self) -> float:
        """Seconds from the first send to giving up (39.5 s with the defaults)."""
        return sum(self.waits())


DEFAULT_POLICY = RetransmissionPolicy()


@dataclass(frozen=True)
class StunResponse:
    """A response that matched a transaction, and where it came from."""

    message: StunMessage
    source: Address


@dataclass(frozen=True)
class TransactionOutcome:
    """How one transaction ended: ``response`` or ``error`` is set, never both.

    ``context`` is whatever the caller attached when it started the transaction.
    """

    transaction_id: bytes
    destination: Address
    via: Hashable
    context: object
    response: StunResponse | None = None
    error: StunError | None = None


@dataclass
class _Running:
    request: bytes
    destination: Address
    via: Hashable
    context: object
    waits: list[float]
    integrity_key: bytes | None
    deadline: float = 0.0
    sends: int = 0
    quiet: bool = False


@dataclass(order=True)
class _Deadline:
    at: float
    transaction_id: bytes = field(compare=False)


class ClientTransactions:
    """The running client transactions of one endpoint, keyed by transaction id."""

    def __init__(self) -> None:
        self._running: dict[bytes, _Running] = {}
        self._queue: list[tuple[bytes, Address, Hashable]] = []
        self._deadlines: list[_Deadline] = []

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._running

    def start(
        self,
        message: StunMessage,
        destination: Address,
        now: float,
        *,
        via: Hashable = None,
        policy: RetransmissionPolicy = DEFAULT_POLICY,
        integrity_key: bytes | None = None,
        fingerprint: bool = True,
        context: object = None,
    ) -> bytes:
        """Start a transaction: the request is queued to send now; returns its id.

        With ``integrity_key`` the request carries MESSAGE-INTEGRITY and a response that
        does not verify with the same key is ignored (RFC 8489 9.1.4).
        """
        tid = message.transaction_id
        if tid in self._running:
            raise ValueError("a transaction with this id is already running")
        data = encode(message, integrity_key=integrity_key, fingerprint=fingerprint)
        running = _Running(data, destination, via, context, policy.waits(), integrity_key)
        self._running[tid] = running
        self._transmit(tid, running, now)
        return tid

    def _transmit(self, tid: bytes, running: _Running, now: float) -> None:
        running.deadline = now + running.waits[running.sends]
        running.sends += 1
        self._queue.append((running.request, running.destination, running.via))
        heapq.heappush(self._deadlines, _Deadline(running.deadline, tid))

    def cancel(self, transaction_id: bytes) -> bool:
        """Forget a transaction (no outcome); True if it was running."""
        return self._running.pop(transaction_id, None) is not None

    def quiet(self, transaction_id: bytes) -> bool:
        """Stop retransmitting but still take a response until the transaction would
        have timed out; its timeout then reports nothing (RFC 8445 7.3.1.4: a check
        replaced by a triggered one is cancelled this way, so that on a path slower
        than the retransmission interval the first answer still counts). True if it
        was running."""
        running = self._running.get(transaction_id)
        if running is None:
            return False
        if not running.quiet:
            running.quiet = True
            running.deadline += sum(running.waits[running.sends :])
            running.sends = len(running.waits)
            heapq.heappush(self._deadlines, _Deadline(running.deadline, transaction_id))
        return True

    def cancel_all(self, via: Hashable | None = None) -> list[bytes]:
        """Forget every running transaction (or those going out on ``via``)."""
        ids = [t for t, r in self._running.items() if via is None or r.via == via]
        for tid in ids:
            del self._running[tid]
        if via is None:
            self._queue.clear()
            self._deadlines.clear()
        else:
            self._queue = [q for q in self._queue if q[2] != via]
        return ids

    def cancel_where(self, predicate: Callable[[object], bool]) -> list[bytes]:
        """Forget every running transaction whose context satisfies ``predicate``."""
        ids = [t for t, r in self._running.items() if predicate(r.context)]
        for tid in ids:
            del self._running[tid]
        return ids

    def context(self, transaction_id: bytes) -> object:
        """The context of a running transaction (None when it is not running)."""
        running = self._running.get(transaction_id)
        return running.context if running is not None else None

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Hashable]]:
        """What to send now: ``(data, destination, via)`` in order."""
        queue, self._queue = self._queue, []
        return queue

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: nothing running)."""
        while self._deadlines:
            head = self._deadlines[0]
            running = self._running.get(head.transaction_id)
            if running is not None and running.deadline == head.at:
                return head.at
            heapq.heappop(self._deadlines)
        return None

    def handle_timer(self, now: float) -> list[TransactionOutcome]:
        """Retransmit what is due; returns the transactions that timed out."""
        outcomes: list[TransactionOutcome] = []
        while True:
            at = self.get_timer()
            if at is None or at > now:
                return outcomes
            head = heapq.heappop(self._deadlines)
            running = self._running[head.transaction_id]
            if running.sends >= len(running.waits):
                del self._running[head.transaction_id]
                if running.quiet:
                    continue
                destination = running.destination
                outcomes.append(
                    TransactionOutcome(
                        head.transaction_id,
                        destination,
                        running.via,
                        running.context,
                        error=StunTimeout(
                            f"no response from {destination.host}:{destination.port} "
                            f"after {running.sends} attempts"
                        ),
                    )
                )
            else:
                self._transmit(head.transaction_id, running, now)

    def receive(
        self, message: StunMessage, source: Address, via: Hashable = None
    ) -> TransactionOutcome | bool:
        """Offer a decoded message (that arrived on socket ``via``, if that matters).

        Returns the outcome when it answered a running transaction, True when it is a
        response of ours that must be ignored (MESSAGE-INTEGRITY failed), False when it
        is nothing of ours (also when it came in on another socket than ``via``).
        """
        if message.message_class not in (MessageClass.SUCCESS, MessageClass.ERROR):
            return False
        tid = message.transaction_id
        running = self._running.get(tid)
        if running is None or (via is not None and running.via != via):
            return False
        if running.integrity_key is not None and not message.check_integrity(running.integrity_key):
            return True
        del self._running[tid]
        if message.message_class == MessageClass.ERROR:
            try:
                code, reason = message.get_error_code() or (0, "no ERROR-CODE")
            except StunDecodeError as e:
                code, reason = 0, f"malformed ERROR-CODE: {e}"
            return TransactionOutcome(
                tid,
                running.destination,
                running.via,
                running.context,
                error=StunErrorResponse(code, reason, message),
            )
        return TransactionOutcome(
            tid, running.destination, running.via, running.context, StunResponse(message, source)
        )
