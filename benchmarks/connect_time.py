"""Connect time: two of our ICE agents against two aioice agents, same host, same run.

Each run: the offerer gathers, "sends" its offer (the clock starts), the answerer takes
it, gathers and answers, both run connectivity checks, and the clock stops when the
first application datagram from the offerer arrives at the answerer. Descriptions are
handed over in memory (no signaling server), so what is measured is the ICE engines.
Both sides use 127.0.0.1 only. aioice runs in a child process (asyncio), ours in this
one (Twisted); the child prints its timings as JSON.

    python benchmarks/connect_time.py --runs 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ours(runs: int) -> list[float]:
    from twisted.internet import defer, task

    from holepunch.ice.agent import IceAgent
    from holepunch.ice.config import IceConfig

    times: list[float] = []

    async def one(reactor: Any) -> float:
        config = IceConfig.on("127.0.0.1")
        offerer = IceAgent(reactor, True, config)
        answerer = IceAgent(reactor, False, IceConfig.on("127.0.0.1"))
        offerer.on_local_candidate = answerer.add_remote_candidate
        answerer.on_local_candidate = offerer.add_remote_candidate
        connecting = offerer.connect()
        await defer.ensureDeferred(offerer.gather())
        started = time.perf_counter()  # the offer leaves
        answerer.set_remote_credentials(offerer.local_ufrag, offerer.local_pwd)
        for c in offerer.local_candidates:
            answerer.add_remote_candidate(c)
        answering = answerer.connect()
        await defer.ensureDeferred(answerer.gather())
        offerer.set_remote_credentials(answerer.local_ufrag, answerer.local_pwd)  # the answer
        a, b = await defer.gatherResults([connecting, answering])
        arrived: defer.Deferred[None] = defer.Deferred()
        b.on_datagram(lambda data: arrived.callback(None) if not arrived.called else None)
        a.send(b"first")
        await arrived
        elapsed = time.perf_counter() - started
        await a.close()
        await b.close()
        return elapsed

    async def main(reactor: Any) -> None:
        for _ in range(runs):
            times.append(await one(reactor))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return times


AIOICE_CHILD = r"""
import asyncio, json, sys, time
import aioice
from aioice import ice
ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

async def one():
    offerer = aioice.Connection(ice_controlling=True)
    answerer = aioice.Connection(ice_controlling=False)
    await offerer.gather_candidates()
    started = time.perf_counter()
    answerer.remote_username = offerer.local_username
    answerer.remote_password = offerer.local_password
    for c in offerer.local_candidates:
        await answerer.add_remote_candidate(c)
    await answerer.add_remote_candidate(None)
    await answerer.gather_candidates()
    offerer.remote_username = answerer.local_username
    offerer.remote_password = answerer.local_password
    for c in answerer.local_candidates:
        await offerer.add_remote_candidate(c)
    await offerer.add_remote_candidate(None)
    await asyncio.gather(offerer.connect(), answerer.connect())
    await offerer.send(b"first")
    await answerer.recv()
    elapsed = time.perf_counter() - started
    await offerer.close()
    await answerer.close()
    return elapsed

async def main(runs):
    return [await one() for _ in range(runs)]

print(json.dumps(asyncio.run(main(int(sys.argv[1])))))
"""


def theirs(runs: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", AIOICE_CHILD, str(runs)],
        capture_output=True,
        check=True,
        timeout=30 + runs * 10,
    )
    result: list[float] = json.loads(out.stdout)
    return result


def describe(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "runs": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2),
        "min_ms": round(ms[0], 2),
        "max_ms": round(ms[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = {"holepunch": describe(ours(args.runs)), "aioice": describe(theirs(args.runs))}
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'agent':<10} {'runs':>5} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}")
    for name, r in results.items():
        cols = (r["runs"], r["median_ms"], r["p90_ms"], r["min_ms"], r["max_ms"])
        print(f"{name:<10} {cols[0]:>5} {cols[1]:>10} {cols[2]:>8} {cols[3]:>8} {cols[4]:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
