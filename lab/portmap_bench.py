# -*- test-case-name: tests.lab.test_portmap_lab -*-
"""Measure port-mapping times per method against miniupnpd in the NAT lab.

    sudo PYTHONPATH=$PWD python -m lab.portmap_bench [--rounds 20] [--timeout 1.0]

Builds a lab host behind a ``symmetric-random`` router running miniupnpd (with coturn for
its STUN test), runs ``lab.portmap_driver bench`` in the host for PCP, NAT-PMP and UPnP
(each round a new PortMapper: UPnP discovers the gateway every time, as a starting
application does), then stops miniupnpd and times how long ``map_udp`` takes to fail.
Prints a Markdown table; the lab is removed afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence

from lab.miniupnpd import miniupnpd_unavailable_reason, start_miniupnpd
from lab.natlab import NatLab, coturn_unavailable_reason


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.portmap_bench")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    reason = coturn_unavailable_reason() or miniupnpd_unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    rows: list[tuple[str, ...]] = []
    with NatLab() as lab:
        host = lab.add_host("h", "symmetric-random")
        coturn = lab.start_coturn()
        daemon = start_miniupnpd(host, stun_host=coturn.address, stun_port=coturn.port)
        for method in ("pcp", "natpmp", "upnp"):
            argv_ = host.python_argv(
                "lab.portmap_driver", "bench", "--method", method,
                "--rounds", str(args.rounds), "--timeout", str(args.timeout),
            )  # fmt: skip
            result = host.run(argv_, timeout=60.0 + args.rounds * args.timeout * 2)
            rounds = [json.loads(line) for line in result.stdout.splitlines()]
            ok = [r for r in rounds if "map_ms" in r]
            if not ok:
                rows.append((method, "failed", result.stderr.decode()[-300:]))
                continue
            maps = [r["map_ms"] for r in ok]
            unmaps = [r["unmap_ms"] for r in ok]
            rows.append(
                (
                    method,
                    f"{len(ok)}/{len(rounds)}",
                    f"{statistics.median(maps):.1f}",
                    f"{_percentile(maps, 0.9):.1f}",
                    f"{min(maps):.1f}-{max(maps):.1f}",
                    f"{statistics.median(unmaps):.1f}",
                )
            )
        daemon.stop()
        result = host.run(
            host.python_argv("lab.portmap_driver", "map", "--timeout", str(args.timeout)),
            timeout=30.0,
        )
        events = [json.loads(line) for line in result.stdout.splitlines()]
        failed = [e for e in events if e["event"] == "failed"]
    print(f"rounds per method: {args.rounds}, map_udp timeout {args.timeout} s\n")
    print("| method | ok | map median ms | map p90 ms | map min-max ms | unmap median ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failed:
        print(f"\nminiupnpd stopped: map_udp failed after {failed[0]['elapsed_ms']:.0f} ms:")
        print(f"  {failed[0]['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
