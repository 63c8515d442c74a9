"""A real Prosody (Debian ``prosody``) for interop tests, as its own process.

Everything is in the test's directory: config, data, pid file, log, certificate and a
test-only plugin. It listens on free loopback ports (c2s STARTTLS and s2s), runs as
the current user (``run_as_root`` when that is root: the files are the test's), and
reaches xmppd's domains through ``mod_xmppd_test_pins`` below instead of DNS:
Prosody's resolver reads ``/etc/resolv.conf`` and queries port 53 only, so a test
DNS server on a free port is not an option, and ``/etc/hosts`` is not ours to edit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port, service_unavailable
from tests.support.testca import TestCA

PINS_PLUGIN = """\
-- Test only (xmppd's interop tests): s2s to the domains in xmppd_test_pins goes to a
-- fixed address and port instead of the DNS look-ups of net.resolvers.service.
local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";
local pins = module:get_option("xmppd_test_pins", {});
local dns_new = service.new;
service.new = function (hostname, srv, proto, extra)
	local pin = pins[hostname];
	if pin == nil then
		return dns_new(hostname, srv, proto, extra);
	elseif srv == "xmpp-server" then
		return basic.new(pin[1], pin[2], proto, extra);
	end
	return manual.new({}, proto, extra); -- no direct-TLS (xmpps-server) target
end
local count = 0;
for _ in pairs(pins) do count = count + 1; end
module:log("info", "s2s pins for tests: %d domain(s)", count);
"""


@dataclass
class ProsodyServer:
    """A running Prosody: its domain, ports, the CA clients trust, and its files."""

    process: subprocess.Popen[bytes]
    domain: str
    muc_domain: str
    starttls_port: int
    s2s_port: int
    cafile: Path
    config_path: Path
    log_path: Path

    @property
    def direct_tls_port(self) -> int:
        return self.starttls_port  # no direct TLS c2s listener; Slix uses STARTTLS

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def register(self, user: str, password: str) -> str:
        """Create an account with ``prosodyctl register``; returns the bare JID."""
        _prosodyctl(self.config_path, "register", user, self.domain, password)
        return f"{user}@{self.domain}"


def require_prosody() -> None:
    """Skip (locally) or fail (CI) when Prosody is not installed."""
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        service_unavailable("Prosody is not installed (Debian package prosody)")


def _lua(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prosodyctl(config: Path, *args: str) -> None:
    done = subprocess.run(
        ["prosodyctl", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prosodyctl {args[0]} failed: {done.stdout}{done.stderr}")


def write_config(
    tmp: Path,
    *,
    domain: str,
    muc_domain: str,
    c2s_port: int,
    s2s_port: int,
    pins: dict[str, tuple[str, int]],
    cert: Path,
    key: Path,
    bidi: bool = False,
    trust_ca: Path | None = None,
    extra_hosts: tuple[str, ...] = (),
) -> Path:
    pin_lines = "".join(
        f"\t[{_lua(d)}] = {{ {_lua(h)}, {_lua(p)} }};\n" for d, (h, p) in pins.items()
    )
    more_hosts = "".join(f"VirtualHost {_lua(h)}\n" for h in extra_hosts)
    text = f"""\
run_as_root = {"true" if os.geteuid() == 0 else "false"}
pidfile = {_lua(str(tmp / "prosody.pid"))}
data_path = {_lua(str(tmp / "data"))}
plugin_paths = {{ {_lua(str(tmp / "plugins"))} }}
log = {{ debug = {_lua(str(tmp / "prosody.log"))} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {s2s_port} }}
s2s_direct_tls_ports = {{ }}
admin_socket = {_lua(str(tmp / "admin.sock"))}
certificates = {_lua(str(tmp / "certs"))}
modules_enabled = {{
	"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version";
	"posix"; "xmppd_test_pins";{' "s2s_bidi";' if bidi else ""}
}}
modules_disabled = {{ "offline" }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
-- The xmppd side has a self-signed certificate: dialback (XEP-0220) authenticates it.
s2s_secure_auth = false
ssl = {{ certificate = {_lua(str(cert))}; key = {_lua(str(key))};{
        f" cafile = {_lua(str(trust_ca))};" if trust_ca else ""
    } }}
xmppd_test_pins = {{
{pin_lines}}}

VirtualHost {_lua(domain)}
{more_hosts}
Component {_lua(muc_domain)} "muc"
	restrict_room_creation = false
	muc_room_locking = false
"""
    path = tmp / "prosody.cfg.lua"
    path.write_text(text)
    return path


@contextmanager
def running_prosody(
    tmp: Path,
    *,
    domain: str = "prosody.example",
    pins: dict[str, tuple[str, int]],
    bidi: bool = False,
    trust_ca: Path | None = None,
    extra_hosts: tuple[str, ...] = (),
) -> Iterator[ProsodyServer]:
    """Start Prosody for ``domain`` (with a MUC service on ``rooms.<domain>``) and
    stop it afterwards; ``pins`` maps xmppd's domains to their s2s listeners;
    ``bidi`` enables ``mod_s2s_bidi`` (XEP-0288); ``trust_ca``: a CA whose certificates
    Prosody accepts (SASL EXTERNAL instead of dialback); ``extra_hosts``: more virtual
    hosts, served with the same certificate (which does not name them)."""
    require_prosody()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "plugins").mkdir(exist_ok=True)
    (tmp / "certs").mkdir(exist_ok=True)
    (tmp / "plugins" / "mod_xmppd_test_pins.lua").write_text(PINS_PLUGIN)
    muc_domain = f"rooms.{domain}"
    ca = TestCA("prosody test CA (not trusted by xmppd)")
    cafile = ca.write_ca(tmp / "ca.crt")
    cert, key = ca.issue(dns=[domain, muc_domain], cn=domain)
    TestCA.write_pair(cert, key, tmp / "prosody.crt", tmp / "prosody.key")
    log_path = tmp / "prosody.log"
    for attempt in range(3):
        c2s, s2s = free_port(), free_port()
        config = write_config(
            tmp,
            domain=domain,
            muc_domain=muc_domain,
            c2s_port=c2s,
            s2s_port=s2s,
            pins=pins,
            cert=tmp / "prosody.crt",
            key=tmp / "prosody.key",
            bidi=bidi,
            trust_ca=trust_ca,
            extra_hosts=extra_hosts,
        )
        out = (tmp / "prosody.out").open("ab")
        proc = subprocess.Popen(
            ["prosody", "--config", str(config), "-F"], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            _wait_listening(proc, (c2s, s2s), log_path)
            break
        except RuntimeError:
            _stop(proc)
            out.close()
            if attempt == 2:
                raise
    server = ProsodyServer(proc, domain, muc_domain, c2s, s2s, cafile, config, log_path)
    try:
        yield server
    finally:
        _stop(proc)
        out.close()


def _wait_listening(proc: subprocess.Popen[bytes], ports: tuple[int, ...], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"prosody exited ({proc.returncode}):\n{text[-3000:]}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prosody does not listen on {port}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
