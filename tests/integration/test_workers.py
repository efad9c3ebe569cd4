"""``twistd holepunch --workers 2``: two processes on one signaling port and one STUN
port (SO_REUSEPORT), a private redis-server between them, counters for the whole daemon,
and a worker killed with SIGKILL whose clients are back, same ids, in seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor, task, threads
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from holepunch.signaling.client import RECONNECTED, REGISTRATION_LOST, SignalingClient
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import Method
from lab.coturn import free_port
from lab.natlab import TWISTD
from tests.redis_helpers import REDIS_SERVER
from tests.signaling_helpers import next_event

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = 2


async def until(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """``await check()`` again every ``interval`` s until it is truthy; fail after
    ``timeout`` s naming ``what``."""
    deadline = reactor.seconds() + timeout
    while True:
        value = await check()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        await task.deferLater(reactor, interval, lambda: None)


def stun_round_trips(port: int, count: int) -> int:
    """``count`` Binding requests to 127.0.0.1:``port``, each from its own socket (so
    the kernel spreads them over the workers); how many were answered."""
    answered = 0
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            request = StunMessage.request(Method.BINDING)
            s.sendto(encode(request), ("127.0.0.1", port))
            reply = decode(s.recv(2048))
            answered += reply.transaction_id == request.transaction_id
    return answered


async def next_of(proto: Any, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (``peer-joined`` and the like are skipped)."""
    while True:
        message: dict[str, Any] = await proto.next()
        if message.get("type") == kind:
            return message


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(child)
                queue.append(child)
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkersTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(REDIS_SERVER):
            self.skipTest("redis-server is not installed (apt-get install redis-server)")

    agent: Any = None

    async def start_daemon(self, tls: str = "") -> tuple[str, int, subprocess.Popen[bytes]]:
        """``twistd holepunch --workers 2`` with its defaults but for the ports; its
        ws:// URL (wss:// with ``tls``, the ``ssl:`` options) and STUN port, once both
        workers listen."""
        port, stun = free_port(), free_port()
        signaling = f"{'ssl' if tls else 'tcp'}:{port}:interface=127.0.0.1{tls}"
        argv = [*TWISTD, "-n", "--pidfile=", "holepunch", f"--workers={WORKERS}",
                f"--signaling={signaling}", "--stun-interface=127.0.0.1",
                f"--stun-port={stun}", "--stun-alternate-port=0"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env["PYTHONPATH"] = ROOT
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.addCleanup(self.stop, proc)
        self.log: list[bytes] = []
        await threads.deferToThread(self.wait_for_listening, proc)
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/"
        await until(lambda: self.workers_reporting(WORKERS), 15, "both workers' counters")
        return self.url, stun, proc

    def wait_for_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Until worker 0 and every other worker say ``Site starting on``."""
        assert proc.stdout is not None
        waiting = {b"worker %d: " % i for i in range(1, WORKERS)} | {b"main"}
        for line in iter(proc.stdout.readline, b""):
            self.log.append(line)
            if b"Site starting on" in line or b"Site (TLS) starting on" in line:
                waiting.discard(next((w for w in waiting if w in line), b"main"))
            if not waiting:
                threads.deferToThread(self.drain, proc)  # keep the pipe from filling
                return
        raise AssertionError(b"twistd exited before listening:\n" + b"".join(self.log))

    def drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            self.log.append(line)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        proc.wait(20)

    async def stats(self) -> dict[str, Any]:
        url = self.url.replace("ws", "http", 1).encode() + b"p2p/stats"
        response = await (self.agent or Agent(reactor)).request(b"GET", url)
        result: dict[str, Any] = json.loads(await readBody(response))
        return result

    async def workers_reporting(self, count: int) -> bool:
        return bool((await self.stats())["workers"]["reporting"] == count)

    async def clients(self, url: str, count: int, trust_root: Any = None) -> list[SignalingClient]:
        """``count`` clients c0.. registered at ``url`` and in room ``r``."""
        clients = []
        for i in range(count):
            client = SignalingClient(
                url, f"c{i}", reactor=reactor, retry_initial=0.2, trust_root=trust_root
            )
            client.startService()
            self.addCleanup(client.stopService)
            await client.register()
            await client.join_room("r")
            clients.append(client)
        return clients

    async def offer_ring(self, clients: list[SignalingClient]) -> None:
        """Each client offers to the next; each offer arrives from the right peer."""
        arriving = [next_event(c, "offer") for c in clients]
        for i, client in enumerate(clients):
            await client.send_offer(clients[(i + 1) % len(clients)].peer_id, {"n": i})
        for i, got in enumerate(arriving):
            message = await got
            self.assertEqual(message["from"], clients[(i - 1) % len(clients)].peer_id)

    async def test_one_port_many_workers(self) -> None:
        """Twelve peers in one room, a ring of offers (pairs across the workers among
        them); every offer arrives; the counters add up over both workers; STUN answers
        on the one port and its counters add up too."""
        url, stun, _proc = await self.start_daemon()
        peers = await self.clients(url, 12)
        await self.offer_ring(peers)

        async def all_counted() -> dict[str, Any] | None:
            # Each worker shares its counters every second: wait for the fresh ones.
            stats = await self.stats()
            signaling = stats["signaling"]
            counted = (signaling["connections"], signaling["relayed"]["offer"])
            return stats if counted == (len(peers), len(peers)) else None

        stats = await until(all_counted, 10, "12 connections and offers counted over the workers")
        members = stats["workers"]["members"]
        self.assertEqual(sorted(members), [str(i) for i in range(WORKERS)])
        self.assertEqual(sum(m["connections"] for m in members.values()), len(peers))
        self.assertTrue(all(m["connections"] > 0 for m in members.values()), members)
        self.assertEqual(stats["signaling"]["relayed"]["offer"], len(peers))

        answered = await threads.deferToThread(stun_round_trips, stun, 40)
        self.assertEqual(answered, 40)

        async def stun_counted() -> bool:
            return bool((await self.stats())["stun"]["requests"] == 40)

        await until(stun_counted, 10, "40 STUN requests counted over the workers")

    async def test_workers_share_a_tls_port(self) -> None:
        """``--workers 2 --signaling ssl:...``: both workers serve wss:// on the one
        port (SO_REUSEPORT under TLS); twelve peers over TLS, spread over both, relay a
        ring of offers; the status pages answer over HTTPS on the same port."""
        from twisted.web.client import BrowserLikePolicyForHTTPS

        from tests.tls_helpers import make_pki

        pki = make_pki(os.path.abspath(self.mktemp()))  # the daemon runs elsewhere
        self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=pki["ca"]))
        url, _stun, _proc = await self.start_daemon(
            f":privateKey={pki['key']}:certKey={pki['cert']}"
        )
        self.assertTrue(url.startswith("wss://"))
        peers = await self.clients(url, 12, trust_root=pki["ca"])
        await self.offer_ring(peers)

        async def both_serving() -> dict[str, Any] | None:
            members = (await self.stats())["workers"]["members"]
            counts = [m["connections"] for m in members.values()]
            return members if sum(counts) == len(peers) and all(counts) else None

        members = await until(both_serving, 10, "12 TLS connections over both workers")
        self.assertEqual(sorted(members), [str(i) for i in range(WORKERS)])

    async def test_killed_worker_clients_come_back(self) -> None:
        """SIGKILL on worker 1: its clients reconnect through the same address and are
        back, same ids and rooms, within seconds; the others notice nothing; offers flow
        between all of them again; worker 1 is started again."""
        url, _stun, _proc = await self.start_daemon()
        clients = await self.clients(url, 10)
        lost: dict[str, float] = {}
        back: dict[str, dict[str, Any]] = {}
        for client in clients:
            peer_id = client.peer_id
            client.on(
                REGISTRATION_LOST, lambda _e, p=peer_id: lost.setdefault(p, reactor.seconds())
            )
            client.on(RECONNECTED, lambda e, p=peer_id: back.setdefault(p, e))
        stats = await until(
            lambda: self._counted(10), 10, "10 connections counted over the workers"
        )
        victim = stats["workers"]["members"]["1"]
        self.assertGreater(victim["connections"], 0, stats)
        killed_at = reactor.seconds()
        os.kill(victim["pid"], signal.SIGKILL)

        async def all_back() -> bool:
            return len(lost) == victim["connections"] and set(back) == set(lost)

        await until(all_back, 15, "the killed worker's clients back")
        for peer_id, event in back.items():
            self.assertTrue(event["resumed"], event)  # the same id, by its reconnect token
            self.assertEqual(event["rooms"], ["r"])
            self.assertLess(lost[peer_id] - killed_at, 5)
        downtimes = sorted(e["downtime_ms"] / 1000 for e in back.values())
        self.assertLess(downtimes[-1], 5.0, downtimes)
        # The other workers' clients saw nothing; offers flow between everyone again.
        self.assertEqual(sum(c.disconnects for c in clients), len(lost))
        await self.offer_ring(clients)
        await until(lambda: self.workers_reporting(WORKERS), 15, "worker 1 started again")
        print(f"killed worker's {len(back)} clients back in {downtimes[-1]:.2f}s at most")

    async def test_killed_daemon_leaves_nothing(self) -> None:
        """SIGKILL on worker 0 (the daemon itself): the other workers and the private
        redis-server it started stop by themselves within seconds."""
        _, _, proc = await self.start_daemon()
        children = descendants(proc.pid)
        names = {pid: comm(pid) for pid in children}
        self.assertIn("redis-server", names.values(), names)
        self.assertGreaterEqual(len(children), WORKERS, names)  # workers 1.. and Redis
        self.addCleanup(kill_all, children)  # whatever is left holds the log pipe open
        proc.kill()
        proc.wait(10)

        async def none_left() -> bool:
            return not any(alive(pid) for pid in children)

        await until(none_left, 15, f"the children of a killed daemon gone: {names}")

    async def _counted(self, n: int) -> dict[str, Any] | None:
        stats = await self.stats()
        return stats if stats["signaling"]["connections"] == n else None
