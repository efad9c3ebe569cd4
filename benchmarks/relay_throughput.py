"""Relayed path against direct path, in the NAT lab: round trip and delivered throughput.

Two hosts behind port-restricted NATs connect twice in the same run: once by UDP hole
punching (direct) and once forced through coturn in the public namespace
(``relay_only``, TURN over UDP). Each time the offerer measures 300 sequential
ping/pong round trips and then streams 1,200-byte datagrams at a fixed rate for a few
seconds; the answerer counts what arrived. Prints both side by side, and the relay's
added latency.

    python benchmarks/relay_throughput.py --rate 4000 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.natlab import PUBLIC_A, NatLab
from lab.peers import STUN_PORT, start_lab_daemon


def measure(
    lab: NatLab, url: str, turn: str, relay_only: bool, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    a = lab.add_host(f"a{tag}", "port-restricted")
    b = lab.add_host(f"b{tag}", "port-restricted")
    common = ["--signaling", url, "--stun", f"{PUBLIC_A}:{STUN_PORT}", "--turn", turn,
              "--pings", str(args.pings), "--rate", str(args.rate), "--size", str(args.size),
              "--seconds", str(args.seconds)]  # fmt: skip
    if relay_only:
        common.append("--relay-only")
    module = "lab.path_bench_peer"
    answer_argv = b.python_argv(module, "--id", f"b{tag}", *common)
    answerer = b.popen(answer_argv, stdout=subprocess.PIPE)
    offerer = a.popen(
        a.python_argv(module, "--id", f"a{tag}", "--to", f"b{tag}", *common), stdout=subprocess.PIPE
    )
    out, _ = offerer.communicate(timeout=120)
    answerer.kill()
    answerer.wait()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--rate", type=float, default=4000, help="datagrams a second")
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with NatLab() as lab:
        url = start_lab_daemon(lab)
        coturn = lab.start_coturn()
        turn = f"turn:u:p@{coturn.address}:{coturn.port}"
        direct = measure(lab, url, turn, False, args, "d")
        relayed = measure(lab, url, turn, True, args, "r")
    results = {"direct": direct, "relayed": relayed}
    if args.json:
        print(json.dumps(results))
        return 0
    head = ("path", "method", "rtt p50 ms", "rtt p99 ms", "sent", "delivered", "Mbit/s")
    print(f"{head[0]:<9} {head[1]:<15} {head[2]:>10} {head[3]:>10}", end=" ")
    print(f"{head[4]:>7} {head[5]:>9} {head[6]:>7}")
    for name, r in results.items():
        print(f"{name:<9} {r['method']:<15} {r['rtt_p50_ms']:>10} {r['rtt_p99_ms']:>10} "
              f"{r['sent']:>7} {r['delivered']:>9} {r['delivered_mbps']:>7}")  # fmt: skip
    added = relayed["rtt_p50_ms"] - direct["rtt_p50_ms"]
    print(f"\nthe relay adds {added:.3f} ms to the median round trip; offered "
          f"{args.rate * args.size * 8 / 1e6:.1f} Mbit/s for {args.seconds:g} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
