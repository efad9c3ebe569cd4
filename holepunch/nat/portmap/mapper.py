# -*- test-case-name: tests.unit.test_portmap -*-
""":class:`PortMapper`: ask the home router for a UDP port mapping by PCP, NAT-PMP or UPnP.

A mapping made this way gives a host a public address and port that forwards to its own
UDP socket, whatever the NAT's mapping behaviour: behind a symmetric NAT with random ports
(RFC 4787 section 4.1, where STUN's answer is useless to a peer) it is the one reachable
candidate short of a relay.

Methods are tried one after another, PCP (RFC 6887) first, then NAT-PMP (RFC 6886), then
UPnP IGD, inside one overall timeout that each method shares with those still to come. Not
in parallel: one gateway (miniupnpd, most home routers) usually speaks all three and keeps
one table, so two methods succeeding at once would make two mappings for one socket, and
deleting the loser could delete the winner's entry. Sequential costs little: PCP and NAT-PMP
answer in a millisecond on a LAN, a gateway without them answers ICMP port unreachable (the
request ends at once), and a NAT-PMP-only gateway answers PCP with "unsupported version".
Only a gateway that silently drops port 5351 makes UPnP wait for its share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.nat.portmap import natpmp, pcp
from holepunch.nat.portmap._core import (
    Method,
    PortMapping,
    PortMappingError,
    ResultCodeError,
    RetransmittingRequest,
)
from holepunch.nat.portmap.gateway import default_gateway
from holepunch.nat.portmap.gateway_udp import send_request
from holepunch.nat.portmap.upnp import UpnpClient
from holepunch.routes import source_address_toward

_log = Logger()

DEFAULT_METHODS: tuple[Method, ...] = (Method.PCP, Method.NATPMP, Method.UPNP)
"""The order :meth:`PortMapper.map_udp` tries methods in."""
MIN_RENEW_INTERVAL = 1.0
"""Automatic renewal never retries faster than this (seconds)."""


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    name = type(error).__name__
    text = str(error)
    return f"{name}: {text}" if text else name


class Renewal:
    """Automatic renewal of one mapping at half its lifetime; :meth:`stop` ends it.

    :attr:`current` is the latest grant. ``on_renewed`` gets each new grant (its external
    address or port may change: re-announce it); ``on_lost`` gets the reason once the
    mapping has lapsed without a successful renewal.
    """

    def __init__(
        self,
        mapper: PortMapper,
        mapping: PortMapping,
        on_renewed: Callable[[PortMapping], object] | None,
        on_lost: Callable[[Exception], object] | None,
        timeout: float,
    ) -> None:
        self.current = mapping
        self._mapper = mapper
        self._on_renewed = on_renewed
        self._on_lost = on_lost
        self._timeout = timeout
        self._call: Any = None
        self._pending: Deferred[PortMapping] | None = None
        self.stopped = False
        self._schedule()

    def _schedule(self) -> None:
        expires = self.current.expires
        if expires is None or self.stopped:
            return  # a UPnP lease of 0 never lapses
        remaining = expires - self._mapper.clock.seconds()
        delay = max(MIN_RENEW_INTERVAL, remaining / 2)
        self._call = self._mapper.clock.callLater(delay, self._renew)

    def _renew(self) -> None:
        self._call = None
        self._pending = self._mapper.renew(self.current, timeout=self._timeout)
        self._pending.addCallbacks(self._renewed, self._failed)

    def _renewed(self, mapping: PortMapping) -> None:
        self._pending = None
        self.current = mapping
        if self._on_renewed is not None:
            self._on_renewed(mapping)
        self._schedule()

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(CancelledError) or self.stopped:
            return
        expires = self.current.expires
        now = self._mapper.clock.seconds()
        error = failure.value if isinstance(failure.value, Exception) else Exception(failure)
        if expires is not None and expires - now > 2 * MIN_RENEW_INTERVAL:
            _log.warn(
                "renewing {mapping} failed ({why}); retrying before it lapses in {left:.0f} s",
                mapping=self.current, why=_describe(error), left=expires - now,
            )  # fmt: skip
            self._schedule()
            return
        _log.warn("port mapping {mapping} lapsed: {why}", mapping=self.current,
                  why=_describe(error))  # fmt: skip
        self.stopped = True
        if self._on_lost is not None:
            self._on_lost(error)

    def stop(self) -> None:
        """Stop renewing (the mapping stays until it lapses or is unmapped)."""
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


class PortMapper:
    """Port mappings on this host's gateway, for one application.

    ``gateway`` defaults to the default route's gateway (``/proc/net/route``);
    ``local_address`` to this host's address toward it. ``methods`` is the order to try
    (see the module docstring). ``upnp_root_url`` skips UPnP's SSDP discovery
    (see :mod:`holepunch.nat.portmap.upnp`). ``server_port`` is where PCP
    and NAT-PMP requests go (5351; tests point it at a fake gateway). ``upnp`` replaces
    the UPnP client (one made for the gateway by default).

    Everything that waits takes a timeout in seconds; every Deferred can be cancelled,
    which stops retransmissions and closes the request's socket.
    """

    def __init__(
        self,
        reactor: Any = None,
        gateway: str | None = None,
        *,
        local_address: str | None = None,
        methods: Sequence[Method | str] = DEFAULT_METHODS,
        upnp_root_url: str | None = None,
        server_port: int = pcp.SERVER_PORT,
        upnp: UpnpClient | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock = reactor
        self._gateway = gateway
        self._local_address = local_address
        self.methods = tuple(Method(m) for m in methods)
        self._server_port = server_port
        self._upnp_root_url = upnp_root_url
        self._upnp = upnp
        self._mappings: dict[tuple[Method, int], PortMapping] = {}
        self._renewals: dict[tuple[Method, int], Renewal] = {}

    # -- where to talk --

    @property
    def gateway(self) -> str:
        """The gateway's address; raises :class:`PortMappingError` if there is no route."""
        if self._gateway is None:
            found = default_gateway()
            if found is None:
                raise PortMappingError("no default IPv4 gateway (give PortMapper a gateway)")
            self._gateway = found
        return self._gateway

    @property
    def local_address(self) -> str:
        """This host's address toward the gateway: the internal address of its mappings."""
        if self._local_address is None:
            self._local_address = source_address_toward(self.gateway)
        return self._local_address

    def _upnp_client(self) -> UpnpClient:
        if self._upnp is None:
            self._upnp = UpnpClient(
                self.reactor,
                gateway=self.gateway,
                local_address=self.local_address,
                root_url=self._upnp_root_url,
            )
        return self._upnp

    @property
    def mappings(self) -> list[PortMapping]:
        """The mappings made and not yet deleted, latest grant of each."""
        return list(self._mappings.values())

    # -- one request --

    def _request(
        self,
        label: str,
        request: bytes,
        parse: Callable[[bytes], Any],
        schedule: Any,
        timeout: float,
    ) -> Deferred[Any]:
        def make(now: float) -> RetransmittingRequest[Any]:
            return RetransmittingRequest(request, parse, schedule, now, now + timeout)

        return send_request(
            self.reactor, self.gateway, self._server_port, self.local_address, make, label
        )

    async def _pcp_map(
        self,
        internal_port: int,
        lifetime: int,
        timeout: float,
        nonce: bytes | None = None,
        external: tuple[str, int] | None = None,
    ) -> PortMapping:
        nonce = nonce or pcp.new_nonce()
        request = pcp.encode_map_request(
            nonce,
            internal_port,
            self.local_address,
            lifetime,
            suggested_external_port=external[1] if external else internal_port,
            suggested_external_address=external[0] if external else None,
        )
        answer: pcp.MapResponse = await self._request(
            "PCP MAP",
            request,
            lambda data: pcp.decode_map_response(data, nonce, internal_port),
            pcp.retransmission_schedule(),
            timeout,
        )
        return PortMapping(
            method=Method.PCP,
            internal_address=self.local_address,
            internal_port=internal_port,
            external_address=answer.external_address,
            external_port=answer.external_port,
            lifetime=answer.lifetime,
            created=self.clock.seconds(),
            gateway=self.gateway,
            nonce=nonce,
        )

    async def _natpmp_external_address(self, timeout: float) -> str:
        answer: natpmp.ExternalAddressResponse = await self._request(
            "NAT-PMP external address",
            natpmp.encode_external_address_request(),
            natpmp.decode_external_address_response,
            natpmp.retransmission_schedule(),
            timeout,
        )
        return answer.external_address

    async def _natpmp_map(
        self, internal_port: int, lifetime: int, timeout: float, external_port: int | None = None
    ) -> PortMapping:
        deadline = self.clock.seconds() + timeout
        address = await self._natpmp_external_address(timeout)
        answer: natpmp.MapResponse = await self._request(
            "NAT-PMP map",
            natpmp.encode_map_request(internal_port, external_port or internal_port, lifetime),
            lambda data: natpmp.decode_map_response(data, internal_port),
            natpmp.retransmission_schedule(),
            max(0.0, deadline - self.clock.seconds()),
        )
        return PortMapping(
            method=Method.NATPMP,
            internal_address=self.local_address,
            internal_port=internal_port,
            external_address=address,
            external_port=answer.external_port,
            lifetime=answer.lifetime,
            created=self.clock.seconds(),
            gateway=self.gateway,
        )

    async def _upnp_map(
        self, internal_port: int, lifetime: int, timeout: float, external_port: int | None = None
    ) -> PortMapping:
        granted = await self._upnp_client().add_udp_mapping(
            internal_port, lifetime, timeout, external_port
        )
        return PortMapping(
            method=Method.UPNP,
            internal_address=granted.internal_address,
            internal_port=internal_port,
            external_address=granted.external_address,
            external_port=granted.external_port,
            lifetime=granted.lifetime,
            created=self.clock.seconds(),
            gateway=self.gateway,
        )

    def _map_once(
        self,
        method: Method,
        internal_port: int,
        lifetime: int,
        timeout: float,
        previous: PortMapping | None = None,
    ) -> Deferred[PortMapping]:
        if method is Method.PCP:
            coro = self._pcp_map(
                internal_port, lifetime, timeout,
                previous.nonce if previous else None,
                previous.external if previous else None,
            )  # fmt: skip
        elif method is Method.NATPMP:
            coro = self._natpmp_map(
                internal_port, lifetime, timeout, previous.external_port if previous else None
            )
        else:
            coro = self._upnp_map(
                internal_port, lifetime, timeout, previous.external_port if previous else None
            )
        return ensureDeferred(coro)

    # -- the API --

    def map_udp(
        self,
        internal_port: int,
        lifetime: int = natpmp.RECOMMENDED_LIFETIME,
        timeout: float = 1.0,
        *,
        methods: Sequence[Method | str] | None = None,
    ) -> Deferred[PortMapping]:
        """Map UDP ``internal_port`` of this host to a public address and port.

        Tries ``methods`` (default: this mapper's, PCP, NAT-PMP, UPnP) in order until one
        succeeds; all within ``timeout`` seconds. Fires a :class:`PortMapping`, or fails
        with :class:`PortMappingError` whose ``attempts`` name each method tried and why it
        failed. The gateway may grant another external port or a shorter lifetime than
        asked: use what the mapping says.
        """
        order = tuple(Method(m) for m in (methods or self.methods))
        return ensureDeferred(self._map_udp(internal_port, lifetime, timeout, order))

    async def _map_udp(
        self, internal_port: int, lifetime: int, timeout: float, order: tuple[Method, ...]
    ) -> PortMapping:
        if not 0 < internal_port < 65536:
            raise ValueError(f"internal port must be 1-65535, not {internal_port}")
        started = self.clock.seconds()
        wall = time.monotonic()
        deadline = started + timeout
        attempts: dict[str, str] = {}
        try:
            gateway = self.gateway
            self.local_address  # noqa: B018 (resolve it now: errors belong to map_udp)
        except (PortMappingError, OSError) as e:
            raise PortMappingError(
                f"cannot map UDP port {internal_port}: {e}", {m.value: "no gateway" for m in order}
            ) from e
        for index, method in enumerate(order):
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                attempts[method.value] = "not tried: the timeout was spent"
                continue
            share = remaining / (len(order) - index)
            try:
                mapping = await self._map_once(method, internal_port, lifetime, share)
            except CancelledError:
                raise
            except Exception as e:
                attempts[method.value] = _describe(e)
                _log.info(
                    "{method} could not map UDP {port} on {gateway}: {why}",
                    method=method.value, port=internal_port, gateway=gateway,
                    why=attempts[method.value],
                )  # fmt: skip
                continue
            self._mappings[(method, internal_port)] = mapping
            _log.info(
                "mapped UDP {internal} to {address}:{port} by {method} on {gateway} "
                "for {lifetime} s in {ms:.1f} ms",
                internal=f"{mapping.internal_address}:{internal_port}",
                address=mapping.external_address, port=mapping.external_port,
                method=method.value, gateway=gateway, lifetime=mapping.lifetime,
                ms=(time.monotonic() - wall) * 1000,
            )  # fmt: skip
            return mapping
        error = PortMappingError(
            f"no port mapping for UDP {internal_port} via gateway {gateway} within {timeout} s",
            attempts,
        )
        _log.warn("{error}", error=error)
        raise error

    def renew(self, mapping: PortMapping, timeout: float = 1.0) -> Deferred[PortMapping]:
        """Ask the gateway again for ``mapping`` (same method, nonce and external port).

        RFC 6886 section 3.3 and RFC 6887 section 11.2 renew by repeating the request. Fires
        the new grant, which may differ (after a gateway reboot, say).
        """
        lifetime = int(mapping.lifetime) or natpmp.RECOMMENDED_LIFETIME

        async def renew() -> PortMapping:
            try:
                new = await self._map_once(
                    mapping.method, mapping.internal_port, lifetime, timeout, mapping
                )
            except CancelledError:
                raise
            except Exception as e:
                raise PortMappingError(
                    f"renewing UDP {mapping.internal_port} failed",
                    {mapping.method.value: _describe(e)},
                ) from e
            key = (mapping.method, mapping.internal_port)
            if key in self._mappings:
                self._mappings[key] = new
            if new.external != mapping.external:
                _log.warn("renewed mapping moved: {old} -> {new}", old=mapping.external,
                          new=new.external)  # fmt: skip
            else:
                _log.debug("renewed {m}", m=new)
            return new

        return ensureDeferred(renew())

    def auto_renew(
        self,
        mapping: PortMapping,
        on_renewed: Callable[[PortMapping], object] | None = None,
        on_lost: Callable[[Exception], object] | None = None,
        timeout: float = 1.0,
    ) -> Renewal:
        """Renew ``mapping`` at half its remaining lifetime until stopped or unmapped.

        Returns the :class:`Renewal`; :meth:`unmap` and :meth:`close` stop it too.
        """
        key = (mapping.method, mapping.internal_port)
        old = self._renewals.pop(key, None)
        if old is not None:
            old.stop()
        renewal = Renewal(self, mapping, on_renewed, on_lost, timeout)
        self._renewals[key] = renewal
        return renewal

    def unmap(self, mapping: PortMapping, timeout: float = 1.0) -> Deferred[None]:
        """Delete ``mapping`` on the gateway (lifetime 0 for PCP/NAT-PMP, UPnP's Delete).

        The mapper forgets it and stops renewing it whatever the gateway answers; fails
        with :class:`PortMappingError` if the gateway did not confirm.
        """
        key = (mapping.method, mapping.internal_port)
        renewal = self._renewals.pop(key, None)
        if renewal is not None:
            renewal.stop()
        current = self._mappings.pop(key, mapping)

        async def delete() -> None:
            try:
                if current.method is Method.PCP:
                    nonce = current.nonce
                    await self._request(
                        "PCP MAP delete",
                        pcp.encode_map_request(nonce, current.internal_port, self.local_address, 0),
                        lambda data: pcp.decode_map_response(data, nonce, current.internal_port),
                        pcp.retransmission_schedule(),
                        timeout,
                    )
                elif current.method is Method.NATPMP:
                    await self._request(
                        "NAT-PMP delete",
                        natpmp.encode_map_request(current.internal_port, 0, 0),
                        lambda data: natpmp.decode_map_response(data, current.internal_port),
                        natpmp.retransmission_schedule(),
                        timeout,
                    )
                else:
                    await self._upnp_client().delete_udp_mapping(current.external_port, timeout)
            except CancelledError:
                raise
            except Exception as e:
                raise PortMappingError(
                    f"deleting mapping of UDP {current.internal_port} failed",
                    {current.method.value: _describe(e)},
                ) from e
            _log.info("deleted {method} mapping {external} -> UDP {port}",
                      method=current.method.value, external=current.external,
                      port=current.internal_port)  # fmt: skip

        return ensureDeferred(delete())

    def close(self, timeout: float = 1.0) -> Deferred[None]:
        """Stop all renewals and delete every mapping made, at once; never fails.

        Each deletion is bounded by ``timeout``; failures are logged (the mapping lapses
        on its own at the end of its lifetime). Also waits (up to ``timeout``) for UPnP
        calls abandoned by their callers, which delete what they mapped when they return.
        """
        deletions = [self.unmap(mapping, timeout) for mapping in list(self._mappings.values())]
        for renewal in self._renewals.values():
            renewal.stop()
        self._renewals.clear()

        async def close() -> None:
            results: list[tuple[bool, Any]] = await DeferredList(deletions, consumeErrors=True)
            for ok, value in results:
                if not ok:
                    _log.warn("on close: {error}", error=value.value)
            if self._upnp is not None:
                # a UPnP call abandoned by its caller may still map a port: let it undo that
                await self._upnp.drain(timeout)

        return ensureDeferred(close())

    def probe(self, timeout: float = 1.0) -> Deferred[dict[str, dict[str, Any]]]:
        """Which of PCP, NAT-PMP and UPnP the gateway answers, all asked at once.

        Changes nothing on the gateway (PCP ANNOUNCE, NAT-PMP's external address request,
        UPnP discovery and ``GetExternalIPAddress``). Fires, for example::

            {"pcp": {"available": True, "detail": "epoch 12"},
             "natpmp": {"available": True, "external_address": "203.0.113.1", ...},
             "upnp": {"available": False, "detail": "no UPnP device answered SSDP ..."}}
        """
        results: dict[str, dict[str, Any]] = {}

        def record(method: Method) -> Callable[[Any], None]:
            def done(outcome: Any) -> None:
                if isinstance(outcome, Failure):
                    error = outcome.value
                    assert error is not None
                    # a result code still proves a server is there
                    answered = isinstance(error, ResultCodeError) and not (
                        method is Method.PCP and "NAT-PMP only" in str(error)
                    )
                    results[method.value] = {"available": answered, "detail": _describe(error)}
                else:
                    results[method.value] = {"available": True, **outcome}

            return done

        async def pcp_probe() -> dict[str, Any]:
            answer: pcp.AnnounceResponse = await self._request(
                "PCP ANNOUNCE", pcp.encode_announce_request(self.local_address),
                pcp.decode_announce_response, pcp.retransmission_schedule(), timeout,
            )  # fmt: skip
            return {"detail": f"epoch {answer.epoch}"}

        async def natpmp_probe() -> dict[str, Any]:
            address = await self._natpmp_external_address(timeout)
            return {"external_address": address, "detail": "external address answered"}

        async def upnp_probe() -> dict[str, Any]:
            address = await self._upnp_client().external_address(timeout)
            return {"external_address": address, "detail": "IGD answered"}

        try:
            self.gateway  # noqa: B018
            self.local_address  # noqa: B018
        except (PortMappingError, OSError) as e:
            return succeed(
                {m.value: {"available": False, "detail": str(e)} for m in DEFAULT_METHODS}
            )
        probes = {Method.PCP: pcp_probe, Method.NATPMP: natpmp_probe, Method.UPNP: upnp_probe}
        waits = []
        for method in self.methods:
            d = ensureDeferred(probes[method]())
            d.addBoth(record(method))
            waits.append(d)
        return DeferredList(waits).addCallback(lambda _: results)
