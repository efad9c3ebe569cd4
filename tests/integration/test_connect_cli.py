"""``holepunch connect``, ``send`` and ``receive`` on loopback: success, and failures
that name their stage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from holepunch.signaling.iceservers import IceServerHints
from holepunch.stun.server import StunResponder
from holepunch.stun.wire import Address
from holepunch.testing.loopback import start_signaling_server, start_stun_server
from lab.coturn import free_port
from lab.natlab import lab_env
from lab.peers import ConnectProcess
from tests.signaling_helpers import hold_join_until_offered, needs_ipv6


class Command:
    """One ``holepunch`` command with binary stdin (fed from ``data``, then closed) and
    stdout and stderr collected whole; :meth:`finish` waits and returns its status."""

    def __init__(self, args: Sequence[str], data: bytes = b"") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "holepunch", *args],
            env=lab_env(None),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = b""
        self.stderr = ""
        self._threads = [
            threading.Thread(target=self._feed, args=(data,), daemon=True),
            threading.Thread(target=self._collect, args=(True,), daemon=True),
            threading.Thread(target=self._collect, args=(False,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except OSError:
            pass

    def _collect(self, is_stdout: bool) -> None:
        stream = self.proc.stdout if is_stdout else self.proc.stderr
        assert stream is not None
        got = stream.read()
        if is_stdout:
            self.stdout = got
        else:
            self.stderr = got.decode(errors="replace")

    def finish(self, timeout: float) -> int:
        """Wait for exit (kill after ``timeout``) and for all its output."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        for t in self._threads:
            t.join(10)
        return code

    def kill(self) -> None:
        """Stop it now."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class ConnectCommandTests(TestCase):
    """The command as a user runs it, against a signaling server on 127.0.0.1."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    def start(self, *args: str) -> ConnectProcess:
        proc = ConnectProcess(None, ["--host-address", "127.0.0.1", *args])
        self.addCleanup(proc.kill)
        return proc

    def command(self, args: Sequence[str], data: bytes = b"") -> Command:
        proc = Command([*args, "--host-address", "127.0.0.1"], data)
        self.addCleanup(proc.kill)
        return proc

    @defer.inlineCallbacks
    def test_dual_stack_peers_connect_over_ipv6(self) -> Any:
        """Both commands offer 127.0.0.1 and ::1: the encrypted stream runs over IPv6
        (RFC 8421: IPv6 first where both work), and --json says so."""
        needs_ipv6()
        b = self.start("--signaling", self.url, "--id", "bob", "--accept", "--json",
                       "--host-address", "::1")  # fmt: skip
        a = self.start("--signaling", self.url, "--id", "alice", "--to", "bob", "--json",
                       "--host-address", "::1")  # fmt: skip

        def talk() -> tuple[dict[str, Any], list[str], int, int]:
            info_a, _ = a.info(20), b.info(20)
            a.send_lines(["over IPv6"])
            got_b = b.read_lines(1, 10)
            a.end_input()
            b.end_input()
            return info_a, got_b, a.wait(10), b.wait(10)

        info_a, got_b, code_a, code_b = yield threads.deferToThread(talk)
        self.assertEqual(info_a["security"], "quic-tls1.3")
        self.assertRegex(info_a["remote"], r"^\[::1\]:\d+$")
        self.assertEqual(got_b, ["over IPv6"])
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)

    @defer.inlineCallbacks
    def test_lines_both_ways_and_end(self) -> Any:
        """Two commands connect, carry lines both ways (empty lines too) on the stream, and
        both exit 0 once both inputs ended; --json names the security and both
        fingerprints, each the other side's peer fingerprint."""
        b = self.start("--signaling", self.url, "--id", "bob", "--accept", "--json")
        a = self.start("--signaling", self.url, "--id", "alice", "--to", "bob", "--json")

        def talk() -> tuple[dict[str, Any], dict[str, Any], list[str], list[str], int, int]:
            info_a, info_b = a.info(20), b.info(20)
            a.send_lines(["hello", "", "from alice"])
            b.send_lines(["hi"])
            got_b = b.read_lines(3, 10)
            got_a = a.read_lines(1, 10)
            a.end_input()
            b.end_input()
            return info_a, info_b, got_a, got_b, a.wait(10), b.wait(10)

        info_a, info_b, got_a, got_b, code_a, code_b = yield threads.deferToThread(talk)
        self.assertEqual(info_a["method"], "direct")
        self.assertEqual(info_a["remote"], info_b["local"])
        self.assertLessEqual({"method", "local", "remote", "elapsed_ms", "rtt_ms"}, set(info_a))
        self.assertEqual((info_a["security"], info_b["security"]), ("quic-tls1.3",) * 2)
        self.assertTrue(info_a["fingerprint"].startswith("sha-256 "))
        self.assertNotEqual(info_a["fingerprint"], info_b["fingerprint"])
        self.assertEqual(info_a["peer_fingerprint"], info_b["fingerprint"])
        self.assertEqual(info_b["peer_fingerprint"], info_a["fingerprint"])
        self.assertEqual(got_b, ["hello", "", "from alice"])
        self.assertEqual(got_a, ["hi"])
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)

    @defer.inlineCallbacks
    def test_binary_stream_both_ways_with_half_close(self) -> Any:
        """4 MiB of random bytes each way arrive byte-exact: each side's input ends when
        it ends (a half-close), and both exit 0 once both directions are done."""
        to_b, to_a = os.urandom(4 << 20), os.urandom(4 << 20) + b"\0\r\n\xff"
        b = self.command(["connect", "--signaling", self.url, "--id", "bob", "--accept"], to_a)
        a = self.command(
            ["connect", "--signaling", self.url, "--id", "alice", "--to", "bob", "--json"], to_b
        )
        code_a, code_b = yield threads.deferToThread(lambda: (a.finish(60), b.finish(60)))
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)
        self.assertEqual(hashlib.sha256(b.stdout).hexdigest(), hashlib.sha256(to_b).hexdigest())
        # --json: one line of JSON, then the peer's bytes and nothing else; the events
        # (here the closing counters) go to stderr.
        first, _, rest = a.stdout.partition(b"\n")
        self.assertEqual(json.loads(first)["security"], "quic-tls1.3")
        self.assertEqual(hashlib.sha256(rest).hexdigest(), hashlib.sha256(to_a).hexdigest())
        closing = json.loads(a.stderr.strip().splitlines()[-1])
        self.assertEqual(closing["event"], "closed")
        self.assertGreater(closing["bytes_received"], len(to_a))
        self.assertGreater(closing["bytes_sent"], len(to_b))
        self.assertEqual(closing["dropped_unauthenticated"], 0)

    @defer.inlineCallbacks
    def test_one_side_sends_nothing(self) -> Any:
        """An empty input on the offerer still opens the stream: the acceptor's bytes
        arrive, and both exit 0."""
        b = self.command(
            ["connect", "--signaling", self.url, "--id", "bob", "--accept"], b"only bob"
        )
        a = self.command(["connect", "--signaling", self.url, "--id", "alice", "--to", "bob"])
        code_a, code_b = yield threads.deferToThread(lambda: (a.finish(30), b.finish(30)))
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)
        self.assertEqual((a.stdout, b.stdout), (b"only bob", b""))

    @defer.inlineCallbacks
    def test_datagram_lines_and_end_marker(self) -> Any:
        """--datagram carries each line as one encrypted datagram; the end of one side's
        input ends both commands (exit 0)."""
        b = self.start("--signaling", self.url, "--id", "bob", "--accept", "--datagram")
        a = self.start("--signaling", self.url, "--id", "alice", "--to", "bob", "--datagram",
                       "--json")  # fmt: skip

        def talk() -> tuple[dict[str, Any], list[str], list[str], int, int]:
            info_a = a.info(20)
            a.send_lines(["one", "", "three"])
            got_b = b.read_lines(3, 10)
            b.send_lines(["back"])
            got_a = a.read_lines(1, 10)
            a.end_input()
            return info_a, got_a, got_b, a.wait(10), b.wait(10)

        info_a, got_a, got_b, code_a, code_b = yield threads.deferToThread(talk)
        self.assertEqual(info_a["security"], "quic-tls1.3")
        self.assertEqual(got_b, ["one", "", "three"])
        self.assertEqual(got_a, ["back"])
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)

    @defer.inlineCallbacks
    def test_only_the_signaling_url(self) -> Any:
        """Given only --signaling, both commands use the STUN server the signaling server
        names in welcome's iceServers (here a loopback STUN server on two ports)."""
        stun = start_stun_server(self, reactor, rfc5780=False, responder=StunResponder(
            Address("127.0.0.1", 0), second_port=0))  # fmt: skip
        ports = tuple(a.port for a in stun.responder.local_addresses())
        _, url = yield defer.ensureDeferred(
            start_signaling_server(
                self, reactor, ice_servers=IceServerHints(stun_ports=ports, host="127.0.0.1")
            )
        )
        b = self.start("--signaling", url, "--id", "bob", "--accept", "--json", "--no-tcp")
        a = self.start("--signaling", url, "--id", "alice", "--to", "bob", "--json", "--no-tcp")

        def talk() -> tuple[dict[str, Any], int, int]:
            info_a = a.info(20)
            b.info(20)
            a.end_input()
            b.end_input()
            return info_a, a.wait(10), b.wait(10)

        info_a, code_a, code_b = yield threads.deferToThread(talk)
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)
        # Each side asked both advertised ports (server-reflexive and mapping samples).
        self.assertGreaterEqual(stun.responder.stats.requests, 4)
        self.assertEqual(info_a["method"], "direct")

    @defer.inlineCallbacks
    def test_signaling_unreachable(self) -> Any:
        """No signaling server: exit 1 and one stderr line naming the signaling stage."""
        url = f"ws://127.0.0.1:{free_port()}/"  # nobody listens there
        a = self.start("--signaling", url, "--id", "alice", "--to", "bob", "--timeout", "2")
        code = yield threads.deferToThread(a.wait, 20)
        self.assertEqual(code, 1)
        self.assertEqual(len(a.stderr_lines), 1, a.stderr)
        self.assertIn("holepunch connect: signaling:", a.stderr)

    @defer.inlineCallbacks
    def test_peer_never_comes(self) -> Any:
        """A peer that never registers: exit 1 within the timeout, naming the peer stage."""
        a = self.start("--signaling", self.url, "--id", "alice", "--to", "ghost", "--timeout", "2")
        code = yield threads.deferToThread(a.wait, 20)
        self.assertEqual(code, 1)
        self.assertIn("holepunch connect: peer: ghost did not come online", a.stderr)

    @defer.inlineCallbacks
    def test_accept_times_out(self) -> Any:
        """--accept with nobody offering gives up at the timeout, naming the peer stage."""
        b = self.start("--signaling", self.url, "--id", "bob", "--accept", "--timeout", "1.5")
        code = yield threads.deferToThread(b.wait, 20)
        self.assertEqual(code, 1)
        self.assertIn("peer: no offer arrived in time", b.stderr)

    @defer.inlineCallbacks
    def test_bad_turn_environment(self) -> Any:
        """Without --turn-server the P2P_TURN_* variables are read; a bad one stops with its name (exit 2)."""
        import os

        os.environ["P2P_TURN_SERVERS"] = "not-a-turn-uri"
        try:
            proc = self.start("--signaling", self.url, "--id", "x", "--accept", "--timeout", "1")
        finally:
            del os.environ["P2P_TURN_SERVERS"]
        code = yield threads.deferToThread(proc.wait, 20)
        self.assertEqual(code, 2)
        self.assertIn("P2P_TURN_SERVERS", proc.stderr)


class TransferCommandTests(TestCase):
    """``holepunch send FILE`` and ``holepunch receive DIR`` between two processes."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))
        self.dir = Path(tempfile.mkdtemp())
        self.inbox = self.dir / "inbox"
        self.inbox.mkdir()

    def command(self, *args: str) -> Command:
        proc = Command([*args, "--signaling", self.url, "--host-address", "127.0.0.1"])
        self.addCleanup(proc.kill)
        return proc

    def pair(
        self,
        source: Path,
        *extra_send: str,
        receive: Sequence[str] = (),
        receiver_offers: bool = False,
    ) -> defer.Deferred[tuple[Command, Command, int, int]]:
        """Start ``receive`` (bob) and ``send`` (alice); by default alice offers."""
        if receiver_offers:
            sender = self.command("send", str(source), "--id", "alice", "--accept", *extra_send)
            receiver = self.command(
                "receive", str(self.inbox), "--id", "bob", "--to", "alice", *receive
            )
        else:
            receiver = self.command(
                "receive", str(self.inbox), "--id", "bob", "--accept", "--from", "alice", *receive
            )
            sender = self.command("send", str(source), "--id", "alice", "--to", "bob", *extra_send)
        return threads.deferToThread(
            lambda: (sender, receiver, sender.finish(60), receiver.finish(60))
        )

    @defer.inlineCallbacks
    def test_send_receive_byte_exact_with_progress(self) -> Any:
        """A 3 MiB file arrives byte-exact under its name, with no .part left; --progress
        prints percent, MB/s and ETA though stderr is not a terminal."""
        source = self.dir / "data.bin"
        source.write_bytes(os.urandom(3 << 20))
        sender, receiver, code_s, code_r = yield self.pair(source, receive=["--progress"])
        self.assertEqual((code_s, code_r), (0, 0), sender.stderr + receiver.stderr)
        self.assertEqual((self.inbox / "data.bin").read_bytes(), source.read_bytes())
        self.assertFalse((self.inbox / "data.bin.part").exists())
        self.assertIn("100.0%", receiver.stderr)
        self.assertIn("MB/s", receiver.stderr)
        self.assertIn("ETA", receiver.stderr)
        self.assertIn(b"verified", sender.stdout)

    @defer.inlineCallbacks
    def test_path_in_the_name_is_refused(self) -> Any:
        """A name like ``../x`` is refused by the receiver: nothing is written outside
        DIR, and both exit 1 naming why."""
        source = self.dir / "data.bin"
        source.write_bytes(b"secret")
        sender, receiver, code_s, code_r = yield self.pair(source, "--name", "../x")
        self.assertEqual((code_s, code_r), (1, 1), sender.stderr + receiver.stderr)
        self.assertIn("holepunch receive: transfer: refused name '../x'", receiver.stderr)
        self.assertIn("holepunch send: transfer: the receiver refused", sender.stderr)
        self.assertFalse((self.dir / "x").exists())
        self.assertEqual(list(self.inbox.iterdir()), [])

    @defer.inlineCallbacks
    def test_existing_file_is_kept_unless_overwrite(self) -> Any:
        """An existing file of the same name is refused; with --overwrite it is replaced."""
        source = self.dir / "data.bin"
        source.write_bytes(b"new contents")
        (self.inbox / "data.bin").write_bytes(b"old")
        _, receiver, code_s, code_r = yield self.pair(source)
        self.assertEqual((code_s, code_r), (1, 1))
        self.assertIn("--overwrite", receiver.stderr)
        self.assertEqual((self.inbox / "data.bin").read_bytes(), b"old")
        sender, receiver, code_s, code_r = yield self.pair(source, receive=["--overwrite"])
        self.assertEqual((code_s, code_r), (0, 0), sender.stderr + receiver.stderr)
        self.assertEqual((self.inbox / "data.bin").read_bytes(), b"new contents")

    @defer.inlineCallbacks
    def test_resume_from_a_part_file(self) -> Any:
        """A .part file of the same name is resumed: only the rest is sent, and the whole
        file's SHA-256 is checked (here the receiver offers, the sender accepts)."""
        data = os.urandom(1 << 20)
        source = self.dir / "data.bin"
        source.write_bytes(data)
        (self.inbox / "data.bin.part").write_bytes(data[:300000])
        sender, receiver, code_s, code_r = yield self.pair(source, receiver_offers=True)
        self.assertEqual((code_s, code_r), (0, 0), sender.stderr + receiver.stderr)
        self.assertIn("resuming data.bin at 300000", receiver.stderr)
        self.assertIn(b"resumed at 300000", sender.stdout)
        self.assertEqual((self.inbox / "data.bin").read_bytes(), data)

    @defer.inlineCallbacks
    def test_corrupt_part_file_fails_the_check(self) -> Any:
        """A .part whose bytes differ from the file's start fails the SHA-256 check: both
        exit 1, and the message says to send again."""
        data = os.urandom(200000)
        source = self.dir / "data.bin"
        source.write_bytes(data)
        (self.inbox / "data.bin.part").write_bytes(b"x" * 1000)
        sender, receiver, code_s, code_r = yield self.pair(source)
        self.assertEqual((code_s, code_r), (1, 1), sender.stderr + receiver.stderr)
        self.assertIn("SHA-256 mismatch", receiver.stderr)
        self.assertIn("SHA-256 mismatch", sender.stderr)
        self.assertFalse((self.inbox / "data.bin").exists())


class RefusedCertificateTests(TestCase):
    """The command run in this reactor against a peer whose certificate is not the one
    it signaled."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    @defer.inlineCallbacks
    def test_refused_certificate_names_the_security_stage(self) -> Any:
        """alice signals a fingerprint that is not her certificate's: bob's command exits
        1 with one line naming the security stage and both fingerprints."""
        import io

        from holepunch.cli import build_parser
        from holepunch.cli.connect import connect_command
        from holepunch.ice.config import IceConfig
        from holepunch.ice.negotiation import Negotiator
        from holepunch.quic.identity import PeerIdentity
        from holepunch.signaling.client import SignalingClient

        alice_id, other = PeerIdentity.generate(), PeerIdentity.generate()
        client = SignalingClient(self.url, "alice", reactor=reactor)
        client.startService()
        self.addCleanup(client.stopService)
        yield client.register()
        send_offer = client.send_offer

        def lying(peer: str, description: dict[str, Any]) -> Any:
            return send_offer(peer, {**description, "fingerprint": other.fingerprint})

        client.send_offer = lying  # type: ignore[method-assign]
        alice = Negotiator(reactor, client, IceConfig.on("127.0.0.1"), identity=alice_id)
        self.addCleanup(alice.stop)
        args = build_parser().parse_args(
            ["connect", "--signaling", self.url, "--id", "bob", "--accept", "--timeout", "15",
             "--host-address", "127.0.0.1", "--no-port-mapping"]
        )  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        running = defer.ensureDeferred(connect_command(reactor, args, out, err))
        connecting = alice.connect_secure("bob", wait_for_peer=15)
        connecting.addErrback(lambda _: None)  # alice's side fails too; bob's story matters
        code = yield running
        self.assertEqual(code, 1)
        self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        self.assertIn("holepunch connect: security: peer authentication failed", err.getvalue())
        self.assertIn(other.fingerprint, err.getvalue())
        self.assertIn(alice_id.fingerprint, err.getvalue())
        session = yield connecting
        if session is not None:
            yield session.when_closed()


class OfferBeforeJoinTests(TestCase):
    """An acceptor waits from its registration on: a server with ``--open-relay`` may
    hand it an offer before its ``join-room`` is answered."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    @defer.inlineCallbacks
    def test_offer_that_arrives_while_joining_is_answered(self) -> Any:
        """The server holds bob's join until alice's offer has reached him: bob's
        command answers it, and both ends hold the session (before, the offer was
        dropped and both sides waited until their timeouts)."""
        import io

        from holepunch.cli import build_parser
        from holepunch.cli.peer import SecurePeer, with_secure_peer
        from holepunch.ice.config import IceConfig
        from holepunch.ice.negotiation import Negotiator
        from holepunch.quic.identity import PeerIdentity
        from holepunch.signaling.client import SignalingClient

        held = hold_join_until_offered(self.service.registry, "bob")

        client = SignalingClient(self.url, "alice", reactor=reactor)
        client.startService()
        self.addCleanup(client.stopService)
        yield client.register()
        alice = Negotiator(
            reactor, client, IceConfig.on("127.0.0.1"), identity=PeerIdentity.generate()
        )
        self.addCleanup(alice.stop)
        connecting = alice.connect_secure("bob", wait_for_peer=10)

        args = build_parser().parse_args(
            ["connect", "--signaling", self.url, "--id", "bob", "--accept", "--timeout", "10",
             "--host-address", "127.0.0.1", "--no-port-mapping"]
        )  # fmt: skip
        err = io.StringIO()
        described: list[dict[str, Any]] = []

        async def body(peer: SecurePeer) -> int:
            described.append(peer.describe())
            return 0

        code = yield defer.ensureDeferred(with_secure_peer(reactor, args, err, "connect", body))
        self.assertEqual(code, 0, err.getvalue())
        self.assertEqual(held, ["direct:bob"])  # the join was held, and the offer came first
        session = yield connecting
        self.assertEqual(described[0]["peer_fingerprint"], alice.identity.fingerprint)
        self.assertEqual(described[0]["security"], "quic-tls1.3")
        session.close("done")
        yield session.when_closed()
