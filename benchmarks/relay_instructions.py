"""Instructions per lone relayed offer, counted by Valgrind's callgrind.

Microseconds per offer move with whatever else the host runs (on the VMs measured here, by
±15% from run to run: docs/benchmarks.md, "Lone offers"); an instruction count does not.
Each target runs under ``valgrind --tool=callgrind`` with instrumentation off; two
clients connect and register, relay warm-up offers, and then the server's instructions
are counted while ``--offers`` offers are relayed one at a time, each sent once the one
before it arrived: every offer wakes the server alone, as at moderate rates. Printed:
user-space instructions per offer (the kernel's work, the system calls, is not counted)
and the share of them in the CPython interpreter's bytecode loop.

    python benchmarks/relay_instructions.py [--targets holepunch,floor,peerjs] [--offers 500]

The targets are those of ``signaling_load.py``, run the same way (``holepunch``: the
daemon on its defaults with the load test's limits raised; ``floor``, ``floor-epoll``:
the least a Python relay does; ``peerjs``: the PeerJS server, whose JIT-compiled code is
counted as it runs). Needs valgrind (Debian ``valgrind``) and, for ``peerjs``, the
npm packages of ``benchmarks/signaling`` (``npm ci --prefix benchmarks/signaling``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from websockets.utils import apply_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
import signaling_load as load  # the servers, started as that benchmark starts them

TARGETS = ("holepunch", "floor", "floor-epoll", "peerjs")
START_TIMEOUT = 120.0
"""Seconds for a server to listen under valgrind (a few, mostly)."""
REPLY_TIMEOUT = 30.0
SDP = "v=0 " + "x" * 252
"""An offer's filler, as the load generator's 256 bytes."""


class Client:
    """One WebSocket client on a plain socket, in the generator's dialect for a target."""

    def __init__(self, port: int, peer_id: str, dialect: str) -> None:
        self.peer_id, self.dialect = peer_id, dialect
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        path = f"/peerjs?key=peerjs&id={peer_id}&token=t{peer_id}" if dialect == "peerjs" else "/"
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode()
            + b"Connection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{peer_id}: the server closed during the handshake")
            data += chunk
        head, self.pending = data.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"{peer_id}: handshake refused: {head[:200]!r}")

    def send(self, message: dict[str, object]) -> None:
        payload = orjson.dumps(message)
        mask, n = os.urandom(4), len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE, n >> 8, n & 0xFF))
        self.sock.sendall(head + mask + apply_mask(payload, mask))

    def receive(self) -> dict[str, object]:
        """The next text message (the server's frames are unmasked and unfragmented)."""
        while True:
            data = self.pending
            if len(data) >= 2:
                n, start = data[1] & 0x7F, 2
                if n == 126 and len(data) >= 4:
                    n, start = (data[2] << 8) | data[3], 4
                if n != 126 and len(data) >= start + n:
                    self.pending = data[start + n :]
                    message: dict[str, object] = orjson.loads(data[start : start + n])
                    return message
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{self.peer_id}: the server closed the connection")
            self.pending += chunk

    def register(self) -> None:
        """Wait for the greeting, and register in the holepunch dialect."""
        first = self.receive()
        if self.dialect == "peerjs":
            if first.get("type") != "OPEN":
                raise RuntimeError(f"{self.peer_id}: expected OPEN, got {first}")
            return
        if first.get("type") != "welcome":
            raise RuntimeError(f"{self.peer_id}: expected welcome, got {first}")
        self.send({"type": "register", "peerId": self.peer_id, "id": 1})
        reply = self.receive()
        if reply.get("type") != "registered":
            raise RuntimeError(f"{self.peer_id}: expected registered, got {reply}")

    def offer(self, to: str, sequence: int) -> None:
        body = {"type": "offer", "sdp": SDP, "t": sequence}
        if self.dialect == "peerjs":
            self.send({"type": "OFFER", "dst": to, "payload": body})
        else:
            self.send({"type": "offer", "to": to, "offer": body})


def callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def count(target: str, offers: int, warmup: int, work: Path) -> dict[str, float]:
    """Run ``target`` under callgrind; instructions per lone offer, and the interpreter's."""
    port = load.free_port()
    argv = load.server_argv(target, port, work)
    out = work / f"callgrind.{target}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with open(work / f"valgrind-{target}.log", "ab") as log:  # the child keeps its own
        proc = subprocess.Popen(
            [*valgrind, *argv],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=dict(load.child_env(), PYTHONHASHSEED="0"),  # dicts probed alike every run
            cwd=str(load.NODE_DIR),
            start_new_session=True,
        )
    try:
        dialect = load.dialect(target)
        a, b = Client(port, "a", dialect), Client(port, "b", dialect)
        a.register()
        b.register()
        for i in range(warmup):
            a.offer("b", i)
            b.receive()
        callgrind("--instr=on", str(proc.pid))
        for i in range(offers):
            a.offer("b", warmup + i)
            got = b.receive()
            if got.get("type") not in ("offer", "OFFER"):
                raise RuntimeError(f"{target}: expected the offer, got {got}")
        callgrind("--instr=off", str(proc.pid))
        callgrind("--dump", str(proc.pid))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    total = interpreter = 0
    for dump in work.glob(f"callgrind.{target}*"):
        report = subprocess.run(
            ["callgrind_annotate", "--threshold=100", str(dump)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        for line in report.stdout.splitlines():
            match = re.match(r"\s*([\d,]+) .*PROGRAM TOTALS", line)
            if match:
                total += int(match.group(1).replace(",", ""))
            elif "_PyEval_EvalFrameDefault" in line:
                interpreter += int(line.split()[0].replace(",", ""))
    return {"instructions": total / offers, "interpreter": interpreter / offers}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="holepunch,floor,peerjs")
    parser.add_argument("--offers", type=int, default=500, help="offers counted")
    parser.add_argument("--warmup", type=int, default=200, help="offers relayed first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    for target in args.targets.split(","):
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}: one of {', '.join(TARGETS)}")
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind (Debian: apt-get install valgrind)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="relay-instructions-") as tmp:
        for target in args.targets.split(","):
            results[target] = count(target, args.offers, args.warmup, Path(tmp))
    if args.json:
        print(json.dumps({"offers": args.offers, "results": results}, indent=2))
        return 0
    print(f"{args.offers} lone offers each, counted by callgrind (user space)")
    print(f"{'target':24} {'instructions/offer':>18} {'in the interpreter':>19}")
    for target, figures in results.items():
        interpreter = figures["interpreter"]
        shown = (
            f"{interpreter:12,.0f} ({interpreter / figures['instructions']:.0%})"
            if interpreter
            else f"{'-':>18}"
        )
        print(f"{load.title(target):24} {figures['instructions']:18,.0f} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
