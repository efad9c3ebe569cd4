# -*- test-case-name: tests.unit.test_portmap -*-
"""What every port-mapping protocol shares: the result type, the errors, and a sans-I/O
retransmitting request.

:class:`RetransmittingRequest` is the part of RFC 6886 section 3.1 and RFC 6887 section
8.1.1 that is the same for both protocols: send a request, resend it on a schedule until a
valid answer arrives, and give up at a deadline the caller chooses (the RFCs' own limits,
64 s for NAT-PMP and unbounded for PCP, are far too long for a connection set-up). It holds
no socket and no clock: time comes in as ``now`` and datagrams go out through
:meth:`RetransmittingRequest.datagrams_to_send`, in the shape of aioquic's
``QuicConnection``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Method(enum.StrEnum):
    """A port-mapping protocol."""

    PCP = "pcp"
    """Port Control Protocol, RFC 6887."""
    NATPMP = "natpmp"
    """NAT Port Mapping Protocol, RFC 6886."""
    UPNP = "upnp"
    """UPnP Internet Gateway Device (WANIPConnection AddPortMapping)."""


@dataclasses.dataclass(frozen=True)
class PortMapping:
    """A UDP port mapping the gateway granted.

    ``created`` and :attr:`expires` are in the mapper's clock (``reactor.seconds()``).
    """

    method: Method
    """Which protocol made it."""
    internal_address: str
    """The LAN address the mapping forwards to (this host's address toward the gateway)."""
    internal_port: int
    """The local UDP port mapped."""
    external_address: str
    """The gateway's public address: where peers send."""
    external_port: int
    """The public port: where peers send."""
    lifetime: float
    """Seconds the gateway granted (0 for UPnP's "until deleted")."""
    created: float
    """When the grant was received."""
    gateway: str
    """The gateway that holds it."""
    protocol: str = "udp"
    """Transport protocol; always ``"udp"`` today."""
    nonce: bytes = dataclasses.field(default=b"", repr=False)
    """PCP's mapping nonce (RFC 6887 section 11.1), needed to renew or delete; else empty."""

    @property
    def expires(self) -> float | None:
        """When the mapping lapses unless renewed, or None if it does not (UPnP lease 0)."""
        return self.created + self.lifetime if self.lifetime > 0 else None

    @property
    def external(self) -> tuple[str, int]:
        """``(external_address, external_port)``: the address to hand to peers."""
        return (self.external_address, self.external_port)


class PortMappingError(Exception):
    """No method could map the port; :attr:`attempts` says what each one answered."""

    def __init__(self, message: str, attempts: dict[str, str] | None = None) -> None:
        self.attempts = dict(attempts or {})
        detail = "; ".join(f"{method}: {why}" for method, why in self.attempts.items())
        super().__init__(f"{message} ({detail})" if detail else message)


class MalformedResponse(ValueError):
    """A datagram from the gateway that is not a well-formed answer to our request."""


class ResultCodeError(Exception):
    """The gateway answered with a non-zero result code."""

    def __init__(self, protocol: str, code: int, name: str, lifetime: int = 0) -> None:
        self.protocol = protocol
        self.code = code
        self.name = name
        self.lifetime = lifetime
        super().__init__(f"{protocol} result code {code} ({name})")


class NoResponse(TimeoutError):
    """The gateway did not answer before the deadline."""


@dataclasses.dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: Exception | None = None


class RetransmittingRequest(Generic[T]):
    """One request, resent on ``schedule`` until ``parse`` accepts an answer or time is up.

    ``schedule`` yields the waits between transmissions (RFC 6886: 0.25, 0.5, 1, ...;
    RFC 6887: about 3, 6, 12, ...). ``parse`` turns a datagram into a result, raises
    :class:`MalformedResponse` to ignore it (a stray or corrupt packet, RFC 6887 section
    8.3 says to discard those), or raises :class:`ResultCodeError` to fail the request.
    The request gives up at ``deadline`` with :class:`NoResponse`.
    """

    def __init__(
        self,
        request: bytes,
        parse: Callable[[bytes], T],
        schedule: Iterator[float],
        now: float,
        deadline: float,
    ) -> None:
        self.request = request
        self._parse = parse
        self._schedule = schedule
        self._deadline = deadline
        self._next_send: float | None = now
        self._outbox: list[bytes] = []
        self._outcome: _Outcome[T] | None = None
        self.transmissions = 0
        self.ignored: list[str] = []
        """Why each discarded datagram was discarded (for logs and error messages)."""
        self.handle_timer(now)

    @property
    def done(self) -> bool:
        """True once the request succeeded, failed or timed out."""
        return self._outcome is not None

    def result(self) -> T:
        """The parsed answer; raises the failure if the request failed."""
        if self._outcome is None:
            raise RuntimeError("the request is still in progress")
        if self._outcome.error is not None:
            raise self._outcome.error
        assert self._outcome.value is not None
        return self._outcome.value

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None when done."""
        if self.done:
            return None
        if self._next_send is None:
            return self._deadline
        return min(self._next_send, self._deadline)

    def handle_timer(self, now: float) -> None:
        """Retransmit if it is time, or give up at the deadline."""
        if self.done:
            return
        if now >= self._deadline:
            self.fail(
                NoResponse(
                    f"no answer to {self.transmissions} transmission(s)"
                    + (f" (ignored: {'; '.join(self.ignored)})" if self.ignored else "")
                )
            )
            return
        if self._next_send is not None and now >= self._next_send:
            self._outbox.append(self.request)
            self.transmissions += 1
            wait = next(self._schedule, None)
            self._next_send = None if wait is None else now + wait

    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams due now (call after each ``handle_timer``)."""
        out, self._outbox = self._outbox, []
        return out

    def receive_datagram(self, data: bytes) -> bool:
        """Feed a datagram from the gateway; True if it ended the request."""
        if self.done:
            return False
        try:
            value = self._parse(data)
        except MalformedResponse as e:
            self.ignored.append(str(e))
            return False
        except ResultCodeError as e:
            self.fail(e)
            return True
        self._outcome = _Outcome(value=value)
        self._outbox = []
        return True

    def fail(self, error: Exception) -> None:
        """End the request with ``error`` (an ICMP error from the adapter, a cancel)."""
        if not self.done:
            self._outcome = _Outcome(error=error)
            self._outbox = []
