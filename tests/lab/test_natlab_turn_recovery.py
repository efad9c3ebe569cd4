"""TURN that notices (issue 14, item 3), in the lab: coturn restarted under a relayed
transfer, and coturn refusing permissions for the private ranges (``denied-peer-ip``)."""

from __future__ import annotations

import time
from typing import Any

from lab.peers import (
    PeerProcessError,
    StreamPeer,
)
from tests.lab.transfers import TransferLabCase

TRANSFER = 32 << 20
"""Bytes each way."""

PRIVATE_RANGES = (
    "--denied-peer-ip=10.0.0.0-10.255.255.255",
    "--denied-peer-ip=172.16.0.0-172.31.255.255",
    "--denied-peer-ip=192.168.0.0-192.168.255.255",
)
"""coturn's recommended refusal of peers in the private ranges (RFC 1918); the lab's
hosts behind NATs are 10.N.0.2."""


RECOVERED_BY = {"recovery": "relay-reallocated", "restart": "ice-restart"}
"""The path-changed reason after a lost relay -> the event that shows that route."""


class TurnRecoveryLabTests(TransferLabCase):
    """A symmetric-random pair (only the relay connects them) through coturn."""

    size = TRANSFER

    def restart_under_transfer(self, down: float) -> dict[str, Any]:
        """A symmetric-random pair transfers through coturn, which is killed once bytes
        flow both ways and started again ``down`` seconds later; returns, per side, the
        seconds from the kill to each of its events after it."""
        servers = self.start_lab()
        a = self.lab.add_host("ra", "symmetric-random")
        b = self.lab.add_host("rb", "symmetric-random")
        timeline: dict[str, Any] = {}

        def restart(pa: StreamPeer, pb: StreamPeer) -> None:
            deadline = time.monotonic() + 60
            while min(pa.received, pb.received) < 1 << 20:  # bytes flow both ways
                if time.monotonic() > deadline:
                    raise PeerProcessError(f"no bytes flowed: {pa.stderr} {pb.stderr}")
                time.sleep(0.02)
            assert servers.coturn is not None
            timeline["killed"] = time.monotonic()
            timeline["received_then"] = (pa.received, pb.received)
            servers.coturn = self.lab.restart_coturn(servers.coturn, down=down)
            timeline["up"] = time.monotonic()

        result = self.transfer(a, b, on_flowing=restart)
        self.assertByteExact(result)
        self.assertEqual(result["connection"]["method"], "turn-relay")
        self.assertLess(max(timeline["received_then"]), TRANSFER)  # restarted mid-transfer
        killed = timeline["killed"]
        seen: dict[str, Any] = {"down": timeline["up"] - killed}
        for side, events in zip("ab", result["events"], strict=True):
            kinds = [e["event"] for e in events]
            moved = [e for e in events if e["event"] == "path-changed" and e["at"] > killed]
            self.assertTrue(moved, (side, events))
            self.assertEqual(moved[0]["method"], "turn-relay")
            # Two ways back, whichever notices first: the relay's own watch (a Refresh
            # refused or unanswered: relay-lost, a new allocation, the pair moves) or
            # consent going quiet (an ICE restart, whose gathering allocates anew).
            self.assertIn(moved[0]["reason"], RECOVERED_BY, (side, events))
            self.assertIn(RECOVERED_BY[moved[0]["reason"]], kinds, (side, events))
            seen[side] = {e["event"]: e["at"] - killed for e in reversed(events)}
            print(
                f"\n{side}: coturn down {seen['down']:.2f} s; "
                + ", ".join(
                    f"{e['event']} +{e['at'] - killed:.2f} s" for e in events if e["at"] > killed
                )
            )
        return seen

    def test_coturn_restart_under_a_relayed_transfer(self) -> None:
        """coturn is killed and started again at once (same address and port; every
        allocation lost) while 32 MiB go each way through it: both clients notice (437
        to the watch Refresh, or consent going quiet first), allocate again, announce
        their new relayed candidates, the connection moves to the new relayed pair, and
        the transfer finishes byte-exact."""
        seen = self.restart_under_transfer(down=0.0)
        for side in "ab":
            # Noticed within liveness_interval (5 s), moved 0.3 s (check_delay) later.
            self.assertLess(seen[side]["path-changed"], 8.0, seen)

    def test_coturn_down_for_five_seconds(self) -> None:
        """coturn stays down 5 s: the watch Refresh goes unanswered (3.5 s), allocation
        attempts fail until it is back, then the connection moves as above."""
        seen = self.restart_under_transfer(down=5.0)
        for side in "ab":
            self.assertGreater(seen[side]["path-changed"], seen["down"], seen)
            self.assertLess(seen[side]["path-changed"], 25.0, seen)

    def test_denied_private_peers_still_relay(self) -> None:
        """coturn refusing permissions for the private ranges (403 for the peers' host
        candidates) relays a symmetric-random pair, 32 MiB each way byte-exact: only the
        pairs toward private addresses fail, at once."""
        servers = self.start_lab(PRIVATE_RANGES)
        a = self.lab.add_host("da", "symmetric-random")
        b = self.lab.add_host("db", "symmetric-random")
        result = self.transfer(a, b)
        self.assertByteExact(result)
        self.assertEqual(result["connection"]["method"], "turn-relay")
        self.assertEqual(result["other"]["method"], "turn-relay")
        assert servers.coturn is not None
        with open(servers.coturn.log_path, errors="replace") as log:
            self.assertIn("denied in the range", log.read())  # the refusals happened
