# -*- test-case-name: tests.unit.test_portmap -*-
"""SSDP M-SEARCH for the gateway's UPnP IGD (UPnP Device Architecture 2.0 section 1.3), sans I/O.

Why not ``miniupnpc.UPnP.discover()``: it turns its delay into the M-SEARCH ``MX`` in whole
seconds and waits at least one full second for answers, even when the gateway answers in
50 ms, so a 1 s ``map_udp`` timeout could never reach UPnP. The search itself is one HTTP-
over-UDP request and a header to read: we multicast it from the reactor, take the first
answer that comes from the gateway, and hand its ``LOCATION`` to ``miniupnpc``'s
``selectigd(url)``, which does the rest (description, SOAP) in a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from holepunch.nat.portmap._core import MalformedResponse

MULTICAST_ADDRESS = "239.255.255.250"
PORT = 1900
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
"""What we search for; IGD:2 devices answer searches for version 1 too (UDA 1.3.2)."""
_IGD_TYPES = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:",
    "urn:schemas-upnp-org:service:WANIPConnection:",
    "urn:schemas-upnp-org:service:WANPPPConnection:",
)
MAX_TRANSMISSIONS = 3


@dataclasses.dataclass(frozen=True)
class SearchResponse:
    """An SSDP answer: where the device description is, and what answered."""

    location: str
    search_target: str
    server: str


def encode_msearch(search_target: str = SEARCH_TARGET, mx: int = 1) -> bytes:
    """A multicast M-SEARCH request (UDA 1.3.2)."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {MULTICAST_ADDRESS}:{PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {search_target}\r\n"
        "\r\n"
    ).encode("ascii")


def decode_search_response(data: bytes) -> SearchResponse:
    """Parse an ``HTTP/1.1 200 OK`` answer with an IGD ``ST`` and a ``LOCATION``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("SSDP answer is not UTF-8") from None
    lines = text.split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("HTTP/") or status[1] != "200":
        raise MalformedResponse(f"not an SSDP search answer: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    location = headers.get("location", "")
    target = headers.get("st", "")
    if not location.startswith("http://"):
        raise MalformedResponse(f"SSDP answer without an http LOCATION: {location!r}")
    if not target.startswith(_IGD_TYPES):
        raise MalformedResponse(f"SSDP answer from a non-IGD device: ST {target!r}")
    return SearchResponse(location=location, search_target=target, server=headers.get("server", ""))


def retransmission_schedule() -> Iterator[float]:
    """UDA 1.3.2 suggests sending M-SEARCH more than once (UDP is lossy): 0.25, 0.5 s."""
    for attempt in range(MAX_TRANSMISSIONS - 1):
        yield 0.25 * (2**attempt)
