# -*- test-case-name: tests.integration.test_aioice_interop -*-
"""An unmodified ``aioice.Connection`` as a peer on our signaling server (interop tests).

Runs on asyncio, in its own process: it registers on the signaling server (Autobahn's
asyncio client), exchanges a native offer/answer and trickled candidates exactly as
docs/protocol.md describes, connects with aioice, prints ``{"connected": true, ...}``,
then echoes every datagram back prefixed with ``echo:`` until it receives ``quit`` or
``--duration`` runs out. It also sends ``hello-from-aioice`` once connected.

aioice writes candidates without the ``candidate:`` prefix; the adapter adds and strips
it. The only patch is the one aioice's own tests use: ``get_host_addresses`` returns the
``--host`` address, since aioice leaves out loopback when gathering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from typing import Any


def _log(text: str) -> None:
    sys.stderr.write(f"aioice-peer: {text}\n")
    sys.stderr.flush()


async def run(args: argparse.Namespace) -> int:
    import txaio

    txaio.use_asyncio()
    import aioice
    from aioice import ice as aioice_ice
    from aioice.candidate import Candidate
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    if args.host:
        aioice_ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host]

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class Client(WebSocketClientProtocol):
        def onOpen(self) -> None:
            opened.set_result(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            inbox.put_nowait(json.loads(payload))

    host, port = args.signaling.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    factory = WebSocketClientFactory(args.signaling)
    factory.protocol = Client
    loop = asyncio.get_running_loop()
    await loop.create_connection(factory, host, int(port))
    ws = await asyncio.wait_for(opened, 10)

    def send(message: dict[str, Any]) -> None:
        ws.sendMessage(json.dumps(message).encode())

    async def wait_for(predicate: Any) -> dict[str, Any]:
        while True:
            message = await inbox.get()
            if predicate(message):
                return message
            pending.append(message)

    pending: list[dict[str, Any]] = []
    send({"type": "register", "peerId": args.id, "id": 1})
    await asyncio.wait_for(wait_for(lambda m: m.get("type") == "registered"), 10)

    controlling = args.to is not None
    connection = aioice.Connection(ice_controlling=controlling)
    peer = args.to

    def description(kind: str, session: str) -> dict[str, Any]:
        return {
            "type": kind,
            "session": session,
            "ice": {
                "ufrag": connection.local_username,
                "pwd": connection.local_password,
                "candidates": ["candidate:" + c.to_sdp() for c in connection.local_candidates],
            },
        }

    async def add_remote(ice: dict[str, Any]) -> None:
        connection.remote_username = ice["ufrag"]
        connection.remote_password = ice["pwd"]
        for line in ice.get("candidates", []):
            await connection.add_remote_candidate(Candidate.from_sdp(line.split(":", 1)[1]))

    if controlling:
        session = secrets.token_hex(8)
        await connection.gather_candidates()
        send({"type": "offer", "to": peer, "offer": description("offer", session)})
        send({"type": "ice-candidate", "to": peer,
              "candidate": {"candidate": "", "sdpMid": "0", "session": session}})  # fmt: skip
        answer = await asyncio.wait_for(
            wait_for(lambda m: m.get("type") == "answer"
                     and m.get("answer", {}).get("session") == session), 20)  # fmt: skip
        await add_remote(answer["answer"]["ice"])
    else:
        offer = await asyncio.wait_for(wait_for(lambda m: m.get("type") == "offer"), 30)
        peer = offer["from"]
        session = offer["offer"]["session"]
        await add_remote(offer["offer"]["ice"])
        await connection.gather_candidates()
        send({"type": "answer", "to": peer, "answer": description("answer", session)})
        send({"type": "ice-candidate", "to": peer,
              "candidate": {"candidate": "", "sdpMid": "0", "session": session}})  # fmt: skip

    async def trickle() -> None:
        for message in pending:
            inbox.put_nowait(message)
        pending.clear()
        while True:
            message = await inbox.get()
            payload = message.get("candidate")
            if message.get("type") != "ice-candidate" or not isinstance(payload, dict):
                continue
            if payload.get("session") != session:
                continue
            line = payload.get("candidate") or ""
            candidate = Candidate.from_sdp(line.split(":", 1)[1]) if line else None
            await connection.add_remote_candidate(candidate)

    trickling = asyncio.ensure_future(trickle())
    await asyncio.wait_for(connection.connect(), 30)
    print(json.dumps({"connected": True, "controlling": connection.ice_controlling}), flush=True)
    await connection.send(b"hello-from-aioice")
    deadline = loop.time() + args.duration
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            data = await asyncio.wait_for(connection.recv(), remaining)
        except TimeoutError:
            break
        except ConnectionError as e:
            _log(f"connection closed: {e}")
            print(json.dumps({"closed": str(e)}), flush=True)
            return 1
        if data == b"quit":
            break
        await connection.send(b"echo:" + data)
        print(json.dumps({"echoed": data.decode(errors="replace")}), flush=True)
    trickling.cancel()
    await connection.close()
    ws.sendClose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--id", required=True)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--to")
    who.add_argument("--accept", action="store_true")
    parser.add_argument("--host", default="127.0.0.1", help="the only host address aioice uses")
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except Exception as e:
        _log(f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
