# -*- test-case-name: tests.lab.test_natlab -*-
"""A lab of real Linux kernel NATs in network namespaces, for integration tests.

Each :class:`NatLab` builds, under a per-run name prefix::

    host 10.N.0.2 -- router 10.N.0.1 | wan0 203.0.113.N --+
                                                           |-- "wan" namespace: bridge br0
    pub 203.0.113.10 + 203.0.113.11 ----------------------+     on 203.0.113.0/24
    open host 203.0.113.M --------------------------------+

Every router runs one NAT preset made of nftables rules (see ``docs/natlab.md``) behind a
home-router firewall, so a test can put STUN servers (coturn, the project's own), ICE agents
and ``holepunch`` commands behind NATs whose mapping and filtering behaviour (RFC 4787
section 4, RFC 5780 section 4) is known. Nothing is created in the root namespace: every
veth is made inside the lab's namespaces, and the lab's "internet" has no route anywhere
else. :meth:`NatLab.close` kills every process in the lab's namespaces and deletes them; it
also runs at interpreter exit, and :func:`remove_stale_labs` sweeps up after a killed run.

``NatLab(ipv6=True)`` adds an IPv6 internet without NAT66: 2001:db8:ff::/64 on the bridge
(``pub`` on :data:`PUBLIC_A6` and :data:`PUBLIC_B6`, the wan namespace routing at
:data:`WAN6_GATEWAY`), and each host that asks for a ``v6`` side gets its own routed site
prefix 2001:db8:N::/64 behind its router, which filters IPv6 as one of :data:`V6_PRESETS`
(a stateful RFC 6092 firewall, nothing, or everything). Hosts may be IPv4-only (IPv6 off),
IPv6-only or dual stack.

This is test infrastructure: it runs ``ip``, ``nft`` and ``sysctl`` with ``subprocess``
and needs no reactor.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from twisted.logger import Logger

from holepunch.addresses import format_address

_log = Logger()

PRESETS = (
    "open",
    "full-cone",
    "restricted-cone",
    "port-restricted",
    "symmetric-sequential",
    "symmetric-random",
    "udp-blocked",
)
"""The NAT behaviours :meth:`NatLab.add_host` can put in front of a host."""

V6_PRESETS = ("v6-firewall", "v6-open", "v6-blocked")
"""What :meth:`NatLab.add_host` can put in front of a host's IPv6 side (no NAT66): a
stateful home-router firewall (RFC 6092), nothing, or a router that forwards no IPv6."""

PUBLIC_A = "203.0.113.10"
"""The public server namespace's primary address."""
PUBLIC_B = "203.0.113.11"
"""The public server namespace's second address (RFC 5780 needs two)."""
VOID_GATEWAY = "203.0.113.254"
"""A gateway address nobody owns: where ``pub`` sends what the lab does not route."""
WAN_PREFIX = "203.0.113."
WAN_PREFIXLEN = 24

PUBLIC_A6 = "2001:db8:ff::10"
"""The public server namespace's primary IPv6 address (labs made with ``ipv6=True``)."""
PUBLIC_B6 = "2001:db8:ff::11"
"""The public server namespace's second IPv6 address."""
WAN6_GATEWAY = "2001:db8:ff::fe"
"""The wan namespace's own address on ``br0``: the IPv6 internet's router, which routes
each site's prefix to that site's router and silently drops what it has no route for."""
WAN6_PREFIX = "2001:db8:ff::"
WAN6_PREFIXLEN = 64

TWISTD = (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")
"""``twistd`` run by this interpreter (the ``twistd`` script may belong to another one)."""

SEQUENTIAL_PORT_BASE = 20000
"""The first WAN port the symmetric-sequential preset hands out."""
SEQUENTIAL_PORT_COUNT = 10000
"""How many WAN ports the symmetric-sequential preset cycles through."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The project's root (it holds ``holepunch`` and ``lab``): on ``PYTHONPATH`` in the lab."""

_COMMAND_TIMEOUT = 15.0
_STOP_GRACE = 2.0
_PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{1,15}")
_HOST_NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{0,9}")
_COUNTER_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_STALE_PATTERN = re.compile(r"hp(\d+)x[0-9a-f]{4}-")
_HOST_INDEXES = tuple(i for i in range(1, 251) if f"{WAN_PREFIX}{i}" not in (PUBLIC_A, PUBLIC_B))

_IPV6_OFF = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
# IPv6 on, with addresses usable at once (no duplicate address detection) and nothing
# learnt from the link (no router advertisements, autoconfiguration or redirects).
_IPV6_ON = tuple(
    f"net.ipv6.conf.{scope}.{setting}"
    for scope in ("all", "default")
    for setting in (
        "disable_ipv6=0",
        "accept_dad=0",
        "accept_ra=0",
        "autoconf=0",
        "accept_redirects=0",
    )
)
_IPV6_FORWARDING = "net.ipv6.conf.all.forwarding=1"
_BRIDGE_MAC = "02:00:00:00:00:01"
_BRIDGE_NF_OFF = (
    "net.bridge.bridge-nf-call-iptables=0",
    "net.bridge.bridge-nf-call-ip6tables=0",
    "net.bridge.bridge-nf-call-arptables=0",
)


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


class _TestCaseLike(Protocol):
    def addCleanup(self, function: Any, *args: Any, **kwargs: Any) -> None: ...


# --- plumbing ----------------------------------------------------------------------------


def _run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = _COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run one lab plumbing command (``ip``, ``nft``, ``sysctl``) from the root namespace."""
    result = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise LabError(
            f"{' '.join(argv)!r} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result


def _ip(namespace: str, command: str) -> None:
    """``ip -n namespace <command>``; the command's words are split on spaces."""
    _run(["ip", "-n", namespace, *command.split()])


def lab_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for lab commands: ours, with the project on ``PYTHONPATH``."""
    merged = dict(os.environ if env is None else env)
    parts = [str(PROJECT_ROOT)]
    if merged.get("PYTHONPATH"):
        parts.append(merged["PYTHONPATH"])
    merged["PYTHONPATH"] = os.pathsep.join(parts)
    return merged


def _list_namespaces() -> list[str]:
    """The names of all named network namespaces (``ip netns list``)."""
    out = _run(["ip", "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _namespace_pids(namespace: str) -> list[int]:
    result = _run(["ip", "netns", "pids", namespace], check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _kill_namespace(namespace: str, deadline: float) -> None:
    """SIGKILL every process in ``namespace`` until none is left or ``deadline`` passes."""
    while True:
        pids = [pid for pid in _namespace_pids(namespace) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            _log.warn("processes {pids} survive in {ns}", pids=pids, ns=namespace)
            return
        time.sleep(0.01)


def _delete_namespace(namespace: str) -> None:
    _kill_namespace(namespace, time.monotonic() + 5.0)
    result = _run(["ip", "netns", "delete", namespace], check=False)
    if result.returncode != 0 and namespace in _list_namespaces():
        _log.warn(
            "could not delete namespace {ns}: {err}",
            ns=namespace,
            err=result.stderr.decode(errors="replace").strip(),
        )


def _signal_process(proc: subprocess.Popen[Any], signum: int) -> None:
    """Signal ``proc``'s process group if it leads one, else ``proc`` alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)


def _stop_processes(processes: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGTERM, then SIGKILL after a grace period, every live process; reap them all."""
    live = [proc for proc in processes if proc.poll() is None]
    for proc in live:
        _signal_process(proc, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for proc in live:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_process(proc, signal.SIGKILL)
            proc.wait(timeout=5.0)
    for proc in processes:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _fresh_prefix() -> str:
    taken = {name.split("-", 1)[0] for name in _list_namespaces()}
    while True:
        prefix = f"hp{os.getpid()}x{secrets.token_hex(2)}"
        if prefix not in taken:
            return prefix


# --- availability --------------------------------------------------------------------------


@cache
def unavailable_reason() -> str | None:
    """Why the lab cannot run here (one line, for ``SkipTest``), or None if it can.

    Checks root, the ``ip``/``nft``/``sysctl`` tools, and that a namespace with a bridge
    and an nftables NAT table can really be made (and removes it again).
    """
    if not sys.platform.startswith("linux"):
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces and nftables)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool!r} on PATH"
    probe = f"hp{os.getpid()}probe{secrets.token_hex(2)}"
    try:
        _run(["ip", "netns", "add", probe])
    except (LabError, OSError, subprocess.SubprocessError) as e:
        return f"cannot create network namespaces: {e}"
    try:
        _run(["ip", "-n", probe, "link", "add", "br0", "type", "bridge"])
        _run(
            ["ip", "netns", "exec", probe, "nft", "-f", "-"],
            input=b"table ip t {\n chain c {\n type nat hook postrouting priority srcnat;\n"
            b' oifname "br0" masquerade\n }\n}\n',
        )
    except (LabError, OSError, subprocess.SubprocessError) as e:
        return f"bridges or nftables NAT unavailable in a namespace: {e}"
    finally:
        _delete_namespace(probe)
    return None


def coturn_unavailable_reason() -> str | None:
    """Why :meth:`NatLab.start_coturn` cannot run here, or None if it can."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    for tool in ("turnserver", "turnutils_stunclient"):
        if shutil.which(tool) is None:
            return f"coturn is not installed ({tool!r} missing; Debian package 'coturn')"
    return None


def remove_stale_labs() -> list[str]:
    """Delete namespaces left by labs whose process is gone (e.g. after SIGKILL).

    Only names made by :class:`NatLab`'s default prefix (``hp<pid>x<hex>-...``) whose pid
    no longer exists are touched. Returns the names removed.
    """
    removed = []
    for namespace in _list_namespaces():
        match = _STALE_PATTERN.match(namespace)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _delete_namespace(namespace)
            removed.append(namespace)
        except PermissionError:
            continue
    return removed


# --- nftables rulesets -----------------------------------------------------------------------


def _home_router_filter(udp_blocked: bool, ipv4_only: bool = False) -> str:
    """The IPv4 home-router firewall; ``ipv4_only`` keeps its rules off IPv6 packets
    (on a router that also routes IPv6: those have their own table)."""
    only = "meta nfproto ipv4 " if ipv4_only else ""
    forward_udp = f"    {only}meta l4proto udp drop\n" if udp_blocked else ""
    return (
        "table inet lab_filter {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f'    {only}iifname "wan0" ct state invalid drop\n'
        f'    {only}iifname "wan0" ct state new drop\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"{forward_udp}"
        f'    {only}iifname "wan0" ct state invalid drop\n'
        f'    {only}iifname "wan0" ct state new ct status dnat accept\n'
        f'    {only}iifname "wan0" ct state new drop\n'
        "  }\n"
        "}\n"
    )


# Neighbour discovery (RFC 4861) must reach the edge from its link; conntrack tracks none
# of it (it is "invalid" to conntrack), so it is let in before any state rule.
_NEIGHBOUR_DISCOVERY = (
    "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, "
    "nd-router-advert, nd-redirect }"
)


def ipv6_ruleset(v6: str, wan_interface: str = "wan0", *, routed: bool = True) -> str:
    """The nftables table ``ip6 lab_filter6`` for IPv6 preset ``v6`` (no NAT66).

    ``routed``: the rules of a router (chains ``input`` and ``forward``) whose
    ``wan_interface`` faces the internet; otherwise those of a host on the internet's
    bridge, filtering its own traffic (``input``, ``output``).

    - ``v6-firewall`` (RFC 6092 home router): established and related flows pass, nothing
      new comes in from the WAN, invalid packets are dropped; what goes out opens the way
      back (so a simultaneous send or TCP simultaneous open punches through).
    - ``v6-open``: no filtering.
    - ``v6-blocked``: no IPv6 is forwarded (or, on a host, sent or received) but neighbour
      discovery, so the host has an IPv6 address and a route that lead nowhere.

    The drop rules have counters (``nft list table ip6 lab_filter6``).
    """
    if v6 not in V6_PRESETS:
        raise ValueError(f"unknown IPv6 preset {v6!r}; choose from {V6_PRESETS}")
    wan = f'iifname "{wan_interface}"'
    if v6 == "v6-firewall":
        stateful = (
            f"    {wan} ct state established,related accept\n"
            f"    {wan} ct state invalid counter drop\n"
            f"    {wan} counter drop\n"
        )
        chains = {"input": f"    {wan} {_NEIGHBOUR_DISCOVERY} accept\n{stateful}"}
        if routed:
            chains["forward"] = stateful
    elif v6 == "v6-open":
        chains = {"input": ""}
        if routed:
            chains["forward"] = ""
    else:
        chains = {"input": f"    {_NEIGHBOUR_DISCOVERY} accept\n    counter drop\n"}
        if routed:
            chains["forward"] = "    counter drop\n"
        else:
            chains["output"] = f"    {_NEIGHBOUR_DISCOVERY} accept\n    counter drop\n"
    body = "".join(
        f"  chain {name} {{\n    type filter hook {name} priority 0; policy accept;\n{rules}  }}\n"
        for name, rules in chains.items()
    )
    return f"table ip6 lab_filter6 {{\n{body}}}\n"


def _cone_nat(address_restricted: bool) -> str:
    """Masquerade plus a dynamic WAN-port map that lets packets from outside back in."""
    adf_set = (
        "  set adf {\n"
        "    type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; timeout 120s;\n"
        "  }\n"
        if address_restricted
        else ""
    )
    adf_match = "ip saddr . meta l4proto . th dport @adf " if address_restricted else ""
    adf_update = (
        '    oifname "wan0" meta l4proto { tcp, udp } update @adf '
        "{ ip daddr . meta l4proto . th sport }\n"
        if address_restricted
        else ""
    )
    return (
        "table ip lab_nat {\n"
        "  map fcmap {\n"
        "    type inet_proto . inet_service : ipv4_addr . inet_service;\n"
        "    flags dynamic,timeout; timeout 120s;\n"
        "  }\n"
        f"{adf_set}"
        "  chain dstnat {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "wan0" {adf_match}meta l4proto {{ tcp, udp }} '
        "dnat ip to meta l4proto . th dport map @fcmap\n"
        "  }\n"
        "  chain srcnat {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        '    oifname "wan0" masquerade\n'
        "  }\n"
        "  chain track {\n"
        "    type filter hook postrouting priority srcnat + 10; policy accept;\n"
        '    oifname "wan0" meta l4proto { tcp, udp } ct direction original update @fcmap '
        "{ meta l4proto . th sport : ct original ip saddr . ct original proto-src }\n"
        '    oifname "wan0" meta l4proto { tcp, udp } ct direction reply update @fcmap '
        "{ meta l4proto . th sport : ct reply ip saddr . ct reply proto-src }\n"
        f"{adf_update}"
        "  }\n"
        "}\n"
    )


def _srcnat_only(rule: str, extra: str = "") -> str:
    return (
        "table ip lab_nat {\n"
        f"{extra}"
        "  chain srcnat {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "wan0" {rule}\n'
        "  }\n"
        "}\n"
    )


def router_ruleset(preset: str | None, wan_address: str, v6: str | None = None) -> str:
    """The complete nftables ruleset a router running ``preset`` loads (``nft -f -``).

    With ``v6`` (one of :data:`V6_PRESETS`) the router routes IPv6 too: the IPv4 firewall
    rules then match IPv4 only and :func:`ipv6_ruleset` follows. ``preset`` None: an
    IPv6-only router.
    """
    if preset is None:
        if v6 is None:
            raise ValueError("a router needs an IPv4 preset, an IPv6 preset, or both")
        return ipv6_ruleset(v6)
    if preset not in PRESETS or preset == "open":
        raise ValueError(f"no router ruleset for preset {preset!r}")
    if preset == "full-cone":
        nat = _cone_nat(address_restricted=False)
    elif preset == "restricted-cone":
        nat = _cone_nat(address_restricted=True)
    elif preset in ("port-restricted", "udp-blocked"):
        nat = _srcnat_only("masquerade")
    elif preset == "symmetric-random":
        nat = _srcnat_only("masquerade fully-random")
    else:  # symmetric-sequential: one SNAT port per new flow, from a counter
        elements = ", ".join(
            f"{i} : {SEQUENTIAL_PORT_BASE + i}" for i in range(SEQUENTIAL_PORT_COUNT)
        )
        seqport = (
            "  map seqport {\n"
            f"    typeof numgen inc mod {SEQUENTIAL_PORT_COUNT} : udp sport;\n"
            f"    elements = {{ {elements} }}\n"
            "  }\n"
        )
        nat = _srcnat_only(
            f"meta l4proto {{ tcp, udp }} snat ip to {wan_address} : "
            f"numgen inc mod {SEQUENTIAL_PORT_COUNT} map @seqport",
            extra=seqport,
        )
    v4 = _home_router_filter(udp_blocked=preset == "udp-blocked", ipv4_only=v6 is not None) + nat
    return v4 if v6 is None else v4 + ipv6_ruleset(v6)


# --- the lab -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CounterValue:
    """What an nftables counter has seen."""

    packets: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class EgressCounter:
    """A named nftables counter on a host's edge (router, or the open host itself).

    It counts packets leaving the edge's WAN interface toward destinations outside an
    allowed set; see :meth:`LabHost.add_egress_counter`.
    """

    host: LabHost
    name: str

    def read(self) -> CounterValue:
        """The counter's current packets and bytes."""
        result = self.host.router_nft(["-j", "list", "counter", "inet", "lab_count", self.name])
        for item in json.loads(result.stdout)["nftables"]:
            if "counter" in item:
                return CounterValue(int(item["counter"]["packets"]), int(item["counter"]["bytes"]))
        raise LabError(f"counter {self.name!r} not found in {self.host.edge_namespace}")


@dataclasses.dataclass(frozen=True)
class CoturnInfo:
    """A running coturn in the lab's ``pub`` namespace."""

    address: str
    alt_address: str
    port: int
    alt_port: int
    user: str
    password: str
    realm: str
    directory: str
    process: subprocess.Popen[Any] = dataclasses.field(compare=False, repr=False)
    argv: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)
    """The command line, for :meth:`NatLab.restart_coturn`."""
    addresses: tuple[str, ...] = ()
    """Every address it listens on and relays from (IPv4 and IPv6)."""
    address6: str | None = None
    """Its first IPv6 listening address, if any (then :attr:`address` is the first IPv4
    one, if any)."""
    alt_address6: str | None = None
    """Its last IPv6 listening address (its RFC 5780 other address on IPv6), if any."""

    @property
    def stun_server(self) -> str:
        """``IP:PORT`` of the primary STUN/TURN listener (``[IP]:PORT`` if IPv6)."""
        return host_port(self.address, self.port)

    @property
    def turn_uri(self) -> str:
        """The RFC 7065 URI of the TURN service over UDP."""
        return f"turn:{self.stun_server}?transport=udp"

    @property
    def stun_server6(self) -> str:
        """``[IP]:PORT`` of the primary IPv6 STUN/TURN listener."""
        if self.address6 is None:
            raise LabError("this coturn listens on no IPv6 address")
        return host_port(self.address6, self.port)

    @property
    def turn_uri6(self) -> str:
        """The RFC 7065 URI of the TURN service over UDP on IPv6."""
        return f"turn:{self.stun_server6}?transport=udp"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "turnserver.log")


def _coturn_targets(info: CoturnInfo, addresses: Sequence[str]) -> list[str]:
    """``IP:PORT`` of every listener of ``info``'s coturn (readiness probes)."""
    ports = (info.port, info.alt_port) if len(addresses) > 1 else (info.port,)
    return [host_port(a, p) for a in addresses for p in ports]


def host_port(address: str, port: int) -> str:
    """``IP:PORT``, or ``[IP]:PORT`` for an IPv6 address (RFC 3986 section 3.2.2)."""
    return format_address((address, port))


class LabHost:
    """One machine in the lab: a namespace to run commands in, and what is in front of it."""

    def __init__(
        self,
        lab: NatLab,
        *,
        name: str,
        namespace: str,
        address: str,
        public_address: str,
        preset: str | None,
        router_namespace: str | None,
        addresses: Sequence[str] = (),
        v6: str | None = None,
        addresses6: Sequence[str] = (),
    ) -> None:
        self.lab = lab
        self.name = name
        self.namespace = namespace
        self.address = address
        """Its own IPv4 address; on an IPv6-only host its IPv6 address."""
        self.addresses = tuple(addresses) or (address,)
        self.public_address = public_address
        """Where the internet sees it: its router's WAN address (its own if open, its
        IPv6 address if IPv6-only)."""
        self.preset = preset
        """Its IPv4 side (one of :data:`PRESETS`), None if it has no IPv4."""
        self.router_namespace = router_namespace
        self.v6 = v6
        """Its IPv6 side (one of :data:`V6_PRESETS`), None if it has no IPv6."""
        self.addresses6 = tuple(addresses6)
        """Its global IPv6 addresses (none without IPv6); no NAT66, so they are also
        where the internet sees it."""

    def __repr__(self) -> str:
        v6 = f" {self.v6} {self.address6}" if self.v6 else ""
        return (
            f"<LabHost {self.name} {self.preset} {self.address} -> {self.public_address}"
            f"{v6} in {self.namespace}>"
        )

    @property
    def address6(self) -> str | None:
        """Its (first) global IPv6 address, None if it has no IPv6."""
        return self.addresses6[0] if self.addresses6 else None

    @property
    def edge_namespace(self) -> str:
        """The namespace that faces the lab's internet: the router's, or the host's if open."""
        return self.router_namespace or self.namespace

    @property
    def edge_interface(self) -> str:
        """The WAN-facing interface in :attr:`edge_namespace`."""
        return "wan0" if self.router_namespace else "eth0"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def python_argv(self, module: str, *args: str) -> list[str]:
        """``python -m module args...`` with this interpreter (wrap with :meth:`argv`)."""
        return [sys.executable, "-m", module, *args]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in this host, capture its output, and kill its group on timeout."""
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_process(proc, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            self.lab._forget(proc)
        result = subprocess.CompletedProcess(self.argv(argv), proc.returncode, stdout, stderr)
        if check:
            result.check_returncode()
        return result

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host; :meth:`NatLab.close` stops it.

        It gets our environment with the project on ``PYTHONPATH`` (unless ``env`` is
        given) and its own session (unless ``start_new_session`` is given), so its children
        are stopped with it.
        """
        kwargs["env"] = lab_env(kwargs.get("env"))
        kwargs.setdefault("start_new_session", True)
        return self.lab._popen(self.argv(argv), **kwargs)

    def router_popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in :attr:`edge_namespace` (a daemon on the router, say), as
        :meth:`popen` does in the host; :meth:`NatLab.close` stops it."""
        kwargs["env"] = lab_env(kwargs.get("env"))
        kwargs.setdefault("start_new_session", True)
        return self.lab._popen(["ip", "netns", "exec", self.edge_namespace, *argv], **kwargs)

    def router_nft(
        self, args: Sequence[str], *, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``nft args...`` in :attr:`edge_namespace` (the router, or the open host)."""
        return _run(
            ["ip", "netns", "exec", self.edge_namespace, "nft", *args], input=input, check=check
        )

    def ipv6_dropped(self) -> int:
        """Packets the IPv6 preset's forward chain dropped so far (its drop rules count):
        unsolicited IPv6 traffic the firewall kept out."""
        out = self.router_nft(["-j", "list", "chain", "ip6", "lab_filter6", "forward"]).stdout
        return sum(
            item["rule"]["expr"][-2]["counter"]["packets"]
            for item in json.loads(out)["nftables"]
            if "rule" in item and "counter" in item["rule"]["expr"][-2]
        )

    def flush_conntrack(self) -> None:
        """Forget every connection the router tracks (``conntrack -F``), as a router
        that reboots or runs out of table space does: every NAT mapping is gone."""
        if self.router_namespace is None:
            raise LabError(f"{self.name} has no router")
        _run(["ip", "netns", "exec", self.router_namespace, "conntrack", "-F"], check=False)

    def change_public_address(self) -> str:
        """Give the router a new WAN address, as an ISP that renumbers does: the NAT
        maps to the new address from now on, the old one is gone, and so are the
        router's connections (their mappings pointed at the old address). Returns it.
        Only for the presets that map with one source-NAT rule (port-restricted,
        udp-blocked, symmetric-random)."""
        namespace = self.router_namespace
        if namespace is None or self.preset not in (
            "port-restricted",
            "udp-blocked",
            "symmetric-random",
        ):
            raise LabError(f"cannot renumber {self.name} ({self.preset})")
        if not self.lab._free_indexes:
            raise LabError("no free WAN addresses left in the lab")
        old = self.public_address
        new = f"{WAN_PREFIX}{self.lab._free_indexes.pop(0)}"
        # The new address is a secondary one: without promotion, deleting the primary
        # would take it along.
        _run(
            ["ip", "netns", "exec", namespace, "sysctl", "-qw",
             "net.ipv4.conf.wan0.promote_secondaries=1"]
        )  # fmt: skip
        _ip(namespace, f"addr add {new}/{WAN_PREFIXLEN} dev wan0")
        flags = " fully-random" if self.preset == "symmetric-random" else ""
        ruleset = (
            "flush chain ip lab_nat srcnat\n"
            f'add rule ip lab_nat srcnat oifname "wan0" snat ip to {new}{flags}\n'
        )
        _run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset.encode())
        _ip(namespace, f"addr del {old}/{WAN_PREFIXLEN} dev wan0")
        self.flush_conntrack()
        self.public_address = new
        return new

    def add_egress_counter(
        self, name: str, allowed: Iterable[str] = (), *, l4proto: str | None = "udp"
    ) -> EgressCounter:
        """Count packets leaving the edge toward any address not in ``allowed``.

        The rule sits in table ``inet lab_count``, chain ``egress`` (postrouting, after
        NAT), matching ``oifname <wan> [meta l4proto <l4proto>] ip daddr != {allowed}``.
        ``l4proto`` None counts every protocol; an empty ``allowed`` counts everything.
        IPv6 addresses in ``allowed`` add a second rule, ``ip6 daddr != {allowed IPv6}``,
        for the same counter: IPv6 packets are counted only when ``allowed`` names an
        IPv6 address or is empty.
        """
        if not _COUNTER_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"bad counter name {name!r}")
        if l4proto not in (None, "udp", "tcp", "icmp", "ipv6-icmp"):
            raise ValueError(f"bad l4proto {l4proto!r}")
        parsed = {ipaddress.ip_address(a) for a in allowed}
        by_family = {
            selector: sorted(str(a) for a in parsed if a.version == version)
            for selector, version in (("ip daddr", 4), ("ip6 daddr", 6))
        }
        common = [f'oifname "{self.edge_interface}"']
        if l4proto is not None:
            common.append(f"meta l4proto {l4proto}")
        matches = [
            [*common, f"{selector} != {{ {', '.join(addresses)} }}"]
            for selector, addresses in by_family.items()
            if addresses
        ] or [common]
        script = (
            "add table inet lab_count\n"
            "add chain inet lab_count egress "
            "{ type filter hook postrouting priority 200; policy accept; }\n"
            f"add counter inet lab_count {name}\n"
        ) + "".join(
            f'add rule inet lab_count egress {" ".join(match)} counter name "{name}"\n'
            for match in matches
        )
        self.router_nft(["-f", "-"], input=script.encode())
        return EgressCounter(self, name)


@dataclasses.dataclass(frozen=True)
class DaemonLaunch:
    """How a ``twistd holepunch`` of the lab was started, to start it again."""

    argv: list[str]
    targets: list[str]
    """The STUN ``address:port`` pairs that answer once it is up."""
    log_path: str


class NatLab:
    """Network namespaces wired into a small internet with NATs in front of hosts.

    Use as a context manager, or call :meth:`start` and :meth:`close`; see
    :func:`lab_fixture` for trial tests.
    """

    def __init__(self, prefix: str | None = None, *, ipv6: bool = False) -> None:
        if prefix is not None and not _PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX_PATTERN.pattern}, not {prefix!r}")
        self.prefix = prefix or _fresh_prefix()
        self.ipv6 = ipv6
        """Whether the lab has an IPv6 internet (``pub`` on :data:`PUBLIC_A6` and
        :data:`PUBLIC_B6`, and hosts with a ``v6`` side); off, IPv6 is off everywhere."""
        self.wan_namespace = f"{self.prefix}-wan"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._tempdirs: list[str] = []
        self._hosts: dict[str, LabHost] = {}
        self._free_indexes = list(_HOST_INDEXES)
        self._public: LabHost | None = None
        self._daemons: dict[int, DaemonLaunch] = {}
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<NatLab {self.prefix} hosts={sorted(self._hosts)}>"

    def __enter__(self) -> NatLab:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def public(self) -> LabHost:
        """The public server namespace, with :data:`PUBLIC_A` and :data:`PUBLIC_B`."""
        if self._public is None:
            raise RuntimeError("the lab is not started")
        return self._public

    @property
    def hosts(self) -> dict[str, LabHost]:
        """The hosts added so far, by name."""
        return dict(self._hosts)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created and has not yet deleted."""
        return list(self._namespaces)

    # -- building --

    def _new_namespace(self, suffix: str, sysctls: Sequence[str] = (), ipv6: bool = False) -> str:
        namespace = f"{self.prefix}-{suffix}"
        _run(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)
        family = _IPV6_ON if ipv6 else _IPV6_OFF
        _run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-e", "-w", *family, *sysctls])
        _ip(namespace, "link set lo up")
        return namespace

    def _plug_into_wan(self, port: str, namespace: str, ifname: str) -> None:
        """A veth from the wan bridge (``port``) to ``ifname`` in ``namespace``."""
        _ip(self.wan_namespace, f"link add {port} type veth peer name {ifname} netns {namespace}")
        _ip(self.wan_namespace, f"link set {port} master br0 up")
        _ip(namespace, f"link set {ifname} up")

    def start(self) -> None:
        """Create the wan namespace with bridge ``br0`` and the ``pub`` namespace on it."""
        if self._closed:
            raise RuntimeError("a closed lab cannot be restarted")
        if self._started:
            raise RuntimeError("the lab is already started")
        self._started = True
        atexit.register(self.close)
        try:
            wan_sysctls = (*_BRIDGE_NF_OFF, _IPV6_FORWARDING) if self.ipv6 else _BRIDGE_NF_OFF
            wan = self._new_namespace("wan", wan_sysctls, ipv6=self.ipv6)
            # A fixed MAC: by default a bridge takes its lowest port's, so each new host
            # could change it under the neighbour caches of everyone who routes via br0's
            # IPv6 address (their packets would go to the old MAC until the entry expires).
            _ip(wan, f"link add br0 address {_BRIDGE_MAC} type bridge")
            _ip(wan, "link set br0 up")
            if self.ipv6:
                # The IPv6 internet's router: each site's prefix is routed to its router
                # (add_host); anything else is dropped without a word, like a lost packet.
                _ip(wan, f"addr add {WAN6_GATEWAY}/{WAN6_PREFIXLEN} dev br0 nodad")
                _ip(wan, "-6 route add blackhole default")
            pub = self._new_namespace("pub", ipv6=self.ipv6)
            self._plug_into_wan("pub", pub, "eth0")
            for address in (PUBLIC_A, PUBLIC_B):
                _ip(pub, f"addr add {address}/{WAN_PREFIXLEN} dev eth0")
            addresses6 = (PUBLIC_A6, PUBLIC_B6) if self.ipv6 else ()
            # Linux prefers the newest of equal IPv6 addresses as a source: PUBLIC_A6
            # last, so pub sends from it as it sends from PUBLIC_A on IPv4.
            for address in reversed(addresses6):
                _ip(pub, f"addr add {address}/{WAN6_PREFIXLEN} dev eth0 nodad")
            if self.ipv6:
                _ip(pub, f"-6 route add default via {WAN6_GATEWAY}")
            # Like the internet: a packet for an address nobody routes is lost on the way,
            # not refused at once (coturn closes an allocation whose relay gets a send
            # error, e.g. toward a peer's private host address). A blackhole route would
            # give the sender EINVAL, so the default route goes to a gateway whose MAC
            # nobody has: the frames are sent, and nobody takes them.
            _ip(pub, f"neigh add {VOID_GATEWAY} lladdr 02:00:00:00:00:fe dev eth0 nud permanent")
            _ip(pub, f"route add default via {VOID_GATEWAY}")
            self._public = LabHost(
                self,
                name="pub",
                namespace=pub,
                address=PUBLIC_A,
                public_address=PUBLIC_A,
                preset="open",
                router_namespace=None,
                addresses=(PUBLIC_A, PUBLIC_B),
                v6="v6-open" if self.ipv6 else None,
                addresses6=addresses6,
            )
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str, preset: str | None, *, v6: str | None = None) -> LabHost:
        """Add host ``name`` behind a router running ``preset`` (or on the bridge if open).

        Host number N (1, 2, ...) gets WAN address 203.0.113.N (on the router, or on the
        host itself when open) and, behind a router, LAN 10.N.0.0/24 with the router at
        .1, the host at .2 and its default route via the router.

        ``v6`` (one of :data:`V6_PRESETS`, in a lab made with ``ipv6=True``) gives it an
        IPv6 side too, without NAT: behind a router, the site prefix 2001:db8:N::/64
        (router 2001:db8:N::1, host 2001:db8:N::2) routed by the internet to the router's
        WAN address 2001:db8:ff::N; an open host gets 2001:db8:ff::N itself, and the
        preset's rules filter its own traffic. ``v6`` None: no IPv6 at all (IPv6 is off in
        its namespaces). ``preset`` None with a ``v6``: an IPv6-only host (no IPv4
        address, no IPv4 route).
        """
        if not self._started or self._closed:
            raise RuntimeError("start the lab before adding hosts")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
        if v6 is not None and v6 not in V6_PRESETS:
            raise ValueError(f"unknown IPv6 preset {v6!r}; choose from {V6_PRESETS}")
        if v6 is not None and not self.ipv6:
            raise ValueError("IPv6 hosts need a lab made with NatLab(ipv6=True)")
        if preset is None and v6 is None:
            raise ValueError("a host needs an IPv4 preset, an IPv6 preset, or both")
        if not _HOST_NAME_PATTERN.fullmatch(name) or name in ("wan", "pub"):
            raise ValueError(f"host name must match {_HOST_NAME_PATTERN.pattern}: {name!r}")
        if name in self._hosts:
            raise ValueError(f"host {name!r} already exists")
        if not self._free_indexes:
            raise RuntimeError("no free WAN addresses left in the lab")
        index = self._free_indexes.pop(0)
        made = len(self._namespaces)
        try:
            host = self._build_host(name, preset, index, v6)
        except BaseException:
            for namespace in self._namespaces[made:]:
                _delete_namespace(namespace)
            del self._namespaces[made:]
            raise
        self._hosts[name] = host
        return host

    def _build_host(self, name: str, preset: str | None, index: int, v6: str | None) -> LabHost:
        wan_address = f"{WAN_PREFIX}{index}"
        wan_cidr = f"{wan_address}/{WAN_PREFIXLEN}"
        # IPv6: the host's index written as a group, so 203.0.113.N <-> 2001:db8:ff::N.
        wan_address6 = f"{WAN6_PREFIX}{index}"
        wan_cidr6 = f"{wan_address6}/{WAN6_PREFIXLEN}"
        ipv6 = v6 is not None
        host_ns = self._new_namespace(name, ipv6=ipv6)
        if preset == "open":
            self._plug_into_wan(f"v{index}", host_ns, "eth0")
            _ip(host_ns, f"addr add {wan_cidr} dev eth0")
            if v6 is not None:
                _ip(host_ns, f"addr add {wan_cidr6} dev eth0 nodad")
                _ip(host_ns, f"-6 route add default via {WAN6_GATEWAY}")
                _run(
                    ["ip", "netns", "exec", host_ns, "nft", "-f", "-"],
                    input=ipv6_ruleset(v6, "eth0", routed=False).encode(),
                )
            return LabHost(
                self,
                name=name,
                namespace=host_ns,
                address=wan_address,
                public_address=wan_address,
                preset=preset,
                router_namespace=None,
                v6=v6,
                addresses6=(wan_address6,) if ipv6 else (),
            )
        sysctls = [
            *(("net.ipv4.ip_forward=1",) if preset is not None else ()),
            *((_IPV6_FORWARDING,) if ipv6 else ()),
        ]
        router_ns = self._new_namespace(f"{name}-nat", sysctls, ipv6=ipv6)
        self._plug_into_wan(f"v{index}", router_ns, "wan0")
        _ip(router_ns, f"link add lan0 type veth peer name eth0 netns {host_ns}")
        _ip(router_ns, "link set lan0 up")
        _ip(host_ns, "link set eth0 up")
        lan_host = f"10.{index}.0.2"
        if preset is not None:
            lan_router = f"10.{index}.0.1"
            _ip(router_ns, f"addr add {wan_cidr} dev wan0")
            _ip(router_ns, f"addr add {lan_router}/24 dev lan0")
            _ip(host_ns, f"addr add {lan_host}/24 dev eth0")
            _ip(host_ns, f"route add default via {lan_router}")
        site_router6, site_host6 = f"2001:db8:{index}::1", f"2001:db8:{index}::2"
        if ipv6:
            _ip(router_ns, f"addr add {wan_cidr6} dev wan0 nodad")
            _ip(router_ns, f"-6 route add default via {WAN6_GATEWAY}")
            _ip(router_ns, f"addr add {site_router6}/64 dev lan0 nodad")
            _ip(host_ns, f"addr add {site_host6}/64 dev eth0 nodad")
            _ip(host_ns, f"-6 route add default via {site_router6}")
            _ip(self.wan_namespace, f"-6 route add 2001:db8:{index}::/64 via {wan_address6}")
        _run(
            ["ip", "netns", "exec", router_ns, "nft", "-f", "-"],
            input=router_ruleset(preset, wan_address, v6).encode(),
        )
        return LabHost(
            self,
            name=name,
            namespace=host_ns,
            address=lan_host if preset is not None else site_host6,
            public_address=wan_address if preset is not None else site_host6,
            preset=preset,
            router_namespace=router_ns,
            v6=v6,
            addresses6=(site_host6,) if ipv6 else (),
        )

    # -- processes --

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if not self._started or self._closed:
            raise RuntimeError("the lab is not running")
        proc: subprocess.Popen[Any] = subprocess.Popen(argv, **kwargs)
        self._processes.append(proc)
        return proc

    def wan_popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the wan namespace (the internet's bridge ``br0``), as
        :meth:`LabHost.popen` does in a host; :meth:`close` stops it."""
        kwargs["env"] = lab_env(kwargs.get("env"))
        kwargs.setdefault("start_new_session", True)
        return self._popen(["ip", "netns", "exec", self.wan_namespace, *argv], **kwargs)

    def _forget(self, proc: subprocess.Popen[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._processes.remove(proc)

    def start_coturn(
        self,
        *,
        port: int = 3478,
        alt_port: int = 3479,
        user: str = "u",
        password: str = "p",
        realm: str = "lab",
        addresses: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 10.0,
    ) -> CoturnInfo:
        """Run coturn in :attr:`public` on ``addresses`` and wait until it answers.

        With two listening addresses and ``alt_port`` it sends OTHER-ADDRESS and honours
        CHANGE-REQUEST (RFC 5780); with one (``addresses=(PUBLIC_B,)``, say) it is an
        ordinary one-address STUN/TURN server, as most deployments are. By default it
        listens on :data:`PUBLIC_A` and :data:`PUBLIC_B`, and in an IPv6 lab also on
        :data:`PUBLIC_A6` and :data:`PUBLIC_B6` (relaying from both families, so a client
        of either family can ask for a relay of either). Its log, pid file
        and user database live in a temporary directory that :meth:`close` removes.
        Readiness is a real STUN Binding answered on every address/port pair, polled until
        ``timeout``.
        """
        if addresses is None:
            addresses = (PUBLIC_A, PUBLIC_B, *self.public.addresses6)
        addresses = tuple(addresses)
        v4 = [a for a in addresses if ":" not in a]
        v6 = [a for a in addresses if ":" in a]
        directory = tempfile.mkdtemp(prefix=f"{self.prefix}-coturn-")
        self._tempdirs.append(directory)
        argv = [
            "turnserver",
            "-n",
            *(f"--listening-ip={a}" for a in addresses),
            *(f"--relay-ip={a}" for a in addresses),
            f"--listening-port={port}",
            f"--alt-listening-port={alt_port}",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--lt-cred-mech",
            f"--user={user}:{password}",
            f"--realm={realm}",
            f"--log-file={directory}/turnserver.log",
            "--simple-log",
            "--no-stdout-log",
            f"--pidfile={directory}/turnserver.pid",
            f"--userdb={directory}/turndb",
            *extra_args,
        ]
        proc = self._popen_coturn(argv, directory)
        info = CoturnInfo(
            address=(v4 or v6)[0],
            alt_address=(v4 or v6)[-1],
            port=port,
            alt_port=alt_port,
            user=user,
            password=password,
            realm=realm,
            directory=directory,
            process=proc,
            argv=tuple(argv),
            addresses=addresses,
            address6=v6[0] if v6 else None,
            alt_address6=v6[-1] if v6 else None,
        )
        self._wait_for_stun(proc, _coturn_targets(info, addresses), timeout, "turnserver",
                            info.log_path)  # fmt: skip
        return info

    def _popen_coturn(self, argv: Sequence[str], directory: str) -> subprocess.Popen[Any]:
        with open(os.path.join(directory, "stderr"), "ab") as stderr:
            return self.public.popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )

    def stop_coturn(self, info: CoturnInfo) -> None:
        """Kill ``info``'s coturn at once (SIGKILL: no goodbye to anyone), and reap it.
        Every allocation it held is gone."""
        _signal_process(info.process, signal.SIGKILL)
        info.process.wait(timeout=5.0)
        self._forget(info.process)

    def restart_coturn(
        self, info: CoturnInfo, *, down: float = 0.0, timeout: float = 10.0
    ) -> CoturnInfo:
        """Kill ``info``'s coturn (:meth:`stop_coturn`), wait ``down`` seconds, and start
        it again with the same command line (same addresses, ports, users, log): a
        server restart, which loses every allocation. Returns the new one's info once it
        answers STUN again."""
        self.stop_coturn(info)
        if down > 0:
            time.sleep(down)
        proc = self._popen_coturn(info.argv, info.directory)
        new = dataclasses.replace(info, process=proc)
        addresses = list(info.addresses or dict.fromkeys((info.address, info.alt_address)))
        self._wait_for_stun(proc, _coturn_targets(new, addresses), timeout, "turnserver",
                            new.log_path)  # fmt: skip
        return new

    def start_holepunch_daemon(
        self,
        *,
        stun_port: int = 3480,
        stun_alt_port: int = 3481,
        rfc5780: bool = True,
        extra_args: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> subprocess.Popen[Any]:
        """Run ``twistd -n holepunch`` in :attr:`public`; wait until its STUN server answers.

        With ``rfc5780`` the STUN server listens on both public addresses, on ``stun_port``
        and ``stun_alt_port`` (by default beside coturn's 3478/3479). Without, it listens
        with the daemon's defaults, as the README starts it: every interface, ``stun_port``
        and ``stun_port + 1`` (3478 and 3479); ``extra_args`` may narrow that down
        (``--stun-interface``, ``--stun-alternate-port=0``). Its log goes to a
        temporary file that :meth:`close` removes. ``extra_args`` are more daemon options;
        signaling is off unless they name ``--signaling``.
        """
        directory = tempfile.mkdtemp(prefix=f"{self.prefix}-holepunch-")
        self._tempdirs.append(directory)
        log_path = os.path.join(directory, "twistd.log")
        if rfc5780:
            args = [
                "--stun-interface", PUBLIC_A, "--stun-alternate-address", PUBLIC_B,
                "--stun-port", str(stun_port), "--stun-alternate-port", str(stun_alt_port),
            ]  # fmt: skip
            targets = [f"{a}:{p}" for a in (PUBLIC_A, PUBLIC_B) for p in (stun_port, stun_alt_port)]
        else:
            # As the README starts it: every interface, stun_port and stun_port + 1.
            args = []
            if stun_port != 3478:
                args = ["--stun-port", str(stun_port), "--stun-alternate-port", str(stun_port + 1)]
            one_port = "--stun-alternate-port=0" in extra_args
            targets = [
                f"{PUBLIC_A}:{p}" for p in (stun_port, stun_port + 1)[: 1 if one_port else 2]
            ]
        if not any(a.startswith("--signaling") for a in extra_args):
            args.append("--no-signaling")
        argv = [
            *TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={log_path}",
            "holepunch",
            *args,
            *extra_args,
        ]
        return self._launch_daemon(DaemonLaunch(argv, targets, log_path), timeout)

    def _launch_daemon(self, launch: DaemonLaunch, timeout: float) -> subprocess.Popen[Any]:
        proc = self.public.popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_for_stun(proc, launch.targets, timeout, "twistd holepunch", launch.log_path)
        self._daemons[proc.pid] = launch
        return proc

    def stop_holepunch_daemon(self, proc: subprocess.Popen[Any]) -> DaemonLaunch:
        """Stop a daemon :meth:`start_holepunch_daemon` started (SIGTERM, as an operator's
        restart does: its signaling server closes every WebSocket with 1001); wait for it
        to exit. Returns what :meth:`start_holepunch_daemon_again` needs."""
        launch = self._daemons.pop(proc.pid, None)
        if launch is None:
            raise LabError(f"pid {proc.pid} is not a running holepunch daemon of this lab")
        _stop_processes([proc])
        self._forget(proc)
        return launch

    def start_holepunch_daemon_again(
        self, launch: DaemonLaunch, *, timeout: float = 15.0
    ) -> subprocess.Popen[Any]:
        """Start a stopped daemon again with the same options, on the same addresses and
        ports; return once its STUN server answers (its signaling port opens with it)."""
        return self._launch_daemon(launch, timeout)

    def restart_holepunch_daemon(
        self,
        proc: subprocess.Popen[Any],
        *,
        timeout: float = 15.0,
        while_down: Callable[[], object] | None = None,
    ) -> subprocess.Popen[Any]:
        """:meth:`stop_holepunch_daemon`, ``while_down()`` if given, then
        :meth:`start_holepunch_daemon_again`: the new process."""
        launch = self.stop_holepunch_daemon(proc)
        if while_down is not None:
            while_down()
        return self.start_holepunch_daemon_again(launch, timeout=timeout)

    def _wait_for_stun(
        self,
        proc: subprocess.Popen[Any],
        targets: Sequence[str],
        timeout: float,
        what: str,
        log_path: str,
    ) -> None:
        """Poll with real STUN Bindings from :attr:`public` until every target answers.

        On failure ``proc`` is stopped and :class:`LabError` carries the tail of its log.
        """
        probe = self.public.python_argv(
            "lab.udpobserver",
            "--timeout",
            "0.5",
            *(arg for target in targets for arg in ("--stun", target)),
        )
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                problem = f"{what} exited {proc.returncode}"
            elif self.public.run(probe, timeout=10.0).returncode == 0:
                return
            elif time.monotonic() > deadline:
                problem = f"{what} did not answer STUN within {timeout}s"
            else:
                continue
            _stop_processes([proc])
            self._forget(proc)
            raise LabError(f"{problem}; log: {_tail(log_path)}")

    # -- teardown --

    def close(self) -> None:
        """Stop every process the lab started, delete its namespaces and temporary files.

        Idempotent and never raises: problems are logged. Also runs at interpreter exit.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            _stop_processes(self._processes)
        except Exception as e:
            _log.warn("stopping lab processes failed: {error!r}", error=e)
        self._processes.clear()
        try:
            leftovers = [
                ns
                for ns in _list_namespaces()
                if ns.startswith(f"{self.prefix}-") and ns not in self._namespaces
            ]
        except Exception as e:
            _log.warn("listing namespaces failed: {error!r}", error=e)
            leftovers = []
        for namespace in [*reversed(self._namespaces), *leftovers]:
            try:
                _delete_namespace(namespace)
            except Exception as e:
                _log.warn("deleting {ns} failed: {error!r}", ns=namespace, error=e)
        self._namespaces.clear()
        for directory in self._tempdirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._tempdirs.clear()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-limit:].decode(errors="replace")
    except OSError as e:
        return f"(no log: {e})"


def lab_fixture(testcase: _TestCaseLike, *, ipv6: bool = False) -> NatLab:
    """A started :class:`NatLab` for a trial test, closed by the test's cleanup.

    ``ipv6``: the lab has an IPv6 internet too (see :class:`NatLab`). Raises ``SkipTest``
    with :func:`unavailable_reason` where the lab cannot run.
    """
    from unittest import SkipTest

    reason = unavailable_reason()
    if reason is not None:
        raise SkipTest(reason)
    lab = NatLab(ipv6=ipv6)
    testcase.addCleanup(lab.close)
    lab.start()
    return lab
