"""A connection made by TCP hole punching moves to UDP once UDP works (issue 14, item 2).

One host's router drops every UDP packet, so STUN fails there, UDP checks go unanswered
and the TCP hole punch wins; a ``holepunch connect`` transfer starts over TCP, the rule
goes once bytes flow, the ICE checks still under way succeed and the connection moves to
a UDP path before the transfer ends, byte-exact. And when the rule goes only after the
first UDP attempt has given up (its connection timeout passed), the failed pairs, still
checked again on the better-path schedule, find the path all the same."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from lab.peers import StreamPeer, transfer_pair
from lab.recovery import block_udp, unblock_direct
from tests.lab.transfers import TransferLabCase

SIZE = 4_000_000
RATE = 400_000.0


class TcpUpgradeLabTests(TransferLabCase):
    """4 MB each way at 0.4 MB/s, no TURN server (the relay must not be the way out)."""

    size = SIZE

    def setUp(self) -> None:
        self.start_lab()

    def upgrade(
        self, wait: Callable[[StreamPeer], None], rate: float, **options: Any
    ) -> tuple[dict[str, Any], float]:
        """A transfer between a UDP-blocked port-restricted host and a full cone, which
        the TCP punch carries; once bytes flow, ``wait(offerer)`` returns and the rule
        goes. Checks that it arrived byte-exact over TCP and that both sides' last path
        change was to UDP, after the rule went and before the last byte; returns the
        result and the moment the rule went."""
        a = self.lab.add_host("ta", "port-restricted")
        b = self.lab.add_host("tb", "full-cone")
        block_udp(a)
        self.addCleanup(lambda: a.router_nft(["delete", "table", "inet", "lab_block"], check=False))
        moment: list[float] = []

        def unblock(offerer: StreamPeer, _b: StreamPeer) -> None:
            wait(offerer)
            moment.append(time.monotonic())
            unblock_direct(a)

        result = transfer_pair(
            a,
            b,
            self.servers.url,
            names=(a.name, b.name),
            size=SIZE,
            rate=rate,
            stun_servers=self.servers.stun_servers,
            payloads=self.payloads,
            on_flowing=unblock,
            **options,
        )
        self.assertByteExact(result)
        self.assertEqual(result["connection"]["method"], "tcp-hole-punch", result["stderr"])
        self.assertEqual(result["other"]["method"], "tcp-hole-punch", result["stderr"])
        _first_byte, last_byte = result["bytes_window"]
        for side, events in enumerate(result["events"]):
            changes = [e for e in events if e.get("event") == "path-changed"]
            self.assertTrue(changes, result["stderr"][side])
            self.assertIn(changes[-1]["method"], ("udp-hole-punch", "direct"), changes)
            self.assertEqual(changes[-1]["reason"], "upgrade")
            self.assertLess(moment[0], changes[-1]["at"])
            self.assertLess(changes[-1]["at"], last_byte)
        print(f"tcp to udp: {changes[-1]['at'] - moment[0]:.2f}s after unblocking")
        return result, moment[0]

    def test_tcp_moves_to_udp_once_unblocked(self) -> None:
        self.upgrade(lambda _offerer: None, RATE, transfer_timeout=60)

    def test_tcp_moves_to_udp_after_the_first_attempt_gave_up(self) -> None:
        """UDP stays blocked past the connection timeout (the peer logs that its UDP
        attempt gave up and that TCP carries on); the rule goes then, and a later round
        of checks moves the connection to UDP before the transfer ends."""
        os.environ["LOG_LEVEL"] = "info"  # the peers log the attempt's end on stderr
        self.addCleanup(os.environ.pop, "LOG_LEVEL", None)
        result, _ = self.upgrade(
            lambda offerer: offerer.wait_for_stderr("no UDP pair selected within", timeout=30),
            150_000.0,
            timeout=8,
            transfer_timeout=90,
        )
        self.assertIn("checking", result["stderr"][0])
