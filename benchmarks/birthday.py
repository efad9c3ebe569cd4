"""Birthday probing in the NAT lab: probes sent and time to success, beside the theory.

Runs ``holepunch connect`` between a host behind ``symmetric-random`` (the hard side,
256 sockets) and one behind ``port-restricted`` (the easy side, probing at 100/s),
``--runs`` times, alternating who offers. Prints each run's probes and connect time, then
the share of runs that had succeeded within k probes next to the theoretical chance
``1 - prod(1 - n/(N-i))`` for n = 256 open ports in N = 64,512.

    python benchmarks/birthday.py --runs 20
    python benchmarks/birthday.py --runs 20 --setup one-address   # the README's daemon
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from holepunch.ice.hardnat import birthday_success
from lab.natlab import NatLab
from lab.peers import SETUPS, run_connect, start_lab_servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--easy", default="port-restricted", help="the easy side's preset")
    parser.add_argument("--timeout", type=float, default=25.0)
    parser.add_argument("--setup", choices=SETUPS, default="rfc5780", help="the servers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with NatLab() as lab:
        hard = lab.add_host("hard", "symmetric-random")
        easy = lab.add_host("easy", args.easy)
        servers = start_lab_servers(lab, args.setup)
        for run in range(args.runs):
            a, b = (hard, easy) if run % 2 == 0 else (easy, hard)
            r = run_connect(
                a,
                b,
                servers.url,
                names=(f"o{run}", f"a{run}"),
                timeout=args.timeout,
                stun_servers=servers.stun_servers,
            )
            row = {
                "run": run + 1,
                "offerer": a.preset,
                "ok": r["ok"],
                "probes": max(r["probes_sent"], r["other"]["probes_sent"]) if r["ok"] else None,
                "ms": max(r["elapsed_ms"], r["other"]["elapsed_ms"]) if r["ok"] else None,
                "methods": sorted({r["method"], r["other"]["method"]}) if r["ok"] else None,
                "reason": r.get("reason"),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    ok = [r for r in results if r["ok"]]
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'run':>3} {'offerer':<18} {'probes':>6} {'connect ms':>10}  method")
    for r in results:
        if r["ok"]:
            method = "/".join(r["methods"])
            print(f"{r['run']:>3} {r['offerer']:<18} {r['probes']:>6} {r['ms']:>10.0f}  {method}")
        else:
            print(f"{r['run']:>3} {r['offerer']:<18} {'-':>6} {'-':>10}  failed: {r['reason']}")
    print(f"\nsucceeded {len(ok)}/{len(results)}", end="")
    if ok:
        probes = [r["probes"] for r in ok]
        times = [r["ms"] for r in ok]
        print(
            f"; probes median {statistics.median(probes):.0f}, max {max(probes)}; "
            f"connect median {statistics.median(times) / 1000:.2f} s, max {max(times) / 1000:.2f} s"
        )
    print("\nwithin k probes   observed   theory (256 open ports)")
    for k in (50, 100, 175, 350, 700, 1000, 2000):
        observed = sum(1 for r in ok if r["probes"] <= k) / len(results) if results else 0.0
        print(f"{k:>15}   {observed:>7.0%}   {birthday_success(256, k):>7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
