"""A real ejabberd (Debian ``ejabberd`` 23.01) for interop tests, as its own process.

Everything is in a directory of its own: ``ejabberd.yml``, ``ejabberdctl.cfg``, the
Mnesia spool, logs, the certificate (an untrusted test CA's) and an ``inetrc``. It
listens on a loopback address of its own (in 127/8, not 127.0.0.1) on free ports (c2s
STARTTLS and s2s). Its Erlang node is private:
a unique node name and cookie, its own distribution port (``ERL_DIST_PORT``: the node
listens there and no epmd is used at all) and, should anything still start an epmd,
a private ``ERL_EPMD_PORT`` (never the machine's 4369).

ejabberd resolves remote servers with ``inet_res`` (DNS only, never ``/etc/hosts``):
its ``inetrc`` points it at a test DNS server (:func:`threaded_dns_server`) that
serves SRV records for xmppd's domains whose target is ``127.0.0.1.`` (ejabberd looks
SRV targets up with ``getaddrinfo``, which an address literal satisfies), so nothing
of the machine's is edited. ``ejabberdctl`` run as root drops to the ``ejabberd`` user (as Debian's
service does), so when the tests are root the directory is a fresh one under the
system temp dir, owned by that user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.support.dnsserver import threaded_dns_server
from tests.support.server import free_port, service_unavailable
from tests.support.testca import TestCA

INSTALL_USER = "ejabberd"


@dataclass
class EjabberdServer:
    """A running ejabberd: its domain, ports, the CA clients trust, and its files."""

    process: subprocess.Popen[bytes]
    domain: str
    muc_domain: str
    starttls_port: int
    s2s_port: int
    cafile: Path
    home: Path
    env: dict[str, str]
    address: str = "127.0.0.1"
    """The loopback address it listens on (one of its own)."""

    @property
    def direct_tls_port(self) -> int:
        return self.starttls_port  # no direct TLS c2s listener; Slix uses STARTTLS

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "ejabberd.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``ejabberdctl`` against this node; its output (raises on failure)."""
        done = subprocess.run(
            _ctl_command(self.home, *args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ejabberdctl {args[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def register(self, user: str, password: str) -> str:
        """Create an account with ``ejabberdctl register``; returns the bare JID."""
        self.ctl("register", user, self.domain, password)
        return f"{user}@{self.domain}"


def require_ejabberd() -> None:
    """Skip (locally) or fail (CI) when ejabberd cannot run here."""
    if shutil.which("ejabberdctl") is None or shutil.which("erl") is None:
        service_unavailable("ejabberd is not installed (Debian package ejabberd)")
    if os.geteuid() != 0:
        try:
            me = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            me = ""
        if me != INSTALL_USER:
            service_unavailable("Debian's ejabberdctl runs only as root or the ejabberd user")


def _ctl_command(home: Path, *args: str) -> list[str]:
    return [
        "ejabberdctl",
        "--config-dir",
        str(home),
        "--ctl-config",
        str(home / "ejabberdctl.cfg"),
        "--spool",
        str(home / "db"),
        "--logs",
        str(home / "logs"),
        *args,
    ]


def _yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    home: Path,
    *,
    domain: str,
    muc_domain: str,
    address: str,
    c2s_port: int,
    s2s_port: int,
    certfile: Path,
) -> None:
    text = f"""\
hosts:
  - {_yaml_str(domain)}
loglevel: info
log_rotate_count: 0
certfiles:
  - {_yaml_str(str(certfile))}
listen:
  - port: {c2s_port}
    ip: {_yaml_str(address)}
    module: ejabberd_c2s
    starttls_required: true
  - port: {s2s_port}
    ip: {_yaml_str(address)}
    module: ejabberd_s2s_in
s2s_use_starttls: required
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4
outgoing_s2s_ipv4_address: {_yaml_str(address)}
auth_method: internal
default_db: mnesia
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
shaper_rules:
  c2s_shaper: none
  s2s_shaper: none
modules:
  mod_admin_extra: {{}}
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_version: {{}}
  mod_s2s_dialback: {{}}
  mod_muc:
    host: {_yaml_str(muc_domain)}
    access_create: all
    access: all
    default_room_options:
      persistent: false
"""
    (home / "ejabberd.yml").write_text(text)


def write_inetrc(home: Path, dns_port: int) -> None:
    """ejabberd's resolver: the test DNS server only (no /etc/resolv.conf, whose
    servers would answer NXDOMAIN for the test domains, and which inet_res re-reads)."""
    (home / "inetrc").write_text(
        '{resolv_conf, ""}.\n'
        '{hosts_file, ""}.\n'
        '{host, {127,0,0,1}, ["localhost"]}.\n'
        f"{{nameserver, {{127,0,0,1}}, {dns_port}}}.\n"
        "{lookup, [file, dns]}.\n"
    )


def write_ctl_config(home: Path, *, node: str, cookie: str, dist_port: int) -> None:
    (home / "ejabberdctl.cfg").write_text(
        f'ERLANG_NODE="{node}"\n'
        f'ERL_DIST_PORT="{dist_port}"\n'
        'INET_DIST_INTERFACE="127.0.0.1"\n'
        f'ERL_OPTIONS="-setcookie {cookie}"\n'
        "EJABBERD_BYPASS_WARNINGS=true\n"
    )


def _own_loopback_address() -> str:
    """A loopback address other than 127.0.0.1 (Linux routes all of 127/8 to lo)."""
    for _ in range(20):
        address = f"127.0.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 2}"
        with socket.socket() as s:
            try:
                s.bind((address, 0))
            except OSError:
                continue
        return address
    return "127.0.0.1"


def _owned_home() -> Path:
    """A fresh directory the node's user can use (``ejabberd`` when we are root)."""
    home = Path(tempfile.mkdtemp(prefix="xmppd-ejabberd-"))
    if os.geteuid() == 0:
        os.chmod(home, 0o750)
        user = pwd.getpwnam(INSTALL_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
    return home


def _chown_tree(home: Path) -> None:
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(INSTALL_USER)
    for path in [home, *home.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


@contextmanager
def running_ejabberd(
    *,
    domain: str = "ejabberd.example",
    remote_s2s: dict[str, int],
    keep_logs: Path | None = None,
) -> Iterator[EjabberdServer]:
    """Start ejabberd for ``domain`` (with a MUC service on ``rooms.<domain>``) and stop
    it afterwards; ``remote_s2s`` maps xmppd's domains to their s2s ports on 127.0.0.1
    (served to ejabberd as SRV records). Its logs are copied to ``keep_logs`` at the end."""
    require_ejabberd()
    zone: dict[tuple[str, str], list[str]] = {}
    for remote, port in remote_s2s.items():
        # The SRV target is an address: ejabberd looks targets up with getaddrinfo
        # (the system's resolver), only SRV with inet_res.
        zone[(f"_xmpp-server._tcp.{remote}", "SRV")] = [f"0 5 {port} 127.0.0.1."]
    with ExitStack() as stack:
        dns_port, _answers = stack.enter_context(threaded_dns_server(zone))
        home = _owned_home()
        stack.callback(shutil.rmtree, home, True)
        if keep_logs is not None:
            stack.callback(_copy_logs, home, keep_logs)
        yield stack.enter_context(_ejabberd_process(home, domain, dns_port))


def _copy_logs(home: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for name in ("logs/ejabberd.log", "logs/error.log", "ejabberd.out", "ejabberd.yml"):
        if (home / name).exists():
            shutil.copyfile(home / name, into / Path(name).name)


@contextmanager
def _ejabberd_process(home: Path, domain: str, dns_port: int) -> Iterator[EjabberdServer]:
    muc_domain = f"rooms.{domain}"
    for sub in ("db", "logs"):
        (home / sub).mkdir()
    ca = TestCA("ejabberd test CA (not trusted by xmppd)")
    cafile = ca.write_ca(home / "ca.crt")
    cert, key = ca.issue(dns=[domain, muc_domain], cn=domain)
    certfile = home / "ejabberd.pem"
    certfile.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    write_inetrc(home, dns_port)
    env = dict(os.environ)
    env["ERL_EPMD_PORT"] = str(free_port())
    env.pop("ERL_LIBS", None)
    node = f"xmppdtest{secrets.token_hex(4)}@localhost"
    cookie = secrets.token_hex(16)
    last_error = ""
    address = _own_loopback_address()
    for _attempt in range(3):
        c2s, s2s, dist = free_port(), free_port(), free_port()
        write_config(
            home,
            address=address,
            domain=domain,
            muc_domain=muc_domain,
            c2s_port=c2s,
            s2s_port=s2s,
            certfile=certfile,
        )
        write_ctl_config(home, node=node, cookie=cookie, dist_port=dist)
        _chown_tree(home)
        out = (home / "ejabberd.out").open("ab")
        proc = subprocess.Popen(
            _ctl_command(home, "foreground"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=home,
        )
        server = EjabberdServer(proc, domain, muc_domain, c2s, s2s, cafile, home, env, address)
        try:
            _wait_started(server, (c2s, s2s))
            break
        except RuntimeError as exc:
            last_error = str(exc)
            _stop(server)
            out.close()
    else:
        raise RuntimeError(last_error)
    try:
        yield server
    finally:
        _stop(server)
        out.close()


def _wait_started(server: EjabberdServer, ports: tuple[int, ...]) -> None:
    deadline = time.monotonic() + 60
    for port in ports:
        while True:
            if server.process.poll() is not None:
                out = (server.home / "ejabberd.out").read_text(errors="replace")
                raise RuntimeError(
                    f"ejabberd exited ({server.process.returncode}):\n{out[-2000:]}\n"
                    f"{server.log_text()[-3000:]}"
                )
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((server.address, port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ejabberd does not listen on {port}:\n{server.log_text()}")
            time.sleep(0.1)


def _stop(server: EjabberdServer) -> None:
    proc = server.process
    if proc.poll() is None:
        with suppress(RuntimeError, subprocess.TimeoutExpired):
            server.ctl("stop", timeout=30)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    # The group holds ejabberdctl, su and the Erlang VM (started in a session of ours).
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            time.sleep(0.2)
        except subprocess.TimeoutExpired:
            continue
