# -*- test-case-name: tests.integration.test_turn_coturn -*-
"""Run coturn (``turnserver``) on loopback for tests of the TURN client.

:func:`start_coturn` starts one ``turnserver`` that listens only on 127.0.0.1 (and, with
``listen``, on ``::1`` too; ``relay`` picks the relayed addresses' families), on free
ports picked at random, with everything it writes (log, pid file, user database) in a
fresh temporary directory, and returns once a real STUN Binding request is answered over
UDP (and, when they are enabled, once its TCP and TLS listeners accept connections), or
raises :class:`CoturnError` with the tail of its log. :meth:`Coturn.stop` kills it and
removes the directory; it is idempotent, never raises and also runs at interpreter exit.
:func:`coturn_fixture` does all that for a trial test and skips it (one line of reason)
where ``turnserver`` is not installed.

Credentials are either one long-term user (``--lt-cred-mech --user=U:P``) or, with
``auth_secret``, the TURN REST API (``--use-auth-secret --static-auth-secret=S``).
:func:`make_test_certificate` makes a throw-away CA and a server certificate (with
``cryptography``) for the TLS listener.

This is test infrastructure: it uses ``subprocess`` and blocking sockets and needs no
reactor.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
_STOP_GRACE = 2.0
_MAGIC_COOKIE = 0x2112A442


class CoturnError(Exception):
    """coturn did not start, or did not answer in time."""


def coturn_unavailable_reason() -> str | None:
    """Why coturn cannot run here (a one-line reason), or None if it can."""
    if shutil.which("turnserver") is None:
        return "coturn is not installed ('turnserver' missing; Debian package 'coturn')"
    return None


@dataclasses.dataclass(frozen=True)
class TestCertificate:
    """A CA and a server certificate signed by it, as PEM files in ``directory``."""

    directory: str
    ca_path: str
    cert_path: str
    key_path: str
    ca_pem: bytes


def make_test_certificate(
    directory: str, names: Sequence[str] = ("localhost",), ips: Sequence[str] = (LOOPBACK,)
) -> TestCertificate:
    """Write a fresh CA and a server certificate for ``names`` and ``ips`` into ``directory``.

    The server key is unencrypted (coturn reads it without a password); everything is valid
    from an hour ago for a day.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "holepunch test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(names) or ["server"])[0])])
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    paths = {
        "ca.pem": ca_pem,
        "cert.pem": cert.public_bytes(serialization.Encoding.PEM),
        "key.pem": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    }
    for name, data in paths.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return TestCertificate(
        directory=directory,
        ca_path=os.path.join(directory, "ca.pem"),
        cert_path=os.path.join(directory, "cert.pem"),
        key_path=os.path.join(directory, "key.pem"),
        ca_pem=ca_pem,
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def free_port(exclude: Sequence[int] = (), hosts: Sequence[str] = (LOOPBACK,)) -> int:
    """A port that is free for both UDP and TCP on each of ``hosts`` right now (not
    reserved).

    The kernel picks it for a TCP socket: Linux gives ``bind`` to port 0 odd ports and
    the ports of outgoing connections even ones, so a connection opened before the
    caller listens does not take it while even ones are left (a UDP socket gets either).
    """
    for _ in range(100):
        with socket.socket(_family(hosts[0]), socket.SOCK_STREAM) as tcp:
            tcp.bind((hosts[0], 0))
            port = int(tcp.getsockname()[1])
        if port in exclude or not all(bindable(host, port) for host in hosts):
            continue
        return port
    raise CoturnError(f"no free port on {', '.join(hosts)}")


def free_port_pair(hosts: Sequence[str] = (LOOPBACK,)) -> int:
    """A port P such that P and P + 1 are free for UDP and TCP on each of ``hosts`` right
    now (a STUN server's port and its second port, which ``twistd holepunch`` puts at
    P + 1 by default)."""
    for _ in range(100):
        port = free_port(hosts=hosts)
        if port < 65535 and all(bindable(host, port + 1) for host in hosts):
            return port
    raise CoturnError(f"no two free ports in a row on {', '.join(hosts)}")


def bindable(host: str, port: int) -> bool:
    """``port`` is free for both UDP and TCP on ``host`` right now."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(_family(host), kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


@dataclasses.dataclass
class Coturn:
    """A running ``turnserver`` on 127.0.0.1."""

    port: int
    """UDP and TCP listening port."""
    tls_port: int | None
    """TLS listening port, or None without TLS."""
    realm: str
    user: str | None
    password: str | None
    auth_secret: str | None
    directory: str
    process: subprocess.Popen[Any] = dataclasses.field(repr=False)
    host: str = LOOPBACK
    argv: list[str] = dataclasses.field(default_factory=list, repr=False)
    """The command line, for :meth:`restart`."""
    hosts: tuple[str, ...] = (LOOPBACK,)
    """Every address it listens on (``host`` is the first)."""
    relay_ips: tuple[str, ...] = (LOOPBACK,)
    """The addresses its relayed addresses are on."""

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "turnserver.log")

    def uri(self, transport: str = "udp", host: str | None = None) -> str:
        """The RFC 7065 URI for ``udp``, ``tcp`` or ``tls``, on ``host`` (one of
        :attr:`hosts`; by default :attr:`host`)."""
        host = host or self.host
        if host not in self.hosts:
            raise ValueError(f"this coturn does not listen on {host}")
        at = f"[{host}]" if ":" in host else host
        if transport == "tls":
            if self.tls_port is None:
                raise ValueError("this coturn has no TLS listener")
            return f"turns:{at}:{self.tls_port}?transport=tcp"
        return f"turn:{at}:{self.port}?transport={transport}"

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)

    def restart(self, timeout: float = 10.0) -> None:
        """Kill coturn at once (SIGKILL: it says goodbye to no one) and start it again
        with the same command line, on the same ports: every allocation is lost, as in a
        server restart. Returns once it answers again.

        :raises CoturnError: it did not come back (with its log).
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(_STOP_GRACE)
        with open(os.path.join(self.directory, "stderr"), "ab") as stderr:
            self.process = _popen(self.argv, stderr)
        _wait_until_ready(self, timeout)

    def stop(self) -> None:
        """Kill coturn and remove its directory; idempotent, never raises."""
        try:
            _stop(self.process)
        except Exception:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _running.remove(self)


_running: list[Coturn] = []


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def start_coturn(
    *,
    user: str = "user",
    password: str = "secret",
    realm: str = "holepunch.test",
    auth_secret: str | None = None,
    certificate: TestCertificate | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 10.0,
    listen: Sequence[str] = (LOOPBACK,),
    relay: Sequence[str] | None = None,
) -> Coturn:
    """Start ``turnserver`` on 127.0.0.1 and wait until it answers.

    ``listen`` are the addresses it listens on (``("127.0.0.1", "::1")``: both
    families, on the same ports), ``relay`` those of its relayed addresses (by default
    ``listen``: ``("127.0.0.1", "::1")`` relays to both families, ``("::1",)`` only to
    IPv6, and a dual allocation then gets an IPv4 refusal).

    With ``auth_secret`` it runs the TURN REST API (``--use-auth-secret``) instead of the
    long-term user. With ``certificate`` it also listens for TLS. Peers on loopback are
    allowed (``--allow-loopback-peers``), or every CreatePermission toward 127.0.0.1 would
    be refused with 403. ``extra_args`` are appended (``--stale-nonce=5``, ...).

    :raises CoturnError: it exited or did not answer within ``timeout`` (with its log).
    """
    reason = coturn_unavailable_reason()
    if reason is not None:
        raise CoturnError(reason)
    directory = tempfile.mkdtemp(prefix="holepunch-coturn-")
    try:
        hosts = tuple(listen)
        relay_ips = tuple(relay) if relay is not None else hosts
        if not hosts or not relay_ips:
            raise ValueError("coturn needs an address to listen on and one to relay from")
        port = free_port(hosts=hosts)
        alt_port = free_port(exclude=(port,), hosts=hosts)
        used = [port, alt_port]
        argv = [
            "turnserver",
            "-n",
            *(f"--listening-ip={host}" for host in hosts),
            *(f"--relay-ip={host}" for host in relay_ips),
            f"--listening-port={port}",
            f"--alt-listening-port={alt_port}",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            f"--realm={realm}",
            f"--log-file={directory}/turnserver.log",
            "--simple-log",
            "--no-stdout-log",
            f"--pidfile={directory}/turnserver.pid",
            f"--userdb={directory}/turndb",
        ]
        if auth_secret is not None:
            argv += ["--use-auth-secret", f"--static-auth-secret={auth_secret}"]
        else:
            argv += ["--lt-cred-mech", f"--user={user}:{password}"]
        tls_port: int | None = None
        if certificate is not None:
            tls_port = free_port(exclude=used, hosts=hosts)
            alt_tls_port = free_port(exclude=[*used, tls_port], hosts=hosts)
            argv += [
                f"--tls-listening-port={tls_port}",
                f"--alt-tls-listening-port={alt_tls_port}",
                f"--cert={certificate.cert_path}",
                f"--pkey={certificate.key_path}",
            ]
        else:
            argv.append("--no-tls")
        argv += list(extra_args)
        with open(os.path.join(directory, "stderr"), "wb") as stderr:
            process = _popen(argv, stderr)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    server = Coturn(
        port=port,
        tls_port=tls_port,
        realm=realm,
        user=None if auth_secret is not None else user,
        password=None if auth_secret is not None else password,
        auth_secret=auth_secret,
        directory=directory,
        process=process,
        argv=argv,
        host=hosts[0],
        hosts=hosts,
        relay_ips=relay_ips,
    )
    _running.append(server)
    try:
        _wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def coturn_fixture(testcase: Any, **kwargs: Any) -> Coturn:
    """:func:`start_coturn` for a trial test: skipped without coturn, stopped on cleanup."""
    from twisted.trial.unittest import SkipTest

    reason = coturn_unavailable_reason()
    if reason is not None:
        raise SkipTest(reason)
    server = start_coturn(**kwargs)
    testcase.addCleanup(server.stop)
    return server


def stun_binding_answered(host: str, port: int, wait: float = 0.3) -> bool:
    """Whether one STUN Binding request to ``host:port`` over UDP gets a success answer."""
    transaction_id = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, _MAGIC_COOKIE) + transaction_id
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.sendto(request, (host, port))
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction_id


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _wait_until_ready(server: Coturn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            problem = f"turnserver exited with status {server.process.returncode}"
        elif all(
            stun_binding_answered(host, server.port)
            and _accepts_tcp(host, server.port)
            and (server.tls_port is None or _accepts_tcp(host, server.tls_port))
            for host in server.hosts
        ):
            return
        elif time.monotonic() > deadline:
            problem = f"turnserver did not answer STUN within {timeout} s"
        else:
            time.sleep(0.05)
            continue
        stderr = _tail(os.path.join(server.directory, "stderr"), 5)
        raise CoturnError(f"{problem}; log: {server.log_tail()} {stderr}".strip())


def _popen(argv: Sequence[str], stderr: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(_STOP_GRACE)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"
