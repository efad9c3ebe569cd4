"""A throwaway ``redis-server`` for tests: loopback, a free port, no persistence."""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"Ready to accept connections" in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"redis-server exited:\n{self.output.decode()}"))
        self.ended.callback(None)


async def start_redis(testcase: Any, reactor: Any) -> str:
    """Start ``redis-server`` on 127.0.0.1 (stopped by the test's cleanup); its URL."""
    if not shutil.which(REDIS_SERVER):
        raise SkipTest("redis-server is not installed (apt-get install redis-server)")
    port = free_tcp_port()
    workdir = tempfile.mkdtemp(prefix="holepunch-redis-")
    testcase.addCleanup(shutil.rmtree, workdir, True)
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--daemonize", "no"]  # fmt: skip
    process = _RedisProcess()
    transport = reactor.spawnProcess(process, REDIS_SERVER, argv, env={}, path=workdir)

    def stop() -> Any:
        if process.ended.called:
            return None
        transport.signalProcess("KILL")
        return process.ended

    testcase.addCleanup(stop)
    await process.ready
    return f"redis://127.0.0.1:{port}/0"
