# -*- test-case-name: tests.lab.test_portmap_lab -*-
"""UPnP IGD port mapping: SSDP from the reactor, then ``miniupnpc`` off the reactor thread.

``miniupnpc`` (the reference UPnP client, from the miniupnp project) reads the device
description and makes the SOAP calls (``AddPortMapping``, ``GetExternalIPAddress``,
``DeletePortMapping``), but blocks: every call runs in the reactor's thread pool, and one
lock serialises them because a ``miniupnpc.UPnP`` object is not thread-safe.

Discovery is ours (:mod:`holepunch.nat.portmap.ssdp`): ``miniupnpc``'s ``discover()``
waits at least a second whatever its ``discoverdelay`` (its ``MX`` is in whole seconds),
and picks its interface from ``UPnP(multicastif=...)`` (read-only after construction). We
multicast the M-SEARCH from this host's address toward the gateway (so it leaves by the
right interface inside a network namespace too), accept the first answer that comes from
the gateway itself, within the caller's timeout, and pass its ``LOCATION`` to
``selectigd(url)``. ``root_url`` skips SSDP for a known description URL.

A thread cannot be interrupted: when the caller's Deferred times out or is cancelled while
``AddPortMapping`` is in flight, the mapping it makes is deleted as soon as the call
returns, so nothing is left behind on the gateway.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.nat.portmap import ssdp
from holepunch.nat.portmap._core import NoResponse, RetransmittingRequest
from holepunch.nat.portmap.gateway_udp import send_multicast_request

T = TypeVar("T")
_log = Logger()

DESCRIPTION = "holepunch"
"""The ``NewPortMappingDescription`` our mappings carry."""
_CONFLICT_RETRIES = 8


class UpnpError(Exception):
    """A UPnP IGD step failed; the message says which step and what miniupnpc reported."""


def miniupnpc_unavailable_reason() -> str | None:
    """Why UPnP cannot be used here (the module is missing), or None."""
    try:
        import miniupnpc  # noqa: F401
    except ImportError as e:
        return f"miniupnpc is not installed ({e})"
    return None


@dataclasses.dataclass(frozen=True)
class UpnpMapping:
    """What ``AddPortMapping`` granted."""

    internal_address: str
    internal_port: int
    external_address: str
    external_port: int
    lifetime: int


class UpnpClient:
    """A UPnP IGD client for ``gateway``: SSDP once, then SOAP calls in worker threads."""

    def __init__(
        self,
        reactor: Any,
        *,
        gateway: str,
        local_address: str,
        root_url: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._gateway = gateway
        self._local_address = local_address
        self._root_url = root_url
        self._location: str | None = root_url
        self._lock = threading.Lock()
        self._devices: dict[str, Any] = {}
        self._inflight: set[Deferred[Any]] = set()

    # -- discovery (reactor thread) --

    async def _find(self, timeout: float) -> str:
        """The IGD description URL: known, or from the gateway's SSDP answer."""
        if self._location is not None:
            return self._location

        def make(now: float) -> RetransmittingRequest[ssdp.SearchResponse]:
            return RetransmittingRequest(
                ssdp.encode_msearch(),
                ssdp.decode_search_response,
                ssdp.retransmission_schedule(),
                now,
                now + timeout,
            )

        try:
            answer: ssdp.SearchResponse = await send_multicast_request(
                self._reactor,
                (ssdp.MULTICAST_ADDRESS, ssdp.PORT),
                self._local_address,
                self._gateway,
                make,
                "SSDP M-SEARCH",
            )
        except NoResponse as e:
            raise UpnpError(
                f"no IGD answered SSDP M-SEARCH from {self._gateway} within {timeout:.2f} s ({e})"
            ) from e
        _log.debug("SSDP: IGD at {location} ({server})", location=answer.location,
                   server=answer.server)  # fmt: skip
        self._location = answer.location
        return answer.location

    # -- blocking parts (worker thread) --

    def _run(self, location: str, work: Callable[[Any], T]) -> T:
        with self._lock:
            device = self._devices.get(location)
            if device is None:
                import miniupnpc

                device = miniupnpc.UPnP()
                try:
                    device.selectigd(location)
                except Exception as e:
                    raise UpnpError(f"no usable IGD at {location}: {e}") from e
                self._devices[location] = device
            return work(device)

    # -- plumbing (reactor thread) --

    def _forget(self, location: str) -> None:
        """After a failure, discover again next time (the gateway may have restarted)."""
        self._devices.pop(location, None)
        if self._location == location and location != self._root_url:
            self._location = None

    def _call(
        self,
        timeout: float,
        work: Callable[[Any], T],
        what: str,
        undo: Callable[[T], object] | None = None,
    ) -> Deferred[T]:
        """Find the IGD, then run ``work(device)`` in a thread; all within ``timeout``.

        If the caller has gone (timeout, cancel) when the thread returns, ``undo`` is
        called with the late result: a mapping nobody will use is deleted again.
        """
        deadline = self._reactor.seconds() + timeout

        async def call() -> T:
            location = await self._find(timeout)
            remaining = max(0.0, deadline - self._reactor.seconds())
            outer: Deferred[T] = Deferred()
            inner: Deferred[T] = deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), self._run, location, work
            )

            def succeeded(result: T) -> object:
                if not outer.called:
                    outer.callback(result)
                elif undo is not None:
                    _log.info("UPnP {what} returned after its caller gave up; undoing it",
                              what=what)  # fmt: skip
                    return undo(result)  # drain() waits for this too
                return None

            def failed(failure: Failure) -> None:
                self._forget(location)
                if not outer.called:
                    outer.errback(failure)

            inner.addCallbacks(succeeded, failed)
            self._inflight.add(inner)
            inner.addBoth(lambda _: self._inflight.discard(inner))
            outer.addTimeout(remaining, self._reactor)
            try:
                return await outer
            except DeferredTimeout as e:
                raise UpnpError(f"{what}: no answer from the IGD at {location} in time") from e

        return ensureDeferred(call())

    # -- the API (reactor thread) --

    def drain(self, timeout: float) -> Deferred[None]:
        """Fires once no UPnP call is left running in a thread (or after ``timeout``).

        A call whose caller gave up may still be running, and a mapping it makes is then
        deleted: wait for that before the process exits.
        """
        if not self._inflight:
            return succeed(None)
        waiting: Deferred[Any] = DeferredList(list(self._inflight), consumeErrors=True)
        waiting.addTimeout(timeout, self._reactor)
        waiting.addErrback(lambda f: _log.warn("UPnP calls still running: {f}", f=f.value))
        return waiting.addCallback(lambda _: None)

    def external_address(self, timeout: float) -> Deferred[str]:
        """``GetExternalIPAddress``."""

        def work(device: Any) -> str:
            try:
                address = device.externalipaddress()
            except Exception as e:
                raise UpnpError(f"GetExternalIPAddress failed: {e}") from e
            if not address:
                raise UpnpError("GetExternalIPAddress returned no address")
            return str(address)

        return self._call(timeout, work, "GetExternalIPAddress")

    def add_udp_mapping(
        self, internal_port: int, lifetime: int, timeout: float, external_port: int | None = None
    ) -> Deferred[UpnpMapping]:
        """``AddPortMapping`` UDP ``external_port`` (default: the internal port) to this host.

        On ``ConflictInMappingEntry`` (someone else holds that external port) it tries
        ``AddAnyPortMapping`` (IGD v2), then a few other ports.
        """
        wanted = external_port or internal_port

        def work(device: Any) -> UpnpMapping:
            host = str(device.lanaddr)
            try:
                address = str(device.externalipaddress())
            except Exception as e:
                raise UpnpError(f"GetExternalIPAddress failed: {e}") from e
            candidates = [wanted] + [
                1024 + (wanted * 7919 + i * 104729) % 64511 for i in range(_CONFLICT_RETRIES)
            ]
            errors = []
            lease = lifetime
            for port in candidates:
                try:
                    try:
                        device.addportmapping(
                            port, "UDP", host, internal_port, DESCRIPTION, "", lease
                        )
                    except Exception as e:
                        # IGD v1 error 725: this router only grants leases "until deleted".
                        if lease == 0 or "OnlyPermanentLeasesSupported" not in str(e):
                            raise
                        lease = 0
                        device.addportmapping(port, "UDP", host, internal_port, DESCRIPTION, "", 0)
                except Exception as e:
                    errors.append(f"port {port}: {e}")
                    if "onflict" not in str(e):  # only a taken port is worth another try
                        break
                    if port == wanted:
                        try:
                            got = device.addanyportmapping(
                                port, "UDP", host, internal_port, DESCRIPTION, "", lease
                            )
                        except Exception as e2:
                            errors.append(f"AddAnyPortMapping: {e2}")
                        else:
                            return UpnpMapping(host, internal_port, address, int(got), lease)
                    continue
                return UpnpMapping(host, internal_port, address, port, lease)
            raise UpnpError(f"AddPortMapping failed: {'; '.join(errors)}")

        def undo(mapping: UpnpMapping) -> Deferred[None]:
            return self.delete_udp_mapping(mapping.external_port, max(timeout, 1.0)).addErrback(
                lambda f: _log.warn("UPnP: could not delete a late mapping: {f}", f=f.value)
            )

        return self._call(timeout, work, "AddPortMapping", undo)

    def delete_udp_mapping(self, external_port: int, timeout: float) -> Deferred[None]:
        """``DeletePortMapping`` for UDP ``external_port``."""

        def work(device: Any) -> None:
            try:
                device.deleteportmapping(external_port, "UDP", "")
            except Exception as e:
                raise UpnpError(f"DeletePortMapping of UDP {external_port} failed: {e}") from e

        return self._call(timeout, work, "DeletePortMapping")
