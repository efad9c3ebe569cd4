# -*- test-case-name: tests.integration.test_workers -*-
"""``twistd holepunch --workers N``: one daemon on every core.

The process twistd runs is worker 0. It starts workers 1..N-1 as child processes
(``python -m holepunch.daemon.worker``, with the same options) and restarts any that
dies. Every worker listens on the same signaling and STUN ports with ``SO_REUSEPORT``
(:mod:`holepunch.reuseport`), so the kernel spreads connections and STUN flows over
them, and every worker's signaling registry is the Redis one
(:mod:`holepunch.signaling.redisregistry`): peers on different workers see each other
exactly as peers on different machines do. Without ``--redis`` worker 0 runs a private
``redis-server`` on a UNIX socket only it and its workers can open. A relay for a peer
on another worker goes straight to that worker over a UNIX socket in a private directory
(:class:`LinkDirectory`, :mod:`holepunch.signaling.nodelinks`), not through Redis.

A worker's output lines go through worker 0's log (``worker 2: ...``). A worker whose
parent is gone (its stdin pipe closes) stops. ``/p2p/stats`` and ``/metrics``, on
whichever worker a request lands, report for the whole daemon: each worker stores its
counters in Redis every second and adds up its own and the others' (:class:`WorkerStats`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

STATS_INTERVAL = 1.0
PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>
"""Seconds between two shares of a worker's counters."""
STATS_TTL = 5.0
"""A worker's counters older than this are left out of the sums (it died)."""


def merge_counts(mine: Mapping[str, Any], *others: Mapping[str, Any]) -> dict[str, Any]:
    """``mine`` with every number (not bool) of ``others`` added, at any depth; other
    values (names, flags, lists) are ``mine``'s."""
    total: dict[str, Any] = dict(mine)
    for other in others:
        for key, value in other.items():
            here = total.get(key)
            if isinstance(value, bool) or isinstance(here, bool):
                total.setdefault(key, value)
            elif isinstance(value, int | float) and (here is None or isinstance(here, int | float)):
                total[key] = (here or 0) + value
            elif isinstance(value, Mapping) and (here is None or isinstance(here, Mapping)):
                total[key] = merge_counts(here or {}, value)
            else:
                total.setdefault(key, value)
    return total


class WorkerStats(Service):
    """This worker's counters shared with the other workers of its daemon, and theirs
    kept (refreshed every :data:`STATS_INTERVAL`) to be added to ours on demand.

    :param share: ``(group, member, snapshot JSON, ttl)`` -> Deferred of every member's
        snapshot: :meth:`RedisRoomRegistry.share_stats
        <holepunch.signaling.redisregistry.RedisRoomRegistry.share_stats>`.
    :param sources: name -> callable giving this worker's counters of that part.
    """

    def __init__(
        self,
        clock: Any,
        share: Callable[[str, str, str, float], defer.Deferred[dict[str, str]]],
        group: str,
        index: int,
        count: int,
        sources: Mapping[str, Callable[[], Mapping[str, Any]]],
    ) -> None:
        self.count = count
        """Workers the daemon runs."""
        self.clock = clock
        self.share = share
        self.group = group
        self.index = index
        self.sources = dict(sources)
        self.others: dict[str, dict[str, Any]] = {}
        """The other workers' last snapshots, by worker index (as text)."""
        self._timer = TimerService(STATS_INTERVAL, self.refresh)
        self._timer.clock = clock

    def startService(self) -> None:
        super().startService()
        self._timer.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self._timer.stopService()

    def snapshot(self) -> dict[str, Any]:
        parts = {name: dict(source()) for name, source in self.sources.items()}
        return {"wall": time.time(), "pid": os.getpid(), **parts}

    def refresh(self) -> defer.Deferred[None]:
        """Share ours, keep theirs."""
        d = self.share(self.group, str(self.index), json.dumps(self.snapshot()), STATS_TTL)

        def kept(snapshots: dict[str, str]) -> None:
            now = time.time()
            others: dict[str, dict[str, Any]] = {}
            for member, text in snapshots.items():
                if member == str(self.index):
                    continue
                try:
                    snapshot = json.loads(text)
                except ValueError:
                    continue
                if isinstance(snapshot, dict) and now - snapshot.get("wall", 0) <= STATS_TTL:
                    others[member] = snapshot
            self.others = others

        def failed(failure: Failure) -> None:
            _log.debug("sharing worker counters failed: {e}", e=failure.getErrorMessage())

        return d.addCallbacks(kept, failed)

    def total(self, part: str) -> dict[str, Any]:
        """Our counters of ``part`` plus the other workers'."""
        mine = dict(self.sources[part]())
        theirs = [s[part] for s in self.others.values() if isinstance(s.get(part), Mapping)]
        return merge_counts(mine, *theirs)

    def members(self) -> dict[str, dict[str, Any]]:
        """Each reporting worker's pid and signaling connections, by index."""
        snapshots = {str(self.index): self.snapshot(), **self.others}
        return {
            index: {
                "pid": snapshot.get("pid"),
                "connections": (snapshot.get("signaling") or {}).get("connections", 0),
            }
            for index, snapshot in sorted(snapshots.items(), key=lambda kv: int(kv[0]))
        }

    @property
    def reporting(self) -> int:
        """Workers whose counters are in the sums (this one included)."""
        return 1 + len(self.others)


def die_with_parent() -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: on Linux, the child gets SIGTERM when this process
    dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so a daemon killed outright leaves no
    redis-server behind; elsewhere None (the child is stopped with the daemon only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def in_child() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: go now
            os._exit(1)

    return in_child


class PrivateRedis(Service):
    """A ``redis-server`` on a UNIX socket in a fresh directory (mode 0700), for the
    workers of one daemon when no ``--redis`` is given; stopped with the daemon."""

    def __init__(self, executable: str = "redis-server") -> None:
        path = shutil.which(executable)
        if path is None:
            raise SystemExit(
                "twistd holepunch: --workers needs --redis URL, or redis-server on PATH "
                "(apt-get install redis-server) for a private one"
            )
        self.executable = path
        self.directory = tempfile.mkdtemp(prefix="holepunch-redis-")
        self.socket = os.path.join(self.directory, "redis.sock")
        self.url = f"unix://{self.socket}?db=0"
        self.process: subprocess.Popen[bytes] | None = None

    def startService(self) -> None:
        super().startService()
        from holepunch.signaling.redisregistry import RedisUnavailable, check_redis
        from holepunch.signaling.redisstate import parse_redis_url

        argv = [self.executable, "--port", "0", "--unixsocket", self.socket]
        argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        argv += ["--dir", self.directory, "--loglevel", "warning"]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        deadline = time.monotonic() + 10.0
        while True:  # start-up only, before anything else runs
            try:
                check_redis(parse_redis_url(self.url), timeout=1.0)
                break
            except RedisUnavailable as e:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop_now()
                    raise SystemExit(f"twistd holepunch: the private redis-server: {e}") from None
                time.sleep(0.05)
        _log.info("private Redis for the workers at {url}", url=self.url)

    def stop_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def stopService(self) -> None:
        super().stopService()
        self.stop_now()


class LinkDirectory(Service):
    """A fresh directory (mode 0700) where the workers of one daemon listen for each
    other's relays (:mod:`holepunch.signaling.nodelinks`); removed with the daemon."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="holepunch-links-")

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.started = pool.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            if line.strip():
                _log.info("worker {i}: {line}", i=self.index, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Workers 1..``count``-1 of this daemon, as child processes running ``argv`` plus
    ``--worker-index I``; one that dies is started again (after 1 s, doubling to 30 s
    while they keep dying young). Stopping sends SIGTERM and waits (SIGKILL after
    ``stop_timeout``)."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.stop_timeout = stop_timeout
        self.workers: dict[int, _Worker] = {}
        self.transports: dict[int, Any] = {}
        self.restarts = 0
        self._backoff: dict[int, float] = {}
        self._pending: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        worker = _Worker(self, index)
        argv = [
            sys.executable, "-m", "holepunch.daemon.worker", *self.argv,
            "--worker-index", str(index),
        ]  # fmt: skip
        self.transports[index] = self.reactor.spawnProcess(
            worker, sys.executable, argv, env=self.env, childFDs={0: "w", 1: "r", 2: "r"}
        )
        self.workers[index] = worker
        _log.info("worker {i} started (pid {pid})", i=index, pid=self.transports[index].pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        index = worker.index
        if self.workers.get(index) is not worker:
            return
        del self.workers[index]
        self.transports.pop(index, None)
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        wait = 1.0 if lived > 60 else min(self._backoff.get(index, 0.5) * 2, 30.0)
        self._backoff[index] = wait
        self.restarts += 1
        _log.warn(
            "worker {i} ended ({why}); starting it again in {wait:g}s",
            i=index,
            why=reason.getErrorMessage(),
            wait=wait,
        )
        self._pending[index] = self.reactor.callLater(wait, self.spawn, index)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = [w.ended for w in self.workers.values()]
        for transport in list(self.transports.values()):
            _signal(transport, signal.SIGTERM)
        if not waits:
            return defer.succeed(None)
        everything = defer.gatherResults(waits, consumeErrors=True)
        timer = self.reactor.callLater(self.stop_timeout, self._kill_all)
        return everything.addBoth(lambda _: timer.cancel() if timer.active() else None)

    def _kill_all(self) -> None:
        for transport in list(self.transports.values()):
            _signal(transport, signal.SIGKILL)


def _signal(transport: Any, sig: int) -> None:
    try:
        transport.signalProcess(sig)
    except Exception:  # already gone
        pass


__all__ = ["LinkDirectory", "PrivateRedis", "WorkerPool", "WorkerStats", "merge_counts"]
