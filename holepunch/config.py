# -*- test-case-name: tests.unit.test_config -*-
"""One configuration object for the coordinator and the daemon, from every source.

:class:`P2PConfig` holds the seed's settings in snake_case. :func:`build_config` fills it
from four sources, the first that sets a field winning:

1. explicit arguments (a mapping: what a program passes to ``P2PCoordinator``);
2. twistd options (``twistd holepunch --peer-timeout 120``);
3. the environment (``P2P_SIGNALING_PORT=8080``, see :data:`ENV_VARS`);
4. the defaults of :class:`P2PConfig`.

Units, the one rule to remember: **Python names are in seconds, the seed's names are in
milliseconds.** :class:`P2PConfig` attributes, snake_case keys (``peer_timeout=300``)
and twistd options (``--peer-timeout 300``) are seconds; the seed's camelCase keys
(``peerTimeout=300000``) and the ``P2P_*`` environment variables
(``P2P_PEER_TIMEOUT=300000``) are milliseconds, exactly as in the seed. Either way the
object holds seconds.

A value that makes no sense raises :class:`ConfigError`, whose message starts with where
the value came from (the environment variable, the ``--option`` or the key as written)
and says what was expected::

    P2P_SIGNALING_PORT: expected a port number 0-65535, got 'abc'

Pure: no sockets, no reactor. The daemon's wiring is in :mod:`holepunch.daemon.tap`; the
operator's view (every variable, with examples) is in ``docs/operations.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from holepunch.addresses import split_host_port
from holepunch.turn.config import TurnServer, parse_turn_uri

DEFAULT_STUN_SERVERS: tuple[tuple[str, int], ...] = (
    ("stun.l.google.com", 19302),
    ("stun.cloudflare.com", 3478),
)
"""The seed's default STUN servers."""

LOG_LEVELS = ("debug", "info", "warn", "error")
"""The values ``LOG_LEVEL`` takes (``warning`` is read as ``warn``), most verbose first."""

ENV_VARS: dict[str, str] = {
    "P2P_SIGNALING_PORT": "signaling_port: TCP port of the signaling server (0: any free)",
    "P2P_SIGNALING_ENABLED": "enable_signaling: run a signaling server (true/false)",
    "P2P_HOLE_PUNCHING_ENABLED": "enable_hole_punching: connect to peers (true/false)",
    "P2P_HOLE_PUNCHING_PORT": "hole_punching_port: local UDP port for punching (0: random)",
    "P2P_STUN_SERVERS": "stun_servers: comma-separated HOST:PORT list",
    "P2P_TURN_SERVERS": "turn_servers: comma-separated turn:/turns: URIs",
    "P2P_TURN_USERNAME": "username of every server in P2P_TURN_SERVERS",
    "P2P_TURN_PASSWORD": "credential of every server in P2P_TURN_SERVERS",
    "P2P_CONNECTION_TIMEOUT": "connection_timeout, in milliseconds",
    "P2P_KEEP_ALIVE_INTERVAL": "keep_alive_interval, in milliseconds",
    "P2P_PEER_TIMEOUT": "peer_timeout, in milliseconds",
    "P2P_SIGNALING_URL": "signaling_url: ws:// or wss:// URL of a remote signaling server "
    "(several, comma-separated: the nodes of one service, tried in turn)",
    "LOG_LEVEL": "log_level: debug, info, warn or error",
}
"""Every environment variable :func:`build_config` reads, with what it sets.

Booleans are ``true``/``false``, ``1``/``0`` or ``yes``/``no``. A variable set to the
empty string counts as unset."""

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class ConfigError(ValueError):
    """A configuration value that cannot be used.

    The message names where the value came from (environment variable, ``--option``,
    key or field) and what was expected.
    """


class _Invalid(Exception):
    """Raised by the value parsers; the caller adds the source's name."""

    def __init__(self, expected: str, value: object, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.where = where
        """Which part of the value, e.g. ``[1]`` for the second entry of a list."""

    def message(self, name: str) -> str:
        return f"{name}{self.where}: expected {self.expected}, got {self.value!r}"


@dataclass
class P2PConfig:
    """The settings of the coordinator and the daemon. Times are in seconds.

    Build one with :func:`build_config` (which reads the environment and checks every
    value), or directly and then call :meth:`validate`.
    """

    signaling_port: int = 8080
    """TCP port of an in-process signaling server (0: any free port)."""
    enable_signaling: bool = True
    """Run a signaling server in this process."""
    enable_hole_punching: bool = True
    """Connect to peers (NAT detection, ICE, TURN)."""
    hole_punching_port: int = 0
    """Local UDP port the hole punching socket binds (0: chosen by the kernel)."""
    stun_servers: list[tuple[str, int]] = field(default_factory=lambda: list(DEFAULT_STUN_SERVERS))
    """STUN servers for NAT detection and server-reflexive candidates."""
    turn_servers: list[TurnServer] = field(default_factory=list)
    """TURN relays, the last resort (one per URI: an ``{urls: [...]}`` entry gives several)."""
    connection_timeout: float = 30.0
    """Give up on one connection attempt after this long."""
    keep_alive_interval: float = 25.0
    """Keep NAT bindings open by sending this often on idle paths."""
    max_retries: int = 3
    """Connection attempts after the first fails."""
    cleanup_interval: float = 60.0
    """How often the signaling server looks for idle peers."""
    peer_timeout: float = 300.0
    """The signaling server evicts a peer silent for this long."""
    signaling_url: str | None = None
    """``ws://`` or ``wss://`` URL of a remote signaling server to join."""
    signaling_interface: str = ""
    """Address an in-process signaling server listens on ("": every interface, IPv4 and
    IPv6; ``0.0.0.0`` or ``::``: every interface of that family only)."""
    log_level: str = "info"
    """``debug``, ``info``, ``warn`` or ``error``."""
    identity_dir: str | None = None
    """Directory of the coordinator's key and certificate (created if missing), whose
    fingerprint its encrypted streams are bound to; None: a fresh one per process."""

    def validate(self) -> None:
        """Check every field's type and range.

        :raises ConfigError: naming the first bad field and what it expected.
        """
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            try:
                spec.check(value)
            except _Invalid as e:
                raise ConfigError(e.message(spec.name)) from None

    def signaling_endpoint(self) -> str:
        """The strports description of the in-process signaling server's listener."""
        if not self.signaling_interface:
            return f"tcp:{self.signaling_port}"
        ip = ipaddress.ip_address(self.signaling_interface)
        if ip.version == 6:
            escaped = str(ip).replace(":", "\\:")
            return f"tcp6:{self.signaling_port}:interface={escaped}"
        return f"tcp:{self.signaling_port}:interface={ip}"


# -- value parsers: text (environment, options) or Python values, to the field's type ------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_port(value: object) -> int:
    expected = "a port number 0-65535"
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise _Invalid(expected, value)
        number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise _Invalid(expected, value)
    if not 0 <= number <= 65535:
        raise _Invalid(expected, value)
    return number


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("true/false, 1/0 or yes/no", value)


def _duration(unit: str, scale: float) -> Callable[[object], float]:
    """A parser of a positive duration written in ``unit``, returning seconds."""

    def parse(value: object) -> float:
        expected = f"a positive number of {unit}"
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _Invalid(expected, value) from None
        elif _is_number(value):
            number = float(value)  # type: ignore[arg-type]
        else:
            raise _Invalid(expected, value)
        if not math.isfinite(number) or number <= 0:
            raise _Invalid(expected, value)
        return number * scale

    return parse


def _parse_count(value: object) -> int:
    expected = "a whole number 0 or more"
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Invalid(expected, value)


def _server_from_text(text: str) -> tuple[str, int]:
    spec = text.strip()
    for scheme in ("stun:", "stuns:"):
        if spec.lower().startswith(scheme):
            spec = spec[len(scheme) :]
    if not spec.startswith("[") and spec.count(":") > 1:
        raise ValueError(text)  # an IPv6 address needs brackets when a port follows
    host, port_text = split_host_port(spec)
    return _server(host, port_text or 3478)


def _server(host: object, port: object) -> tuple[str, int]:
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host.strip()):
        raise ValueError(host)
    number = _parse_port(port)
    if number == 0:
        raise ValueError(port)
    return host.strip(), number


_SERVER_FORMS = 'HOST:PORT, ("host", port) or {"host": ..., "port": ...}'


def _parse_servers(value: object) -> list[tuple[str, int]]:
    expected = f"a list of STUN servers ({_SERVER_FORMS}; port 1-65535)"
    if isinstance(value, str):
        expected = "a comma-separated list of HOST:PORT (port 1-65535)"
        entries: list[object] = [s for s in value.split(",") if s.strip()]
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        entries = [value]  # one ("host", port) pair on its own
    elif isinstance(value, list | tuple):
        entries = list(value)
    else:
        raise _Invalid(expected, value)
    servers: list[tuple[str, int]] = []
    for index, entry in enumerate(entries):
        try:
            if isinstance(entry, str):
                servers.append(_server_from_text(entry))
            elif isinstance(entry, tuple | list) and len(entry) == 2:
                servers.append(_server(entry[0], entry[1]))
            elif isinstance(entry, Mapping) and set(entry) <= {"host", "port"}:
                servers.append(_server(entry.get("host"), entry.get("port", 3478)))
            else:
                raise ValueError(entry)
        except (ValueError, _Invalid):
            if isinstance(value, str):
                raise _Invalid(expected, entry) from None
            raise _Invalid(
                f"a STUN server: {_SERVER_FORMS}, port 1-65535", entry, f"[{index}]"
            ) from None
    return servers


_TURN_URI = "a TURN URI like turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]"


_TURN_SERVER_FIELDS = frozenset(f.name for f in dataclasses.fields(TurnServer))


def _turn_uri(uri: object, username: str = "", password: str = "") -> TurnServer:
    """One RFC 7065 URI (credentials may be in it, ``turn:USER:PASS@HOST``) as a server."""
    if not isinstance(uri, str):
        raise _Invalid(_TURN_URI, uri)
    try:
        return parse_turn_uri(uri, username, password)
    except ValueError:
        raise _Invalid(_TURN_URI, uri) from None


def _turn_entry(entry: object) -> list[TurnServer]:
    if isinstance(entry, TurnServer):
        return [entry]
    if isinstance(entry, Mapping) and "host" in entry and set(entry) <= _TURN_SERVER_FIELDS:
        try:  # what dataclasses.asdict() makes of a TurnServer
            return [TurnServer(**entry)]
        except (TypeError, ValueError):
            raise _Invalid("a TurnServer's fields", dict(entry)) from None
    if isinstance(entry, str):
        urls: object = [entry]
        username: object = None
        credential: object = None
    elif isinstance(entry, Mapping):
        unknown = set(entry) - {"urls", "url", "username", "credential"}
        if unknown:
            raise _Invalid(
                '{"urls": ..., "username": ..., "credential": ...} (unknown key '
                f"{sorted(unknown)[0]!r})",
                dict(entry),
            )
        urls = entry.get("urls", entry.get("url"))
        username, credential = entry.get("username"), entry.get("credential")
    else:
        raise _Invalid('a turn: URI or {"urls": ..., "username": ..., "credential": ...}', entry)
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list | tuple) or not urls:
        raise _Invalid("one turn: URI or a non-empty list of them", urls, ".urls")
    for name, value in (("username", username), ("credential", credential)):
        if value is not None and not isinstance(value, str):
            raise _Invalid("a string", value, f".{name}")
    if (username is None) != (credential is None):
        missing = "credential" if credential is None else "username"
        raise _Invalid("username and credential together (both or neither)", None, f".{missing}")
    servers = []
    for index, url in enumerate(urls):
        try:
            servers.append(_turn_uri(url, str(username or ""), str(credential or "")))
        except _Invalid as e:
            raise _Invalid(e.expected, e.value, f".urls[{index}]") from None
    return servers


def _parse_turn_servers(value: object) -> list[TurnServer]:
    if isinstance(value, str | Mapping | TurnServer):
        value = [value]
    if not isinstance(value, list | tuple):
        raise _Invalid("a list of TURN servers", value)
    servers = []
    for index, entry in enumerate(value):
        try:
            servers.extend(_turn_entry(entry))
        except _Invalid as e:
            raise _Invalid(e.expected, e.value, f"[{index}]{e.where}") from None
    return servers


def _parse_url(value: object) -> str | None:
    """A ws:// or wss:// URL, or several separated by commas (the nodes of one service)."""
    expected = "a ws:// or wss:// URL (or several, comma-separated)"
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    text = value.strip()
    if not text:
        return None
    for url in text.split(","):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _Invalid(expected, value) from None
        if parts.scheme.lower() not in ("ws", "wss") or not parts.hostname or url != url.strip():
            raise _Invalid(expected, value)
    return text


def _parse_directory(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid("a directory path", value)
    text = value.strip()
    return text or None


def _check_directory(value: object) -> None:
    if value is not None and (not isinstance(value, str) or _parse_directory(value) != value):
        raise _Invalid("None or a directory path", value)


def _parse_interface(value: object) -> str:
    expected = 'an IP address of this host, or "" for every interface'
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    text = value.strip()
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid(expected, value) from None


def _parse_log_level(value: object) -> str:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "warning":
            return "warn"
        if text in LOG_LEVELS:
            return text
    raise _Invalid("one of debug, info, warn, error", value)


# -- strict checks for validate(): the Python types the object must hold -------------------


def _strict(
    kinds: tuple[type, ...], parse: Callable[[object], object], expected: str
) -> Callable[[object], None]:
    """A check that the value is of ``kinds`` and already what ``parse`` makes of it."""

    def check(value: object) -> None:
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _Invalid(expected, value)
        try:
            normal = parse(value)
        except _Invalid:
            raise _Invalid(expected, value) from None
        if normal != value:
            raise _Invalid(expected, value)

    return check


def _check_servers(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], str) for s in value
    ):
        raise _Invalid('a list of ("host", port) tuples', value)
    _parse_servers(value)


def _check_turn(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(s, TurnServer) for s in value):
        raise _Invalid("a list of TurnServer", value)
    _parse_turn_servers(value)


def _check_url(value: object) -> None:
    if value is not None and (not isinstance(value, str) or _parse_url(value) != value):
        raise _Invalid("None or a ws:// or wss:// URL", value)


@dataclass(frozen=True)
class _Field:
    """How one field is read from each source."""

    name: str
    camel: str
    parse: Callable[[object], Any]
    """Reads a snake_case value, an option's value or a validate()d attribute."""
    check: Callable[[object], None]
    env: str | None = None
    seed_parse: Callable[[object], Any] | None = None
    """Reads a camelCase key or the environment variable, when the unit differs."""


_SECONDS = _duration("seconds", 1.0)
_MILLISECONDS = _duration("milliseconds", 0.001)
_PORT = _strict((int,), _parse_port, "an int port number 0-65535")
_BOOL = _strict((bool,), _parse_bool, "True or False")
_TIME = _strict((int, float), _SECONDS, "a positive number of seconds")
_FIELDS: tuple[_Field, ...] = (
    _Field("signaling_port", "signalingPort", _parse_port, _PORT, "P2P_SIGNALING_PORT"),
    _Field("enable_signaling", "enableSignaling", _parse_bool, _BOOL, "P2P_SIGNALING_ENABLED"),
    _Field(
        "enable_hole_punching",
        "enableHolePunching",
        _parse_bool,
        _BOOL,
        "P2P_HOLE_PUNCHING_ENABLED",
    ),
    _Field("hole_punching_port", "holePunchingPort", _parse_port, _PORT, "P2P_HOLE_PUNCHING_PORT"),
    _Field("stun_servers", "stunServers", _parse_servers, _check_servers, "P2P_STUN_SERVERS"),
    _Field("turn_servers", "turnServers", _parse_turn_servers, _check_turn, "P2P_TURN_SERVERS"),
    _Field(
        "connection_timeout",
        "connectionTimeout",
        _SECONDS,
        _TIME,
        "P2P_CONNECTION_TIMEOUT",
        _MILLISECONDS,
    ),
    _Field(
        "keep_alive_interval",
        "keepAliveInterval",
        _SECONDS,
        _TIME,
        "P2P_KEEP_ALIVE_INTERVAL",
        _MILLISECONDS,
    ),
    _Field(
        "max_retries",
        "maxRetries",
        _parse_count,
        _strict((int,), _parse_count, "an int 0 or more"),
    ),
    _Field("cleanup_interval", "cleanupInterval", _SECONDS, _TIME, None, _MILLISECONDS),
    _Field("peer_timeout", "peerTimeout", _SECONDS, _TIME, "P2P_PEER_TIMEOUT", _MILLISECONDS),
    _Field("signaling_url", "signalingUrl", _parse_url, _check_url, "P2P_SIGNALING_URL"),
    _Field(
        "signaling_interface",
        "signalingInterface",
        _parse_interface,
        _strict((str,), _parse_interface, 'an IP address in its normal form, or ""'),
    ),
    _Field(
        "log_level",
        "logLevel",
        _parse_log_level,
        _strict((str,), _parse_log_level, "one of 'debug', 'info', 'warn', 'error'"),
        "LOG_LEVEL",
    ),
    _Field("identity_dir", "identityDir", _parse_directory, _check_directory),
)
_BY_NAME = {f.name: f for f in _FIELDS}
_BY_CAMEL = {f.camel: f for f in _FIELDS}

_OPTION_FLAGS = {"no-signaling": "enable_signaling", "no-hole-punching": "enable_hole_punching"}
"""twistd flags that turn a feature off when given."""


def _parse_with(parse: Callable[[object], Any], value: object, name: str) -> Any:
    try:
        return parse(value)
    except _Invalid as e:
        raise ConfigError(e.message(name)) from None


def explicit_values(explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The fields set by ``explicit`` (see :func:`build_config`), parsed and checked.

    :raises ConfigError: naming the key.
    """
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in explicit.items():
        spec = _BY_NAME.get(key)
        parse = spec.parse if spec is not None else None
        if spec is None:
            spec = _BY_CAMEL.get(key)
            if spec is not None:
                parse = spec.seed_parse or spec.parse
        if spec is None or parse is None:
            known = [*_BY_NAME, *_BY_CAMEL]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: not a configuration key{hint}")
        if spec.name in given_as:
            raise ConfigError(
                f"{key}: {spec.name} is also given as {given_as[spec.name]!r}; give it once"
            )
        given_as[spec.name] = key
        if value is None:
            continue
        values[spec.name] = _parse_with(parse, value, key)
    return values


def option_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """The fields set by twistd ``options`` (see :func:`build_config`), parsed and checked.

    :raises ConfigError: naming the ``--option``.
    """
    values: dict[str, Any] = {}
    for option, field_name in _OPTION_FLAGS.items():
        if options.get(option):
            values[field_name] = False
    for spec in _FIELDS:
        option = spec.name.replace("_", "-")
        value = options.get(option)
        if value is not None:
            values[spec.name] = _parse_with(spec.parse, value, f"--{option}")
    return values


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The fields set by the ``P2P_*`` variables of ``environ`` (see :data:`ENV_VARS`).

    :raises ConfigError: naming the variable.
    """

    def get(name: str) -> str | None:
        value = environ.get(name)
        return value if value is not None and value.strip() else None

    values: dict[str, Any] = {}
    for spec in _FIELDS:
        if spec.env is None or spec.name == "turn_servers":
            continue
        text = get(spec.env)
        if text is not None:
            values[spec.name] = _parse_with(spec.seed_parse or spec.parse, text, spec.env)
    username, password = get("P2P_TURN_USERNAME"), get("P2P_TURN_PASSWORD")
    uris = get("P2P_TURN_SERVERS")
    if uris is None:
        for name, value in (("P2P_TURN_USERNAME", username), ("P2P_TURN_PASSWORD", password)):
            if value is not None:
                raise ConfigError(f"{name}: set, but P2P_TURN_SERVERS is not")
        return values
    if (username is None) != (password is None):
        missing, other = ("P2P_TURN_PASSWORD", "P2P_TURN_USERNAME")
        if username is None:
            missing, other = other, missing
        raise ConfigError(f"{missing}: expected a value, since {other} is set (they go together)")
    servers = []
    for uri in (u.strip() for u in uris.split(",")):
        if uri:
            servers.append(
                _parse_with(
                    lambda u: _turn_uri(u, username or "", password or ""), uri, "P2P_TURN_SERVERS"
                )
            )
    values["turn_servers"] = servers
    return values


def build_config(
    explicit: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> P2PConfig:
    """The configuration from explicit values, twistd options and the environment.

    For each field the first source that sets it wins: ``explicit``, then ``options``,
    then ``environ``, then the default.

    :param explicit: keys are the field names in snake_case (times in seconds) or the
        seed's camelCase names (times in milliseconds, like the seed:
        ``{"connectionTimeout": 10000}`` is ``{"connection_timeout": 10}``). Giving one
        field under both names is an error; a value of None counts as not given.
        Servers: ``stun_servers`` entries may be ``("host", port)``,
        ``{"host": ..., "port": ...}`` or ``"host:port"`` (a whole string may be a comma
        list); ``turn_servers`` entries ``{"urls": str | list, "username": ...,
        "credential": ...}`` (the seed's and WebRTC's ``RTCIceServer``), a
        :class:`holepunch.turn.config.TurnServer` or a bare ``turn:`` URI; each URI
        becomes one :class:`holepunch.turn.config.TurnServer`.
    :param options: twistd options: a field's name with dashes (``peer-timeout``,
        ``log-level``, ``stun-servers``; seconds), or the flags ``no-signaling`` and
        ``no-hole-punching``. None means not given.
    :param environ: the environment (default ``os.environ``); see :data:`ENV_VARS`.
    :raises ConfigError: a value that cannot be used, named after its source.
    """
    from_env = environment_values(os.environ if environ is None else environ)
    from_options = option_values(options or {})
    from_explicit = explicit_values(explicit or {})
    config = dataclasses.replace(P2PConfig(), **{**from_env, **from_options, **from_explicit})
    config.validate()
    return config


__all__ = [
    "DEFAULT_STUN_SERVERS",
    "ENV_VARS",
    "LOG_LEVELS",
    "ConfigError",
    "P2PConfig",
    "build_config",
    "environment_values",
    "explicit_values",
    "option_values",
]
