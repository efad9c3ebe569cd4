# -*- test-case-name: tests.integration.test_aioice_interop -*-
"""A child process whose stdout is JSON lines, for tests that drive real programs."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol


class JsonLinesProcess(ProcessProtocol):
    """Each stdout line (a JSON object) goes to ``lines`` (a DeferredQueue) and ``events``;
    stderr is kept for failure messages; ``ended`` fires with the exit code."""

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._buffer = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            event = json.loads(line)
            self.events.append(event)
            self.lines.put(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)
