"""The ``beside`` benchmark (``python -m bench beside``, bench/beside.py) in miniature
against a real xmppd started by the bench's launcher over TLS: each rate is measured
alone, then beside a storm of logins of other accounts, then beside in-band
registrations of new accounts; every login and registration succeeds, the chat loses
nothing in any step, and the report shows all three.
The latency goal itself is for the full run on a quiet machine, not asserted here."""

from __future__ import annotations

from pathlib import Path

from bench.beside import beside_report, run_beside
from bench.certs import make_certificate
from bench.common import PASSWORD, user_name
from bench.scenarios import Settings
from bench.servers.xmppd import XmppdServer
from tests.support.server import free_port


def test_beside_in_miniature(tmp_path: Path) -> None:
    settings = Settings()
    settings.beside_pairs, settings.beside_rates = 5, [100]
    settings.beside_logins, settings.beside_login_concurrency = 60, 20
    settings.beside_step_seconds = 2.0
    settings.beside_registrations = 15
    settings.concurrency = 10
    server = XmppdServer(tmp_path, free_port())
    server.certs = make_certificate(tmp_path / "certs", server.domain)
    server.configure()
    accounts = settings.accounts_needed(["beside"])
    assert accounts == 2 * 5 + 60
    server.create_accounts([user_name(i) for i in range(accounts)], PASSWORD)
    lines: list[str] = []
    (result,) = run_beside(server, settings, lines.append)
    assert "error" not in result, result
    assert result["sessions_ok"] == 10 and result["server_alive_after"]
    alone, beside, registering = result["steps"]
    assert [s["beside"] for s in result["steps"]] == ["none", "logins", "registrations"]
    assert (alone["storm"], beside["storm"], registering["storm"]) == (False, True, False)
    for step in (alone, beside, registering):
        assert step["rate"] == 100 and step["sent"] == 200 and step["lost"] == 0, step
    assert beside["storm_logins_ok"] == 60 and beside["storm_logins_failed"] == 0
    assert beside["storm_login_seconds"] > 0
    assert registering["registrations_ok"] == 15, registering["registration_errors"]
    assert registering["registrations_failed"] == 0 and registering["registration_seconds"] > 0
    report = beside_report([result])
    rows = [line.split() for line in report.splitlines() if line.startswith("xmppd")]
    assert [row[:3] for row in rows] == [
        ["xmppd", "100", "none"],
        ["xmppd", "100", "logins"],
        ["xmppd", "100", "registrations"],
    ]
    assert rows[1][9] == "60" and rows[2][9] == "15"
    assert any("100 msg/s beside logins" in line for line in lines)
    assert any("15 registrations (0 failed)" in line for line in lines)
