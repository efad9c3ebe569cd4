"""IPv6 and dual stack, over real sockets on ``::1`` and ``127.0.0.1``: the daemon's STUN
server (UDP and TCP) and signaling server on both families by default, one family when
told; ``yourAddress`` of the right family; ``holepunch nat-check`` and ``--discover-nat``
on both families; ``--workers`` on both; and a host without IPv6 (a network namespace with
``disable_ipv6=1``) that still starts on IPv4 and says so."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import defer, reactor, threads, utils
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from holepunch.daemon.tap import Options
from holepunch.nat.discovery import discover_families
from holepunch.nat.model import NatInfo
from holepunch.reuseport import parse_tcp_description
from holepunch.signaling.client import SignalingClient
from holepunch.signaling.server import describe_address
from holepunch.stun.client import binding_over_tcp, binding_request, listen_stun
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import StunServerService
from holepunch.stun.wire import Address, Attr, Method
from lab.coturn import free_port, free_port_pair
from lab.natlab import TWISTD, lab_fixture
from tests.redis_helpers import REDIS_SERVER
from tests.resolver_helpers import NameReactor
from tests.signaling_helpers import needs_ipv6, next_event, raw_client_factory, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def xor_mapped_family(message: StunMessage) -> int:
    """The family byte of a response's XOR-MAPPED-ADDRESS (0x01 IPv4, 0x02 IPv6)."""
    value = message.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None
    return value[1]


class StunBothFamiliesTests(TestCase):
    """The daemon's STUN server answers both families by default, one when told."""

    def setUp(self) -> None:
        needs_ipv6()

    def stun(self, *args: str) -> StunServerService:
        top = start_daemon(
            self, "--stun-port=0", "--stun-alternate-port=0", "--no-signaling", *args
        )
        service: StunServerService = top.status.stun
        return service

    async def udp_binding(self, interface: str, server: Address) -> tuple[StunMessage, Address]:
        client = listen_stun(reactor, interface)
        self.addCleanup(client.close)
        response = await client.transactions.request(binding_request(), server)
        return response.message, client.local

    async def test_v6_client_udp(self) -> None:
        """A Binding from [::1] over UDP gets its own [::1]:port, in an IPv6 (0x02) XOR-MAPPED-ADDRESS."""
        port = self.stun().responder.primary.port
        message, local = await self.udp_binding("::1", Address("::1", port))
        self.assertEqual(message.get_address(Attr.XOR_MAPPED_ADDRESS), local)
        self.assertEqual(local.host, "::1")
        self.assertEqual(xor_mapped_family(message), 0x02)

    async def test_v4_client_udp(self) -> None:
        """A Binding from 127.0.0.1 to the same daemon gets an IPv4 (0x01) XOR-MAPPED-ADDRESS."""
        port = self.stun().responder.primary.port
        message, local = await self.udp_binding("127.0.0.1", Address("127.0.0.1", port))
        self.assertEqual(message.get_address(Attr.XOR_MAPPED_ADDRESS), local)
        self.assertEqual(xor_mapped_family(message), 0x01)

    async def test_both_families_tcp(self) -> None:
        """STUN over TCP answers [::1] and 127.0.0.1 clients with their own address and port."""
        port = self.stun().responder.primary.port
        for host in ("::1", "127.0.0.1"):
            bind = Address(host, free_port(hosts=(host,)))
            result = await binding_over_tcp(
                reactor, Address(host, port), timeout=10, bind_address=bind
            )
            self.assertEqual(result.mapped, bind)

    async def test_listening_sockets(self) -> None:
        """Every interface means 0.0.0.0 and :: on each port; an explicit address, that one only."""
        both = self.stun()
        port, second = both.responder.primary.port, both.responder.second_port
        self.assertEqual(
            sorted(both.listening_on(), key=str),
            sorted([Address(h, p) for h in ("0.0.0.0", "::") for p in (port, second)], key=str),
        )
        v4 = self.stun("--stun-interface=127.0.0.1")
        self.assertEqual({a.host for a in v4.listening_on()}, {"127.0.0.1"})
        v6 = self.stun("--stun-interface=::1")
        self.assertEqual({a.host for a in v6.listening_on()}, {"::1"})
        message, local = await self.udp_binding("::1", v6.responder.primary)
        self.assertEqual(message.get_address(Attr.XOR_MAPPED_ADDRESS), local)

    async def test_v4_wildcard_is_v4_only(self) -> None:
        """--stun-interface 0.0.0.0 listens on IPv4 only: nothing answers on [::1]."""
        service = self.stun("--stun-interface=0.0.0.0")
        self.assertEqual({a.host for a in service.listening_on()}, {"0.0.0.0"})
        with self.assertRaises(ConnectionRefusedError):
            await binding_over_tcp(reactor, Address("::1", service.responder.primary.port))


class OptionTests(SynchronousTestCase):
    """Interface options take either family and refuse what is not an address."""

    def parse(self, *args: str) -> Options:
        options = Options(environ={})
        options.parseOptions(list(args))
        return options

    def test_v6_interface_accepted(self) -> None:
        """--stun-interface takes an IPv6 address (normalised), and a v6 alternate with it."""
        options = self.parse("--stun-interface=2001:DB8::1", "--stun-alternate-address=2001:db8::2")
        self.assertEqual(options["stun-interface"], "2001:db8::1")

    def test_bad_interface_refused(self) -> None:
        """A --stun-interface that is no IP address, or an alternate of the other family, is a usage error."""
        with self.assertRaises(usage.UsageError):
            self.parse("--stun-interface=example.org")
        with self.assertRaises(usage.UsageError):
            self.parse("--stun-interface=192.0.2.1", "--stun-alternate-address=2001:db8::2")

    def test_tcp_descriptions(self) -> None:
        """tcp:PORT is every interface (both families), tcp6:PORT is ::, escaped v6 interfaces parse."""
        self.assertEqual(parse_tcp_description("tcp:80"), (80, "", 50))
        self.assertEqual(parse_tcp_description("tcp6:80"), (80, "::", 50))
        self.assertEqual(
            parse_tcp_description("tcp6:80:interface=\\:\\:1:backlog=7"), (80, "::1", 7)
        )


class YourAddressTests(SynchronousTestCase):
    """``yourAddress`` is of the client's real family."""

    def test_mapped_v4_is_v4(self) -> None:
        """An IPv4-mapped address (a dual-stack socket's view of an IPv4 client) is reported as IPv4."""
        from twisted.internet.address import IPv6Address

        self.assertEqual(
            describe_address(IPv6Address("TCP", "::ffff:192.0.2.9", 5)),
            {"address": "192.0.2.9", "port": 5, "family": "IPv4"},
        )

    def test_forwarded_forms(self) -> None:
        """X-Forwarded-For entries: bare v6, bracketed v6 with port, mapped v4, v4 with port."""
        cases = {
            "2001:db8::7": ("2001:db8::7", "IPv6"),
            "[2001:db8::7]:443": ("2001:db8::7", "IPv6"),
            "::ffff:198.51.100.4": ("198.51.100.4", "IPv4"),
            "198.51.100.4:5000": ("198.51.100.4", "IPv4"),
        }
        for forwarded, (address, family) in cases.items():
            self.assertEqual(
                describe_address(None, forwarded), {"address": address, "family": family}
            )


class SignalingBothFamiliesTests(TestCase):
    """The signaling server listens on both families; clients reach it at ws://[::1]:port/."""

    def setUp(self) -> None:
        needs_ipv6()

    async def signaling(self, *args: str) -> int:
        top = start_daemon(self, "--no-stun", *args)
        port = await top.status.signaling.when_listening()
        return int(port.getHost().port)

    async def welcome(self, url: str) -> dict[str, Any]:
        client = SignalingClient(url, "p" + secrets.token_hex(4), reactor=reactor)
        welcome = next_event(client, "welcome")
        client.startService()
        self.addCleanup(client.stopService)
        message = await welcome
        return dict(message["yourAddress"])

    async def test_your_address_per_family(self) -> None:
        """tcp:PORT: a client over [::1] is told ::1 (IPv6), one over 127.0.0.1 is told IPv4."""
        port = await self.signaling("--signaling=tcp:0")
        v6 = await self.welcome(f"ws://[::1]:{port}/")
        self.assertEqual((v6["address"], v6["family"]), ("::1", "IPv6"))
        v4 = await self.welcome(f"ws://127.0.0.1:{port}/")
        self.assertEqual((v4["address"], v4["family"]), ("127.0.0.1", "IPv4"))

    async def test_tcp6_is_v6_only(self) -> None:
        """tcp6:PORT listens on IPv6 only: [::1] is welcomed, 127.0.0.1 is refused."""
        port = await self.signaling("--signaling=tcp6:0")
        self.assertEqual((await self.welcome(f"ws://[::1]:{port}/"))["address"], "::1")
        endpoint = HostnameEndpoint(reactor, "127.0.0.1", port)
        with self.assertRaises(ConnectionRefusedError):
            await endpoint.connect(raw_client_factory(f"ws://127.0.0.1:{port}/"))

    async def test_forwarded_v6_over_real_socket(self) -> None:
        """Behind a trusted proxy, a bracketed IPv6 X-Forwarded-For becomes an IPv6 yourAddress."""
        port = await self.signaling("--signaling=tcp:0", "--trust-x-forwarded-for=1")
        factory = raw_client_factory(
            f"ws://[::1]:{port}/", {"X-Forwarded-For": "192.0.2.1, [2001:db8::7]:443"}
        )
        client = await HostnameEndpoint(reactor, "::1", port).connect(factory)
        self.addCleanup(client.transport.loseConnection)
        welcome = await client.next()
        self.assertEqual(welcome["yourAddress"], {"address": "2001:db8::7", "family": "IPv6"})


class HttpBothFamiliesTests(TestCase):
    """``--http tcp:PORT`` serves the status pages on both families, like signaling."""

    async def test_health_over_both_families(self) -> None:
        needs_ipv6()
        port = free_port()
        start_daemon(self, "--no-stun", "--no-signaling", f"--http=tcp:{port}")
        for host in ("127.0.0.1", "[::1]"):
            response = await Agent(reactor).request(
                b"GET", f"http://{host}:{port}/p2p/health".encode()
            )
            body = json.loads(await readBody(response))
            self.assertEqual((response.code, body["status"]), (200, "healthy"), host)


class HandshakeHostTests(TestCase):
    """The signaling client's handshake names an IPv6 server as ``[addr]:port``."""

    async def test_host_header_in_brackets(self) -> None:
        from twisted.internet.protocol import Factory, Protocol

        needs_ipv6()
        received: defer.Deferred[bytes] = defer.Deferred()

        class Recorder(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not received.called and b"\r\n\r\n" in data:
                    received.callback(data)
                    self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Recorder), interface="::1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        client = SignalingClient(f"ws://[::1]:{number}/", "p1", reactor=reactor)
        client.startService()
        self.addCleanup(client.stopService)
        request = await received
        self.assertIn(f"Host: [::1]:{number}\r\n".encode(), request)


class NatCheckBothFamiliesTests(TestCase):
    """``holepunch nat-check`` against a local daemon reports both families."""

    def setUp(self) -> None:
        needs_ipv6()

    def run_command(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        env = dict(os.environ, PYTHONPATH=ROOT)
        return utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "holepunch", "nat-check", "--timeout", "1", "--no-port-mapping", *args],
            env=env,
            path=ROOT,
            reactor=reactor,
        )

    async def test_both_families_reported(self) -> None:
        """Given a v4 and a [v6] server, --json reports each family: IPv6 public ::1, equal to the local address."""
        top = start_daemon(self, "--stun-port=0", "--stun-alternate-port=0", "--no-signaling")
        port = top.status.stun.responder.primary.port
        out, err, code = await self.run_command(
            "--json", "--stun-server", f"127.0.0.1:{port}", "--stun-server", f"[::1]:{port}"
        )
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual((data["family"], data["publicAddress"]), ("IPv4", "127.0.0.1"))
        v6 = data["families"]["IPv6"]
        self.assertEqual((v6["type"], v6["publicAddress"]), ("open", "::1"))
        self.assertEqual(v6["publicPort"], v6["localPort"])
        self.assertTrue(any("no NAT66" in e for e in v6["evidence"]), v6["evidence"])
        self.assertEqual(data["families"]["IPv4"]["publicAddress"], "127.0.0.1")

    async def test_family_without_server(self) -> None:
        """With only a [v6] server, the human report has an IPv6 section and says IPv4 had no server."""
        top = start_daemon(self, "--stun-port=0", "--stun-alternate-port=0", "--no-signaling")
        port = top.status.stun.responder.primary.port
        out, err, code = await self.run_command("--stun-server", f"[::1]:{port}")
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn("== IPv4 ==\nNo result: no IPv4 STUN server", text)
        self.assertIn("== IPv6 ==\nNAT type:         open", text)
        self.assertIn("Public address:   [::1]:", text)


ANY_ADDRESS = ("0.0.0.0", "::")
"""What the daemon's STUN server binds by default."""


class DiscoverNatBothFamiliesTests(TestCase):
    """``twistd holepunch --discover-nat`` checks both families, as nat-check does, against
    the daemon's own STUN server (every interface, both families) on 127.0.0.1 and ::1."""

    def setUp(self) -> None:
        needs_ipv6()

    def daemon(self, port: int, *args: str) -> Any:
        """A daemon whose STUN server answers on ``port`` and ``port`` + 1 (a lone
        server's second port, which discovery asks), both families."""
        return start_daemon(self, f"--stun-port={port}", f"--stun-alternate-port={port + 1}", *args)

    async def test_p2p_nat_reports_both_families(self) -> None:
        """/p2p/nat over HTTP: natInfo and strategy are IPv4's, families has IPv4's report
        and IPv6's: public ::1, its local address and port (no NAT66)."""
        port = free_port_pair(ANY_ADDRESS)
        top = self.daemon(
            port,
            "--signaling=tcp:0:interface=127.0.0.1",
            "--discover-nat",
            f"--nat-stun-servers=127.0.0.1:{port},[::1]:{port}",
        )
        await top.status.nat.when_finished()
        listening = await top.status.signaling.when_listening()
        url = f"http://127.0.0.1:{listening.getHost().port}/p2p/nat"
        response = await Agent(reactor).request(b"GET", url.encode())
        data = json.loads(await readBody(response))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            (data["natInfo"]["type"], data["natInfo"]["publicAddress"]), ("open", "127.0.0.1")
        )
        self.assertEqual(data["strategy"]["natType"], "open")
        v4, v6 = data["families"]["IPv4"], data["families"]["IPv6"]
        self.assertEqual(v4, {"family": "IPv4", **data["natInfo"]})
        self.assertEqual((v6["family"], v6["type"], v6["publicAddress"]), ("IPv6", "open", "::1"))
        self.assertEqual(v6["server"], f"[::1]:{port}")
        self.assertEqual(v6["publicPort"], v6["localPort"])
        self.assertTrue(any("no NAT66" in e for e in v6["evidence"]), v6["evidence"])

    async def test_one_family_configured(self) -> None:
        """With an IPv4 server only, families says IPv6 had no server; natInfo is IPv4's."""
        port = free_port_pair(ANY_ADDRESS)
        top = self.daemon(
            port, "--no-signaling", "--discover-nat", f"--nat-stun-servers=127.0.0.1:{port}"
        )
        await top.status.nat.when_finished()
        families = top.status.get_nat_families()
        self.assertEqual(families["IPv4"]["publicAddress"], "127.0.0.1")
        self.assertIn("no IPv6 STUN server", families["IPv6"]["error"])
        self.assertEqual(top.status.get_nat_info()["publicAddress"], "127.0.0.1")

    async def test_name_resolved_once(self) -> None:
        """A server name with A and AAAA records: both families checked against its
        addresses, the name looked up once for both."""
        port = free_port_pair(ANY_ADDRESS)
        self.daemon(port, "--no-signaling")
        named = NameReactor({"stun.test": ["127.0.0.1", "::1"]}, reactor)
        results = await discover_families(named, [("stun.test", port)])
        self.assertEqual(
            {f: r.public_address for f, r in results.items() if isinstance(r, NatInfo)},
            {4: "127.0.0.1", 6: "::1"},
        )
        self.assertEqual(named.nameResolver.asked, [("stun.test", (IPv4Address, IPv6Address))])


def stun_answers(host: str, port: int, count: int) -> int:
    """``count`` Binding requests to ``host``:``port``, each from its own socket; how
    many were answered with the socket's own address."""
    answered = 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(count):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.bind((host, 0))
            request = StunMessage.request(Method.BINDING)
            s.sendto(encode(request), (host, port))
            reply = decode(s.recv(2048))
            mapped = reply.get_address(Attr.XOR_MAPPED_ADDRESS)
            answered += mapped == Address(*s.getsockname()[:2])
    return answered


class TwistdTests(TestCase):
    """``twistd holepunch`` as a process: workers on both families; a host with no IPv6."""

    timeout = 120

    def launch(self, argv: list[str], wait_for: list[bytes]) -> defer.Deferred[list[bytes]]:
        """Start ``argv``; fires with its output lines once every ``wait_for`` was seen."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env["PYTHONPATH"] = ROOT
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        self.addCleanup(stop)
        lines: list[bytes] = []

        def read() -> list[bytes]:
            assert proc.stdout is not None
            waiting = list(wait_for)
            for line in iter(proc.stdout.readline, b""):
                lines.append(line)
                waiting = [w for w in waiting if w not in line]
                if not waiting:
                    # Keep the pipe from filling while the test runs.
                    threading.Thread(target=proc.stdout.read, daemon=True).start()
                    return lines
            raise AssertionError(b"twistd exited early:\n" + b"".join(lines))

        return threads.deferToThread(read)

    async def test_workers_both_families(self) -> None:
        """--workers 2 on the default interfaces: STUN answers on [::1] and 127.0.0.1, signaling welcomes [::1]."""
        needs_ipv6()
        if not os.path.exists(REDIS_SERVER):
            raise SkipTest("redis-server is not installed (apt-get install redis-server)")
        port, stun = free_port(), free_port()
        argv = [*TWISTD, "-n", "--pidfile=", "holepunch", "--workers=2",
                f"--signaling=tcp:{port}", f"--stun-port={stun}",
                "--stun-alternate-port=0"]  # fmt: skip
        await self.launch(argv, [b"worker 1: ", b"STUN server on 0.0.0.0"])
        for host in ("::1", "127.0.0.1"):
            answered = await threads.deferToThread(stun_answers, host, stun, 20)
            self.assertEqual(answered, 20, host)
        client = SignalingClient(f"ws://[::1]:{port}/", "w6", reactor=reactor, retry_initial=0.2)
        welcome = next_event(client, "welcome")
        client.startService()
        self.addCleanup(client.stopService)
        self.assertEqual((await welcome)["yourAddress"]["family"], "IPv6")

    async def test_host_without_ipv6(self) -> None:
        """In a namespace with disable_ipv6=1 the daemon starts on IPv4, logs why, and answers STUN there."""
        lab = lab_fixture(self)  # skips where the lab cannot run
        inside = lab.add_host("nov6", "open").argv  # an IPv4-only lab host: IPv6 is off
        argv = inside([*TWISTD, "-n", "--pidfile=", "holepunch", "--signaling=tcp:8080",
                      "--stun-port=3478"])  # fmt: skip
        lines = await self.launch(argv, [b"STUN server on", b"Site starting on"])
        log = b"".join(lines)
        self.assertIn(b"no IPv6 on this host", log)
        self.assertIn(b"STUN server on 0.0.0.0:3478, 0.0.0.0:3479 (UDP+TCP)", log)
        probe = inside([sys.executable, "-c",
                        "from tests.integration.test_dual_stack import stun_answers;"
                        "print(stun_answers('127.0.0.1', 3478, 3))"])  # fmt: skip
        result = await threads.deferToThread(
            subprocess.run, probe, cwd=ROOT, capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )  # fmt: skip
        self.assertEqual(result.stdout.strip(), b"3", result.stderr)
