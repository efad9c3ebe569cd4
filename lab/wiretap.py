# -*- test-case-name: tests.lab.test_natlab_secure -*-
"""An eavesdropper and a forger on the lab's internet, to test what QUIC promises.

- ``capture``: records every frame crossing the wan bridge (the ports of ``br0`` in the
  lab's wan namespace, which every packet between routers, the public servers and open
  hosts crosses) into a file, each frame after its length in four bytes, once (as it
  comes in on a port). Run as ``python -m lab.wiretap capture --out FILE`` inside the
  namespace (``--interface`` limits it to one); it
  prints ``ready`` once the socket is bound and stops on SIGTERM or SIGINT.
- ``forge``: sends UDP datagrams with a source address that is not its own (a raw socket
  writes the IPv4 header itself), as a third host that learned a flow's 5-tuple would.
  ``python -m lab.wiretap forge --source IP:PORT --destination IP:PORT --count N``
  (``--interval`` seconds apart, 2 ms by default).

The :class:`Wiretap` and :func:`forge` wrappers run them in a :class:`NatLab
<lab.natlab.NatLab>`; :meth:`Wiretap.find` looks for plaintext in what was captured and
:meth:`Wiretap.udp_flows` lists the UDP flows seen. Standard library only (no tcpdump).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import IO, Any

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
IPPROTO_UDP = 17
FlowKey = tuple[str, int, str, int]
"""(source ip, source port, destination ip, destination port)"""


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The frames of a capture file, in order."""
    while True:
        header = stream.read(4)
        if len(header) < 4:
            return
        (length,) = struct.unpack("!I", header)
        frame = stream.read(length)
        if len(frame) < length:
            return
        yield frame


def udp_of(frame: bytes) -> tuple[FlowKey, bytes] | None:
    """An Ethernet frame's IPv4/UDP flow and payload, or None for anything else."""
    if len(frame) < 14 + 20 + 8 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    header_length = (ip[0] & 0x0F) * 4
    if ip[9] != IPPROTO_UDP or len(ip) < header_length + 8:
        return None
    source = socket.inet_ntoa(ip[12:16])
    destination = socket.inet_ntoa(ip[16:20])
    sport, dport, length = struct.unpack("!HHH", ip[header_length : header_length + 6])
    payload = ip[header_length + 8 : header_length + length]
    return (source, sport, destination, dport), payload


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def forged_datagram(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 packet carrying one UDP datagram from ``source`` (any address at all)."""
    src, dst = socket.inet_aton(source[0]), socket.inet_aton(destination[0])
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_length)
    udp = struct.pack("!HHHH", source[1], destination[1], udp_length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    total = 20 + udp_length
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, IPPROTO_UDP, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


# -- the two commands, run inside a namespace --


def _capture(interface: str, out: str) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if interface:
        sock.bind((interface, 0))  # else every interface of the namespace
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        sock.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out, "wb", buffering=1024 * 1024) as sink:
        print("ready", flush=True)
        while not stopping:
            try:
                frame, address = sock.recvfrom(65535)
            except OSError:
                break
            if address[2] == socket.PACKET_OUTGOING or address[0] == "br0":
                continue  # the copy of a frame already seen coming in on a port
            sink.write(struct.pack("!I", len(frame)) + frame)
    return 0


def _forge(source: str, destination: str, count: int, size: int, interval: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    target = _host_port(destination)
    for n in range(count):
        if n and interval:
            time.sleep(interval)  # paced, as a forger who wants them read would
        # A QUIC short-header first byte, then random bytes: what a forger who knows the
        # 5-tuple but not the keys can send.
        payload = bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + os.urandom(size - 1)
        sock.sendto(forged_datagram(_host_port(source), target, payload), (target[0], 0))
    sock.close()
    print(count, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.wiretap")
    commands = parser.add_subparsers(dest="command", required=True)
    capture = commands.add_parser("capture")
    capture.add_argument("--interface", default="", help="one interface (default: all)")
    capture.add_argument("--out", required=True)
    forge_parser = commands.add_parser("forge")
    forge_parser.add_argument("--source", required=True, metavar="IP:PORT")
    forge_parser.add_argument("--destination", required=True, metavar="IP:PORT")
    forge_parser.add_argument("--count", type=int, default=100)
    forge_parser.add_argument("--size", type=int, default=1200)
    forge_parser.add_argument("--interval", type=float, default=0.002, metavar="S")
    args = parser.parse_args(argv)
    if args.command == "capture":
        return _capture(args.interface, args.out)
    return _forge(args.source, args.destination, args.count, args.size, args.interval)


# -- the wrappers the tests use --


class Wiretap:
    """A capture of the wan bridge of ``lab``, from :meth:`start` to :meth:`stop`."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        handle, self.path = tempfile.mkstemp(prefix="hp-wiretap-", suffix=".frames")
        os.close(handle)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        argv = [sys.executable, "-m", "lab.wiretap", "capture", "--out", self.path]
        self.proc = self.lab.wan_popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            stderr = self.proc.stderr.read() if self.proc.stderr is not None else b""
            raise RuntimeError(f"the capture did not start: {stderr.decode(errors='replace')}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)

    def remove(self) -> None:
        self.stop()
        if os.path.exists(self.path):
            os.unlink(self.path)

    @property
    def size(self) -> int:
        """Bytes captured so far (frames and their length prefixes)."""
        return os.path.getsize(self.path)

    def udp_flows(self, *addresses: str) -> Counter[FlowKey]:
        """UDP flows seen (datagrams per 5-tuple), only those between ``addresses`` if given."""
        flows: Counter[FlowKey] = Counter()
        with open(self.path, "rb") as stream:
            for frame in frames(stream):
                parsed = udp_of(frame)
                if parsed is None:
                    continue
                key = parsed[0]
                if addresses and not (key[0] in addresses and key[2] in addresses):
                    continue
                flows[key] += 1
        return flows

    def find(self, needles: Sequence[bytes]) -> list[bytes]:
        """The needles that appear anywhere in the capture (across frame boundaries too)."""
        longest = max(len(n) for n in needles)
        found: set[bytes] = set()
        tail = b""
        with open(self.path, "rb") as stream:
            while chunk := stream.read(4 * 1024 * 1024):
                window = tail + chunk
                found.update(n for n in needles if n not in found and n in window)
                tail = window[-longest:]
        return sorted(found)


def forge(host: Any, source: tuple[str, int], destination: tuple[str, int], count: int) -> int:
    """Send ``count`` forged datagrams from ``host``'s namespace; returns how many."""
    argv = [
        sys.executable,
        "-m",
        "lab.wiretap",
        "forge",
        "--source",
        f"{source[0]}:{source[1]}",
        "--destination",
        f"{destination[0]}:{destination[1]}",
        "--count",
        str(count),
    ]
    result = host.run(argv, timeout=30, check=True)
    return int(result.stdout.strip())


if __name__ == "__main__":
    sys.exit(main())
