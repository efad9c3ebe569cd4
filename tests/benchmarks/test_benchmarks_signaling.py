# -*- test-case-name: tests.benchmarks.test_benchmarks_signaling -*-
"""Smoke test of the signaling benchmark (``benchmarks/signaling_load.py``): tiny numbers,
our server only (one process, two workers, two nodes on Redis), 127.0.0.1 only; the
figures themselves are in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "signaling_load.py"
INSTRUCTIONS = ROOT / "benchmarks" / "relay_instructions.py"


def load_script(path: Path) -> Any:
    """A benchmark script as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class RelayInstructionsTests(TestCase):
    """``relay_instructions.py`` counts what the server runs per lone offer, under
    callgrind, for our daemon and the Twisted floor."""

    timeout = 240

    def test_counts(self) -> None:
        if shutil.which("valgrind") is None:
            raise SkipTest("needs valgrind (Debian: valgrind)")
        argv = [sys.executable, str(INSTRUCTIONS), "--targets=holepunch,floor", "--offers=20",
                "--warmup=10", "--json"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, timeout=220, check=False, cwd=ROOT)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace")[-3000:])
        report = json.loads(proc.stdout)
        self.assertEqual(report["offers"], 20)
        for target in ("holepunch", "floor"):
            figures = report["results"][target]
            # a relay in Python: tens of thousands of instructions, a share in the
            # interpreter's loop (nothing counted would be 0; a count of the whole process
            # life, startup included, would be hundreds of millions per offer)
            self.assertGreater(figures["instructions"], 10_000, target)
            self.assertLess(figures["instructions"], 2_000_000, target)
            self.assertGreater(figures["interpreter"], 0, target)
            self.assertLess(figures["interpreter"], figures["instructions"], target)


class StallTests(SynchronousTestCase):
    """Which offers were in flight while the host took time from the VM, on made-up
    readings of the steal time."""

    def setUp(self) -> None:
        self.bench = load_script(SCRIPT)
        self.addCleanup(sys.modules.pop, SCRIPT.stem, None)

    def test_spans_around_each_rise(self) -> None:
        """A rise between two readings marks from the reading before the first of them
        to the one after the second; merged, overlapping spans are one; no rise, no
        span."""
        readings = [(0.0, 5.0), (20.0, 5.0), (40.0, 5.0), (60.0, 15.0), (80.0, 15.0),
                    (100.0, 25.0), (120.0, 25.0), (140.0, 25.0), (160.0, 25.0),
                    (180.0, 25.0), (200.0, 35.0)]  # fmt: skip
        spans = self.bench.stalled_spans(readings)
        self.assertEqual(spans, [(20.0, 80.0), (60.0, 120.0), (160.0, 200.0)])
        self.assertEqual(self.bench.merged(spans), [(20.0, 120.0), (160.0, 200.0)])
        self.assertEqual(self.bench.stalled_spans(readings[:3]), [])
        self.assertEqual(self.bench.stalled_spans([(0.0, 0.0), (20.0, 10.0)]), [(0.0, 20.0)])

    def test_merged(self) -> None:
        """Spans from the steal readings and the canaries, in any order, made one where
        they overlap."""
        spans = [(50.0, 60.0), (0.0, 10.0), (5.0, 20.0), (20.0, 25.0), (55.0, 58.0)]
        self.assertEqual(self.bench.merged(spans), [(0.0, 25.0), (50.0, 60.0)])

    def test_canary_notes_late_wakes(self) -> None:
        """The canary, at real-time priority on one CPU, notes the wakes later than its
        threshold (0 here: every wake, each some µs after it was due) on this process's
        monotonic clock."""
        if shutil.which("gcc") is None:
            raise SkipTest("needs gcc")
        work = Path(self.mktemp()).resolve()  # the processes run elsewhere
        work.mkdir()
        canary = self.bench.build_generator(work, "canary")
        processes = self.bench.Processes(work)
        self.addCleanup(processes.stop_all)
        before = time.monotonic() * 1e3
        proc = processes.start([str(canary), "0", "2000", "0", "-"], "canary")
        lines = self.bench.LineReader(proc)
        deadline = time.monotonic() + 10.0
        first = lines.line(deadline)
        if first != b"ready":
            raise SkipTest(f"no real-time priority here (not root?): {first!r}")
        wakes = [tuple(map(float, (lines.line(deadline) or b"").split())) for _ in range(5)]
        after = time.monotonic() * 1e3
        for woken, late in wakes:
            self.assertLess(before, woken)
            self.assertLess(woken, after)
            self.assertGreaterEqual(late, 0.0)
        self.assertEqual(sorted(wakes), wakes)

    def test_canary_spans(self) -> None:
        """Each noted wake is a span from one period before it was due until it came."""
        note = Path(self.mktemp())
        note.write_text("1000.000 0.600\n1003.500 1.500\n\n")
        period = self.bench.CANARY_PERIOD_US / 1e3
        self.assertEqual(
            self.bench.canary_spans([note, note.with_name("missing")]),
            [(1000.0 - 0.6 - period, 1000.0), (1003.5 - 1.5 - period, 1003.5)],
        )

    def test_steady_latencies(self) -> None:
        """An offer is kept when it was in flight (from its send to its arrival) during
        none of the spans; the send times count from the paced phase's start."""
        offers = [(0.0, 1.0), (10.0, 15.0), (30.0, 1.0), (55.0, 1.0), (70.0, 0.5)]
        spans = [(1000.0 + 25.0, 1000.0 + 40.0), (1000.0 + 56.5, 1000.0 + 60.0)]
        self.assertEqual(self.bench.steady_latencies(offers, 1000.0, spans), [1.0, 1.0, 0.5])
        self.assertEqual(self.bench.steady_latencies(offers, 1000.0, []), [o[1] for o in offers])


class SignalingLoadSmokeTests(TestCase):
    """The load script runs end to end against our server and reports numbers."""

    timeout = 150

    def test_tiny_run_reports_rates(self) -> None:
        """A tiny run relays offers (rate > 0), loses none when paced, and measures memory."""
        if shutil.which("gcc") is None:
            raise SkipTest("needs gcc to build the load generator (benchmarks/signaling/loadgen.c)")
        argv = [
            sys.executable,
            str(SCRIPT),
            "--targets=holepunch,holepunch-2w,holepunch-2n",
            "--pairs=5",
            "--warmup=0.5",
            "--duration=1",
            "--rate=200",
            "--idle-connections=100",
            "--json",
            f"--log-dir={Path(self.mktemp()).resolve()}",
        ]
        if shutil.which("redis-server") is None:
            raise SkipTest("needs redis-server for the two-node run")
        ran_from = time.monotonic() * 1e3
        proc = subprocess.run(argv, capture_output=True, timeout=140, check=False, cwd=ROOT)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace")[-3000:])
        report = json.loads(proc.stdout)
        for target in ("holepunch", "holepunch-2w", "holepunch-2n"):
            ours = report["results"][target]
            self.assertEqual(ours["errors"], [], target)
            self.assertEqual(len(ours["runs"]), 1, target)
            self.assertGreater(ours["fullLoad"]["messagesPerSecond"], 0, target)
            self.assertGreater(ours["fullLoad"]["serverCpu"], 0, target)
            self.assertEqual(ours["paced"]["lost"], 0, target)
            self.assertGreater(ours["paced"]["p99Ms"], 0, target)
            self.assertEqual(ours["idle"]["connections"], 100, target)
            self.assertEqual(ours["idle"]["failed"], 0, target)
            # --log-dir: each measured offer's send time and latency, one line each
            rows = (Path(argv[-1].split("=", 1)[1]) / f"latencies-{target}-1.txt").read_text()
            latencies = [float(line.split()[1]) for line in rows.splitlines()]
            self.assertEqual(len(latencies), ours["paced"]["measured"], target)
            self.assertAlmostEqual(max(latencies), ours["paced"]["maxMs"], places=2)
            # the percentiles of all runs' offers together: here, of this run's
            # (one run: the generator's own percentiles, computed in C from its samples)
            pooled = ours["pacedAllRuns"]
            self.assertEqual(pooled["offers"], len(latencies), target)
            for key in ("p50Ms", "p99Ms", "p999Ms"):
                self.assertAlmostEqual(pooled[key], ours["paced"][key], places=2, msg=target)
            # the VM's steal over the paced phase, per CPU and in all
            [run] = ours["runs"]
            self.assertEqual(set(run["pacedStealMs"]), {str(c) for c in range(os.cpu_count() or 1)})
            self.assertGreaterEqual(run["paced"]["stealMs"], 0, target)
            # the server's CPU per offer in the paced phase
            self.assertGreater(ours["paced"]["serverCpuMicrosecondsPerMessage"], 0, target)
            # the paced phase's start on this clock (CLOCK_MONOTONIC), within this test,
            # and the offers kept for the p99 without the host's stalls
            self.assertLess(ran_from, run["paced"]["startMs"], target)
            self.assertLess(run["paced"]["startMs"], time.monotonic() * 1e3, target)
            self.assertIsInstance(run["stalledMs"], list, target)
            steady = ours["pacedAllRuns"]["steady"]
            self.assertLessEqual(steady["offers"], pooled["offers"], target)
            self.assertGreater(steady["offers"], 0, target)


class ReferenceRelaysTests(TestCase):
    """The Python references the benchmark sets beside our server relay what the
    generator sends (the bare Autobahn relay once answered in a JSON spacing the
    generator did not match, and every run of it failed)."""

    timeout = 120

    def test_references_relay(self) -> None:
        if shutil.which("gcc") is None:
            raise SkipTest("needs gcc to build the load generator (benchmarks/signaling/loadgen.c)")
        targets = ("bare", "floor", "floor-epoll")
        argv = [sys.executable, str(SCRIPT), f"--targets={','.join(targets)}", "--pairs=5",
                "--warmup=0.2", "--duration=0.5", "--rate=200", "--idle-connections=0",
                "--json"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, timeout=100, check=False, cwd=ROOT)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace")[-3000:])
        results = json.loads(proc.stdout)["results"]
        for target in targets:
            self.assertEqual(results[target]["errors"], [], target)
            self.assertGreater(results[target]["fullLoad"]["messagesPerSecond"], 0, target)
            self.assertEqual(results[target]["paced"]["lost"], 0, target)


class PlacementTests(TestCase):
    """``--placement`` pins the server and the generator of the relay phases."""

    timeout = 120

    def test_split_pins_server_and_generator(self) -> None:
        """``split``: the server on CPU 1, the generator on CPU 0, as the report shows
        from their affinity while they ran; ``same``: both on CPU 0."""
        if shutil.which("gcc") is None:
            raise SkipTest("needs gcc to build the load generator (benchmarks/signaling/loadgen.c)")
        if len(os.sched_getaffinity(0)) < 2:
            raise SkipTest("needs two CPUs")
        for placement, server, generator in (("split", [1], [0]), ("same", [0], [0])):
            argv = [sys.executable, str(SCRIPT), "--targets=holepunch", "--pairs=5",
                    "--warmup=0.2", "--duration=0.5", "--rate=200", "--idle-connections=0",
                    f"--placement={placement}", "--json"]  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, timeout=100, check=False, cwd=ROOT)
            self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace")[-3000:])
            [run] = json.loads(proc.stdout)["results"]["holepunch"]["runs"]
            self.assertEqual(run["cpus"], {"server": server, "generator": generator}, placement)
            self.assertGreater(run["fullLoad"]["messagesPerSecond"], 0, placement)

    def test_not_for_several_processes(self) -> None:
        """Pinning one process of a multi-process server would measure nothing useful:
        a usage error."""
        argv = [sys.executable, str(SCRIPT), "--targets=holepunch-2w", "--placement=same"]
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False, cwd=ROOT)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"not for ['holepunch-2w']", proc.stderr)


class SoakSmokeTests(TestCase):
    """The soak script runs end to end with tiny numbers and reports its rows."""

    timeout = 90

    def test_tiny_soak(self) -> None:
        argv = [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--connections=20",
            "--duration=3",
            "--interval=1",
            "--rate=50",
            "--json",
        ]
        proc = subprocess.run(argv, capture_output=True, timeout=80, check=False, cwd=ROOT)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace")[-3000:])
        rows = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        self.assertGreaterEqual(len(rows), 2)
        self.assertGreater(sum(row["offers"] for row in rows), 0)
        self.assertTrue(all(row["errors"] == 0 and row["closed"] == 0 for row in rows), rows)
        self.assertTrue(all(row["rss_mib"] > 0 for row in rows))
