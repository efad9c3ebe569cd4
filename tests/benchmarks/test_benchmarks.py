# -*- test-case-name: tests.benchmarks.test_benchmarks -*-
"""Smoke tests of ``benchmarks/stun_throughput.py``, so that the benchmark cannot rot.

An integration module: it runs the real script, which starts the real daemon with
``twistd`` on 127.0.0.1 and loads it for half a second (our server only: coturn and gcc
are not needed). The report's logic is also checked on made-up figures.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.daemon.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "stun_throughput.py")


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stun_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stun_throughput"] = module
    spec.loader.exec_module(module)
    return module


class ScriptTests(TestCase):
    """The benchmark script runs end to end against our daemon."""

    timeout = 60

    @defer.inlineCallbacks
    def test_short_run_against_our_server(self) -> Any:
        """A 0.5 s run against holepunch prints a table with a positive answered rate."""
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            [
                SCRIPT,
                "--targets=holepunch",
                "--duration=0.5",
                "--warmup=0.1",
                "--runs=1",
                "--latency-duration=0.2",
                "--no-pin",
            ],
            env=dict(os.environ),
            path=ROOT,
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        match = re.search(r"^holepunch \S+ \(twistd\)\s+(\d+)\s", text, re.MULTILINE)
        self.assertIsNotNone(match, text)
        assert match is not None
        # > 0 is the point; > 500 also shows --stun-rate 0 took the 50/s token bucket off.
        self.assertGreater(int(match.group(1)), 500, text)
        self.assertIn("XOR-MAPPED-ADDRESS 127.0.0.1:", text)


class ReportTests(SynchronousTestCase):
    """The reading of the figures, on made-up runs."""

    def setUp(self) -> None:
        self.bench = load_benchmark()
        self.addCleanup(sys.modules.pop, "stun_throughput", None)

    def result(self, name: str, rate: float) -> Any:
        b = self.bench
        result = b.TargetResult(name, name, "verified", "")
        result.runs.append(b.WindowRun(rate, 100, 100, 0, 0, 0, 1.0, 1e6 / rate, 0.9))
        result.latency = b.LatencyRun(2000.0, 3, 3, [0.0001, 0.0002, 0.0003])
        return result

    def test_generator_bound_reading(self) -> None:
        """A target near the reflector's rate is read as a lower bound, a slow one as its own."""
        settings = {
            "window": 64,
            "runs": 1,
            "duration": 5.0,
            "warmup": 1.0,
            "latency_rate": 2000.0,
            "latency_duration": 2.0,
            "pinning": "not pinned",
        }
        info = dict.fromkeys(
            [
                "cpus",
                "cpu_model",
                "kernel",
                "python",
                "twisted",
                "coturn",
                "loadavg",
                "other_processes_cpus",
                "steal_cpus",
            ],
            "?",
        )
        text = self.bench.report(
            [
                self.result("holepunch", 30000),
                self.result("coturn", 95000),
                self.result("reflector", 100000),
            ],
            settings,
            info,
        )
        self.assertIn("generator ceiling: 100000 req/s", text)
        self.assertIn(
            "server CPU per answer: holepunch 33.3 us, coturn 10.5 us: "
            "holepunch takes 3.17x coturn's",
            text,
        )
        self.assertIn("holepunch: 30% of the generator ceiling, server-bound", text)
        self.assertIn(
            "coturn: 95% of the generator ceiling, generator-bound: coturn >= 95000", text
        )

    def test_percentile(self) -> None:
        """Percentiles are nearest-rank over the round-trip times."""
        latency = self.bench.LatencyRun(1.0, 100, 100, [i / 1000 for i in range(1, 101)])
        self.assertEqual(latency.percentile(50), 0.050)
        self.assertEqual(latency.percentile(99), 0.099)


class StunRateOptionTests(SynchronousTestCase):
    """The daemon options the benchmark relies on."""

    def test_stun_rate_zero_parses(self) -> None:
        """--stun-rate 0 (unlimited) and --stun-burst parse as numbers; defaults are 50/100."""
        options = Options()
        options.parseOptions(["--stun-rate", "0", "--stun-burst", "5"])
        self.assertEqual((options["stun-rate"], options["stun-burst"]), (0.0, 5.0))
        defaults = Options()
        defaults.parseOptions([])
        self.assertEqual((defaults["stun-rate"], defaults["stun-burst"]), (50.0, 100.0))
