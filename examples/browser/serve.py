# -*- test-case-name: tests.browser.test_browser -*-
"""Serve the browser example and a signaling server on one port.

``python examples/browser/serve.py [--endpoint tcp:8080]`` runs the holepunch signaling
server (WebSocket at ``/``) and puts this folder's page at ``/browser/`` on the same
port, through the signaling service's web root. When listening it prints one JSON line,
``{"page": "http://HOST:PORT/browser/", "signaling": "ws://HOST:PORT/"}``, then serves until
interrupted (SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.static import File

from holepunch.signaling.server import SignalingConfig, make_signaling_service

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "holepunch-signaling.js")


def page_resource() -> Resource:
    """``/browser/``: the page and its client script, nothing else from this folder."""
    folder = Resource()
    folder.putChild(b"", File(str(HERE / "index.html"), defaultType="text/html"))
    for name in PAGE_FILES:
        content_type = "text/javascript" if name.endswith(".js") else "text/html"
        folder.putChild(name.encode(), File(str(HERE / name), defaultType=content_type))
    return folder


async def serve(reactor: Any, endpoint: str) -> None:
    service = make_signaling_service(SignalingConfig(endpoint=endpoint), reactor)
    service.root.putChild(b"browser", page_resource())
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    port: IListeningPort = await service.when_listening()
    address = port.getHost()
    host = getattr(address, "host", "127.0.0.1")
    number = getattr(address, "port", 0)
    print(
        json.dumps(
            {"page": f"http://{host}:{number}/browser/", "signaling": f"ws://{host}:{number}/"}
        ),
        flush=True,
    )
    await defer.Deferred()  # until the reactor stops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoint",
        default="tcp:8080:interface=127.0.0.1",
        help="strports endpoint to listen on (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(serve(reactor, args.endpoint)))


if __name__ == "__main__":
    main()
