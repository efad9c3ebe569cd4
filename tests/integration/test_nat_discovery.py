"""Tests for holepunch.nat.discovery and ``holepunch nat-check`` on loopback.

Loopback has no NAT, so these pin down the test sequence, the RFC 5780 plumbing and the
error paths; the NAT lab tests (tests/lab/test_natlab_natcheck.py) check the verdicts behind
real kernel NATs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from holepunch.nat.discovery import DiscoveryTimers, discover_nat
from holepunch.nat.model import Behavior, NatType, PortAllocation
from holepunch.stun.client import NoStunServerAnswered, RetransmissionPolicy, listen_stun
from holepunch.stun.server import StunResponder, StunServerService
from holepunch.stun.wire import Address
from holepunch.testing.loopback import start_stun_server

FAST = DiscoveryTimers(
    answered=RetransmissionPolicy(0.05, 3, 4),
    filtered=RetransmissionPolicy(0.05, 2, 2),
    hairpin=RetransmissionPolicy(0.05, 2, 2),
    tcp_timeout=1.0,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LoopbackDiscoveryTests(TestCase):
    """Discovery against our own server on 127.0.0.1 / 127.0.0.2."""

    def server(self, alternate: bool = True) -> StunServerService:
        return start_stun_server(self, reactor, rfc5780=alternate)

    @defer.inlineCallbacks
    def test_rfc5780_server_no_nat(self) -> Any:
        """With an RFC 5780 server and no NAT: open, endpoint-independent both ways, hairpinning."""
        svc = self.server()
        progress: list[str] = []
        info = yield defer.ensureDeferred(
            discover_nat(
                reactor,
                [svc.responder.primary],
                interface="127.0.0.1",
                timers=FAST,
                progress=progress.append,
            )
        )
        self.assertEqual(info.type, NatType.OPEN)
        self.assertEqual(info.mapping, Behavior.ENDPOINT_INDEPENDENT)
        self.assertEqual(info.filtering, Behavior.ENDPOINT_INDEPENDENT)
        self.assertTrue(info.rfc5780)
        self.assertIs(info.hairpinning, True)
        self.assertEqual(info.port_allocation, PortAllocation.PRESERVING)
        self.assertEqual((info.public_address, info.public_port), ("127.0.0.1", info.local_port))
        self.assertTrue(any("Filtering" in line for line in progress))
        # Every test sent through the server: requests from the mapping, filtering and
        # allocation sockets all arrived.
        self.assertGreaterEqual(svc.responder.stats.requests, 6)

    @defer.inlineCallbacks
    def test_plain_server_reports_what_it_cannot_measure(self) -> Any:
        """A server without RFC 5780: filtering unknown, with a note saying why."""
        svc = self.server(alternate=False)
        info = yield defer.ensureDeferred(
            discover_nat(reactor, [svc.responder.primary], interface="127.0.0.1", timers=FAST)
        )
        self.assertFalse(info.rfc5780)
        self.assertEqual(info.filtering, Behavior.UNKNOWN)
        self.assertTrue(any("RFC 5780" in note for note in info.notes), info.notes)
        self.assertEqual(info.type, NatType.OPEN)

    @defer.inlineCallbacks
    def test_two_plain_servers_measure_mapping(self) -> Any:
        """Two plain servers on different addresses measure mapping (endpoint-independent here)."""
        a = self.server(alternate=False)
        b_responder = StunResponder(Address("127.0.0.2", 0))
        b = StunServerService(b_responder, reactor)
        b.startService()
        self.addCleanup(b.stopService)
        info = yield defer.ensureDeferred(
            discover_nat(
                reactor,
                [a.responder.primary, b.responder.primary],
                interface="127.0.0.1",
                timers=FAST,
            )
        )
        self.assertEqual(info.mapping, Behavior.ENDPOINT_INDEPENDENT)

    def consecutive_servers(self) -> tuple[StunServerService, StunServerService]:
        """Two plain servers on 127.0.0.1, on ports p and p + 1 (as the daemon's 3478/3479)."""
        for _ in range(20):
            first = self.server(alternate=False)
            port = first.responder.primary.port
            second = StunServerService(StunResponder(Address("127.0.0.1", port + 1)), reactor)
            try:
                second.startService()
            except CannotListenError:
                continue
            self.addCleanup(second.stopService)
            return first, second
        raise self.failureException("no two consecutive free UDP ports")

    @defer.inlineCallbacks
    def test_lone_server_second_port(self) -> Any:
        """Given one server, its port + 1 is asked too: two destinations measure mapping,
        and the report says so (evidence) and what one address cannot tell (notes)."""
        first, second = self.consecutive_servers()
        info = yield defer.ensureDeferred(
            discover_nat(reactor, [first.responder.primary], interface="127.0.0.1", timers=FAST)
        )
        self.assertEqual(info.mapping, Behavior.ENDPOINT_INDEPENDENT)
        self.assertGreaterEqual(second.responder.stats.requests, 1)
        port = first.responder.primary.port
        [mapping] = [e for e in info.evidence if e.startswith("mapping: ")]
        self.assertIn(f"127.0.0.1:{port}, 127.0.0.1:{port + 1}", mapping)
        self.assertTrue(any("second address" in note for note in info.notes), info.notes)

    @defer.inlineCallbacks
    def test_no_server_answers(self) -> Any:
        """When nothing answers over UDP or TCP the error names each server."""
        silent = listen_stun(reactor, "127.0.0.1")
        address = silent.local
        yield silent.close()
        e = yield self.assertFailure(
            defer.ensureDeferred(
                discover_nat(reactor, [address], interface="127.0.0.1", timers=FAST)
            ),
            NoStunServerAnswered,
        )
        self.assertIn(f"{address.host}:{address.port}", str(e))
        self.assertIn("TCP", str(e))


class NatCheckCommandTests(TestCase):
    """``holepunch nat-check`` as a user runs it (a real subprocess)."""

    def run_command(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "holepunch", "nat-check", *args],
            env=env,
            path=ROOT,
            reactor=reactor,
        )

    @defer.inlineCallbacks
    def test_json_is_one_object(self) -> Any:
        """--json prints exactly one JSON object with the documented fields, and exits 0."""
        responder = start_stun_server(self, reactor).responder
        out, err, code = yield self.run_command(
            "--json",
            "--interface",
            "127.0.0.1",
            "--timeout",
            "1",
            "--stun-server",
            f"127.0.0.1:{responder.primary.port}",
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 1, out)
        data = json.loads(lines[0])
        for key in [
            "type",
            "mapping",
            "filtering",
            "publicAddress",
            "publicPort",
            "localAddress",
            "localPort",
            "portAllocation",
            "portDelta",
            "hairpinning",
            "strategy",
        ]:
            self.assertIn(key, data)
        self.assertEqual(data["type"], "open")
        self.assertEqual(data["publicAddress"], "127.0.0.1")

    @defer.inlineCallbacks
    def test_human_report(self) -> Any:
        """Without --json the report is readable and progress goes to stderr."""
        responder = start_stun_server(self, reactor, rfc5780=False).responder
        out, err, code = yield self.run_command(
            "--interface",
            "127.0.0.1",
            "--timeout",
            "1",
            "--stun-server",
            f"127.0.0.1:{responder.primary.port}",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"NAT type:         open", out)
        self.assertIn(b"Note: filtering not measured", out)
        self.assertIn(b"Binding test", err)

    @defer.inlineCallbacks
    def test_no_answer_one_line_reason(self) -> Any:
        """No server answering: non-zero exit and one line on stderr, nothing on stdout."""
        silent = listen_stun(reactor, "127.0.0.1")
        port = silent.local.port
        yield silent.close()
        out, err, code = yield self.run_command(
            "--json",
            "--interface",
            "127.0.0.1",
            "--timeout",
            "0.5",
            "--stun-server",
            f"127.0.0.1:{port}",
        )
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertEqual(len(err.decode().strip().splitlines()), 1, err)
        self.assertIn(b"no STUN server answered", err)

    @defer.inlineCallbacks
    def test_bad_server_argument(self) -> Any:
        """A malformed --stun-server is refused with exit status 2."""
        out, err, code = yield self.run_command("--stun-server", "host:notaport")
        self.assertEqual(code, 2)
        self.assertIn(b"bad port", err)
