# -*- test-case-name: tests.test_turn_client -*-
"""TURN server configuration: URIs, credentials, the TURN REST API.

A pure model module (no sockets, no reactor, no clock). It implements

 - RFC 7065 (TURN URIs): ``turn:HOST[:PORT][?transport=udp|tcp]`` and
   ``turns:HOST[:PORT][?transport=tcp]``, default ports 3478 and 5349, IPv6 hosts in
   brackets; ``turns`` means TLS over TCP (DTLS is not supported);
 - the command-line form ``turn:USER:PASS@HOST:PORT[?transport=tcp]`` (USER and PASS
   percent-decoded, so ``%40`` is ``@`` and ``%3A`` is ``:``), and the WebRTC
   ``RTCIceServer`` form ``{"urls": [...], "username": ..., "credential": ...}``;
 - the TURN REST API's ephemeral credentials (draft-uberti-behave-turn-rest-00, what
   coturn's ``use-auth-secret`` checks): the username is ``EXPIRY:USER`` (``EXPIRY`` a UNIX
   time in whole seconds) and the password the base64 HMAC-SHA1 of the username under
   the shared secret.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote

from holepunch.addresses import split_host_port

TurnTransport = Literal["udp", "tcp", "tls"]

DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349


@dataclasses.dataclass(frozen=True)
class TurnServer:
    """One TURN server: where, over what, and with which long-term credentials.

    ``transport`` is how we reach the server (``udp``, ``tcp`` or ``tls``); the relay
    itself is always UDP. ``tls_name`` is the name the server's certificate must carry
    (by default ``host``).
    """

    host: str
    port: int = DEFAULT_PORT
    transport: TurnTransport = "udp"
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    tls_name: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("a TURN server needs a host")
        if not 0 < self.port < 65536:
            raise ValueError(f"TURN server port out of range: {self.port}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"unknown TURN transport {self.transport!r}")

    @property
    def uri(self) -> str:
        """The RFC 7065 URI (without credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.transport == "tls":
            return f"turns:{host}:{self.port}?transport=tcp"
        return f"turn:{host}:{self.port}?transport={self.transport}"

    @property
    def name_to_check(self) -> str:
        """The name the server's TLS certificate is checked against."""
        return self.tls_name or self.host

    def __str__(self) -> str:
        return self.uri

    def with_credentials(self, username: str, password: str) -> TurnServer:
        """The same server with other credentials."""
        return dataclasses.replace(self, username=username, password=password)

    def with_rest_api_credentials(
        self, secret: str | bytes, user: str, ttl: float, now: float
    ) -> TurnServer:
        """The same server with credentials minted by :func:`rest_api_credentials`."""
        return self.with_credentials(*rest_api_credentials(secret, user, ttl, now))

    def as_ice_server(self) -> dict[str, Any]:
        """The WebRTC ``RTCIceServer`` (and the seed's) form: ``{urls, username, credential}``.

        :meth:`from_ice_server` reads it back.
        """
        entry: dict[str, Any] = {"urls": [self.uri]}
        if self.username or self.password:
            entry["username"] = self.username
            entry["credential"] = self.password
        return entry

    @classmethod
    def from_ice_server(cls, entry: Mapping[str, Any]) -> list[TurnServer]:
        """The TURN servers of one WebRTC-style entry (``urls``, ``username``, ``credential``).

        ``urls`` may be one string or a list; ``stun:`` URLs in it are skipped.
        """
        urls = entry.get("urls", entry.get("url", []))
        if isinstance(urls, str):
            urls = [urls]
        username = str(entry.get("username", ""))
        password = str(entry.get("credential", ""))
        return [
            parse_turn_uri(url, username, password)
            for url in urls
            if not str(url).lower().startswith(("stun:", "stuns:"))
        ]


def parse_turn_uri(uri: str, username: str = "", password: str = "") -> TurnServer:
    """Parse a TURN URI (RFC 7065) or the CLI form with ``USER:PASS@`` before the host.

    Credentials written in the URI win over ``username`` and ``password``.

    :raises ValueError: not a ``turn:``/``turns:`` URI, a bad port, an unknown transport,
        or ``turns`` with ``transport=udp`` (DTLS).
    """
    text = uri.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("turn", "turns"):
        raise ValueError(f"not a TURN URI (turn: or turns:): {uri!r}")
    if rest.startswith("//"):
        rest = rest[2:]
    rest, _, query = rest.partition("?")
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user_text, colon, pass_text = userinfo.partition(":")
        if not colon:
            raise ValueError(f"credentials in a TURN URI must be USER:PASS@: {uri!r}")
        username, password = unquote(user_text), unquote(pass_text)
    transport_param: str | None = None
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key.lower() == "transport":
            transport_param = value.lower()
        else:
            raise ValueError(f"unknown TURN URI parameter {key!r} in {uri!r}")
    host, port_text = _split_host_port(rest, uri)
    secure = scheme == "turns"
    try:
        port = int(port_text) if port_text else (DEFAULT_TLS_PORT if secure else DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"bad port in TURN URI {uri!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in TURN URI {uri!r}")
    transport: TurnTransport
    if transport_param is None:
        transport = "tls" if secure else "udp"
    elif transport_param == "tcp":
        transport = "tls" if secure else "tcp"
    elif transport_param == "udp":
        if secure:
            raise ValueError(f"turns: over UDP (DTLS) is not supported: {uri!r}")
        transport = "udp"
    else:
        raise ValueError(f"unknown transport {transport_param!r} in TURN URI {uri!r}")
    return TurnServer(host, port, transport, username, password)


def _split_host_port(text: str, uri: str) -> tuple[str, str]:
    if not text.startswith("[") and text.count(":") > 1:
        raise ValueError(f"IPv6 hosts go in brackets: {uri!r}")
    try:
        host, port_text = split_host_port(text)
    except ValueError as e:
        raise ValueError(f"{e} in {uri!r}") from None
    if not host:
        raise ValueError(f"no host in TURN URI {uri!r}")
    return host, port_text


def rest_api_credentials(secret: str | bytes, user: str, ttl: float, now: float) -> tuple[str, str]:
    """Ephemeral TURN credentials from a shared secret (coturn's ``use-auth-secret``).

    The username is ``EXPIRY:USER`` (just ``EXPIRY`` when ``user`` is empty), ``EXPIRY``
    being ``now + ttl`` in whole seconds; the password is the base64 HMAC-SHA1 of the
    username keyed with ``secret``. coturn refuses them (401) once ``EXPIRY`` has passed.

    :param now: the current UNIX time (``clock.seconds()`` with a real reactor).
    """
    if ttl <= 0:
        raise ValueError(f"the credentials' lifetime must be positive, not {ttl}")
    expiry = int(now + ttl)
    username = f"{expiry}:{user}" if user else str(expiry)
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    digest = hmac.new(key, username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")
