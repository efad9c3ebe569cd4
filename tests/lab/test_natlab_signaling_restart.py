"""The daemon restarted under connected peers, on the lab's internet (real kernel NATs).

The daemon runs as the README starts it (``start_lab_servers(lab, "one-address")``:
signaling and STUN on one address, clients given only the signaling URL). It is
stopped with SIGTERM (its signaling server closes every WebSocket with 1001) and started
again on the same addresses and ports while two ``holepunch connect`` peers behind
port-restricted NATs carry bytes: the transfer finishes byte-exact, both exit 0, and
peers in a room are back in it within a few seconds of the daemon's return (measured,
printed, and shown to a third client of the new daemon).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from twisted.trial.unittest import TestCase

from lab.natlab import NatLab, lab_fixture, unavailable_reason
from lab.peers import (
    ConnectProcess,
    LabServers,
    connect_pair,
    random_file,
    start_lab_servers,
    transfer_pair,
)

TRANSFER = 32 * 1024 * 1024
BACK_WITHIN = 6.0
"""Seconds from the daemon's return (STUN answering) to both peers back in their room:
the first retry comes 1.5 to 2.5 s after the loss, the next 2.25 to 3.25 s later."""

ROOM_PEERS = (
    "import json, sys\n"
    "from twisted.internet import defer, task\n"
    "from holepunch.signaling.client import SignalingClient\n"
    "async def main(reactor):\n"
    "    client = SignalingClient(sys.argv[1], 'observer', reactor=reactor)\n"
    "    client.startService()\n"
    "    try:\n"
    "        peers = await client.join_room(sys.argv[2])\n"
    "    finally:\n"
    "        await client.stopService()\n"
    "    print(json.dumps(sorted(p['peerId'] for p in peers)))\n"
    "task.react(lambda reactor: defer.ensureDeferred(main(reactor)))\n"
)
"""Join a room as ``observer`` on the signaling server; print the other peers' ids."""


def wait_for_event(peer: ConnectProcess, name: str, deadline: float) -> dict[str, Any]:
    """The first ``--json`` event called ``name`` (others are skipped), by ``deadline``."""
    while True:
        event = peer.next_event(max(0.1, deadline - time.monotonic()))
        if event["event"] == name:
            return event


class DaemonRestartTests(TestCase):
    """Established connections carry on across a daemon restart; rooms come back."""

    timeout = 400

    def setUp(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        self.lab: NatLab = lab_fixture(self)
        self.servers: LabServers = start_lab_servers(self.lab, "one-address")

    def restart_daemon(self, marks: dict[str, float]) -> None:
        """Stop and start the daemon again, noting when it went down and came back."""
        assert self.servers.daemon is not None

        def down() -> None:
            marks["down"] = time.monotonic()

        marks["stopping"] = time.monotonic()
        self.servers.daemon = self.lab.restart_holepunch_daemon(
            self.servers.daemon, while_down=down
        )
        marks["up"] = time.monotonic()

    def room_peers(self, room: str) -> list[str]:
        """The peers of ``room`` as a third client of the (new) daemon sees them."""
        done = self.lab.public.run(
            [sys.executable, "-c", ROOM_PEERS, self.servers.url, room], timeout=30
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        peers: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
        return peers

    def test_transfer_carries_on_across_restart(self) -> None:
        """32 MiB each way through two ``holepunch connect`` (a UDP hole punch); the
        daemon is restarted once both are connected; both finish byte-exact, exit 0."""
        a = self.lab.add_host("ta", "port-restricted")
        b = self.lab.add_host("tb", "port-restricted")
        payloads = (random_file(TRANSFER), random_file(TRANSFER))
        for path, _ in payloads:
            self.addCleanup(os.unlink, path)
        marks: dict[str, float] = {}
        result = transfer_pair(
            a,
            b,
            self.servers.url,
            names=("ta", "tb"),
            size=TRANSFER,
            stun_servers=self.servers.stun_servers,
            payloads=payloads,
            transfer_timeout=180,
            on_connected=lambda ours, theirs: self.restart_daemon(marks),
        )
        shown = {k: v for k, v in result.items() if k != "events"}
        self.assertTrue(result["ok"], shown)
        self.assertEqual(result["exit"], (0, 0), shown)
        self.assertEqual(result["byte_exact"], (True, True))
        self.assertEqual(result["received"], (TRANSFER, TRANSFER))
        self.assertEqual(result["connection"]["method"], "udp-hole-punch")
        first_byte, last_byte = result["bytes_window"]
        # The daemon was gone while the bytes flowed.
        self.assertLess(marks["down"], last_byte, (marks, result["bytes_window"]))
        back_after = []
        for events in result["events"]:
            lost = [e for e in events if e["event"] == "signaling-disconnected"]
            self.assertEqual(len(lost), 1, events)
            back = [e for e in events if e["event"] == "signaling-reconnected"]
            if last_byte - marks["up"] > BACK_WITHIN:  # still running: back by then
                self.assertEqual(len(back), 1, events)
            back_after += [f"{e['at'] - marks['up']:+.2f} s" for e in back]
        print(
            f"\n32 MiB each way in {result['seconds']:.2f} s; daemon down "
            f"{marks['down'] - first_byte:+.2f} s after the first byte, back "
            f"{marks['up'] - marks['down']:.2f} s later, last byte "
            f"{last_byte - marks['up']:+.2f} s after its return; signaling back "
            f"{', '.join(back_after) or 'after the end'} after its return"
        )

    def test_room_peers_back_within_seconds(self) -> None:
        """Two connected peers in a room: the daemon restarts; the stream between them
        carries lines before, during and after; both say signaling-reconnected with their
        room within a few seconds of the daemon's return, and a third client of the new
        daemon finds both in the room; both exit 0."""
        a_host = self.lab.add_host("ra", "port-restricted")
        b_host = self.lab.add_host("rb", "port-restricted")
        a, b = connect_pair(
            a_host,
            b_host,
            self.servers.url,
            names=("ra", "rb"),
            stun_servers=self.servers.stun_servers,
            extra_args=["--room", "lab-room"],
        )
        self.addCleanup(a.kill)
        self.addCleanup(b.kill)
        self.assertEqual(a.info(40)["method"], "udp-hole-punch")
        b.info(10)
        self.assertEqual(self.room_peers("lab-room"), ["ra", "rb"])
        self.exchange(a, b, "before")
        marks: dict[str, float] = {}
        self.restart_daemon(marks)
        deadline = time.monotonic() + 30
        lost = [wait_for_event(p, "signaling-disconnected", deadline) for p in (a, b)]
        self.exchange(a, b, "during")
        back = [wait_for_event(p, "signaling-reconnected", deadline) for p in (a, b)]
        for event in lost:
            self.assertLessEqual(marks["stopping"], event["at"])
        after_return = [event["at"] - marks["up"] for event in back]
        for event in back:
            self.assertEqual(event["rooms"], ["lab-room"], event)
            self.assertEqual(event["failedRooms"], [], event)
            self.assertFalse(event["resumed"], event)  # the new daemon knew no token
        self.assertLess(max(after_return), BACK_WITHIN, (marks, back))
        self.assertEqual(self.room_peers("lab-room"), ["ra", "rb"])
        self.exchange(a, b, "after")
        a.end_input()
        b.end_input()
        self.assertEqual(a.wait(20), 0, a.stderr)
        self.assertEqual(b.wait(20), 0, b.stderr)
        print(
            f"\ndaemon down for {marks['up'] - marks['down']:.2f} s; peers back in the room "
            + ", ".join(
                f"{e['downtime_ms'] / 1000:.2f} s after the loss ({e['attempt']} attempts), "
                f"{t:+.2f} s after the daemon's return"
                for e, t in zip(back, after_return, strict=True)
            )
        )

    def exchange(self, a: ConnectProcess, b: ConnectProcess, word: str) -> None:
        """A line each way over the stream, within 15 s."""
        a.send_lines([f"a-{word}"])
        b.send_lines([f"b-{word}"])
        self.assertEqual(b.read_lines(1, 15), [f"a-{word}"], b.stderr)
        self.assertEqual(a.read_lines(1, 15), [f"b-{word}"], a.stderr)
