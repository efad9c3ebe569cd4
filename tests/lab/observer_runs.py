"""Running ``lab.udpobserver`` clients in lab hosts: what the NAT lab tests share.

:class:`OutputLines` reads a client's JSON lines with deadlines (no fixed sleeps);
:func:`paired_run` drives two clients that swap one address through this process, as a
signaling channel would (a naive UDP punch, a TCP simultaneous open).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from lab.natlab import LabHost

OBSERVER = "lab.udpobserver"


class OutputLines:
    """Lines from a process's binary stdout pipe, read with deadlines (no fixed sleeps)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.args = proc.args
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        """The next line, None at end of output; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line from {self.args} within {timeout}s")
            if select.select([self.fd], [], [], remaining)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    line, self.buffer = self.buffer, b""
                    return line.decode() if line else None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def json(self, timeout: float) -> dict[str, Any]:
        """The next line, parsed as a JSON object."""
        line = self.next(timeout)
        if line is None:
            raise AssertionError(f"{self.args} ended without output")
        value = json.loads(line)
        assert isinstance(value, dict)
        return value


def paired_run(
    hosts: Sequence[LabHost], argvs: Sequence[Sequence[str]], key: str, timeout: float
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run an observer client (``argvs[i]``) in each of two hosts; each first prints
    ``{key: ADDRESS}`` and then reads its peer's ADDRESS from stdin, which it gets here.

    Returns both addresses and both final results, each with ``"exit_status"`` added.
    ``timeout`` bounds the clients' work after the swap.
    """
    procs = [
        host.popen(host.python_argv(OBSERVER, *argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for host, argv in zip(hosts, argvs, strict=True)
    ]
    outputs = [OutputLines(proc) for proc in procs]
    firsts = [str(lines.json(10.0)[key]) for lines in outputs]
    for proc, peer in zip(procs, reversed(firsts), strict=True):
        assert proc.stdin is not None
        proc.stdin.write(peer.encode() + b"\n")
        proc.stdin.flush()
    results = [lines.json(timeout + 10.0) for lines in outputs]
    for proc, result in zip(procs, results, strict=True):
        result["exit_status"] = proc.wait(timeout=10.0)
    return firsts, results


def observe(host: LabHost, *args: str) -> dict[str, Any]:
    """Run one observer client in ``host`` and return its JSON result (it must print
    nothing on stderr)."""
    result = host.run(host.python_argv(OBSERVER, *args), timeout=20.0)
    if result.stderr != b"":
        raise AssertionError(f"observer in {host} wrote to stderr: {result.stderr!r}")
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value
