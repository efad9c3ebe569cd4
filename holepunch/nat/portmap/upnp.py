# -*- test-case-name: tests.lab.test_portmap_lab -*-
"""UPnP IGD port mapping through ``miniupnpc``, run off the reactor thread.

``miniupnpc`` (the reference UPnP client, from the miniupnp project) does SSDP discovery,
the device description and the SOAP calls (``AddPortMapping``, ``GetExternalIPAddress``,
``DeletePortMapping``), but blocks. Every call here runs in the reactor's thread pool; one
lock serialises them because a ``miniupnpc.UPnP`` object is not thread-safe.

Discovery is bounded by the caller's timeout: SSDP waits ``discoverdelay`` ms for answers,
and we set it to a share of the time left. ``multicast_interface`` (an interface name or
address) picks the interface the SSDP M-SEARCH leaves from; inside a network namespace the
default is the address this host uses toward the gateway. ``root_url`` skips SSDP and
fetches the IGD description from a known URL instead.

A thread cannot be interrupted: when the caller's Deferred times out or is cancelled while
``AddPortMapping`` is in flight, the thread deletes the mapping it made as soon as the call
returns, so nothing is left behind on the gateway.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

T = TypeVar("T")
_log = Logger()

DESCRIPTION = "holepunch"
"""The ``NewPortMappingDescription`` our mappings carry."""
_MIN_DISCOVER_MS = 50
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
    """A UPnP IGD client: discovery once, then mapping calls, each in a worker thread."""

    def __init__(
        self,
        reactor: Any,
        *,
        multicast_interface: str | None = None,
        root_url: str | None = None,
        local_address: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._multicast_interface = multicast_interface
        self._root_url = root_url
        self._local_address = local_address
        self._lock = threading.Lock()
        self._igd: Any = None

    # -- blocking parts (worker thread) --

    def _device(self, deadline: float, now: Callable[[], float]) -> Any:
        """The IGD's ``miniupnpc.UPnP`` object, discovering it the first time."""
        if self._igd is not None:
            return self._igd
        import miniupnpc

        remaining = max(0.0, deadline - now())
        # SSDP collects answers until a quiet period of discoverdelay: leave time for the
        # description fetch and the SOAP call after it.
        options: dict[str, Any] = {
            "discoverdelay": max(_MIN_DISCOVER_MS, int(remaining * 1000 * 0.4))
        }
        interface = self._multicast_interface or self._local_address
        if interface:
            options["multicastif"] = interface  # read-only once made: a constructor argument
        upnp = miniupnpc.UPnP(**options)
        if self._root_url:
            try:
                upnp.selectigd(self._root_url)
            except Exception as e:
                raise UpnpError(f"no IGD at {self._root_url}: {e}") from e
        else:
            try:
                found = upnp.discover()
            except Exception as e:
                raise UpnpError(f"SSDP discovery failed: {e}") from e
            if not found:
                raise UpnpError(f"no UPnP device answered SSDP in {upnp.discoverdelay} ms")
            try:
                upnp.selectigd()
            except Exception as e:
                raise UpnpError(f"{found} UPnP device(s) found, but no usable IGD: {e}") from e
        self._igd = upnp
        return upnp

    def _run(self, timeout: float, work: Callable[[Any, float], T]) -> T:
        clock = self._reactor.seconds  # reads the time only; safe from a thread
        deadline = clock() + timeout
        with self._lock:
            device = self._device(deadline, clock)
            return work(device, deadline)

    def _defer(
        self,
        timeout: float,
        work: Callable[[Any, float], T],
        what: str,
        undo: Callable[[T], object] | None = None,
    ) -> Deferred[T]:
        """Run ``work(device, deadline)`` in a thread; the result Deferred times out.

        If the caller has gone (timeout, cancel) when the thread returns, ``undo`` is
        called with the late result: a mapping nobody will use is deleted again.
        """
        outer: Deferred[T] = Deferred()
        inner: Deferred[T] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._run, timeout, work
        )

        def succeeded(result: T) -> None:
            if not outer.called:
                outer.callback(result)
            elif undo is not None:
                _log.info("UPnP {what} finished after its caller gave up; undoing it", what=what)
                undo(result)

        def failed(failure: Any) -> None:
            if not outer.called:
                outer.errback(failure)

        inner.addCallbacks(succeeded, failed)
        outer.addTimeout(timeout, self._reactor)
        return outer

    # -- the API (reactor thread) --

    def external_address(self, timeout: float) -> Deferred[str]:
        """``GetExternalIPAddress``."""

        def work(device: Any, deadline: float) -> str:
            try:
                address = device.externalipaddress()
            except Exception as e:
                raise UpnpError(f"GetExternalIPAddress failed: {e}") from e
            if not address:
                raise UpnpError("GetExternalIPAddress returned no address")
            return str(address)

        return self._defer(timeout, work, "GetExternalIPAddress")

    def add_udp_mapping(
        self, internal_port: int, lifetime: int, timeout: float, external_port: int | None = None
    ) -> Deferred[UpnpMapping]:
        """``AddPortMapping`` UDP ``external_port`` (default: the internal port) to this host.

        On ``ConflictInMappingEntry`` (someone else holds that external port) it tries
        ``AddAnyPortMapping`` (IGD v2), then a few other ports.
        """
        wanted = external_port or internal_port

        def work(device: Any, deadline: float) -> UpnpMapping:
            host = str(device.lanaddr)
            try:
                address = str(device.externalipaddress())
            except Exception as e:
                raise UpnpError(f"GetExternalIPAddress failed: {e}") from e
            candidates = [wanted] + [
                1024 + (wanted * 7919 + i * 104729) % 64511 for i in range(_CONFLICT_RETRIES)
            ]
            errors = []
            for port in candidates:
                try:
                    device.addportmapping(
                        port, "UDP", host, internal_port, DESCRIPTION, "", lifetime
                    )
                except Exception as e:
                    errors.append(f"port {port}: {e}")
                    if "onflict" not in str(e):  # only a taken port is worth another try
                        break
                    if port == wanted:
                        try:
                            got = device.addanyportmapping(
                                port, "UDP", host, internal_port, DESCRIPTION, "", lifetime
                            )
                        except Exception as e2:
                            errors.append(f"AddAnyPortMapping: {e2}")
                        else:
                            return UpnpMapping(host, internal_port, address, int(got), lifetime)
                    continue
                return UpnpMapping(host, internal_port, address, port, lifetime)
            raise UpnpError(f"AddPortMapping failed: {'; '.join(errors)}")

        def undo(mapping: UpnpMapping) -> None:
            self.delete_udp_mapping(mapping.external_port, timeout).addErrback(
                lambda f: _log.warn("UPnP: could not delete a late mapping: {f}", f=f.value)
            )

        return self._defer(timeout, work, "AddPortMapping", undo)

    def delete_udp_mapping(self, external_port: int, timeout: float) -> Deferred[None]:
        """``DeletePortMapping`` for UDP ``external_port``."""

        def work(device: Any, deadline: float) -> None:
            try:
                device.deleteportmapping(external_port, "UDP", "")
            except Exception as e:
                raise UpnpError(f"DeletePortMapping of UDP {external_port} failed: {e}") from e

        return self._defer(timeout, work, "DeletePortMapping")
