"""Tests for holepunch.daemon.tap: the daemon's options and service tree, and the twistd plugin."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.daemon.tap import Options, makeService
from holepunch.stun.client import listen_stun
from holepunch.stun.server import SOFTWARE
from holepunch.stun.wire import Address
from lab.coturn import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class OptionsTests(SynchronousTestCase):
    """Parsing and validating the daemon's options."""

    def test_defaults(self) -> None:
        """Defaults: STUN on 3478 of every interface, signaling on tcp:8080."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["stun-port"], 3478)
        self.assertEqual(options["stun-interface"], "")
        self.assertEqual(options["signaling"], "tcp:8080")
        self.assertIsNone(options["stun-alternate-address"])

    def test_alternate_needs_interface(self) -> None:
        """RFC 5780 mode needs the primary address named explicitly."""
        options = Options()
        e = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--stun-alternate-address", "127.0.0.2"]
        )
        self.assertIn("--stun-interface", str(e))

    def test_bad_port(self) -> None:
        """A port that is not a number in range is refused with the option's name."""
        for bad in ["70000", "abc"]:
            self.assertRaises(usage.UsageError, Options().parseOptions, ["--stun-port", bad])

    def test_same_ports_refused(self) -> None:
        """The alternate port must differ from the primary port."""
        self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            [
                "--stun-interface=127.0.0.1",
                "--stun-alternate-address=127.0.0.2",
                "--stun-port=4000",
                "--stun-alternate-port=4000",
            ],
        )


class EndpointOptionTests(SynchronousTestCase):
    """--signaling and --http are checked before anything starts."""

    def test_bad_listeners_refused_with_the_reason(self) -> None:
        """A malformed description, an unknown kind, and TLS whose files are missing:
        a usage error naming the option and why, instead of a traceback at start."""
        missing = os.path.join(self.mktemp(), "key.pem")
        for option, value, why in [
            ("--signaling", "tcp:80x", "bad port"),
            ("--http", "nosuch:1", "nosuch"),
            ("--signaling", f"ssl:8443:privateKey={missing}:certKey={missing}", "key.pem"),
        ]:
            e = self.assertRaises(usage.UsageError, Options().parseOptions, [f"{option}={value}"])
            self.assertIn(option, str(e))
            self.assertIn(why, str(e))

    def test_tls_listener_accepted(self) -> None:
        """An ``ssl:`` description with files that load passes (and --no-signaling skips
        the check)."""
        from tests.tls_helpers import make_pki

        pki = make_pki(self.mktemp())
        options = Options()
        options.parseOptions([f"--signaling=ssl:0:privateKey={pki['key']}:certKey={pki['cert']}"])
        self.assertTrue(options["signaling"].startswith("ssl:"))
        Options().parseOptions(["--no-signaling", "--signaling=nosuch:1"])


class StunSoftwareOptionTests(SynchronousTestCase):
    """SOFTWARE in STUN answers is off unless --stun-software asks for it."""

    def responder_software(self, args: list[str]) -> Any:
        options = Options(environ={})
        options.parseOptions(["--no-signaling", "--stun-interface", "127.0.0.1", *args])
        top: Any = makeService(options, reactor)
        return top.getServiceNamed("stun").getServiceNamed("stun").responder.software

    def test_software_off_by_default(self) -> None:
        """Without the flag the STUN responder sends no SOFTWARE; with it, holepunch's version."""
        self.assertIsNone(self.responder_software([]))
        self.assertEqual(self.responder_software(["--stun-software"]), SOFTWARE)


class MakeServiceTests(TestCase):
    """The service tree answers STUN on real sockets."""

    @defer.inlineCallbacks
    def test_stun_service_answers_on_both_ports(self) -> Any:
        """makeService's STUN server answers a Binding on the configured port and, with one
        address, on the second port too (a plain second destination: no OTHER-ADDRESS)."""
        port = free_port()
        second = free_port()
        options = Options()
        options.parseOptions(
            ["--stun-interface", "127.0.0.1", "--stun-port", str(port),
             "--stun-alternate-port", str(second), "--no-signaling"]
        )  # fmt: skip
        service = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        client = listen_stun(reactor, "127.0.0.1")
        self.addCleanup(client.close)
        for target in (port, second):
            result = yield client.binding(Address("127.0.0.1", target))
            self.assertEqual(result.mapped, client.local)
            self.assertIsNone(result.other_address)


class PluginTests(TestCase):
    """``twistd holepunch`` is found through the plugin file."""

    @defer.inlineCallbacks
    def test_twistd_help_lists_options(self) -> Any:
        """`twistd holepunch --help` lists the daemon's options."""
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "twisted", "holepunch", "--help"],
            env=dict(os.environ),
            path=ROOT,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"--stun-alternate-address", out)
        self.assertIn(b"--signaling", out)
