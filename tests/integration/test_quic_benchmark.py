"""Smoke tests of benchmarks/quic_throughput.py, so that the benchmark cannot rot."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quic_throughput.py"
STACKS = ("holepunch", "aioquic-asyncio", "tcp")


def run_script(*argv: str, timeout: float = 120) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *argv],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    ).stdout
    return [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]


class BenchmarkSmokeTests(unittest.TestCase):
    def test_each_contender_runs(self):
        """Every contender moves 2 MiB and reports MB/s and CPU seconds per GB."""
        for mode in STACKS:
            row = run_script("--mode", mode, "--mib", "2")[-1]
            self.assertEqual(row["mode"], mode)
            self.assertEqual(row["bytes"], 2 << 20)
            self.assertGreater(row["mb_per_s"], 0)
            self.assertGreater(row["cpu_s_per_gb"], 0)

    def check_rows(self, rows, path, size):
        self.assertEqual([row["mode"] for row in rows], list(STACKS))
        for row in rows:
            self.assertEqual(row["path"], path)
            self.assertEqual(row["bytes"], size)
            self.assertGreater(row["mb_per_s"], 0)
            self.assertGreater(row["sender_cpu_s_per_gb"], 0)
            self.assertGreater(row["receiver_cpu_s_per_gb"], 0)
            both = row["sender_cpu_s_per_gb"] + row["receiver_cpu_s_per_gb"]
            self.assertLess(abs(row["cpu_s_per_gb"] - both), 0.05, row)
            self.assertGreater(row["process_cpu_s"], 0)

    def test_loopback_two_processes(self):
        """The default path: sender and receiver processes on 127.0.0.1, same payload."""
        rows = run_script("--size", "2M", "--json")
        self.check_rows(rows, "loopback", 2 << 20)

    def test_lab_path(self):
        """--path lab: the same three transfers between two namespaces, removed after."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("--path lab creates network namespaces: needs root")
        if shutil.which("ip") is None:
            raise unittest.SkipTest("--path lab needs iproute2 (`ip`)")
        rows = run_script("--path", "lab", "--size", "2M", "--json")
        self.check_rows(rows, "lab", 2 << 20)
        namespaces = rows[0]["namespaces"]
        self.assertEqual(len(namespaces), 2)
        self.assertTrue(all(ns.startswith("hpb-") for ns in namespaces), namespaces)
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
        for ns in namespaces:
            self.assertNotIn(ns, listed.split())

    def test_profile_says_where_the_time_goes(self):
        """--profile runs our stack under cProfile and prints its time by category."""
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--size", "1M", "--profile", "--top", "5"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.assertIn("=== holepunch sender", proc.stdout)
        self.assertIn("=== holepunch receiver", proc.stdout)
        self.assertIn("packet building (aioquic packet_builder)", proc.stdout)
        self.assertIn("AEAD", proc.stdout)

    def test_size_parsing(self):
        """--size takes K/M/G (binary) units; a bare number is MiB."""
        sys.path.insert(0, str(SCRIPT.parent))
        self.addCleanup(sys.path.remove, str(SCRIPT.parent))
        import quic_throughput

        self.assertEqual(quic_throughput.parse_size("256M"), 256 << 20)
        self.assertEqual(quic_throughput.parse_size("1GiB"), 1 << 30)
        self.assertEqual(quic_throughput.parse_size("512K"), 512 << 10)
        self.assertEqual(quic_throughput.parse_size("4096B"), 4096)
        self.assertEqual(quic_throughput.parse_size("3"), 3 << 20)
