"""Smoke test of benchmarks/quic_throughput.py, so that the benchmark cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quic_throughput.py"


class BenchmarkSmokeTests(unittest.TestCase):
    def test_each_contender_runs(self):
        """Every contender moves 2 MiB and reports MB/s and CPU seconds per GB."""
        for mode in ("holepunch", "aioquic-asyncio", "tcp"):
            out = subprocess.run(
                [sys.executable, str(SCRIPT), "--mode", mode, "--mib", "2"],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            self.assertEqual(row["mode"], mode)
            self.assertEqual(row["bytes"], 2 << 20)
            self.assertGreater(row["mb_per_s"], 0)
            self.assertGreater(row["cpu_s_per_gb"], 0)
