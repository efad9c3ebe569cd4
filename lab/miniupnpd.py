# -*- test-case-name: tests.lab.test_portmap_lab -*-
"""Run Debian's miniupnpd (nftables build) on a NAT lab router: NAT-PMP, PCP and UPnP IGD.

:func:`start_miniupnpd` prepares a :class:`lab.natlab.LabHost`'s router
the way ``/work/shared/natlab-notes.md`` (section "miniupnpd") found necessary, writes a
config into a temporary directory and starts ``miniupnpd -d`` in the router namespace:

1. a ``table inet miniupnpd`` with the chains miniupnpd fills (forward filter at priority
   -1, prerouting nat at -101, postrouting nat at 99, each jumping to an empty sub-chain);
2. the router's masquerade limited to forwarded LAN traffic, so miniupnpd's own STUN test
   is not given random ports by a ``fully-random`` preset;
3. the router's input filter accepting the lab STUN server's answers (RFC 5780
   CHANGE-REQUEST answers come from another address and port: "new" to conntrack).

miniupnpd 2.3.1 refuses the lab's documentation-range WAN address as "reserved"; with
``ext_perform_stun=yes`` it runs a STUN test against the lab's coturn instead and, finding
an unrestricted path, enables forwarding. Readiness is its own log line saying so, read
from its stderr: no polling, no sleeps.

Lab infrastructure, not the library: it shells out to ``nft`` and ``miniupnpd``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from typing import Any

from lab.natlab import LabError, LabHost

MINIUPNPD = "/usr/sbin/miniupnpd"
HTTP_PORT = 5000
"""The port miniupnpd's UPnP HTTP (description and SOAP) server listens on."""

READY_MARKERS = ("HTTP listening on port", "Listening for NAT-PMP/PCP")
"""Log lines miniupnpd prints once it serves UPnP and NAT-PMP/PCP."""


def miniupnpd_unavailable_reason() -> str | None:
    """Why miniupnpd cannot run here (one line), or None."""
    path = shutil.which("miniupnpd") or (MINIUPNPD if os.access(MINIUPNPD, os.X_OK) else None)
    if path is None:
        return "miniupnpd is not installed (Debian package 'miniupnpd-nftables')"
    return None


NFT_TABLE = """\
table inet miniupnpd {
  chain forward {
    type filter hook forward priority -1; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -101; policy accept;
    jump prerouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting {
    type nat hook postrouting priority 99; policy accept;
    jump postrouting_miniupnpd
  }
  chain postrouting_miniupnpd {
  }
}
"""


def config_text(
    *, lan_network: str, stun_host: str, stun_port: int, http_port: int = HTTP_PORT
) -> str:
    """The miniupnpd.conf for a lab router (WAN ``wan0``, LAN ``lan0``)."""
    return "\n".join(
        [
            "ext_ifname=wan0",
            "listening_ip=lan0",
            f"http_port={http_port}",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "ipv6_disable=yes",
            "secure_mode=yes",
            "system_uptime=no",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun_host}",
            f"ext_stun_port={stun_port}",
            "upnp_table_name=miniupnpd",
            "upnp_nat_table_name=miniupnpd",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            f"uuid={uuid.uuid5(uuid.NAMESPACE_DNS, lan_network)}",
            f"allow 1024-65535 {lan_network} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


def prepare_router(host: LabHost, *, stun_ports: tuple[int, ...] = (3478, 3479)) -> None:
    """Make ``host``'s router fit for miniupnpd (see the module docstring); idempotent."""
    if host.router_namespace is None:
        raise ValueError(f"{host.name} has no router (preset {host.preset})")
    if host.preset not in ("port-restricted", "symmetric-random", "udp-blocked"):
        raise ValueError(f"prepare_router supports masquerade presets, not {host.preset}")
    lan = lan_network(host)
    ports = ", ".join(str(p) for p in stun_ports)
    masquerade = "masquerade fully-random" if host.preset == "symmetric-random" else "masquerade"
    script = (
        f"{NFT_TABLE}"
        "flush chain ip lab_nat srcnat\n"
        f'add rule ip lab_nat srcnat oifname "wan0" ip saddr {lan} {masquerade}\n'
        "insert rule inet lab_filter input "
        f"ip saddr 203.0.113.0/24 udp sport {{ {ports} }} accept\n"
    )
    host.router_nft(["-f", "-"], input=script.encode())


def lan_network(host: LabHost) -> str:
    """The host's LAN, e.g. ``10.1.0.0/24``."""
    a, b, _, _ = host.address.split(".")
    return f"{a}.{b}.0.0/24"


def lan_gateway(host: LabHost) -> str:
    """The router's LAN address (where NAT-PMP, PCP and SSDP are served)."""
    a, b, c, _ = host.address.split(".")
    return f"{a}.{b}.{c}.1"


class MiniUpnpd:
    """A running miniupnpd on a lab router; its output is collected in :attr:`log`."""

    def __init__(self, host: LabHost, process: subprocess.Popen[Any], directory: str) -> None:
        self.host = host
        self.process = process
        self.directory = directory
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="miniupnpd-log", daemon=True)
        self._reader.start()

    @property
    def gateway(self) -> str:
        """The router's LAN address, where miniupnpd serves."""
        return lan_gateway(self.host)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.log.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_log(self, *markers: str, timeout: float) -> bool:
        """Block until every marker has appeared in the log (True) or time/output ran out."""

        def seen() -> bool:
            return all(any(m in line for line in self.log) for m in markers)

        with self._changed:
            return self._changed.wait_for(lambda: seen() or self._eof, timeout) and seen()

    def stop(self) -> None:
        """Stop it (SIGTERM: miniupnpd then removes its rules) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5.0)
        self._reader.join(timeout=5.0)
        shutil.rmtree(self.directory, ignore_errors=True)

    def rules(self) -> str:
        """The redirect rules miniupnpd has installed (``nft list chain``)."""
        result = self.host.router_nft(
            ["list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"]
        )
        return result.stdout.decode()


def start_miniupnpd(
    host: LabHost, *, stun_host: str, stun_port: int = 3478, timeout: float = 15.0
) -> MiniUpnpd:
    """Prepare ``host``'s router and run miniupnpd there until it says it listens.

    ``stun_host:stun_port`` must be a lab STUN server with two addresses (coturn from
    :meth:`lab.natlab.NatLab.start_coturn`). Raises
    :class:`lab.natlab.LabError` with miniupnpd's output if it exits or is
    not ready within ``timeout``. Stop it with :meth:`MiniUpnpd.stop` (the lab's close
    kills it too).
    """
    reason = miniupnpd_unavailable_reason()
    if reason is not None:
        raise LabError(reason)
    prepare_router(host, stun_ports=(stun_port, stun_port + 1))
    directory = tempfile.mkdtemp(prefix=f"{host.lab.prefix}-miniupnpd-")
    conf = os.path.join(directory, "miniupnpd.conf")
    with open(conf, "w") as f:
        f.write(
            config_text(lan_network=lan_network(host), stun_host=stun_host, stun_port=stun_port)
        )
    argv = [MINIUPNPD, "-d", "-f", conf, "-P", os.path.join(directory, "miniupnpd.pid")]
    proc = host.router_popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    daemon = MiniUpnpd(host, proc, directory)
    if not daemon.wait_for_log(*READY_MARKERS, timeout=timeout):
        daemon.stop()
        state = f"exited {proc.returncode}" if proc.returncode is not None else "not ready"
        raise LabError(f"miniupnpd {state} within {timeout}s: {' | '.join(daemon.log[-20:])}")
    return daemon
