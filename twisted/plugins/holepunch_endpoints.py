"""Endpoint string parsers: ``holepunch:`` client and server endpoints.

``clientFromString(reactor, "holepunch:peer=bob:signaling=ws\\://host\\:8080/:id=alice")``
and ``serverFromString(reactor, "holepunch:signaling=ws\\://host\\:8080/:id=bob")``; the
options are in :mod:`holepunch.endpoints` and docs/api.md.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class HolepunchClientParser:
    """``holepunch:`` client endpoints (:class:`holepunch.endpoints.HolepunchClientEndpoint`)."""

    prefix = "holepunch"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from holepunch.endpoints import client_endpoint

        return client_endpoint(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class HolepunchServerParser:
    """``holepunch:`` server endpoints (:class:`holepunch.endpoints.HolepunchServerEndpoint`)."""

    prefix = "holepunch"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from holepunch.endpoints import server_endpoint

        return server_endpoint(reactor, *args, **kwargs)


holepunchClientParser = HolepunchClientParser()
holepunchServerParser = HolepunchServerParser()
