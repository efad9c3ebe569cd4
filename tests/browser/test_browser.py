# -*- test-case-name: tests.browser.test_browser -*-
"""The browser example end to end: two headless Chromium pages open a WebRTC DataChannel
to each other through our signaling server, inside a loopback-only network namespace.

The namespace has nothing but ``lo``, so the browsers can reach nothing but the example
server the driver (``lab/browser_driver.py``) starts in it; it is removed afterwards,
with any process left in it, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "lab" / "browser_driver.py"
CHROMIUM = "/usr/bin/chromium"
DRIVER_TIMEOUT = 120.0


def unavailable_reason() -> str | None:
    """Why the browser test cannot run here (one line), or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux for a loopback-only network namespace"
    if shutil.which("ip") is None:
        return "needs 'ip' (Debian package iproute2)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"needs Chromium at {CHROMIUM} (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the Python playwright package (pip install playwright)"
    return None


def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=30, check=False)


def delete_namespace(namespace: str) -> None:
    """Kill every process still in ``namespace``, then delete it."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        out = _run("ip", "netns", "pids", namespace).stdout.split()
        pids = [int(word) for word in out if word.isdigit()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _run("ip", "netns", "delete", namespace)


class BrowserExampleTests(TestCase):
    """Two Chromium pages, our server, one DataChannel."""

    timeout = DRIVER_TIMEOUT + 30

    def setUp(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)
        self.namespace = f"hpbr{os.getpid()}x{secrets.token_hex(3)}"
        created = _run("ip", "netns", "add", self.namespace)
        if created.returncode != 0:
            raise SkipTest(f"cannot create a network namespace: {created.stderr.decode()}")
        self.addCleanup(delete_namespace, self.namespace)
        up = _run("ip", "-n", self.namespace, "link", "set", "lo", "up")
        self.assertEqual(up.returncode, 0, up.stderr)

    def run_driver(self) -> dict[str, Any]:
        """Run the driver in the namespace (blocking: nothing runs in this reactor)."""
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.namespace, sys.executable, str(DRIVER)],
                capture_output=True,
                timeout=DRIVER_TIMEOUT,
                check=False,
                cwd=str(ROOT),
            )
        except subprocess.TimeoutExpired as e:
            self.fail(f"browser driver timed out; stderr: {(e.stderr or b'')[-2000:]!r}")
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if not lines:
            self.fail(f"driver printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]!r}")
        result: dict[str, Any] = json.loads(lines[-1])
        result["driver_stderr"] = proc.stderr.decode(errors="replace")[-3000:]
        return result

    def test_datachannel_between_two_pages(self) -> None:
        """Each page gets the other's DataChannel message over a host loopback path."""
        result = self.run_driver()
        self.assertTrue(result["ok"], json.dumps(result, indent=1)[-6000:])
        alice, bob = result["pages"]["alice"], result["pages"]["bob"]
        self.assertEqual(alice["channels"], {"bob": "open"})
        self.assertEqual(bob["channels"], {"alice": "open"})
        self.assertIn({"from": "bob", "text": "hello from bob"}, alice["received"])
        self.assertIn({"from": "alice", "text": "hello from alice"}, bob["received"])
        self.assertEqual(alice["errors"] + bob["errors"], [])
        for page, remote in ((alice, "bob"), (bob, "alice")):
            path = page["paths"][remote]
            # A check can reach a page before the peer's candidate does; Chromium then
            # names that end peer-reflexive, and until the candidate is signaled it hides a
            # peer-reflexive address in its stats (the WebRTC privacy rule: "prflx :PORT").
            # Either way the path is loopback, not a relay.
            self.assertRegex(path["local"], r"^(host|prflx) 127\.0\.0\.1:", path)
            self.assertRegex(path["remote"], r"^(host 127\.0\.0\.1|prflx (127\.0\.0\.1)?):", path)
