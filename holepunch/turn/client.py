# -*- test-case-name: tests.test_turn_client -*-
"""The TURN client (RFC 8656): one allocation, over a send function and a clock.

:class:`TurnAllocation` is the client side of one allocation on one TURN server. It has
no socket of its own: it writes with a ``send(data, (host, port))`` function and is fed
what the server sends with :meth:`TurnAllocation.datagram_received`, so the ICE agent can
run it on the UDP socket it already owns (its checks and the TURN traffic then share the
socket, and the relayed candidate's base is that socket). :mod:`holepunch.turn.connect`
gives it a socket or a TCP/TLS connection of its own.

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

Not implemented: TCP relays (RFC 6062), DTLS, the RFC 8489 password algorithms and
USERHASH (coturn 4.6 offers neither), IPv6 relayed addresses (REQUESTED-ADDRESS-FAMILY).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.stun.client import (
    DEFAULT_POLICY,
    RetransmissionPolicy,
    StunErrorResponse,
    StunResponse,
    StunTimeout,
    TransactionTable,
)
from holepunch.stun.credentials import long_term_key
from holepunch.stun.message import (
    CHANNEL_NUMBER_MAX,
    CHANNEL_NUMBER_MIN,
    Address,
    Attr,
    MessageClass,
    Method,
    StunDecodeError,
    StunError,
    StunMessage,
    decode,
    decode_channel_data,
    encode,
    encode_channel_data,
    is_stun,
)

_log = Logger()

SendFunction = Callable[[bytes, tuple[str, int]], Any]
"""``send(data, (host, port))``: writes one datagram (or stream frame) to the server."""

DataCallback = Callable[[bytes, Address], Any]
"""``callback(data, peer)``: application data relayed from ``peer``."""

SOFTWARE = "holepunch"
DEFAULT_LIFETIME = 600
"""RFC 8656 7.2: the lifetime a server gives when the response has none."""
UDP_PROTOCOL = 17
MAX_STALE_NONCE_RETRIES = 3
"""How many 438 answers in a row one request accepts before failing."""
MAX_QUEUED = 64
"""How many datagrams :meth:`TurnAllocation.send` holds per peer IP while the permission
for it is being installed."""


class TurnError(StunError):
    """A TURN request failed.

    ``code`` is the server's error code, or 0 for a local failure (timeout, connection
    lost, a malformed answer); ``response`` the error response, when there is one.
    """

    def __init__(self, code: int, reason: str, response: StunMessage | None = None) -> None:
        super().__init__(f"TURN error {code}: {reason}" if code else reason)
        self.code = code
        self.reason = reason
        self.response = response


class TurnAuthError(TurnError):
    """The server refused our credentials (a second 401, or 441 Wrong Credentials)."""


class TurnTimeoutError(TurnError):
    """The server did not answer in time."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, reason)


class TurnRedirect(TurnError):
    """300 Try Alternate over a stream: the caller must connect to ``alternate`` instead."""

    def __init__(self, alternate: Address, response: StunMessage | None = None) -> None:
        super().__init__(300, f"try alternate server {alternate.host}:{alternate.port}", response)
        self.alternate = alternate


class NoTurnServerAvailable(TurnError):
    """No server granted an allocation; ``failures`` maps each server to its reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        detail = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(0, f"no TURN server granted an allocation ({detail or 'none given'})")
        self.failures = failures


class AllocationState(enum.Enum):
    """Where a :class:`TurnAllocation` is in its life."""

    NEW = "new"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class TurnTimers:
    """When an allocation refreshes what it holds, and how long it waits to deallocate.

    The defaults follow RFC 8656: the allocation at 5/6 of the lifetime the server
    granted, permissions every 240 s (they live 300 s), channel bindings every 540 s (they
    live 600 s). Tests against a server with shorter lifetimes shorten them.
    """

    refresh_fraction: float = 5 / 6
    permission_refresh: float = 240.0
    channel_refresh: float = 540.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        if min(self.permission_refresh, self.channel_refresh, self.close_timeout) <= 0:
            raise ValueError("refresh intervals and the close timeout must be positive")


DEFAULT_TIMERS = TurnTimers()


@dataclasses.dataclass(frozen=True)
class Allocated:
    """A granted allocation: the relayed address peers send to, our address as the
    server sees it (XOR-MAPPED-ADDRESS), the lifetime in seconds, and the server."""

    relayed: Address
    mapped: Address | None
    lifetime: int
    server: Address


@dataclasses.dataclass
class TurnStats:
    """What an allocation did; for logs, metrics and tests."""

    requests: int = 0
    stale_nonce_retries: int = 0
    redirects: int = 0
    refreshes: int = 0
    permissions_installed: int = 0
    permission_refreshes: int = 0
    channels_bound: int = 0
    channel_refreshes: int = 0
    indications_sent: int = 0
    channel_data_sent: int = 0
    data_received: int = 0
    dropped: int = 0


@dataclasses.dataclass(eq=False)
class _Permission:
    ip: str
    installed: bool = False
    pending: Deferred[StunMessage] | None = None
    timer: IDelayedCall | None = None
    waiters: list[Deferred[None]] = dataclasses.field(default_factory=list)
    queue: list[tuple[bytes, Address]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _Channel:
    number: int
    peer: Address
    bound: bool = False
    pending: Deferred[StunMessage] | None = None
    timer: IDelayedCall | None = None
    waiters: list[Deferred[int]] = dataclasses.field(default_factory=list)


class _Transactions(TransactionTable):
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


def _peer_address(peer: tuple[str, int]) -> Address:
    host, port = peer
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a TURN peer must be an IP address, not {host!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"peer port out of range: {port}")
    return Address(str(ip), int(port))


def _method_name(method: int) -> str:
    try:
        return Method(method).name
    except ValueError:
        return f"method 0x{method:03x}"


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
    ) -> None:
        self.server = Address(server[0], server[1])
        self.username = username
        self._password = password
        self.stream = stream
        self.clock = clock
        self.timers = timers
        self.software = software
        self.requested_lifetime = lifetime
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
        self._table = _Transactions(self._send_to_server, clock)
        self.state = AllocationState.NEW
        self.allocated: Allocated | None = None
        self.stats = TurnStats()
        self.realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._redirected = False
        self._expires: float | None = None
        self._refresh_timer: IDelayedCall | None = None
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[Address, _Channel] = {}
        self._channel_numbers: dict[int, _Channel] = {}
        self._next_channel = CHANNEL_NUMBER_MIN
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
    def mapped_address(self) -> Address | None:
        """Our address as the server saw it (XOR-MAPPED-ADDRESS), once allocated."""
        return self.allocated.mapped if self.allocated else None

    @property
    def permissions(self) -> frozenset[str]:
        """The peer IP addresses with an installed permission."""
        return frozenset(ip for ip, p in self._permissions.items() if p.installed)

    @property
    def channels(self) -> dict[Address, int]:
        """The bound channels: peer address to channel number."""
        return {peer: c.number for peer, c in self._channels.items() if c.bound}

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

    def create_permission(self, peer_ip: str) -> Deferred[None]:
        """Install a permission for ``peer_ip`` (refreshed every ``permission_refresh`` s).

        Fires at once when it is already installed.
        """
        if self.state is not AllocationState.ALLOCATED:
            return defer.fail(
                TurnError(0, f"create_permission() on a {self.state.value} allocation")
            )
        ip = _peer_address((peer_ip, 0)).host
        permission = self._permissions.get(ip)
        if permission is None:
            permission = self._permissions[ip] = _Permission(ip)
        if permission.installed and permission.pending is None:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        permission.waiters.append(waiter)
        if permission.pending is None:
            self._send_permission(permission)
        return waiter

    def bind_channel(self, peer: tuple[str, int]) -> Deferred[int]:
        """Bind a channel to ``peer`` (refreshed every ``channel_refresh`` s); fires with
        its number. Also installs the permission for the peer's IP. From then on
        :meth:`send` to ``peer`` uses ChannelData."""
        if self.state is not AllocationState.ALLOCATED:
            return defer.fail(TurnError(0, f"bind_channel() on a {self.state.value} allocation"))
        address = _peer_address(peer)
        channel = self._channels.get(address)
        if channel is None:
            if self._next_channel > CHANNEL_NUMBER_MAX:
                return defer.fail(TurnError(0, "no channel numbers left"))
            channel = _Channel(self._next_channel, address)
            self._next_channel += 1
            self._channels[address] = channel
            self._channel_numbers[channel.number] = channel
        if channel.bound and channel.pending is None:
            return defer.succeed(channel.number)
        waiter: Deferred[int] = Deferred()
        channel.waiters.append(waiter)
        if channel.pending is None:
            self._send_channel_bind(channel)
        return waiter

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        """Relay ``data`` to ``peer``: ChannelData if a channel is bound, else a Send
        indication.

        Without a permission for the peer's IP one is requested first and the data (up
        to :data:`MAX_QUEUED` datagrams) waits for it; it is dropped if that fails.

        :raise OSError: the allocation is not (or no longer) active, or ``send`` failed.
        """
        if self.state is not AllocationState.ALLOCATED:
            raise OSError(f"TURN allocation is {self.state.value}")
        address = _peer_address(peer)
        channel = self._channels.get(address)
        if channel is not None and channel.bound:
            frame = encode_channel_data(channel.number, data, pad=self.stream)
            self._send_to_server(frame, self.server)
            self.stats.channel_data_sent += 1
            return
        permission = self._permissions.get(address.host)
        if permission is None or not permission.installed:
            if permission is None:
                permission = self._permissions[address.host] = _Permission(address.host)
            if permission.pending is None:
                self._send_permission(permission)
            if len(permission.queue) >= MAX_QUEUED:
                permission.queue.pop(0)
                self.stats.dropped += 1
            permission.queue.append((bytes(data), address))
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

    def _set_realm_nonce(self, realm: str, nonce: str) -> None:
        if self._key is None or realm != self.realm:
            try:
                self._key = long_term_key(self.username, realm, self._password)
            except ValueError as e:
                raise TurnAuthError(0, f"unusable TURN password: {e}") from None
        self.realm = realm
        self._nonce = nonce

    async def _exchange(
        self,
        method: int,
        fill: Callable[[StunMessage], object],
        policy: RetransmissionPolicy | None = None,
    ) -> StunMessage:
        """One request, with the long-term credential dance around it."""
        unauthorized = 0
        stale = 0
        name = _method_name(method)
        while True:
            request = StunMessage.request(method)
            fill(request)
            if self.software:
                request.add_string(Attr.SOFTWARE, self.software)
            key = self._key
            if key is not None:
                assert self.realm is not None and self._nonce is not None
                request.add_string(Attr.USERNAME, self.username)
                request.add_string(Attr.REALM, self.realm)
                request.add_string(Attr.NONCE, self._nonce)
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
                if e.code == 401:
                    realm = response.get_string(Attr.REALM)
                    nonce = response.get_string(Attr.NONCE)
                    if realm is None or nonce is None:
                        raise TurnError(401, "401 without REALM or NONCE", response) from None
                    if not self.username:
                        raise TurnAuthError(
                            401,
                            f"TURN server {self._where()} needs credentials (realm "
                            f"{realm!r}) and none were given",
                            response,
                        ) from None
                    if key is not None and (unauthorized or nonce == self._nonce):
                        raise TurnAuthError(
                            401,
                            f"TURN server {self._where()} refused the credentials of user "
                            f"{self.username!r} (realm {realm!r}): wrong username or password",
                            response,
                        ) from None
                    unauthorized += 1
                    self._set_realm_nonce(realm, nonce)
                    continue
                if e.code == 438:
                    nonce = response.get_string(Attr.NONCE)
                    realm = response.get_string(Attr.REALM) or self.realm
                    if nonce is None or realm is None or stale >= MAX_STALE_NONCE_RETRIES:
                        raise TurnError(438, reason or "Stale Nonce", response) from None
                    stale += 1
                    self.stats.stale_nonce_retries += 1
                    _log.debug("TURN {m}: stale nonce, retrying", m=name)
                    self._set_realm_nonce(realm, nonce)
                    continue
                if e.code == 441:
                    raise TurnAuthError(
                        441, f"{reason} (user {self.username!r})", response
                    ) from None
                raise TurnError(e.code, f"{name} refused: {reason}", response) from None
            finally:
                self._table.keys.pop(tid, None)
            return answer.message

    async def _allocate(self) -> Allocated:
        def fill(request: StunMessage) -> None:
            request.add_requested_transport(UDP_PROTOCOL)
            if self.requested_lifetime is not None:
                request.add_uint32(Attr.LIFETIME, self.requested_lifetime)

        try:
            while True:
                try:
                    response = await self._exchange(Method.ALLOCATE, fill)
                    break
                except TurnError as e:
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
                    self.realm = self._nonce = None
                    self._key = None
            try:
                relayed = response.get_address(Attr.XOR_RELAYED_ADDRESS)
                mapped = response.get_address(Attr.XOR_MAPPED_ADDRESS)
                lifetime = response.get_uint32(Attr.LIFETIME)
            except StunDecodeError as e:
                raise TurnError(0, f"malformed Allocate response: {e}") from None
            if relayed is None:
                raise TurnError(0, "Allocate response without XOR-RELAYED-ADDRESS")
        except BaseException:
            self._finish()
            raise
        lifetime = DEFAULT_LIFETIME if lifetime is None else lifetime
        self.allocated = Allocated(relayed, mapped, lifetime, self.server)
        self.state = AllocationState.ALLOCATED
        self._schedule_refresh(lifetime)
        _log.info(
            "TURN allocation on {server}: relayed {relayed}, lifetime {lifetime} s",
            server=self._where(),
            relayed=f"{relayed.host}:{relayed.port}",
            lifetime=lifetime,
        )
        return self.allocated

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

    async def _deallocate(self) -> None:
        def fill(request: StunMessage) -> None:
            request.add_uint32(Attr.LIFETIME, 0)

        await self._exchange(Method.REFRESH, fill, policy=self._close_policy)

    # -- permissions ------------------------------------------------------------

    def _send_permission(self, permission: _Permission) -> None:
        refreshing = permission.installed

        def fill(request: StunMessage) -> None:
            request.add_address(Attr.XOR_PEER_ADDRESS, (permission.ip, 0))

        d: Deferred[StunMessage] = self._track(
            defer.ensureDeferred(self._exchange(Method.CREATE_PERMISSION, fill))
        )
        permission.pending = d

        def installed(_: StunMessage) -> None:
            permission.pending = None
            self._permission_installed(permission, refreshing)
            waiters, permission.waiters = permission.waiters, []
            for waiter in waiters:
                waiter.callback(None)

        def failed(f: Failure) -> None:
            permission.pending = None
            if not f.check(CancelledError):
                _log.warn("TURN permission for {ip} failed: {err}", ip=permission.ip, err=f.value)
            self._drop_permission(permission)
            waiters, permission.waiters = permission.waiters, []
            for waiter in waiters:
                waiter.errback(f)

        d.addCallbacks(installed, failed)

    def _permission_installed(
        self, permission: _Permission, refreshing: bool, counted: bool = True
    ) -> None:
        if not counted:
            pass
        elif refreshing:
            self.stats.permission_refreshes += 1
        else:
            self.stats.permissions_installed += 1
        permission.installed = True
        self._cancel(permission.timer)
        permission.timer = self.clock.callLater(
            self.timers.permission_refresh, self._permission_due, permission
        )
        queue, permission.queue = permission.queue, []
        for data, peer in queue:
            try:
                self.send(data, peer)
            except OSError as e:
                self.stats.dropped += 1
                _log.debug("queued TURN data to {peer} dropped: {err}", peer=peer, err=e)

    def _permission_due(self, permission: _Permission) -> None:
        permission.timer = None
        if self._permissions.get(permission.ip) is permission and permission.pending is None:
            self._send_permission(permission)

    def _drop_permission(self, permission: _Permission) -> None:
        self._cancel(permission.timer)
        permission.timer = None
        permission.installed = False
        self.stats.dropped += len(permission.queue)
        permission.queue = []
        if self._permissions.get(permission.ip) is permission:
            del self._permissions[permission.ip]

    # -- channels ---------------------------------------------------------------

    def _send_channel_bind(self, channel: _Channel) -> None:
        refreshing = channel.bound

        def fill(request: StunMessage) -> None:
            request.add_channel_number(channel.number)
            request.add_address(Attr.XOR_PEER_ADDRESS, channel.peer)

        d: Deferred[StunMessage] = self._track(
            defer.ensureDeferred(self._exchange(Method.CHANNEL_BIND, fill))
        )
        channel.pending = d

        def bound(_: StunMessage) -> None:
            channel.pending = None
            if refreshing:
                self.stats.channel_refreshes += 1
            else:
                self.stats.channels_bound += 1
            channel.bound = True
            self._cancel(channel.timer)
            channel.timer = self.clock.callLater(
                self.timers.channel_refresh, self._channel_due, channel
            )
            # ChannelBind installs (or refreshes) the permission for the peer's IP too.
            permission = self._permissions.get(channel.peer.host)
            if permission is None:
                permission = self._permissions[channel.peer.host] = _Permission(channel.peer.host)
            if permission.pending is None:
                self._permission_installed(permission, permission.installed, counted=False)
            waiters, channel.waiters = channel.waiters, []
            for waiter in waiters:
                waiter.callback(channel.number)

        def failed(f: Failure) -> None:
            channel.pending = None
            if not f.check(CancelledError):
                _log.warn("TURN channel to {peer} failed: {err}", peer=channel.peer, err=f.value)
            self._cancel(channel.timer)
            channel.timer = None
            channel.bound = False
            # The number is not reused: a server keeps it reserved for a while.
            self._channels.pop(channel.peer, None)
            waiters, channel.waiters = channel.waiters, []
            for waiter in waiters:
                waiter.errback(f)

        d.addCallbacks(bound, failed)

    def _channel_due(self, channel: _Channel) -> None:
        channel.timer = None
        if self._channels.get(channel.peer) is channel and channel.pending is None:
            self._send_channel_bind(channel)

    # -- incoming data ----------------------------------------------------------

    def _channel_data_received(self, data: bytes) -> bool:
        try:
            number, payload = decode_channel_data(data)
        except StunDecodeError:
            self.stats.dropped += 1
            return True
        # Known from the moment the ChannelBind is sent: data may overtake its answer.
        channel = self._channel_numbers.get(number)
        if channel is None:
            self.stats.dropped += 1
            return True
        self._deliver(payload, channel.peer)
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
        self._finish()
        if callback is not None:
            try:
                callback(error)
            except Exception:
                _log.failure("TURN on_lost callback failed")

    def _stop_timers(self) -> None:
        self._cancel(self._refresh_timer)
        self._refresh_timer = None
        for permission in self._permissions.values():
            self._cancel(permission.timer)
            permission.timer = None
        for channel in self._channel_numbers.values():
            self._cancel(channel.timer)
            channel.timer = None

    def _finish(self) -> None:
        """Stop everything, call ``on_close`` once, then wake whoever waits for the end."""
        if self._closed:
            return
        self._closed = True
        self.state = AllocationState.CLOSED
        self._stop_timers()
        for d in list(self._background):
            d.cancel()
        self._table.cancel_all()
        for permission in self._permissions.values():
            for waiter in permission.waiters:
                waiter.errback(TurnError(0, "TURN allocation closed"))
            permission.waiters = []
            permission.queue = []
        for channel in self._channel_numbers.values():
            for cwaiter in channel.waiters:
                cwaiter.errback(TurnError(0, "TURN allocation closed"))
            channel.waiters = []
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
