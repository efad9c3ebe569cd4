# -*- test-case-name: tests.test_turn_client -*-
"""The TURN client (RFC 8656): one allocation, over a send function and a clock.

:class:`TurnAllocation` is the client side of one allocation on one TURN server. It has
no socket of its own: it writes with a ``send(data, (host, port))`` function and is fed
what the server sends with :meth:`TurnAllocation.datagram_received`, so the ICE agent can
run it on the UDP socket it already owns (its checks and the TURN traffic then share the
socket, and the relayed candidate's base is that socket). :mod:`holepunch.turn.connect`
gives it a socket or a TCP/TLS connection of its own. Its errors, states and results are
in :mod:`holepunch.turn.model`, the credential rules in :mod:`holepunch.turn.credentials`.

It implements

 - RFC 8656 section 7 (Allocate, with REQUESTED-TRANSPORT UDP and an optional LIFETIME;
   300 ALTERNATE-SERVER followed once, 7.2 / RFC 8489 10), section 8 (Refresh: at 5/6 of
   the granted lifetime, and LIFETIME 0 to deallocate on :meth:`close <TurnAllocation.close>`),
   section 9 (permissions, refreshed every 240 s, under the 300 s they live), section 10
   (Send and Data indications), section 12 (ChannelBind, refreshed every 540 s, under
   the 600 s a binding lives; ChannelData, padded to 4 bytes over streams, 12.5);
 - RFC 8489 section 9.2 (long-term credentials: the first request goes without them, the
   401 gives REALM and NONCE, later requests carry USERNAME, REALM, NONCE and
   MESSAGE-INTEGRITY; 438 Stale Nonce is retried with the new nonce; a second 401 means
   the credentials are wrong: :class:`TurnAuthError`); responses are checked as 9.2.5
   says: a success response must carry a valid MESSAGE-INTEGRITY or it is ignored, an
   error response is checked only if it carries one (401 and 438 never do);
 - RFC 8489 section 6.2 through :class:`TransactionTable <holepunch.stun.client.TransactionTable>`:
   retransmissions over UDP, one send and one timeout over a stream.

Every wait is bounded and every timer goes through the injected clock; cancelling
:meth:`allocate <TurnAllocation.allocate>`, :meth:`close <TurnAllocation.close>` and losing the
allocation all stop every timer and transaction and call ``on_close`` (which frees the
socket or connection, when the allocation owns one).

Address families (RFC 8656 7.1, 7.2, 9.1, 12.1): ``families`` asks for relayed
addresses of one family (REQUESTED-ADDRESS-FAMILY: a v4 client can relay to IPv6 peers,
a v6 client to IPv4 ones) or of both at once (a dual allocation: ADDITIONAL-ADDRESS-FAMILY,
two XOR-RELAYED-ADDRESS); a family the server does not grant in a dual allocation is named
in :attr:`Allocated.refused <holepunch.turn.model.Allocated.refused>` (ADDRESS-ERROR-CODE) and
the other one is kept; a server that refuses the dual request itself (400) is asked again
for the first family alone. 440 fails with :class:`AddressFamilyNotSupported`, 443 with
:class:`PeerAddressFamilyMismatch`, which is also what a permission, channel or send to a
peer of a family without a relayed address fails with here, before anything is sent. The
attributes are in :mod:`holepunch.turn.families`.

Not implemented: TCP relays (RFC 6062), DTLS, the RFC 8489 password algorithms and
USERHASH (coturn 4.6 offers neither).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.addresses import format_address
from holepunch.stun.client import (
    DEFAULT_POLICY,
    RetransmissionPolicy,
    StunErrorResponse,
    StunResponse,
    StunTimeout,
)
from holepunch.stun.framing import decode_channel_data, encode_channel_data, is_stun
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import (
    Address,
    Attr,
    MessageClass,
    Method,
    StunDecodeError,
)
from holepunch.turn.credentials import AuthenticatedTransactions, LongTermCredentials
from holepunch.turn.families import (
    AddressFamily,
    FamilyRefused,
    FamilyRequest,
    add_additional_family,
    add_requested_family,
    family_of,
    get_address_errors,
    get_relayed_addresses,
    order_by_preference,
    resolve_families,
)
from holepunch.turn.model import (
    DEFAULT_LIFETIME,
    DEFAULT_TIMERS,
    SOFTWARE,
    UDP_PROTOCOL,
    AddressFamilyNotSupported,
    Allocated,
    AllocationState,
    PeerAddressFamilyMismatch,
    TurnAuthError,
    TurnError,
    TurnRedirect,
    TurnStats,
    TurnTimeoutError,
    TurnTimers,
    method_name,
    peer_address,
)
from holepunch.turn.peertables import PeerTables

_log = Logger()

SendFunction = Callable[[bytes, tuple[str, int]], Any]
"""``send(data, (host, port))``: writes one datagram (or stream frame) to the server."""

DataCallback = Callable[[bytes, Address], Any]
"""``callback(data, peer)``: application data relayed from ``peer``."""

LIVENESS_POLICY = RetransmissionPolicy(rto=0.5, rc=3, rm=4)
"""Retransmissions of a :meth:`TurnAllocation.watch` Refresh over UDP: sends at 0, 0.5
and 1.5 s, given up at 3.5 s."""


def allocation_gone(error: TurnError) -> bool:
    """Whether the answer to a request on a granted allocation means the server no
    longer holds it: 437 Allocation Mismatch (a restarted server, an expired
    allocation), 438 Stale Nonce again after the retries with the new nonce, or no
    answer at all (:class:`TurnTimeoutError`). A refusal for one peer (403 Forbidden on
    CreatePermission, say) does not: only that peer is affected."""
    return isinstance(error, TurnTimeoutError) or error.code in (437, 438)


class TurnAllocation:
    """One TURN allocation, driven through ``send`` and :meth:`datagram_received`.

    :param server: the server's resolved address (where requests go, and the only source
        :meth:`datagram_received` accepts over UDP).
    :param send: ``send(data, (host, port))`` writes to the server. Over a stream the
        address is the server's and can be ignored. It may raise ``OSError``.
    :param clock: the reactor (or a ``task.Clock`` in tests).
    :param stream: the transport is TCP or TLS: no retransmissions (one send, then
        ``policy.total`` seconds), ChannelData padded to 4 bytes; a 300 answer then fails
        with :class:`TurnRedirect` for the caller to reconnect.
    :param lifetime: the LIFETIME to ask for (the server decides; None asks for nothing).
    :param families: the families of relayed address to ask for, in order of preference
        (``"ipv4"``, ``"ipv6"`` or :class:`AddressFamily`): one (REQUESTED-ADDRESS-FAMILY)
        or both (a dual allocation). ``"auto"``: both, the family we reach the server
        over first. None asks for nothing: the server's default, IPv4 by RFC 8656.
    :param on_close: called once when the allocation ends (closed, failed, cancelled or
        lost), after its timers and transactions are stopped; may return a Deferred, which
        :meth:`close` waits for. The socket owner closes its socket here.
    """

    def __init__(
        self,
        server: tuple[str, int],
        send: SendFunction,
        clock: IReactorTime,
        *,
        username: str = "",
        password: str = "",
        stream: bool = False,
        policy: RetransmissionPolicy = DEFAULT_POLICY,
        lifetime: int | None = None,
        timers: TurnTimers = DEFAULT_TIMERS,
        software: str | None = SOFTWARE,
        follow_redirect: bool = True,
        on_close: Callable[[], Any] | None = None,
        families: FamilyRequest = None,
    ) -> None:
        self.server = Address(server[0], server[1])
        self.username = username
        self._credentials = LongTermCredentials(username, password, f"{server[0]}:{server[1]}")
        self.stream = stream
        self.clock = clock
        self.timers = timers
        self.software = software
        self.requested_lifetime = lifetime
        self.families = resolve_families(families, self.server.host)
        """The families asked for, in order of preference (None: the server's default)."""
        self.follow_redirect = follow_redirect
        if stream:
            policy = RetransmissionPolicy(rto=policy.total, rc=1, rm=1)
        self.policy = policy
        close_timeout = timers.close_timeout
        self._close_policy = (
            RetransmissionPolicy(rto=close_timeout * 0.9, rc=1, rm=1)
            if stream
            else RetransmissionPolicy(rto=close_timeout / 8, rc=3, rm=4)
        )
        self._send_function = send
        self._on_close = on_close
        self._table = AuthenticatedTransactions(self._send_to_server, clock)
        self.state = AllocationState.NEW
        self.allocated: Allocated | None = None
        self.stats = TurnStats()
        self._redirected = False
        self._asked: tuple[AddressFamily, ...] | None = self.families
        self._expires: float | None = None
        self._refresh_timer: IDelayedCall | None = None
        self._watch_timer: IDelayedCall | None = None
        self._watch_interval: float | None = None
        self._watch_policy = (
            RetransmissionPolicy(rto=LIVENESS_POLICY.total, rc=1, rm=1)
            if stream
            else LIVENESS_POLICY
        )
        self.peers = PeerTables(clock, timers, self.stats, self._tracked_exchange, self.send)
        """Permissions and channels (:class:`holepunch.turn.peertables.PeerTables`)."""
        self._data_callback: DataCallback | None = None
        self._lost_callback: Callable[[TurnError], Any] | None = None
        self._allocate_d: Deferred[Allocated] | None = None
        self._background: set[Deferred[Any]] = set()
        self._transport_error: TurnError | None = None
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []
        self._close_done = False

    def __repr__(self) -> str:
        relayed = self.allocated.relayed if self.allocated else None
        return (
            f"<TurnAllocation {self.server.host}:{self.server.port} {self.state.value}"
            f" relayed={relayed}>"
        )

    # -- public API ---------------------------------------------------------------

    @property
    def relayed_address(self) -> Address | None:
        """The relayed transport address (XOR-RELAYED-ADDRESS), once allocated."""
        return self.allocated.relayed if self.allocated else None

    @property
    def relayed_addresses(self) -> tuple[Address, ...]:
        """Every relayed address (two for a dual allocation), the preferred first."""
        return self.allocated.relayed_addresses if self.allocated else ()

    def relayed_for(self, peer_host: str) -> Address | None:
        """The relayed address that reaches ``peer_host`` (the one of its family), or None."""
        if self.allocated is None:
            return None
        try:
            family = family_of(peer_host)
        except ValueError:
            return None
        return self.allocated.relayed_for(family)

    @property
    def mapped_address(self) -> Address | None:
        """Our address as the server saw it (XOR-MAPPED-ADDRESS), once allocated."""
        return self.allocated.mapped if self.allocated else None

    @property
    def permissions(self) -> frozenset[str]:
        """The peer IP addresses with an installed permission."""
        return self.peers.permissions

    @property
    def channels(self) -> dict[Address, int]:
        """The bound channels: peer address to channel number."""
        return self.peers.channels

    @property
    def realm(self) -> str | None:
        """The server's REALM, once it named it (the first 401)."""
        return self._credentials.realm

    def on_data(self, callback: DataCallback | None) -> None:
        """Deliver relayed data (Data indications and ChannelData) to ``callback(data, peer)``."""
        self._data_callback = callback

    def on_lost(self, callback: Callable[[TurnError], Any] | None) -> None:
        """Call ``callback(error)`` if the allocation is lost after it was granted (a
        refresh failed, the stream closed); not called on :meth:`close`."""
        self._lost_callback = callback

    def allocate(self) -> Deferred[Allocated]:
        """Ask the server for an allocation; fires with :class:`Allocated`.

        Fails with :class:`TurnAuthError` (wrong credentials), :class:`TurnTimeoutError`,
        or :class:`TurnError` (any other refusal). Cancelling it stops everything and calls
        ``on_close``. Can be called once.
        """
        if self.state is not AllocationState.NEW:
            return defer.fail(TurnError(0, f"allocate() on a {self.state.value} allocation"))
        if self._transport_error is not None:
            self.state = AllocationState.CLOSING
            self._finish()
            return defer.fail(self._transport_error)
        self.state = AllocationState.ALLOCATING
        d = defer.ensureDeferred(self._allocate())
        self._allocate_d = d
        return d

    def refresh(self, lifetime: int | None = None) -> Deferred[int]:
        """Refresh the allocation now (the timer does it at 5/6 of the lifetime); fires
        with the granted lifetime. If it fails the allocation is lost."""
        if self.state is not AllocationState.ALLOCATED:
            return defer.fail(TurnError(0, f"refresh() on a {self.state.value} allocation"))
        return self._track(defer.ensureDeferred(self._refresh(lifetime)), lose_on_failure=True)

    def watch(self, interval: float | None, policy: RetransmissionPolicy | None = None) -> None:
        """Check every ``interval`` seconds that the server still holds the allocation
        (None: stop checking): a Refresh, retransmitted as ``policy`` says (by default
        :data:`LIVENESS_POLICY` over UDP: 3.5 s); no answer, or any refusal (437
        Allocation Mismatch from a restarted server, say) loses the allocation at once.

        The ordinary refresh at 5/6 of the lifetime notices a lost allocation only after
        minutes; this is for an allocation that carries a connection now.
        """
        self._cancel(self._watch_timer)
        self._watch_timer = None
        self._watch_interval = interval
        if policy is not None:
            self._watch_policy = policy
        if interval is not None and self.state is AllocationState.ALLOCATED:
            self._watch_timer = self.clock.callLater(interval, self._watch_due)

    def release_family(self, family: AddressFamily | str | int) -> Deferred[bool]:
        """Give back the relayed address of ``family`` of a dual allocation and keep the
        other (RFC 8656 7.3: a Refresh with LIFETIME 0 and REQUESTED-ADDRESS-FAMILY).

        Fires True once the server has released it: :attr:`allocated` lists the other
        address only, the permissions and channels of that family's peers stop (their
        waiters fail), and a permission, channel or send for a peer of that family is
        refused here, as for a family never allocated. Fires False, and changes
        nothing, when the server refuses (one of RFC 5766 does not know the attribute:
        420) or does not answer: that address then lives as long as the allocation.
        An answer that says the allocation is gone loses it, as any request's does;
        closing the allocation meanwhile cancels it (``CancelledError``).
        Fails with :class:`TurnError` when the allocation is not allocated or ``family``
        is not one of its two relayed addresses' (to give back the only one,
        :meth:`close` it).
        """
        chosen = AddressFamily.parse(family)
        allocated = self.allocated
        if self.state is not AllocationState.ALLOCATED or allocated is None:
            return defer.fail(TurnError(0, f"release_family() on a {self.state.value} allocation"))
        if chosen not in allocated.families or len(allocated.relayed_addresses) < 2:
            have = " and ".join(f.label for f in allocated.families)
            return defer.fail(
                TurnError(0, f"no {chosen.label} relayed address to give back besides another "
                             f"(this allocation relays {have}); close() gives back the last")
            )  # fmt: skip

        def fill(request: StunMessage) -> None:
            request.add_uint32(Attr.LIFETIME, 0)
            add_requested_family(request, chosen)

        def released(_: StunMessage) -> bool:
            current = self.allocated
            if current is not None and self.state is AllocationState.ALLOCATED:
                kept = [a for a in current.relayed_addresses if family_of(a.host) is not chosen]
                self.allocated = dataclasses.replace(current, relayed_addresses=tuple(kept))
                self.peers.forget_family(
                    chosen, TurnError(0, f"the {chosen.label} relayed address was given back")
                )
            _log.info(
                "TURN allocation on {server}: {family} relayed address given back",
                server=self._where(),
                family=chosen.label,
            )
            return True

        def refused(failure: Failure) -> bool | Failure:
            if failure.check(CancelledError):
                return failure
            _log.info(
                "TURN allocation on {server} keeps its {family} relayed address: {err}",
                server=self._where(),
                family=chosen.label,
                err=failure.value,
            )
            return False

        return self._tracked_exchange(Method.REFRESH, fill).addCallbacks(released, refused)

    def create_permission(self, peer_ip: str) -> Deferred[None]:
        """Install a permission for ``peer_ip`` (refreshed every ``permission_refresh`` s).

        Fires at once when it is already installed.
        """
        if self.state is not AllocationState.ALLOCATED:
            return defer.fail(
                TurnError(0, f"create_permission() on a {self.state.value} allocation")
            )
        host = peer_address((peer_ip, 0)).host
        mismatch = self._family_mismatch(host, "permission")
        if mismatch is not None:
            return defer.fail(mismatch)
        return self.peers.create_permission(host)

    def bind_channel(self, peer: tuple[str, int]) -> Deferred[int]:
        """Bind a channel to ``peer`` (refreshed every ``channel_refresh`` s); fires with
        its number. Also installs the permission for the peer's IP. From then on
        :meth:`send` to ``peer`` uses ChannelData."""
        if self.state is not AllocationState.ALLOCATED:
            return defer.fail(TurnError(0, f"bind_channel() on a {self.state.value} allocation"))
        address = peer_address(peer)
        mismatch = self._family_mismatch(address.host, "channel")
        if mismatch is not None:
            return defer.fail(mismatch)
        return self.peers.bind_channel(address)

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        """Relay ``data`` to ``peer``: ChannelData if a channel is bound, else a Send
        indication.

        Without a permission for the peer's IP one is requested first and the data (up
        to :data:`holepunch.turn.peertables.MAX_QUEUED` datagrams) waits for it; it is
        dropped if that fails.

        :raise OSError: the allocation is not (or no longer) active, it has no relayed
            address of the peer's family (``errno.EAFNOSUPPORT``), or ``send`` failed.
        """
        if self.state is not AllocationState.ALLOCATED:
            raise OSError(f"TURN allocation is {self.state.value}")
        address = peer_address(peer)
        mismatch = self._family_mismatch(address.host, "data")
        if mismatch is not None:
            raise OSError(errno.EAFNOSUPPORT, mismatch.reason)
        number = self.peers.bound_channel(address)
        if number is not None:
            frame = encode_channel_data(number, data, pad=self.stream)
            self._send_to_server(frame, self.server)
            self.stats.channel_data_sent += 1
            return
        if self.peers.hold_until_permitted(data, address):
            return
        indication = StunMessage.indication(Method.SEND)
        indication.add_address(Attr.XOR_PEER_ADDRESS, address).add(Attr.DATA, bytes(data))
        self._send_to_server(encode(indication), self.server)
        self.stats.indications_sent += 1

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> bool:
        """Offer a datagram (or, over a stream, one frame); True if it was TURN traffic of
        this allocation from its server and has been consumed.

        Answers to other transactions on a shared socket (the ICE agent's Binding
        requests to the same server, say) are not consumed: they return False.
        """
        if self.state in (AllocationState.NEW, AllocationState.CLOSED) or not data:
            return False
        if not self.stream and (source[0], source[1]) != (self.server.host, self.server.port):
            return False
        if 0x40 <= data[0] <= 0x4F:  # channels 0x4000..0x4FFF (RFC 8656 12)
            return self._channel_data_received(data)
        if not is_stun(data):
            return False
        try:
            message = decode(data)
        except StunDecodeError:
            return False
        if message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            return self._table.handle(message, self.server)
        if message.message_class == MessageClass.INDICATION and message.method == Method.DATA:
            self._data_indication_received(message)
            return True
        return False

    def connection_lost(self, reason: str) -> None:
        """The stream to the server closed: the allocation is gone (RFC 8656 3.1)."""
        if self.state is AllocationState.CLOSED:
            return
        error = TurnError(0, f"connection to TURN server {self._where()} lost: {reason}")
        self._transport_error = error
        if self.state is AllocationState.ALLOCATED:
            self._lose(error)
        else:  # allocating or deallocating: end the request now
            self._table.cancel_all()

    def close(self) -> Deferred[None]:
        """Deallocate (Refresh with LIFETIME 0, waiting at most ``close_timeout``) and free
        everything; never fails. Idempotent."""
        waiter: Deferred[None] = Deferred()
        if self._close_done:
            waiter.callback(None)
            return waiter
        self._close_waiters.append(waiter)
        if self.state is AllocationState.ALLOCATED:
            self.state = AllocationState.CLOSING
            self._stop_timers()
            for d in list(self._background):
                d.cancel()
            d = defer.ensureDeferred(self._deallocate())
            d.addTimeout(self.timers.close_timeout, self.clock)
            d.addErrback(lambda f: _log.debug("deallocation: {e}", e=f.getErrorMessage()))
            d.addBoth(lambda _: self._finish())
        elif self.state is AllocationState.ALLOCATING:
            assert self._allocate_d is not None
            self._allocate_d.cancel()  # its cleanup calls _finish()
        elif self.state is AllocationState.NEW:
            self.state = AllocationState.CLOSING
            self._finish()
        return waiter

    def when_closed(self) -> Deferred[None]:
        """Fires once the allocation has ended and ``on_close`` is done (does not close it)."""
        waiter: Deferred[None] = Deferred()
        if self._close_done:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter

    # -- requests -----------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    def _send_to_server(self, data: bytes, destination: tuple[str, int]) -> None:
        self._send_function(data, (destination[0], destination[1]))

    async def _exchange(
        self,
        method: int,
        fill: Callable[[StunMessage], object],
        policy: RetransmissionPolicy | None = None,
    ) -> StunMessage:
        """One request, with the long-term credential dance around it."""
        unauthorized = 0
        stale = 0
        name = method_name(method)
        while True:
            request = StunMessage.request(method)
            fill(request)
            if self.software:
                request.add_string(Attr.SOFTWARE, self.software)
            key = self._credentials.add_to(request)
            # Sealed here, so the table sends it as it is and leaves the checks to us.
            sealed = decode(encode(request, integrity_key=key, fingerprint=True))
            tid = sealed.transaction_id
            if key is not None:
                self._table.keys[tid] = key
            self.stats.requests += 1
            try:
                answer: StunResponse = await self._table.request(
                    sealed, self.server, policy=policy or self.policy, fingerprint=False
                )
            except StunTimeout:
                raise TurnTimeoutError(
                    f"no answer from TURN server {self._where()} to {name}"
                ) from None
            except CancelledError:
                if self._transport_error is not None:
                    raise self._transport_error from None
                raise
            except StunErrorResponse as e:
                response = e.response
                reason = e.reason.rstrip("\x00")  # coturn counts its padding in the phrase
                try:
                    if e.code == 401:
                        self._credentials.unauthorized(response, key, bool(unauthorized))
                    elif e.code == 438:
                        self._credentials.stale_nonce(response, reason, stale)
                except TurnError as error:
                    raise error from None
                if e.code == 401:
                    unauthorized += 1
                    continue
                if e.code == 438:
                    stale += 1
                    self.stats.stale_nonce_retries += 1
                    _log.debug("TURN {m}: stale nonce, retrying", m=name)
                    continue
                if e.code == 441:
                    raise TurnAuthError(
                        441, f"{reason} (user {self.username!r})", response
                    ) from None
                raise self._refusal(e.code, name, reason, response) from None
            finally:
                self._table.keys.pop(tid, None)
            return answer.message

    def _refusal(
        self, code: int, name: str, reason: str, response: StunMessage | None
    ) -> TurnError:
        """The error for an error response: 440 and 443 say which families are involved."""
        if code == 440:
            asked = self._asked or ()
            labels = " and ".join(f.label for f in asked) or "the default family"
            return AddressFamilyNotSupported(
                f"TURN server {self._where()} cannot allocate a relayed address of "
                f"{labels} ({reason or 'Address Family not Supported'})",
                tuple(asked),
                response,
            )
        if code == 443:
            have = " and ".join(f.label for f in self.allocated.families) if self.allocated else "?"
            return PeerAddressFamilyMismatch(
                443,
                f"{name} refused: {reason or 'Peer Address Family Mismatch'} "
                f"(this allocation relays {have} only)",
                response,
            )
        return TurnError(code, f"{name} refused: {reason}", response)

    def _family_mismatch(self, host: str, what: str) -> PeerAddressFamilyMismatch | None:
        """The error for a peer with no relayed address of its family, or None."""
        if self.allocated is None or self.relayed_for(host) is not None:
            return None
        family = family_of(host)
        relayed = ", ".join(format_address(a) for a in self.allocated.relayed_addresses)
        refused = next((r for r in self.allocated.refused if r.family is family), None)
        why = f"; {refused}" if refused is not None else ""
        return PeerAddressFamilyMismatch(
            0,
            f"no TURN {what} for {family.label} peer {host}: the allocation on "
            f"{self._where()} has no {family.label} relayed address (only {relayed}){why}",
        )

    def _tracked_exchange(
        self, method: int, fill: Callable[[StunMessage], object]
    ) -> Deferred[StunMessage]:
        """:meth:`_exchange` in the background: closing the allocation cancels it; an
        answer that says the allocation is gone loses it (:func:`allocation_gone`)."""
        d: Deferred[StunMessage] = self._track(defer.ensureDeferred(self._exchange(method, fill)))

        def check(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, TurnError) and allocation_gone(error):
                self._lose(error)
            return failure

        d.addErrback(check)
        return d

    async def _allocate(self) -> Allocated:
        self._asked = self.families
        fallback: list[FamilyRefused] = []

        def fill(request: StunMessage) -> None:
            request.add_requested_transport(UDP_PROTOCOL)
            if self.requested_lifetime is not None:
                request.add_uint32(Attr.LIFETIME, self.requested_lifetime)
            asked = self._asked
            if asked is not None and len(asked) == 1:
                add_requested_family(request, asked[0])
            elif asked is not None:
                add_additional_family(request)

        try:
            while True:
                try:
                    response = await self._exchange(Method.ALLOCATE, fill)
                    break
                except TurnError as e:
                    asked = self._asked
                    if asked is not None and len(asked) == 2 and e.code in (400, 420):
                        # No dual allocation here: ask for the preferred family alone.
                        answer = e.response.get_error_code() if e.response else None
                        phrase = answer[1].rstrip("\x00") if answer else e.reason
                        fallback.append(FamilyRefused(asked[1], e.code, phrase))
                        _log.info(
                            "TURN server {s} refused a dual allocation ({why}): asking for "
                            "{f} alone",
                            s=self._where(),
                            why=e.reason,
                            f=asked[0].label,
                        )
                        self._asked = asked[:1]
                        continue
                    alternate = self._alternate(e)
                    if alternate is None:
                        raise
                    self.stats.redirects += 1
                    self._redirected = True
                    if self.stream:
                        raise TurnRedirect(alternate, e.response) from None
                    _log.info(
                        "TURN server {old} redirects to {new}",
                        old=self._where(),
                        new=f"{alternate.host}:{alternate.port}",
                    )
                    self.server = alternate
                    self._credentials.forget(self._where())
            try:
                relayed_addresses = get_relayed_addresses(response)
                address_errors = get_address_errors(response)
                mapped = response.get_address(Attr.XOR_MAPPED_ADDRESS)
                lifetime = response.get_uint32(Attr.LIFETIME)
            except StunDecodeError as e:
                raise TurnError(0, f"malformed Allocate response: {e}") from None
            refused = self._refused_families(relayed_addresses, address_errors, fallback)
            if not relayed_addresses:
                detail = "; ".join(str(r) for r in refused)
                raise TurnError(
                    0,
                    "Allocate response without XOR-RELAYED-ADDRESS"
                    + (f" ({detail})" if detail else ""),
                )
        except BaseException:
            self._finish()
            raise
        if self.families is not None:
            relayed_addresses = order_by_preference(relayed_addresses, self.families)
        lifetime = DEFAULT_LIFETIME if lifetime is None else lifetime
        self.allocated = Allocated(
            tuple(relayed_addresses), mapped, lifetime, self.server, tuple(refused)
        )
        self.state = AllocationState.ALLOCATED
        self._schedule_refresh(lifetime)
        _log.info(
            "TURN allocation on {server}: relayed {relayed}, lifetime {lifetime} s",
            server=self._where(),
            relayed=", ".join(format_address(a) for a in relayed_addresses),
            lifetime=lifetime,
        )
        for refusal in refused:
            _log.warn("TURN server {server}: {refusal}", server=self._where(), refusal=refusal)
        return self.allocated

    def _refused_families(
        self,
        relayed: list[Address],
        address_errors: list[FamilyRefused],
        fallback: list[FamilyRefused],
    ) -> list[FamilyRefused]:
        """The families asked for and not granted, each with the server's reason."""
        granted = {family_of(a.host) for a in relayed}
        known = {r.family: r for r in [*fallback, *address_errors]}
        refused: list[FamilyRefused] = []
        for family in self.families or ():
            if family in granted:
                continue
            ignored = FamilyRefused(family, 0, "the server ignored the request for it")
            refused.append(known.get(family) or ignored)
        refused += [r for r in address_errors if r.family not in granted and r not in refused]
        return refused

    def _alternate(self, error: TurnError) -> Address | None:
        if error.code != 300 or error.response is None:
            return None
        if self._redirected or not self.follow_redirect:
            return None
        try:
            return error.response.get_address(Attr.ALTERNATE_SERVER)
        except StunDecodeError:
            return None

    # -- allocation refresh -----------------------------------------------------

    def _schedule_refresh(self, lifetime: int) -> None:
        self._expires = self.clock.seconds() + lifetime
        self._cancel(self._refresh_timer)
        self._refresh_timer = self.clock.callLater(
            lifetime * self.timers.refresh_fraction, self._refresh_due
        )

    def _refresh_due(self) -> None:
        self._refresh_timer = None
        d = self._track(defer.ensureDeferred(self._refresh(None)), lose_on_failure=True)
        d.addErrback(lambda _: None)  # _lose() has logged it

    async def _refresh(self, lifetime: int | None) -> int:
        requested = self.requested_lifetime if lifetime is None else lifetime

        def fill(request: StunMessage) -> None:
            if requested is not None:
                request.add_uint32(Attr.LIFETIME, requested)

        while True:
            try:
                response = await self._exchange(Method.REFRESH, fill)
                break
            except TurnTimeoutError:
                # Retry while another full attempt still fits in the lifetime left.
                left = (self._expires or 0) - self.clock.seconds()
                if left <= self.policy.total:
                    raise
                _log.info("TURN refresh timed out, {left:.0f} s left: retrying", left=left)
        try:
            granted = response.get_uint32(Attr.LIFETIME)
        except StunDecodeError as e:
            raise TurnError(0, f"malformed Refresh response: {e}") from None
        granted = DEFAULT_LIFETIME if granted is None else granted
        self.stats.refreshes += 1
        if self.allocated is not None:
            self.allocated = dataclasses.replace(self.allocated, lifetime=granted)
        self._schedule_refresh(granted)
        return granted

    def _watch_due(self) -> None:
        self._watch_timer = None
        if self.state is not AllocationState.ALLOCATED or self._watch_interval is None:
            return
        self.stats.liveness_checks += 1
        d = self._track(defer.ensureDeferred(self._liveness()), lose_on_failure=True)
        d.addErrback(lambda _: None)  # _lose() has logged it

    async def _liveness(self) -> None:
        requested = self.requested_lifetime

        def fill(request: StunMessage) -> None:
            if requested is not None:
                request.add_uint32(Attr.LIFETIME, requested)

        response = await self._exchange(Method.REFRESH, fill, policy=self._watch_policy)
        try:
            granted = response.get_uint32(Attr.LIFETIME)
        except StunDecodeError as e:
            raise TurnError(0, f"malformed Refresh response: {e}") from None
        granted = DEFAULT_LIFETIME if granted is None else granted
        if self.allocated is not None:
            self.allocated = dataclasses.replace(self.allocated, lifetime=granted)
        self._schedule_refresh(granted)
        self.watch(self._watch_interval)  # the next check

    async def _deallocate(self) -> None:
        def fill(request: StunMessage) -> None:
            request.add_uint32(Attr.LIFETIME, 0)

        await self._exchange(Method.REFRESH, fill, policy=self._close_policy)

    # -- incoming data ----------------------------------------------------------

    def _channel_data_received(self, data: bytes) -> bool:
        try:
            number, payload = decode_channel_data(data)
        except StunDecodeError:
            self.stats.dropped += 1
            return True
        peer = self.peers.peer_of_channel(number)
        if peer is None:
            self.stats.dropped += 1
            return True
        self._deliver(payload, peer)
        return True

    def _data_indication_received(self, message: StunMessage) -> None:
        try:
            peer = message.get_address(Attr.XOR_PEER_ADDRESS)
        except StunDecodeError:
            peer = None
        payload = message.get(Attr.DATA)
        if peer is None or payload is None:
            self.stats.dropped += 1
            return
        self._deliver(payload, peer)

    def _deliver(self, payload: bytes, peer: Address) -> None:
        if self.state is not AllocationState.ALLOCATED or self._data_callback is None:
            self.stats.dropped += 1
            return
        if self.relayed_for(peer.host) is None:  # no relayed address of its family
            self.stats.dropped += 1
            return
        self.stats.data_received += 1
        try:
            self._data_callback(payload, peer)
        except Exception:
            _log.failure("TURN data callback failed")

    # -- the end ------------------------------------------------------------------

    def _track(self, d: Deferred[Any], lose_on_failure: bool = False) -> Deferred[Any]:
        """Keep a background Deferred so that closing cancels it; with
        ``lose_on_failure`` its failure loses the allocation."""
        self._background.add(d)

        def done(result: Any) -> Any:
            self._background.discard(d)
            if (
                lose_on_failure
                and isinstance(result, Failure)
                and not result.check(CancelledError)
                and self.state is AllocationState.ALLOCATED
            ):
                error = result.value
                if not isinstance(error, TurnError):
                    error = TurnError(0, str(error))
                self._lose(error)
            return result

        return d.addBoth(done)

    def _lose(self, error: TurnError) -> None:
        if self.state is not AllocationState.ALLOCATED:
            return
        _log.warn("TURN allocation on {server} lost: {err}", server=self._where(), err=error)
        self.state = AllocationState.CLOSING
        callback = self._lost_callback
        self._finish(error)
        if callback is not None:
            try:
                callback(error)
            except Exception:
                _log.failure("TURN on_lost callback failed")

    def _stop_timers(self) -> None:
        self._cancel(self._refresh_timer)
        self._refresh_timer = None
        self._cancel(self._watch_timer)
        self._watch_timer = None
        self.peers.stop_timers()

    def _finish(self, error: TurnError | None = None) -> None:
        """Stop everything, call ``on_close`` once, then wake whoever waits for the end
        (a waiting permission or channel gets ``error``, the reason of a loss)."""
        if self._closed:
            return
        self._closed = True
        self.state = AllocationState.CLOSED
        self._stop_timers()
        for d in list(self._background):
            d.cancel()
        self._table.cancel_all()
        self.peers.fail_all(error or TurnError(0, "TURN allocation closed"))
        released: Deferred[Any]
        if self._on_close is None:
            released = defer.succeed(None)
        else:
            released = defer.maybeDeferred(self._on_close)
            released.addErrback(lambda f: _log.failure("TURN on_close failed", f))

        def wake(_: object) -> None:
            self._close_done = True
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        released.addBoth(wake)

    @staticmethod
    def _cancel(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()
