"""Tests for holepunch.config: sources, precedence, units, server forms and validation."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from holepunch.config import (
    DEFAULT_STUN_SERVERS,
    ENV_VARS,
    ConfigError,
    P2PConfig,
    build_config,
)
from holepunch.turn.config import TurnServer

# Every environment variable: a good value, what it sets, and a bad value.
ENV_CASES: dict[str, tuple[str, str, Any, str]] = {
    "P2P_SIGNALING_PORT": ("9000", "signaling_port", 9000, "abc"),
    "P2P_SIGNALING_ENABLED": ("false", "enable_signaling", False, "maybe"),
    "P2P_HOLE_PUNCHING_ENABLED": ("no", "enable_hole_punching", False, "2"),
    "P2P_HOLE_PUNCHING_PORT": ("6881", "hole_punching_port", 6881, "70000"),
    "P2P_STUN_SERVERS": (
        "stun.example.com:3478, 192.0.2.1:19302",
        "stun_servers",
        [("stun.example.com", 3478), ("192.0.2.1", 19302)],
        "stun.example.com:port",
    ),
    "P2P_CONNECTION_TIMEOUT": ("10000", "connection_timeout", 10.0, "soon"),
    "P2P_KEEP_ALIVE_INTERVAL": ("60000", "keep_alive_interval", 60.0, "0"),
    "P2P_PEER_TIMEOUT": ("600000", "peer_timeout", 600.0, "-5"),
    "P2P_SIGNALING_URL": (
        "wss://signal.example.com/ws",
        "signaling_url",
        "wss://signal.example.com/ws",
        "http://signal.example.com/",
    ),
    "LOG_LEVEL": ("DEBUG", "log_level", "debug", "verbose"),
}

MILLISECOND_FIELDS = {
    "connection_timeout",
    "keep_alive_interval",
    "cleanup_interval",
    "peer_timeout",
}

TURN_ENV = {
    "P2P_TURN_SERVERS": "turn:turn.example.com:3478,turn:turn.example.com:3478?transport=tcp",
    "P2P_TURN_USERNAME": "user",
    "P2P_TURN_PASSWORD": "pass",
}


class DefaultsTests(SynchronousTestCase):
    """What a configuration with no source holds."""

    def test_defaults_are_the_seeds(self) -> None:
        """With nothing set, the values are the seed's defaults, times in seconds."""
        config = build_config(environ={})
        self.assertEqual(config, P2PConfig())
        self.assertEqual(config.signaling_port, 8080)
        self.assertEqual(config.stun_servers, list(DEFAULT_STUN_SERVERS))
        self.assertEqual(
            (
                config.connection_timeout,
                config.keep_alive_interval,
                config.peer_timeout,
                config.cleanup_interval,
                config.max_retries,
            ),
            (30.0, 25.0, 300.0, 60.0, 3),
        )
        self.assertEqual((config.signaling_url, config.log_level), (None, "info"))

    def test_default_lists_not_shared(self) -> None:
        """Two configurations do not share their default server lists."""
        a, b = P2PConfig(), P2PConfig()
        a.stun_servers.append(("x", 1))
        self.assertEqual(b.stun_servers, list(DEFAULT_STUN_SERVERS))


class EnvironmentTests(SynchronousTestCase):
    """Each P2P_* variable: a good value is read, a bad one names the variable."""

    def test_every_variable_is_covered(self) -> None:
        """The tests below cover every variable of ENV_VARS."""
        self.assertEqual(set(ENV_VARS), set(ENV_CASES) | set(TURN_ENV))

    def test_good_values(self) -> None:
        """Each variable's good value lands in its field, in the field's unit."""
        for name, (good, field_name, expected, _) in ENV_CASES.items():
            config = build_config(environ={name: good})
            self.assertEqual(getattr(config, field_name), expected, name)

    def test_bad_values_name_the_variable(self) -> None:
        """Each variable's bad value raises ConfigError starting with the variable's name."""
        for name, (_, _, _, bad) in ENV_CASES.items():
            e = self.assertRaises(ConfigError, build_config, environ={name: bad})
            self.assertTrue(str(e).startswith(f"{name}: expected "), str(e))
            self.assertIn(repr(bad.strip()) if name != "P2P_STUN_SERVERS" else "port", str(e))

    def test_port_message(self) -> None:
        """The message says what was expected and what was found."""
        e = self.assertRaises(ConfigError, build_config, environ={"P2P_SIGNALING_PORT": "abc"})
        self.assertEqual(str(e), "P2P_SIGNALING_PORT: expected a port number 0-65535, got 'abc'")

    def test_booleans(self) -> None:
        """Booleans are true/false, 1/0, yes/no, in any case."""
        for text, value in [("true", True), ("1", True), ("YES", True), ("False", False)]:
            config = build_config(environ={"P2P_SIGNALING_ENABLED": text})
            self.assertIs(config.enable_signaling, value, text)

    def test_empty_is_unset(self) -> None:
        """A variable set to the empty string counts as unset."""
        config = build_config(environ={"P2P_SIGNALING_PORT": "", "LOG_LEVEL": " "})
        self.assertEqual((config.signaling_port, config.log_level), (8080, "info"))

    def test_warning_is_warn(self) -> None:
        """LOG_LEVEL=warning is read as warn."""
        self.assertEqual(build_config(environ={"LOG_LEVEL": "warning"}).log_level, "warn")

    def test_turn_servers(self) -> None:
        """Each URI of P2P_TURN_SERVERS becomes a server with the username and password."""
        config = build_config(environ=TURN_ENV)
        self.assertEqual(
            config.turn_servers,
            [
                TurnServer("turn.example.com", 3478, "udp", "user", "pass"),
                TurnServer("turn.example.com", 3478, "tcp", "user", "pass"),
            ],
        )

    def test_turn_bad_uri(self) -> None:
        """A TURN entry that is not a turn: URI is refused, naming P2P_TURN_SERVERS."""
        e = self.assertRaises(
            ConfigError,
            build_config,
            environ={**TURN_ENV, "P2P_TURN_SERVERS": "turn.example.com:3478"},
        )
        self.assertTrue(str(e).startswith("P2P_TURN_SERVERS: expected a TURN URI"), str(e))

    def test_turn_username_needs_password(self) -> None:
        """P2P_TURN_USERNAME without P2P_TURN_PASSWORD names the missing variable."""
        env = {**TURN_ENV}
        del env["P2P_TURN_PASSWORD"]
        e = self.assertRaises(ConfigError, build_config, environ=env)
        self.assertTrue(str(e).startswith("P2P_TURN_PASSWORD: "), str(e))
        env = {**TURN_ENV}
        del env["P2P_TURN_USERNAME"]
        e = self.assertRaises(ConfigError, build_config, environ=env)
        self.assertTrue(str(e).startswith("P2P_TURN_USERNAME: "), str(e))

    def test_turn_credentials_without_servers(self) -> None:
        """Credentials without P2P_TURN_SERVERS are a mistake, named as such."""
        e = self.assertRaises(ConfigError, build_config, environ={"P2P_TURN_PASSWORD": "pass"})
        self.assertEqual(str(e), "P2P_TURN_PASSWORD: set, but P2P_TURN_SERVERS is not")

    def test_turn_credentials_only_for_environment_servers(self) -> None:
        """Explicit TURN servers replace the environment's, credentials and all."""
        config = build_config({"turn_servers": ["turn:other.example.com"]}, environ=TURN_ENV)
        self.assertEqual(config.turn_servers, [TurnServer("other.example.com")])


class PrecedenceTests(SynchronousTestCase):
    """explicit > options > environment > defaults, field by field."""

    ENV = {"P2P_PEER_TIMEOUT": "100000", "P2P_SIGNALING_PORT": "9000", "LOG_LEVEL": "error"}

    def test_environment_over_defaults(self) -> None:
        """The environment overrides the defaults."""
        config = build_config(environ=self.ENV)
        self.assertEqual((config.peer_timeout, config.signaling_port), (100.0, 9000))

    def test_options_over_environment(self) -> None:
        """twistd options override the environment; fields they leave alone keep it."""
        config = build_config(options={"peer-timeout": 120.0, "log-level": None}, environ=self.ENV)
        self.assertEqual(
            (config.peer_timeout, config.signaling_port, config.log_level), (120.0, 9000, "error")
        )

    def test_explicit_over_options(self) -> None:
        """Explicit arguments override options and the environment."""
        config = build_config(
            {"peer_timeout": 5, "logLevel": "debug"},
            options={"peer-timeout": 120.0, "log-level": "warn"},
            environ=self.ENV,
        )
        self.assertEqual((config.peer_timeout, config.log_level), (5.0, "debug"))

    def test_none_is_not_given(self) -> None:
        """An explicit None falls through to the next source."""
        config = build_config({"peer_timeout": None}, environ=self.ENV)
        self.assertEqual(config.peer_timeout, 100.0)

    def test_option_flags(self) -> None:
        """--no-signaling turns signaling off whatever the environment says."""
        env = {"P2P_SIGNALING_ENABLED": "true"}
        self.assertFalse(build_config(options={"no-signaling": 1}, environ=env).enable_signaling)
        self.assertTrue(build_config(options={"no-signaling": 0}, environ=env).enable_signaling)
        self.assertFalse(
            build_config(options={"no-hole-punching": True}, environ={}).enable_hole_punching
        )

    def test_option_values_are_text_or_typed(self) -> None:
        """Options may hold strings (as typed) or parsed values; a bad one names the option."""
        config = build_config(options={"peer-timeout": "90", "stun-servers": "a:1"}, environ={})
        self.assertEqual((config.peer_timeout, config.stun_servers), (90.0, [("a", 1)]))
        e = self.assertRaises(ConfigError, build_config, options={"peer-timeout": "x"}, environ={})
        self.assertTrue(str(e).startswith("--peer-timeout: expected a positive number of seconds"))

    def test_bad_environment_fails_even_when_overridden(self) -> None:
        """A bad variable is reported even when an option would override it."""
        self.assertRaises(
            ConfigError,
            build_config,
            options={"peer-timeout": 10},
            environ={"P2P_PEER_TIMEOUT": "never"},
        )


class KeyTests(SynchronousTestCase):
    """Explicit keys: snake_case in seconds, the seed's camelCase in milliseconds."""

    def test_seed_example(self) -> None:
        """The seed's programmatic configuration, as written there, gives the seed's values."""
        config = build_config(
            {
                "signalingPort": 8080,
                "enableSignaling": True,
                "cleanupInterval": 60000,
                "peerTimeout": 300000,
                "enableHolePunching": True,
                "holePunchingPort": 0,
                "stunServers": [
                    {"host": "stun.l.google.com", "port": 19302},
                    {"host": "stun.cloudflare.com", "port": 3478},
                ],
                "turnServers": [
                    {
                        "urls": "turn:turn.example.com:3478",
                        "username": "user",
                        "credential": "pass",
                    }
                ],
                "connectionTimeout": 30000,
                "keepAliveInterval": 25000,
                "maxRetries": 3,
            },
            environ={},
        )
        expected = P2PConfig(
            turn_servers=[TurnServer("turn.example.com", 3478, "udp", "user", "pass")]
        )
        self.assertEqual(config, expected)

    def test_units(self) -> None:
        """connectionTimeout=10000 (ms) and connection_timeout=10 (s) are the same."""
        camel = build_config({"connectionTimeout": 10000, "keepAliveInterval": 60000}, environ={})
        snake = build_config({"connection_timeout": 10, "keep_alive_interval": 60.0}, environ={})
        self.assertEqual(camel, snake)
        self.assertEqual(camel.connection_timeout, 10.0)

    def test_every_field_has_both_names(self) -> None:
        """Every field can be given in snake_case and in the seed's camelCase."""
        default = P2PConfig()
        for name, value in asdict(default).items():
            head, *rest = name.split("_")
            camel = head + "".join(part.title() for part in rest)
            in_seed_unit = value * 1000 if name in MILLISECOND_FIELDS else value
            self.assertEqual(build_config({name: value}, environ={}), default, name)
            self.assertEqual(build_config({camel: in_seed_unit}, environ={}), default, camel)

    def test_both_names_refused(self) -> None:
        """One field under both of its names is an error."""
        e = self.assertRaises(
            ConfigError, build_config, {"peer_timeout": 1, "peerTimeout": 1000}, environ={}
        )
        self.assertIn("give it once", str(e))

    def test_unknown_key(self) -> None:
        """An unknown key is refused with a suggestion."""
        e = self.assertRaises(ConfigError, build_config, {"signallingPort": 1}, environ={})
        self.assertEqual(
            str(e), "signallingPort: not a configuration key (did you mean 'signalingPort'?)"
        )

    def test_bad_explicit_value_names_the_key(self) -> None:
        """A bad explicit value is named by its key as written."""
        e = self.assertRaises(ConfigError, build_config, {"signalingPort": True}, environ={})
        self.assertTrue(str(e).startswith("signalingPort: expected a port number"), str(e))
        e = self.assertRaises(ConfigError, build_config, {"max_retries": -1}, environ={})
        self.assertTrue(str(e).startswith("max_retries: expected a whole number"), str(e))

    def test_round_trip_through_asdict(self) -> None:
        """asdict() of a configuration builds the same configuration."""
        config = build_config(environ=TURN_ENV)
        self.assertEqual(build_config(asdict(config), environ={}), config)


class ServerFormTests(SynchronousTestCase):
    """STUN servers as tuples, dicts or strings; TURN servers in the seed's dict shape."""

    def stun(self, value: Any) -> list[tuple[str, int]]:
        return build_config({"stun_servers": value}, environ={}).stun_servers

    def test_stun_forms(self) -> None:
        """("host", port), {"host", "port"}, "host:port" and "[v6]:port" all work."""
        self.assertEqual(
            self.stun(
                [
                    ("a.example", 1),
                    ["b.example", 2],
                    {"host": "c.example", "port": 3},
                    "d.example:4",
                    "[2001:db8::1]:5",
                    "stun:e.example:6",
                    "f.example",
                ]
            ),
            [
                ("a.example", 1),
                ("b.example", 2),
                ("c.example", 3),
                ("d.example", 4),
                ("2001:db8::1", 5),
                ("e.example", 6),
                ("f.example", 3478),
            ],
        )

    def test_stun_single_values(self) -> None:
        """One pair on its own, or a comma-separated string, is a list of servers."""
        self.assertEqual(self.stun(("a", 1)), [("a", 1)])
        self.assertEqual(self.stun("a:1,b:2"), [("a", 1), ("b", 2)])

    def test_stun_bad_entries(self) -> None:
        """A bad entry is named by its index."""
        for bad in [[("a", 0)], [("a", "x")], [{"host": "a", "prt": 1}], ["2001:db8::1"], [""]]:
            e = self.assertRaises(ConfigError, build_config, {"stunServers": bad}, environ={})
            self.assertTrue(str(e).startswith("stunServers[0]: expected a STUN server"), str(e))
        self.assertRaises(ConfigError, build_config, {"stunServers": 3478}, environ={})

    def turn(self, value: Any) -> list[TurnServer]:
        return build_config({"turnServers": value}, environ={}).turn_servers

    def test_turn_dict_shapes(self) -> None:
        """urls as a string or a list; credentials optional but together."""
        self.assertEqual(
            self.turn(
                [
                    {"urls": "turn:a.example", "username": "u", "credential": "p"},
                    {"urls": ["turn:b.example:3478?transport=tcp", "turns:b.example:5349"]},
                    "turn:u:p@c.example",
                    TurnServer("2001:db8::1", 3478, "udp", "u", "p"),
                ]
            ),
            [
                TurnServer("a.example", 3478, "udp", "u", "p"),
                TurnServer("b.example", 3478, "tcp"),
                TurnServer("b.example", 5349, "tls"),
                TurnServer("c.example", 3478, "udp", "u", "p"),
                TurnServer("2001:db8::1", 3478, "udp", "u", "p"),
            ],
        )

    def test_turn_errors(self) -> None:
        """Bad TURN entries are named down to the part that is wrong."""
        cases = {
            "turnServers[0].urls[1]": [{"urls": ["turn:a", "stun:b"]}],
            "turnServers[0].credential": [{"urls": "turn:a", "username": "u"}],
            "turnServers[0].username": [{"urls": "turn:a", "credential": "p"}],
            "turnServers[1].urls": ["turn:a", {"urls": []}],
            "turnServers[0]": [{"urls": "turn:a", "password": "p"}],
            "turnServers[0].urls[0]": ["turn:a:99999"],
        }
        for where, value in cases.items():
            e = self.assertRaises(ConfigError, build_config, {"turnServers": value}, environ={})
            self.assertTrue(str(e).startswith(where + ": expected"), str(e))

    def test_turn_as_ice_server(self) -> None:
        """as_ice_server() gives back the seed's dict form."""
        entry = {
            "urls": ["turn:a.example:3478?transport=udp"],
            "username": "u",
            "credential": "s3cret",
        }
        self.assertEqual(self.turn([entry])[0].as_ice_server(), entry)
        self.assertNotIn("s3cret", repr(self.turn([entry])[0]))


class ValidateTests(SynchronousTestCase):
    """P2PConfig.validate() on objects built by hand."""

    def test_defaults_valid(self) -> None:
        """The defaults pass."""
        P2PConfig().validate()

    def test_bad_fields(self) -> None:
        """Each bad field is named, with what it expected."""
        cases: dict[str, Any] = {
            "signaling_port": 70000,
            "enable_signaling": "yes",
            "enable_hole_punching": 1,
            "hole_punching_port": "0",
            "stun_servers": ["a:1"],
            "turn_servers": [{"urls": "turn:a"}],
            "connection_timeout": 0,
            "keep_alive_interval": float("nan"),
            "max_retries": 1.5,
            "cleanup_interval": True,
            "peer_timeout": -1,
            "signaling_url": "ftp://x",
            "signaling_interface": "localhost",
            "log_level": "WARN",
            "identity_dir": 7,
        }
        self.assertEqual(set(cases), set(asdict(P2PConfig())))
        for name, value in cases.items():
            config = P2PConfig(**{name: value})
            e = self.assertRaises(ConfigError, config.validate)
            self.assertTrue(str(e).startswith(f"{name}: expected "), str(e))

    def test_signaling_endpoint(self) -> None:
        """The in-process signaling listener as a strports string, IPv6 escaped."""
        self.assertEqual(P2PConfig().signaling_endpoint(), "tcp:8080")
        self.assertEqual(
            P2PConfig(signaling_port=0, signaling_interface="127.0.0.1").signaling_endpoint(),
            "tcp:0:interface=127.0.0.1",
        )
        self.assertEqual(
            P2PConfig(signaling_interface="::1").signaling_endpoint(),
            "tcp6:8080:interface=\\:\\:1",
        )
