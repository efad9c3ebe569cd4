"""What QUIC promises, checked on the lab's internet: an eavesdropper on the path sees
no payload, and a forger who knows the flow's addresses gets nothing to the application.

The eavesdropper and the forger are :mod:`lab.wiretap` (a capture of the wan bridge, raw
IPv4 with any source address); their own behaviour is checked first, so a test that
finds nothing has looked in the right place.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import TestCase

from lab.natlab import (
    PUBLIC_A,
    lab_fixture,
    unavailable_reason,
)
from lab.wiretap import Wiretap, forge
from tests.lab.transfers import TransferLabCase

RECEIVE_ONE = (
    "import socket, sys, json\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.settimeout(20)\n"
    "print('ready', flush=True)\n"
    "data, source = s.recvfrom(65535)\n"
    "print(json.dumps({'source': list(source), 'data': data.hex()}), flush=True)\n"
)
SEND_ONE = (
    "import socket, sys\n"
    "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
    "sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n"
)


class WiretapTests(TestCase):
    """The eavesdropper sees what crosses the internet; the forger's datagrams arrive
    with the source address it chose."""

    def setUp(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        self.lab = lab_fixture(self)

    def receiver(self, host: object, address: str, port: int) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = host.popen(  # type: ignore[attr-defined]
            [sys.executable, "-c", RECEIVE_ONE, address, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        self.assertEqual(proc.stdout.readline().strip(), b"ready", proc.stderr)
        return proc

    def received(self, proc: subprocess.Popen[bytes]) -> dict[str, object]:
        stdout, stderr = proc.communicate(timeout=25)
        self.assertEqual(proc.returncode, 0, stderr)
        result: dict[str, object] = json.loads(stdout)
        return result

    def test_capture_sees_the_internet(self) -> None:
        """A datagram from a host behind a NAT to a public server is in the capture, with
        the NAT's public address as its source; plaintext in it is found."""
        host = self.lab.add_host("c", "port-restricted")
        tap = Wiretap(self.lab)
        self.addCleanup(tap.remove)
        tap.start()
        server = self.receiver(self.lab.public, PUBLIC_A, 7000)
        host.run([sys.executable, "-c", SEND_ONE, PUBLIC_A, "7000", "EAVESDROP-ME"], timeout=10)
        got = self.received(server)
        tap.stop()
        self.assertEqual(bytes.fromhex(str(got["data"])), b"EAVESDROP-ME")
        self.assertEqual(tap.find([b"EAVESDROP-ME", b"NOT-SENT"]), [b"EAVESDROP-ME"])
        flows = tap.udp_flows(host.public_address, PUBLIC_A)
        self.assertEqual([key[2:] for key in flows], [(PUBLIC_A, 7000)])

    def test_forged_source_address_arrives(self) -> None:
        """The forger in the public namespace sends with another host's address; the
        receiver sees that address as the source."""
        host = self.lab.add_host("o", "open")
        receiver = self.receiver(host, host.address, 7001)
        sent = forge(self.lab.public, ("203.0.113.77", 4242), (host.address, 7001), 1)
        self.assertEqual(sent, 1)
        got = self.received(receiver)
        self.assertEqual(got["source"], ["203.0.113.77", 4242])


MIB = 1024 * 1024
TRANSFER = 64 * MIB


def needles(path: str, count: int = 64, length: int = 24) -> list[bytes]:
    """``count`` windows of ``length`` bytes at random places in a file."""
    size = os.path.getsize(path)
    rng = random.Random(path)
    found = []
    with open(path, "rb") as source:
        for _ in range(count):
            source.seek(rng.randrange(size - length))
            found.append(source.read(length))
    return found


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class SecureStreamTests(TransferLabCase):
    """``holepunch connect`` streams in the lab, with the daemon as the README starts it
    (one address, its defaults; clients given only the signaling URL)."""

    size = TRANSFER

    def setUp(self) -> None:
        self.start_lab()

    def test_punched_path_hides_the_payload_and_drops_forgeries(self) -> None:
        """64 MiB each way over a UDP hole punch arrive byte-exact; a capture of the whole
        internet holds none of it; 200 datagrams forged with the peer's address by a
        third host reach the session, are counted, and change nothing."""
        a = self.lab.add_host("pa", "port-restricted")
        b = self.lab.add_host("pb", "port-restricted")
        tap = Wiretap(self.lab)
        self.addCleanup(tap.remove)
        tap.start()
        forged: list[int] = []

        def forge_into_a(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
            # A sees B at ours["remote"]; B sees A at theirs["remote"]: a third host sends
            # to A's mapping with B's address and port as the source.
            forged.append(forge(self.lab.public, host_port(ours["remote"]),
                                host_port(theirs["remote"]), 200))  # fmt: skip

        result = self.transfer(a, b, on_connected=forge_into_a)
        tap.stop()
        self.assertByteExact(result)
        self.assertEqual(result["connection"]["method"], "udp-hole-punch")
        self.assertEqual(forged, [200])
        closing = [e for e in result["events"][0] if e["event"] == "closed"]
        self.assertEqual(len(closing), 1, result["stderr"][0])
        # A few may be lost in a busy socket's buffer like any datagram; none is accepted.
        self.assertGreater(closing[0]["dropped_unauthenticated"], 150, closing)
        self.assertLessEqual(closing[0]["dropped_unauthenticated"], 200, closing)
        # The capture saw the transfer (every datagram of it crosses the bridge) ...
        flows = tap.udp_flows(a.public_address, b.public_address)
        self.assertGreater(sum(flows.values()), 2 * TRANSFER // 1400, flows)
        # ... and none of the payload: 128 windows of 24 bytes, none in clear.
        windows = needles(self.payloads[0][0]) + needles(self.payloads[1][0])
        self.assertEqual(tap.find(windows), [])

    def test_relayed_and_tcp_paths(self) -> None:
        """64 MiB each way, byte-exact, through coturn over UDP, through coturn over TCP
        (UDP blocked on one side) and over a TCP hole punch (RFC 4571-framed QUIC)."""
        cells = {
            "turn-relay (UDP)": ("symmetric-random", "symmetric-random", "turn-relay"),
            "turn-relay (TCP)": ("udp-blocked", "symmetric-random", "turn-relay"),
            "tcp-hole-punch": ("port-restricted", "udp-blocked", "tcp-hole-punch"),
        }
        for i, (label, (row, col, method)) in enumerate(cells.items()):
            a = self.lab.add_host(f"r{i}", row)
            b = self.lab.add_host(f"c{i}", col)
            result = self.transfer(a, b)
            self.assertByteExact(result)
            self.assertEqual(result["connection"]["method"], method, label)

    def test_relay_upgrades_to_direct_mid_transfer(self) -> None:
        """A transfer that starts on the relay moves to birthday probing's direct path
        while bytes flow, and finishes byte-exact with no broken stream."""
        hard = self.lab.add_host("hh", "symmetric-random")
        easy = self.lab.add_host("he", "port-restricted")
        result = self.transfer(hard, easy, extra_args=["--relay-wait", "0.2"])
        self.assertByteExact(result)
        self.assertEqual(result["connection"]["method"], "turn-relay")
        changes = [e for e in result["events"][0] if e["event"] == "path-changed"]
        self.assertTrue(changes, result["stderr"][0])
        self.assertEqual(changes[0]["method"], "birthday")
        first_byte, last_byte = result["bytes_window"]
        self.assertLess(first_byte, changes[0]["at"])
        self.assertLess(changes[0]["at"], last_byte)
