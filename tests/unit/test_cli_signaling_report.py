"""Tests for holepunch.cli.peer.report_signaling_outages: what ``holepunch connect``
says on stderr when the signaling server goes away and comes back."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from holepunch.cli.peer import report_signaling_outages
from holepunch.signaling.client import RECONNECTED, REGISTRATION_LOST

LOST = {"code": 1001, "reason": "server shutting down", "wasClean": True, "rooms": ["r"]}
BACK = {"attempt": 2, "downtime_ms": 3250.0, "resumed": False, "rooms": ["r"], "failedRooms": []}


class FakeClient:
    """Keeps the callbacks given to ``on``, to call them as the client would."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Any]] = {}

    def on(self, event: str, callback: Any) -> None:
        self.callbacks.setdefault(event, []).append(callback)

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        for callback in self.callbacks.get(event, []):
            callback(payload)


class ReportTests(SynchronousTestCase):
    """One stderr line per change, text or (``--json``, stream mode) an event."""

    def report(self, **options: Any) -> list[str]:
        client = FakeClient()
        err = io.StringIO()
        report_signaling_outages(client, argparse.Namespace(**options), err, "connect")
        client.emit(REGISTRATION_LOST, LOST)
        client.emit(RECONNECTED, BACK)
        return err.getvalue().splitlines()

    def test_text(self) -> None:
        """Without --json: two lines of text naming the command."""
        self.assertEqual(
            self.report(json=False, datagram=False),
            [
                "holepunch connect: signaling server lost (server shutting down); "
                "reconnecting, the connection carries on",
                "holepunch connect: signaling server back after 3.2 s",
            ],
        )

    def test_json_events(self) -> None:
        """With --json in the stream mode: the events, with the reconnect's fields."""
        lines = [json.loads(line) for line in self.report(json=True, datagram=False)]
        self.assertEqual(
            lines,
            [
                {"event": "signaling-disconnected", "reason": "server shutting down"},
                {"event": "signaling-reconnected", **BACK},
            ],
        )

    def test_datagram_mode_keeps_text(self) -> None:
        """With --datagram the events would share stdout with the peer's lines: text on
        stderr instead."""
        self.assertEqual(
            self.report(json=True, datagram=True), self.report(json=False, datagram=False)
        )
        self.assertEqual(len(self.report(json=True, datagram=True)), 2)
