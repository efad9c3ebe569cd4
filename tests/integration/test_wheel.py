"""The wheel ships the library and its public test doubles, not the NAT lab or the tests.

The wheel is built offline from a copy of the project (``pip wheel --no-deps
--no-build-isolation``, with the ``setuptools`` and ``wheel`` the ``test`` extra installs),
so a stale ``build/`` directory in the checkout cannot hide a packaging mistake.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parents[2]

# What a copy of the project leaves behind: build output, caches, VCS and node data.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "_trial_temp*",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "node_modules",
)

# Modules of the NAT lab (lab/) and its drivers: none of them may be installed.
LAB_MODULES = (
    "natlab",
    "coturn",
    "udpobserver",
    "peers",
    "tcp_punch_driver",
    "tcp_punch_lab",
    "path_bench_peer",
    "aioice_peer",
    "processes",
    "browser_driver",
)


class WheelContentsTests(TestCase):
    """``pip wheel .`` packs holepunch and twisted/plugins, and nothing of lab/ or tests/."""

    timeout = 300

    def setUp(self) -> None:
        for module in ("setuptools", "wheel"):
            if importlib.util.find_spec(module) is None:
                raise self.skipTest(f"{module} is not installed (pip install '.[test]')")

    @defer.inlineCallbacks
    def build_wheel(self) -> Any:
        """Build the wheel from a copy of the project; return its member names."""
        # Outside the project: a copy of its sources under _trial_temp would be linted.
        work = Path(tempfile.mkdtemp(prefix="holepunch-wheel-"))
        self.addCleanup(shutil.rmtree, work, True)
        source = work / "source"
        shutil.copytree(ROOT, source, ignore=_NOT_COPIED)
        dist = work / "dist"
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--no-cache-dir",
                "-w",
                str(dist),
                ".",
            ],
            env=dict(os.environ),
            path=str(source),
        )
        report = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"pip wheel failed:\n{report}")
        wheels = sorted(dist.glob("holepunch-*.whl"))
        self.assertEqual(len(wheels), 1, report)
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.namelist()

    @defer.inlineCallbacks
    def test_library_in_lab_out(self) -> Any:
        """The wheel holds the library and the test doubles; no lab module, no test."""
        names = yield self.build_wheel()
        for wanted in (
            "holepunch/__init__.py",
            "holepunch/ice/core.py",
            "holepunch/testing/fakenet.py",
            "holepunch/testing/loopback.py",
            "twisted/plugins/holepunch_plugin.py",
            "twisted/plugins/holepunch_endpoints.py",
        ):
            self.assertIn(wanted, names)
        for name in names:
            self.assertFalse(name.startswith(("lab/", "tests/")), name)
            stem = name.rsplit("/", 1)[-1].removesuffix(".py")
            self.assertNotIn(stem, LAB_MODULES, name)
