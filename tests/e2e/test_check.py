"""``xmppd check``: config, certificates of hosts and components (names, expiry) and
the DNS records a deployment should publish, against a test DNS server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.dnsserver import Zone, threaded_dns_server
from tests.support.s2s import s2s_extra
from tests.support.server import DEFAULT_TEST_MODULES, write_config
from tests.support.testca import TestCA, install_certificate

DOMAIN = "example.test"
COMPONENT = "push.example.test"
C2S, C2S_DIRECT, S2S = 15222, 15223, 15269


def configure(tmp: Path, resolver_port: int) -> Path:
    path = tmp / "xmppd.toml"
    write_config(
        path,
        data_dir=tmp / "data",
        storage_url=f"sqlite+aiosqlite:///{tmp / 'x.sqlite3'}",
        starttls_port=C2S,
        direct_tls_port=C2S_DIRECT,
        domain=DOMAIN,
        modules=DEFAULT_TEST_MODULES,
        extra=s2s_extra(S2S, {}, f'resolver = "127.0.0.1:{resolver_port}"\n'),
        component_port=15347,
        components={COMPONENT: "component-secret"},
    )
    return path


def run_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xmppd", "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_reports_certificate_names_and_the_dns_records_to_add(tmp_path: Path) -> None:
    ca = TestCA()
    # The certificate names the host only: the component is not covered.
    install_certificate(ca, tmp_path / "data", DOMAIN, dns=[DOMAIN])
    zone: Zone = {
        (f"_xmpp-client._tcp.{DOMAIN}", "SRV"): [f"0 5 {C2S} {DOMAIN}."],
        (f"_xmpps-client._tcp.{DOMAIN}", "SRV"): [f"0 5 5223 {DOMAIN}."],  # wrong port
        (DOMAIN, "A"): ["192.0.2.10"],
    }
    with threaded_dns_server(zone) as (port, answers):
        done = run_check(configure(tmp_path, port))
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "OK   configuration" in out
    assert f"OK   certificate of {DOMAIN} names it" in out
    assert f"FAIL certificate of {COMPONENT} does not name it" in out
    assert f"OK   certificate of {DOMAIN} valid until" in out
    assert "self-signed" not in out
    assert f"OK   DNS _xmpp-client._tcp.{DOMAIN} SRV → {DOMAIN}:{C2S}" in out
    assert (
        f"FAIL DNS _xmpps-client._tcp.{DOMAIN} SRV points at {DOMAIN}:5223, "
        f"not {DOMAIN}:{C2S_DIRECT}"
    ) in out
    assert f"FAIL DNS _xmpp-server._tcp.{DOMAIN} SRV: missing" in out
    assert f"FAIL DNS _xmpp-server._tcp.{COMPONENT} SRV: missing" in out
    assert f"OK   DNS {DOMAIN} → 192.0.2.10" in out
    to_add = out.split("== records to add (zone-file syntax)\n", 1)[1].splitlines()
    assert to_add[:3] == [
        f"_xmpps-client._tcp.{DOMAIN}. 3600 IN SRV 0 5 {C2S_DIRECT} {DOMAIN}.",
        f"_xmpp-server._tcp.{DOMAIN}. 3600 IN SRV 0 5 {S2S} {DOMAIN}.",
        f"_xmpp-server._tcp.{COMPONENT}. 3600 IN SRV 0 5 {S2S} {COMPONENT}.",
    ], out
    assert (f"_xmpp-server._tcp.{COMPONENT}", "SRV") in answers.queries


def test_check_passes_a_ready_deployment_and_flags_expiry(tmp_path: Path) -> None:
    ca = TestCA()
    install_certificate(ca, tmp_path / "data", DOMAIN, dns=[DOMAIN, f"*.{DOMAIN}"])
    host = "xmpp.example.test"
    zone: Zone = {
        (f"_xmpp-client._tcp.{DOMAIN}", "SRV"): [f"0 5 {C2S} {host}."],
        (f"_xmpps-client._tcp.{DOMAIN}", "SRV"): [f"0 5 {C2S_DIRECT} {host}."],
        (f"_xmpp-server._tcp.{DOMAIN}", "SRV"): [f"0 5 {S2S} {host}."],
        (f"_xmpp-server._tcp.{COMPONENT}", "SRV"): [f"0 5 {S2S} {host}."],
        (host, "AAAA"): ["2001:db8::10"],
    }
    with threaded_dns_server(zone) as (port, _answers):
        config = configure(tmp_path, port)
        ready = run_check(config, "--target", host)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "== 0 failure(s), 0 warning(s)" in ready.stdout
    assert f"OK   certificate of {COMPONENT} names it" in ready.stdout
    assert f"OK   DNS {host} → 2001:db8::10" in ready.stdout
    assert "records to add" not in ready.stdout
    # A certificate that expires in a week: a warning (still ready); expired: failure.
    for days, mark in ((7, "WARN"), (-1, "FAIL")):
        cert, key = ca.issue(cn=DOMAIN, dns=[DOMAIN, f"*.{DOMAIN}"], days=days)
        certs = tmp_path / "data" / "certs"
        TestCA.write_pair(cert, key, certs / f"{DOMAIN}.crt", certs / f"{DOMAIN}.key")
        with threaded_dns_server(zone) as (port, _answers):
            later = run_check(configure(tmp_path, port), "--target", host)
        assert f"{mark} certificate of {DOMAIN} expire" in later.stdout, later.stdout
        assert later.returncode == (1 if mark == "FAIL" else 0), later.stdout
