"""The API documentation builds without a warning (pydoctor, configured in setup.cfg).

Run the same build by hand with ``pydoctor`` in the project directory: the HTML goes to
``build/apidocs``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from twisted.internet import defer, utils
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ApiDocsTests(TestCase):
    """pydoctor over the holepunch package."""

    timeout = 300

    def setUp(self) -> None:
        if importlib.util.find_spec("pydoctor") is None:
            raise self.skipTest("pydoctor is not installed (pip install '.[test]')")

    @defer.inlineCallbacks
    def test_build_without_warnings(self) -> Any:
        """pydoctor documents every module of holepunch with no warning and no docstring error."""
        output = FilePath(self.mktemp())
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "pydoctor", f"--html-output={output.path}"],
            env=dict(os.environ),
            path=ROOT,
        )
        report = (out + err).decode("utf-8", "replace")
        # setup.cfg turns warnings into exit status 3; say which ones.
        self.assertEqual(code, 0, f"pydoctor reported problems:\n{report}")
        self.assertEqual(report.strip(), "", report)
        self.assertTrue(output.child("index.html").exists())
        for module in ("holepunch.config", "holepunch.daemon.http", "holepunch.stun.message"):
            self.assertTrue(output.child(f"{module}.html").exists(), module)
