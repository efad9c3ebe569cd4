"""Port mapping against a real miniupnpd on a lab router (NAT-PMP, PCP, UPnP IGD).

The host sits behind a symmetric NAT with random ports (``masquerade fully-random``),
where a STUN-learned address is useless to a peer; each method must give it an external
address and port at which a peer on the lab's WAN side really reaches its UDP socket
through the kernel NAT. Each test builds its own lab (router, coturn for miniupnpd's STUN
test, miniupnpd), removed by its cleanup even on failure; PortMapper runs in the host's namespace through
``lab.portmap_driver``, which prints one JSON line per event.
"""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
import threading
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from lab.miniupnpd import HTTP_PORT, miniupnpd_unavailable_reason, start_miniupnpd
from lab.natlab import LabHost, coturn_unavailable_reason, lab_fixture

EVENT_TIMEOUT = 15.0
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n"
)


class Driver:
    """``lab.portmap_driver map`` running in a lab host; its JSON events in a queue."""

    def __init__(self, host: LabHost, *args: str) -> None:
        self.process = host.popen(
            host.python_argv("lab.portmap_driver", "map", *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def next(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next event; fails the test with the driver's stderr if none comes in time."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the driver within {timeout}s") from None

    def expect(self, name: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        event = self.next(timeout)
        if event["event"] != name:
            raise AssertionError(f"expected {name!r}, got {event} ({self.stderr()})")
        return event

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def finish(self) -> None:
        """Close stdin (the driver then deletes its mappings and exits) and reap it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=EVENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5.0)


class PortMappingLabTests(TestCase):
    """A host behind a lab NAT maps a port by each method on miniupnpd, and peers use it."""

    def setUp(self) -> None:
        reason = coturn_unavailable_reason() or miniupnpd_unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)
        self.lab = lab_fixture(self)  # closed (namespaces deleted) by the test's cleanup
        self.host = self.lab.add_host("h", "symmetric-random")
        coturn = self.lab.start_coturn()
        self.daemon = start_miniupnpd(self.host, stun_host=coturn.address, stun_port=coturn.port)
        self.addCleanup(self.daemon.stop)

    def send_from_wan(self, address: str, port: int, payload: str) -> None:
        """Send one UDP datagram from the lab's public namespace (the "internet")."""
        self.lab.public.run(
            [sys.executable, "-c", SEND, address, str(port), payload],
            timeout=10.0,
            check=True,
        )

    def map_and_reach(self, method: str) -> None:
        driver = Driver(self.host, "--method", method, "--timeout", "3")
        self.addCleanup(driver.finish)
        local_port = driver.expect("listening")["port"]
        mapped = driver.expect("mapped")
        self.assertEqual(mapped["method"], method)
        self.assertEqual(mapped["internal"], [self.host.address, local_port])
        address, port = mapped["external"]
        self.assertEqual(address, self.host.public_address)
        self.assertIn(f"dport {port}", self.daemon.rules())

        token = secrets.token_hex(8)
        self.send_from_wan(address, port, token)
        received = driver.expect("received")
        self.assertEqual(received["data"], token)
        self.assertEqual(received["source"][0], self.lab.public.address)

        driver.command("renew")
        renewed = driver.expect("renewed")
        self.assertEqual(renewed["external"], [address, port])
        self.send_from_wan(address, port, token + "-renewed")
        self.assertEqual(driver.expect("received")["data"], token + "-renewed")

        driver.command("unmap")
        driver.expect("unmapped")
        self.assertNotIn(f"dport {port}", self.daemon.rules())
        self.send_from_wan(address, port, "after-unmap")
        # A negative: wait a bounded time for a datagram that must not come.
        self.assertRaises(queue.Empty, driver.events.get, timeout=1.0)

    def test_pcp(self):
        """PCP: a WAN peer reaches the mapped port behind symmetric-random; renew keeps it, delete ends it."""
        self.map_and_reach("pcp")

    def test_natpmp(self):
        """NAT-PMP: a WAN peer reaches the mapped port behind symmetric-random; renew keeps it, delete ends it."""
        self.map_and_reach("natpmp")

    def test_upnp(self):
        """UPnP IGD: a WAN peer reaches the mapped port behind symmetric-random; renew keeps it, delete ends it."""
        self.map_and_reach("upnp")

    def test_default_order_prefers_pcp_and_close_deletes(self):
        """With every method available PCP wins; closing the mapper deletes the mapping."""
        driver = Driver(self.host, "--timeout", "3")
        driver.expect("listening")
        mapped = driver.expect("mapped")
        self.assertEqual(mapped["method"], "pcp")
        self.assertIn(f"dport {mapped['external'][1]}", self.daemon.rules())
        driver.finish()
        self.assertEqual(driver.process.returncode, 0, driver.stderr())
        self.assertNotIn(f"dport {mapped['external'][1]}", self.daemon.rules())

    def test_probe(self):
        """probe finds PCP, NAT-PMP and UPnP on the router, with the public address."""
        result = self.host.run(
            self.host.python_argv("lab.portmap_driver", "probe", "--timeout", "2"), timeout=30.0
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        report = json.loads(result.stdout)["report"]
        self.assertEqual({m: r["available"] for m, r in report.items()},
                         {"pcp": True, "natpmp": True, "upnp": True})  # fmt: skip
        self.assertEqual(report["natpmp"]["external_address"], self.host.public_address)
        self.assertEqual(report["upnp"]["external_address"], self.host.public_address)

    def test_abandoned_upnp_mapping_is_deleted(self):
        """A UPnP AddPortMapping that returns after map_udp timed out is deleted again."""
        root_url = f"http://{self.daemon.gateway}:{HTTP_PORT}/rootDesc.xml"
        driver = Driver(
            self.host, "--method", "upnp", "--timeout", "0.001", "--upnp-root-url", root_url
        )
        driver.expect("listening")
        failed = driver.expect("failed")
        self.assertIn("no answer from the IGD", failed["attempts"]["upnp"])
        driver.finish()
        self.assertEqual(driver.process.returncode, 0, driver.stderr())
        self.assertTrue(self.daemon.wait_for_log("removing redirect rule", timeout=EVENT_TIMEOUT))
        added = [line for line in self.daemon.log if "redirecting port" in line]
        self.assertEqual(len(added), 1, self.daemon.log[-20:])
        self.assertNotIn("dport", self.daemon.rules())

    def test_daemon_stopped(self):
        """With miniupnpd stopped, map_udp fails within its timeout naming every method."""
        self.daemon.stop()
        driver = Driver(self.host, "--timeout", "1.0")
        self.addCleanup(driver.finish)
        driver.expect("listening")
        failed = driver.expect("failed")
        self.assertEqual(set(failed["attempts"]), {"pcp", "natpmp", "upnp"})
        self.assertIn("unreachable", failed["attempts"]["pcp"])
        self.assertIn("unreachable", failed["attempts"]["natpmp"])
        self.assertIn("upnp", failed["error"])
        # Bounded by its timeout (a reactor under load fires late, hence the slack; an
        # unbounded wait, such as a blocking SSDP search, would take several seconds).
        self.assertLess(failed["elapsed_ms"], 2 * 1000)
