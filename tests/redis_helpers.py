"""A throwaway ``redis-server`` for tests: loopback, a free port, no persistence."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest

from lab.coturn import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that a test can kill and start again on the same
    port (empty: no persistence)."""

    def __init__(self, testcase: Any, reactor: Any) -> None:
        if not shutil.which(REDIS_SERVER):
            raise SkipTest("redis-server is not installed (apt-get install redis-server)")
        self.reactor = reactor
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="holepunch-redis-")
        self.process: _RedisProcess | None = None
        self.transport: Any = None
        testcase.addCleanup(shutil.rmtree, self.workdir, True)
        testcase.addCleanup(self.kill)

    async def start(self) -> str:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--daemonize", "no"]  # fmt: skip
        self.process = _RedisProcess()
        self.transport = self.reactor.spawnProcess(
            self.process, REDIS_SERVER, argv, env={}, path=self.workdir
        )
        await self.process.ready
        return self.url

    def kill(self) -> Any:
        """SIGKILL; fires once it is gone."""
        if self.process is None or self.process.ended.called:
            return None
        self.transport.signalProcess("KILL")
        return self.process.ended


async def start_redis(testcase: Any, reactor: Any) -> str:
    """Start ``redis-server`` on 127.0.0.1 (stopped by the test's cleanup); its URL."""
    return await RedisServer(testcase, reactor).start()
