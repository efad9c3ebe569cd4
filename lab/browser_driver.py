# -*- test-case-name: tests.browser.test_browser -*-
"""Run the browser example with two headless Chromium pages; print the outcome as JSON.

Meant to run inside a loopback-only network namespace (``tests.browser.test_browser`` makes one):
starts ``examples/browser/serve.py`` on 127.0.0.1, opens the page twice (peers ``alice``
and ``bob`` in one room) in two browser contexts of one Chromium driven by Playwright,
waits until each page has received the other's DataChannel message, and prints one JSON
object: ``{"ok": bool, "pages": {peer: window.holepunchDemo}, "error": str | None}``.
Everything it starts is stopped before it exits, on success, failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "examples" / "browser" / "serve.py"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
]
PEERS = ("alice", "bob")


def start_server(deadline: float) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start serve.py on an ephemeral loopback port; return it and its URLs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, str(SERVE), "--endpoint", "tcp:0:interface=127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
        if not ready:
            stop(proc)
            raise RuntimeError("the example server did not start in time")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            stop(proc)
            raise RuntimeError("the example server exited: " + read_stderr(proc))
        line += chunk
    return proc, json.loads(line)


def read_stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None:
        return ""
    with contextlib.suppress(Exception):
        return proc.stderr.read().decode(errors="replace")[-2000:]
    return ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def console_printer(peer: str) -> Callable[[ConsoleMessage], None]:
    """Copy a page's console to our stderr, which the test shows on failure."""

    def show(message: ConsoleMessage) -> None:
        print(f"[{peer}] {message.text}", file=sys.stderr)

    return show


def run_pages(page_url: str, chromium: str, timeout_ms: int) -> dict[str, Any]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"ok": False, "pages": {}, "error": None}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, timeout=timeout_ms
        )
        try:
            pages = {}
            for peer in PEERS:
                context = browser.new_context()
                # Granted media permission lets Chromium show raw host candidates instead
                # of mDNS names, which nothing in the namespace could resolve.
                context.grant_permissions(["camera", "microphone"])
                page = context.new_page()
                page.on("console", console_printer(peer))
                pages[peer] = page
            first, second = PEERS
            pages[first].goto(f"{page_url}?peer={first}&room=browser-test")
            pages[first].wait_for_function(
                "window.holepunchDemo && window.holepunchDemo.state === 'waiting'",
                timeout=timeout_ms,
            )
            pages[second].goto(f"{page_url}?peer={second}&room=browser-test")
            try:
                for page in pages.values():
                    page.wait_for_function(
                        "window.holepunchDemo && window.holepunchDemo.received.length > 0"
                        " && Object.keys(window.holepunchDemo.paths).length > 0",
                        timeout=timeout_ms,
                    )
                result["ok"] = True
            except PlaywrightError as e:
                result["error"] = str(e).splitlines()[0]
            for peer, page in pages.items():
                result["pages"][peer] = page.evaluate("window.holepunchDemo")
        finally:
            browser.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per step")
    args = parser.parse_args()
    # SIGTERM unwinds through the finally blocks below, so nothing is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    server, urls = start_server(time.monotonic() + args.timeout)
    try:
        try:
            result = run_pages(urls["page"], args.chromium, int(args.timeout * 1000))
        except Exception as e:  # report, do not hide: the test prints it
            result = {"ok": False, "pages": {}, "error": f"{type(e).__name__}: {e}"}
    finally:
        stop(server)
    result["urls"] = urls
    if not result["ok"]:
        result["server_stderr"] = read_stderr(server)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
