"""Recovery of a running ``holepunch connect`` transfer in the NAT lab, timed.

Each run sends a random file each way (``--size`` bytes at ``--rate`` bytes a second)
between two hosts behind ``--presets`` and, once bytes flow, disrupts the offerer's
router (:mod:`lab.recovery`): ``flush`` (``conntrack -F``), ``renumber`` (a new public
address) or ``unblock`` (the direct path was blocked, the transfer relayed; the rule
goes). Prints each run's recovery time (the longest stall of either direction after the
disruption; for ``unblock``, the time from unblocking to the move off the relay), its
ICE restarts and path changes, then the median and the worst. Every run must arrive
byte-exact.

    python benchmarks/ice_recovery.py --runs 10 --disruption flush
    python benchmarks/ice_recovery.py --runs 10 --disruption renumber
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.natlab import NatLab
from lab.peers import random_file, start_lab_servers
from lab.recovery import DISRUPTIONS, disrupted_transfer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--disruption", choices=DISRUPTIONS, default="flush")
    parser.add_argument("--presets", nargs=2, default=["port-restricted", "port-restricted"])
    parser.add_argument("--size", type=int, default=6_000_000)
    parser.add_argument("--rate", type=float, default=500_000.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    payloads = (random_file(args.size), random_file(args.size))
    rows = []
    try:
        with NatLab() as lab:
            servers = start_lab_servers(lab, "one-address", turn=args.disruption == "unblock")
            for run in range(args.runs):
                a = lab.add_host(f"a{run}", args.presets[0])
                b = lab.add_host(f"b{run}", args.presets[1])
                result = disrupted_transfer(
                    lab, servers, a, b, args.disruption, size=args.size, rate=args.rate,
                    payloads=payloads,
                )  # fmt: skip
                changes = [e for side in result["path_changes"] for e in side]
                restarts = [
                    e for side in result["restarts"] for e in side if e["state"] != "started"
                ]
                if args.disruption == "unblock":
                    moved = [e["at"] for e in result["path_changes"][0]]
                    at = result["disrupted_at"]
                    recovery = (moved[-1] - at) if moved and at is not None else None
                else:
                    recovery = result.get("stall")
                row = {
                    "run": run,
                    "ok": result["ok"],
                    "method": result.get("connection", {}).get("method"),
                    "recovery_s": round(recovery, 3) if recovery is not None else None,
                    "restarts": [(e["state"], e["reason"], e.get("elapsed_ms")) for e in restarts],
                    "path_changes": [(e["method"], e.get("reason")) for e in changes],
                }
                if not result["ok"]:
                    row["exit"] = result.get("exit")
                    row["byte_exact"] = result.get("byte_exact")
                    row["received"] = result.get("received")
                    row["reason"] = result.get("reason")
                    row["stderr_tail"] = [
                        side.splitlines()[-3:] for side in result.get("stderr", ("", ""))
                    ]
                rows.append(row)
                print(json.dumps(row) if args.json else
                      f"run {run}: ok={row['ok']} recovery={row['recovery_s']}s "
                      f"restarts={row['restarts']} path_changes={row['path_changes']}"
                      + ("" if row["ok"] else f" FAILED: {json.dumps(row)}"),
                      flush=True)  # fmt: skip
    finally:
        for path, _ in payloads:
            os.unlink(path)
    times = [r["recovery_s"] for r in rows if r["recovery_s"] is not None]
    failed = [r["run"] for r in rows if not r["ok"]]
    if times:
        print(
            f"{args.disruption} {args.presets[0]}/{args.presets[1]}: {len(rows)} runs, "
            f"recovery median {statistics.median(times):.2f}s, worst {max(times):.2f}s; "
            f"not byte-exact: {failed or 'none'}"
        )
    return 1 if failed or len(times) < len(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
