# -*- test-case-name: tests.unit.test_turn_client,tests.integration.test_turn_coturn -*-
"""The peers of one TURN allocation: permissions (RFC 8656 9) and channels (12).

:class:`PeerTables` keeps which peer IPs have a permission and which peer addresses a
channel, installs and refreshes them (a permission every ``permission_refresh``, a
channel every ``channel_refresh`` seconds), holds the data waiting for a permission, and
answers what :class:`TurnAllocation <holepunch.turn.client.TurnAllocation>` asks when it
sends or receives. It sends nothing itself: requests go through the allocation's
``exchange`` (which adds the long-term credentials and is cancelled when the allocation
closes), queued data through its ``resend``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.stun.message import StunMessage
from holepunch.stun.wire import CHANNEL_NUMBER_MAX, CHANNEL_NUMBER_MIN, Address, Attr, Method
from holepunch.turn.families import AddressFamily, family_of
from holepunch.turn.model import ChannelBinding, Permission, TurnError, TurnStats, TurnTimers

_log = Logger()

Exchange = Callable[[int, Callable[[StunMessage], object]], "Deferred[StunMessage]"]
"""``exchange(method, fill)``: one authenticated request to the server; fires with the
success response."""

MAX_QUEUED = 64
"""How many datagrams are held per peer IP while the permission for it is installed."""


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()


class PeerTables:
    """Permissions and channels of one allocation."""

    def __init__(
        self,
        clock: IReactorTime,
        timers: TurnTimers,
        stats: TurnStats,
        exchange: Exchange,
        resend: Callable[[bytes, Address], None],
    ) -> None:
        self.clock = clock
        self.timers = timers
        self.stats = stats
        self.exchange = exchange
        self.resend = resend
        self._permissions: dict[str, Permission] = {}
        self._channels: dict[Address, ChannelBinding] = {}
        self._channel_numbers: dict[int, ChannelBinding] = {}
        self._next_channel = CHANNEL_NUMBER_MIN

    # -- what the allocation asks --

    @property
    def permissions(self) -> frozenset[str]:
        """The peer IP addresses with an installed permission."""
        return frozenset(ip for ip, p in self._permissions.items() if p.installed)

    @property
    def channels(self) -> dict[Address, int]:
        """The bound channels: peer address to channel number."""
        return {peer: c.number for peer, c in self._channels.items() if c.bound}

    def bound_channel(self, peer: Address) -> int | None:
        """The number of the channel bound to ``peer``, or None."""
        channel = self._channels.get(peer)
        return channel.number if channel is not None and channel.bound else None

    def peer_of_channel(self, number: int) -> Address | None:
        """The peer of channel ``number`` (known from the moment its ChannelBind is sent:
        data may overtake the answer), or None."""
        channel = self._channel_numbers.get(number)
        return channel.peer if channel is not None else None

    def hold_until_permitted(self, data: bytes, peer: Address) -> bool:
        """Without an installed permission for ``peer``'s IP: ask for one, keep ``data``
        until it is in place (dropping the oldest beyond :data:`MAX_QUEUED`) and return
        True. With one: False (send now)."""
        permission = self._permissions.get(peer.host)
        if permission is not None and permission.installed:
            return False
        if permission is None:
            permission = self._permissions[peer.host] = Permission(peer.host)
        if permission.pending is None:
            self._send_permission(permission)
        if len(permission.queue) >= MAX_QUEUED:
            permission.queue.pop(0)
            self.stats.dropped += 1
        permission.queue.append((bytes(data), peer))
        return True

    def create_permission(self, ip: str) -> Deferred[None]:
        """Install (and keep refreshing) a permission for ``ip``; fires at once when it
        is already installed."""
        permission = self._permissions.get(ip)
        if permission is None:
            permission = self._permissions[ip] = Permission(ip)
        if permission.installed and permission.pending is None:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        permission.waiters.append(waiter)
        if permission.pending is None:
            self._send_permission(permission)
        return waiter

    def bind_channel(self, peer: Address) -> Deferred[int]:
        """Bind (and keep refreshing) a channel to ``peer``; fires with its number."""
        channel = self._channels.get(peer)
        if channel is None:
            if self._next_channel > CHANNEL_NUMBER_MAX:
                return defer.fail(TurnError(0, "no channel numbers left"))
            channel = ChannelBinding(self._next_channel, peer)
            self._next_channel += 1
            self._channels[peer] = channel
            self._channel_numbers[channel.number] = channel
        if channel.bound and channel.pending is None:
            return defer.succeed(channel.number)
        waiter: Deferred[int] = Deferred()
        channel.waiters.append(waiter)
        if channel.pending is None:
            self._send_channel_bind(channel)
        return waiter

    def stop_timers(self) -> None:
        """No more refreshes (the allocation is closing)."""
        for permission in self._permissions.values():
            _cancel(permission.timer)
            permission.timer = None
        for channel in self._channel_numbers.values():
            _cancel(channel.timer)
            channel.timer = None

    def fail_all(self, error: TurnError) -> None:
        """The allocation ended: whoever waits gets ``error``, queued data is dropped."""
        self.stop_timers()
        for permission in self._permissions.values():
            for waiter in permission.waiters:
                waiter.errback(error)
            permission.waiters = []
            permission.queue = []
        for channel in self._channel_numbers.values():
            for cwaiter in channel.waiters:
                cwaiter.errback(error)
            channel.waiters = []

    def forget_family(self, family: AddressFamily, error: TurnError) -> None:
        """The relayed address of ``family`` was given back: its peers' permissions and
        channels stop (requests under way cancelled, timers too, waiters failed with
        ``error``, queued data dropped). Channel numbers are not reused: the server keeps
        them reserved a while."""
        for ip, permission in list(self._permissions.items()):
            if family_of(ip) is family:
                waiters, permission.waiters = permission.waiters, []
                if permission.pending is not None:
                    permission.pending.cancel()
                self._drop_permission(permission)
                for waiter in waiters:
                    waiter.errback(error)
        for number, channel in list(self._channel_numbers.items()):
            if family_of(channel.peer.host) is family:
                channel_waiters, channel.waiters = channel.waiters, []
                if channel.pending is not None:
                    channel.pending.cancel()
                self._drop_channel(channel)
                del self._channel_numbers[number]
                for cwaiter in channel_waiters:
                    cwaiter.errback(error)

    # -- permissions --

    def _send_permission(self, permission: Permission) -> None:
        refreshing = permission.installed

        def fill(request: StunMessage) -> None:
            request.add_address(Attr.XOR_PEER_ADDRESS, (permission.ip, 0))

        d = self.exchange(Method.CREATE_PERMISSION, fill)
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
        self, permission: Permission, refreshing: bool, counted: bool = True
    ) -> None:
        if not counted:
            pass
        elif refreshing:
            self.stats.permission_refreshes += 1
        else:
            self.stats.permissions_installed += 1
        permission.installed = True
        _cancel(permission.timer)
        permission.timer = self.clock.callLater(
            self.timers.permission_refresh, self._permission_due, permission
        )
        queue, permission.queue = permission.queue, []
        for data, peer in queue:
            try:
                self.resend(data, peer)
            except OSError as e:
                self.stats.dropped += 1
                _log.debug("queued TURN data to {peer} dropped: {err}", peer=peer, err=e)

    def _permission_due(self, permission: Permission) -> None:
        permission.timer = None
        if self._permissions.get(permission.ip) is permission and permission.pending is None:
            self._send_permission(permission)

    def _drop_permission(self, permission: Permission) -> None:
        _cancel(permission.timer)
        permission.timer = None
        permission.installed = False
        self.stats.dropped += len(permission.queue)
        permission.queue = []
        if self._permissions.get(permission.ip) is permission:
            del self._permissions[permission.ip]

    # -- channels --

    def _send_channel_bind(self, channel: ChannelBinding) -> None:
        refreshing = channel.bound

        def fill(request: StunMessage) -> None:
            request.add_channel_number(channel.number)
            request.add_address(Attr.XOR_PEER_ADDRESS, channel.peer)

        d = self.exchange(Method.CHANNEL_BIND, fill)
        channel.pending = d

        def bound(_: StunMessage) -> None:
            channel.pending = None
            if refreshing:
                self.stats.channel_refreshes += 1
            else:
                self.stats.channels_bound += 1
            channel.bound = True
            _cancel(channel.timer)
            channel.timer = self.clock.callLater(
                self.timers.channel_refresh, self._channel_due, channel
            )
            # ChannelBind installs (or refreshes) the permission for the peer's IP too.
            permission = self._permissions.get(channel.peer.host)
            if permission is None:
                permission = self._permissions[channel.peer.host] = Permission(channel.peer.host)
            if permission.pending is None:
                self._permission_installed(permission, permission.installed, counted=False)
            waiters, channel.waiters = channel.waiters, []
            for waiter in waiters:
                waiter.callback(channel.number)

        def failed(f: Failure) -> None:
            channel.pending = None
            if not f.check(CancelledError):
                _log.warn("TURN channel to {peer} failed: {err}", peer=channel.peer, err=f.value)
            self._drop_channel(channel)
            waiters, channel.waiters = channel.waiters, []
            for waiter in waiters:
                waiter.errback(f)

        d.addCallbacks(bound, failed)

    def _drop_channel(self, channel: ChannelBinding) -> None:
        """The channel stops: no refresh, not bound, no longer the peer's. Its number is
        not reused: a server keeps it reserved for a while."""
        _cancel(channel.timer)
        channel.timer = None
        channel.bound = False
        if self._channels.get(channel.peer) is channel:
            del self._channels[channel.peer]

    def _channel_due(self, channel: ChannelBinding) -> None:
        channel.timer = None
        if self._channels.get(channel.peer) is channel and channel.pending is None:
            self._send_channel_bind(channel)
