"""The NAT traversal matrix: every ordered pair of lab presets, measured.

Builds the NAT lab (real kernel NATs in network namespaces; needs root, nft, ip), runs
our daemon (signaling + RFC 5780 STUN) in the public namespace, and for each cell runs
``holepunch connect`` in a host behind each preset (the row offers, the column accepts),
``--runs`` times. Prints, per cell: successes, the method(s) used, and the median connect
time (``elapsed_ms`` from the offerer's ``--json`` line); with ``--markdown`` a table for
docs/nat-matrix.md, with ``--json`` the raw results.

    python benchmarks/nat_matrix.py --runs 5 --markdown
    python benchmarks/nat_matrix.py --runs 3 --turn --markdown    # with coturn as TURN
    python benchmarks/nat_matrix.py --rows symmetric-random --cols port-restricted --runs 20
    python benchmarks/nat_matrix.py --setup one-address --runs 3 --markdown  # README daemon
    python benchmarks/nat_matrix.py --setup public-style --runs 3 --markdown
    python benchmarks/nat_matrix.py --setup one-address --port-mapping --runs 3 --markdown
    python benchmarks/nat_matrix.py --turn --transfer 64 --runs 1 --markdown  # 64 MiB each way
    python benchmarks/nat_matrix.py --setup one-address --ipv6 v6-firewall --runs 2 --markdown

With ``--ipv6 PRESET`` the lab has its IPv6 internet and every host is dual-stack: the
rows and columns name its IPv4 NAT, and PRESET (``v6-firewall``, ``v6-open``,
``v6-blocked``) its IPv6 side.

With ``--transfer MIB`` each run also carries a random file of that size each way
through the encrypted stream (``holepunch connect``'s default mode); a run counts only
if both directions arrive byte-exact (SHA-256) and both sides exit 0, and the table
shows the throughput (MB/s each way, first to last byte) instead of the connect time.

Everything it starts is stopped, and the lab removed, when it ends (even on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.natlab import PRESETS, V6_PRESETS, LabHost, NatLab
from lab.peers import (
    SETUPS,
    LabServers,
    random_file,
    run_connect,
    start_lab_servers,
    start_port_mapping,
    transfer_pair,
)

SHORT = {
    "open": "open",
    "full-cone": "full",
    "restricted-cone": "restr",
    "port-restricted": "port-r",
    "symmetric-sequential": "sym-seq",
    "symmetric-random": "sym-rand",
    "udp-blocked": "udp-blk",
}


@dataclass
class Cell:
    """Results of one (offerer preset, answerer preset) cell."""

    row: str
    col: str
    runs: int = 0
    ok: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    times_ms: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    probes: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    """MB/s each way, with ``--transfer``."""

    def summary(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "col": self.col,
            "runs": self.runs,
            "ok": self.ok,
            "methods": dict(self.methods),
            "median_ms": round(statistics.median(self.times_ms), 1) if self.times_ms else None,
            "max_ms": round(max(self.times_ms), 1) if self.times_ms else None,
            "probes": self.probes,
            "mb_per_s": [round(r, 1) for r in self.rates],
            "failures": self.failures[:3],
        }


def run_once(
    a: LabHost,
    b: LabHost,
    url: str,
    names: tuple[str, str],
    timeout: float,
    servers: LabServers,
    payloads: tuple[tuple[str, str], tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """One connect; method (both sides'), offerer's connect time, probes, wall time;
    with ``payloads``, a file each way through the stream (its MB/s as ``mb_per_s``)."""
    if payloads is not None:
        started = time.monotonic()
        result = transfer_pair(
            a,
            b,
            url,
            names=names,
            size=os.path.getsize(payloads[0][0]),
            timeout=timeout,
            transfer_timeout=timeout + 600,
            stun_servers=servers.stun_servers,
            extra_args=servers.turn_args(),
            payloads=payloads,
        )
        result["wall_s"] = time.monotonic() - started
        if result["ok"]:
            ours, theirs = result["connection"]["method"], result["other"]["method"]
            result["method"] = ours if ours == theirs else f"{ours}/{theirs}"
            result["elapsed_ms"] = result["connection"]["elapsed_ms"]
            result["probes"] = max(
                result["connection"].get("probes_sent", 0), result["other"].get("probes_sent", 0)
            )
        elif "reason" not in result:
            stderr = "\n".join(result["stderr"]).strip().splitlines()
            result["reason"] = f"exit {result['exit']}, byte-exact {result['byte_exact']}: " + (
                stderr[-1] if stderr else ""
            )
        return result
    result = run_connect(
        a,
        b,
        url,
        names=names,
        timeout=timeout,
        stun_servers=servers.stun_servers,
        extra_args=servers.turn_args(),
    )
    if result["ok"]:
        ours, theirs = result["method"], result["other"]["method"]
        result["method"] = ours if ours == theirs else f"{ours}/{theirs}"
        if str(result["remote"]).startswith("["):
            result["method"] += " (IPv6)"
        result["probes"] = max(result["probes_sent"], result["other"]["probes_sent"])
    result["wall_s"] = result["seconds"]
    return result


def measure(
    rows: list[str],
    cols: list[str],
    runs: int,
    timeout: float,
    parallel: int,
    turn: bool,
    setup: str = "rfc5780",
    port_mapping: bool = False,
    transfer: int = 0,
    ipv6: str | None = None,
) -> list[Cell]:
    """Run the matrix; cells are run ``parallel`` at a time, each in its own host pair;
    with ``transfer`` (bytes), each run also carries that much each way."""
    cells = [Cell(r, c) for r in rows for c in cols]
    payloads = (random_file(transfer), random_file(transfer)) if transfer else None
    with contextlib.ExitStack() as cleanup, NatLab(ipv6=ipv6 is not None) as lab:
        if payloads is not None:
            for path, _ in payloads:
                cleanup.callback(os.unlink, path)
        servers = start_lab_servers(lab, setup, turn)
        url = servers.url
        slots = []
        for i in range(parallel):
            slots.append({p: (lab.add_host(f"r{i}{j}", p, v6=ipv6),
                              lab.add_host(f"c{i}{j}", p, v6=ipv6))
                          for j, p in enumerate(sorted(set(rows) | set(cols)))})  # fmt: skip
        if port_mapping:
            start_port_mapping(lab, [h for slot in slots for pair in slot.values() for h in pair])
        for run in range(runs):
            for start in range(0, len(cells), parallel):
                batch = cells[start : start + parallel]
                import concurrent.futures

                with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
                    futures = {
                        pool.submit(
                            run_once,
                            slots[k][cell.row][0],
                            slots[k][cell.col][1],
                            url,
                            (f"o{run}x{start + k}", f"a{run}x{start + k}"),
                            timeout,
                            servers,
                            payloads,
                        ): cell
                        for k, cell in enumerate(batch)
                    }
                    for future, cell in futures.items():
                        result = future.result()
                        cell.runs += 1
                        cell.wall_s.append(result["wall_s"])
                        if result["ok"]:
                            cell.ok += 1
                            cell.methods[result["method"]] += 1
                            cell.times_ms.append(result["elapsed_ms"])
                            cell.probes.append(result["probes"])
                            if result.get("mb_per_s"):
                                cell.rates.append(result["mb_per_s"])
                        else:
                            cell.failures.append(result["reason"])
                print(f"run {run + 1}/{runs}: cells {start + 1}-{start + len(batch)} done",
                      file=sys.stderr, flush=True)  # fmt: skip
    return cells


def markdown(cells: list[Cell], rows: list[str], cols: list[str]) -> str:
    """The matrix as a markdown table: ok/runs, method, median ms."""
    by = {(c.row, c.col): c for c in cells}
    head = "| offerer \\ answerer | " + " | ".join(SHORT[c] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        parts = []
        for c in cols:
            cell = by[(r, c)]
            if cell.ok:
                method = (
                    "/".join(sorted(cell.methods))
                    if len(cell.methods) > 1
                    else next(iter(cell.methods))
                )
                if cell.rates:
                    rate = statistics.median(cell.rates)
                    parts.append(f"{cell.ok}/{cell.runs} {method} {rate:.1f} MB/s")
                else:
                    median = statistics.median(cell.times_ms)
                    parts.append(f"{cell.ok}/{cell.runs} {method} {median:.0f} ms")
            else:
                parts.append(f"0/{cell.runs} fails ({statistics.median(cell.wall_s):.0f} s)")
        lines.append(f"| **{SHORT[r]}** | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(PRESETS), help="offerer presets")
    parser.add_argument("--cols", nargs="*", default=list(PRESETS), help="answerer presets")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=20.0, help="connect --timeout")
    parser.add_argument("--parallel", type=int, default=4, help="cells at a time")
    parser.add_argument("--turn", action="store_true", help="give every peer coturn as TURN")
    parser.add_argument(
        "--setup",
        choices=SETUPS,
        default="rfc5780",
        help="the servers: the daemon with RFC 5780 (two addresses); the daemon on one "
        "address with its defaults, clients given only the signaling URL; or two "
        "one-address STUN servers without RFC 5780 (daemon and coturn)",
    )
    parser.add_argument(
        "--port-mapping",
        action="store_true",
        help="run miniupnpd (UPnP IGD, NAT-PMP, PCP) on every host's router",
    )
    parser.add_argument(
        "--transfer",
        type=float,
        default=0,
        metavar="MIB",
        help="also carry MIB random mebibytes each way through the encrypted stream",
    )
    parser.add_argument(
        "--ipv6",
        choices=V6_PRESETS,
        default=None,
        help="dual-stack hosts: this IPv6 side beside every IPv4 preset",
    )
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cells = measure(
        args.rows,
        args.cols,
        args.runs,
        args.timeout,
        args.parallel,
        args.turn,
        args.setup,
        args.port_mapping,
        int(args.transfer * 1024 * 1024),
        args.ipv6,
    )
    if args.json:
        print(json.dumps([c.summary() for c in cells], indent=1))
    if args.markdown or not args.json:
        print(markdown(cells, args.rows, args.cols))
        print(f"\n{args.runs} runs per cell, {time.monotonic() - started:.0f} s in all.")
        for cell in cells:
            if cell.failures:
                print(f"- {cell.row} -> {cell.col}: {cell.failures[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
