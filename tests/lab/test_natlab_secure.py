"""What QUIC promises, checked on the lab's internet: an eavesdropper on the path sees
no payload, and a forger who knows the flow's addresses gets nothing to the application.

The eavesdropper and the forger are :mod:`lab.wiretap` (a capture of the wan bridge, raw
IPv4 with any source address); their own behaviour is checked first, so a test that
finds nothing has looked in the right place.
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import TestCase

from lab.natlab import PUBLIC_A, lab_fixture, unavailable_reason
from lab.wiretap import Wiretap, forge

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
