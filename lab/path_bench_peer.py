# -*- test-case-name: tests.lab.test_natlab_turn -*-
"""One side of the path benchmark (benchmarks/relay_throughput.py), run in a lab host.

Connects to the peer through signaling (``--relay-only`` forces a TURN relayed path),
then the offerer measures round trips (``--pings`` sequential ping/pong) and one-way
delivery (``--rate`` datagrams a second of ``--size`` bytes for ``--seconds``), and
prints one JSON object. The answerer echoes pings, counts the stream, and reports its
count back when asked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from twisted.internet import defer, task


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from holepunch.ice.config import GatheringConfig, IceConfig, RelayConfig, TcpConfig
    from holepunch.ice.negotiation import Negotiator
    from holepunch.signaling.client import SignalingClient
    from holepunch.turn import parse_turn_uri

    client = SignalingClient(args.signaling, args.id, reactor=reactor)
    client.startService()
    await client.register()
    config = IceConfig(
        gathering=GatheringConfig(
            stun_servers=[(args.stun.split(":")[0], int(args.stun.split(":")[1]))]
        ),
        relay=RelayConfig(
            servers=[parse_turn_uri(args.turn)] if args.turn else [], only=args.relay_only
        ),
        tcp=TcpConfig(enabled=False),
    )
    negotiator = Negotiator(reactor, client, config)
    if args.to:
        connection = await negotiator.connect_when_present(args.to, 30)
    else:
        connection = await negotiator.accept()
    inbox: defer.DeferredQueue[bytes] = defer.DeferredQueue()
    counted = {"n": 0}

    def received(data: bytes) -> None:
        if data.startswith(b"S"):
            counted["n"] += 1
        elif args.to is None and data.startswith(b"P"):
            connection.send(data)  # echo pings
        elif args.to is None and data == b"COUNT?":
            connection.send(b"COUNT " + str(counted["n"]).encode())
        else:
            inbox.put(data)

    connection.on_datagram(received)
    result: dict[str, Any] = {"method": connection.method}
    if args.to is None:
        ended: defer.Deferred[str] = defer.Deferred()
        connection.on_disconnected(ended.callback)

        def give_up() -> None:
            if not ended.called:
                ended.callback("time")

        reactor.callLater(args.seconds + 30, give_up)
        await ended
        return result
    rtts = []
    for i in range(args.pings):
        started = reactor.seconds()
        connection.send(b"P%d" % i)
        reply = await inbox.get()
        assert reply == b"P%d" % i
        rtts.append((reactor.seconds() - started) * 1000)
    payload = b"S" + b"x" * (args.size - 1)
    total = int(args.rate * args.seconds)
    sent = 0
    per_tick = max(1, int(args.rate / 1000))
    start = reactor.seconds()
    while sent < total:
        for _ in range(min(per_tick, total - sent)):
            connection.send(payload)
            sent += 1
        await task.deferLater(reactor, 0.001, lambda: None)
    elapsed = reactor.seconds() - start
    await task.deferLater(reactor, 0.5, lambda: None)
    connection.send(b"COUNT?")
    count_reply = await inbox.get()
    delivered = int(count_reply.split()[1])
    rtts.sort()
    result.update(
        rtt_p50_ms=round(statistics.median(rtts), 3),
        rtt_p99_ms=round(rtts[int(0.99 * (len(rtts) - 1))], 3),
        sent=sent,
        delivered=delivered,
        seconds=round(elapsed, 3),
        delivered_mbps=round(delivered * args.size * 8 / elapsed / 1e6, 2),
    )
    await connection.close()
    await client.stopService()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--to")
    parser.add_argument("--stun", required=True)
    parser.add_argument("--turn")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--rate", type=float, default=4000)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    out: dict[str, Any] = {}

    async def go(reactor: Any) -> None:
        out.update(await run(reactor, args))

    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    except SystemExit:
        pass
    print(json.dumps(out), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
