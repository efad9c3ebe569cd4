"""A Twisted app that joins a torrent swarm's room and connects to every peer in it.

It uses :class:`holepunch.P2PCoordinator` the way the seed's examples 1 and 2 do: one
room per torrent info-hash (``torrent-<infohash>``); whenever a peer joins, connect to
it (the lexically smaller id offers, so two peers do not both offer), then send it a
greeting. Every connection (incoming or outgoing) is announced on stdout as JSON.

    python examples/torrent_swarm.py --signaling ws://127.0.0.1:8080/ \\
        --id alice --infohash abc123 --stun-server 127.0.0.1:3478
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from holepunch import P2PCoordinator
from holepunch.ice.config import IceConfig


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    p2p = P2PCoordinator(
        {
            "enable_signaling": False,
            "signaling_url": args.signaling,
            "stun_servers": args.stun_server,
            "connection_timeout": 20,
        },
        reactor=reactor,
        peer_id=args.id,
        metadata={"client": "torrent-swarm-example"},
        ice_config=IceConfig.on(*args.host_address) if args.host_address else None,
    )
    room = f"torrent-{args.infohash}"
    done: defer.Deferred[None] = defer.Deferred()

    def connected(event: dict[str, Any]) -> None:
        connection = event["connection"]
        say(event="peer-connected", peer=event["peerId"], method=event["method"])
        connection.on_datagram(
            lambda data: say(event="message", peer=event["peerId"], text=data.decode())
        )
        connection.send(f"hello from {args.id}".encode())

    async def reach(peer_id: str) -> None:
        if peer_id == args.id or peer_id in p2p.connections or args.id > peer_id:
            return  # the smaller id offers; the other side accepts
        try:
            await p2p.connect_to_peer(peer_id)
        except Exception as e:
            say(event="connect-failed", peer=peer_id, reason=str(e))

    p2p.on("peer-connected", connected)
    p2p.on("peer-joined-room", lambda e: defer.ensureDeferred(reach(e["peerId"])))
    result = await p2p.initialize()
    say(event="initialized", nat=(result["natInfo"] or {}).get("type"))
    for peer in await p2p.join_room(room):  # peers already in the swarm
        defer.ensureDeferred(reach(peer["peerId"]))
    reactor.callLater(args.duration, done.callback, None)
    await done
    await p2p.shutdown()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--infohash", required=True)
    parser.add_argument("--stun-server", action="append", default=[])
    parser.add_argument("--host-address", action="append", default=None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to stay")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))


if __name__ == "__main__":
    run()
