"""The ``soak`` benchmark (``python -m bench soak``, bench/soak.py) in miniature against
a real xmppd started by the bench's launcher over TLS: logins and logouts of one
account are counted (all of them succeed), the chat soak samples RSS at every step and
counts what it sent and lost, and the report says whether the growth goal was met.
The memory goal itself is for the full run on a quiet machine, not asserted here."""

from __future__ import annotations

from pathlib import Path

from bench.certs import make_certificate
from bench.common import PASSWORD, user_name
from bench.scenarios import Settings
from bench.servers.xmppd import XmppdServer
from bench.soak import run_soak, soak_report
from tests.support.server import free_port


def test_soak_in_miniature(tmp_path: Path) -> None:
    server = XmppdServer(tmp_path, free_port())
    server.certs = make_certificate(tmp_path / "certs", server.domain)
    server.configure()
    server.create_accounts([user_name(i) for i in range(20)], PASSWORD)
    settings = Settings()
    settings.soak_churn, settings.soak_churn_warmup, settings.soak_churn_concurrency = 60, 20, 4
    settings.soak_sessions, settings.soak_pairs, settings.soak_rate = 20, 5, 100
    settings.soak_seconds, settings.soak_sample = 4.0, 2.0
    settings.concurrency = 10
    lines: list[str] = []
    churn, chat = run_soak(server, settings, lines.append)
    assert "error" not in churn, churn
    assert churn["logins"] == 60 and churn["failed"] == 0
    assert churn["rss_end_kb"] > 0 and churn["rss_after_warmup_kb"] > 0
    assert "error" not in chat, chat
    assert chat["sessions_ok"] == 20
    assert [s["t"] > 0 for s in chat["samples"]] == [True, True]
    assert chat["sent"] == 2 * 2 * 100 and chat["lost"] == 0
    report = soak_report([churn, chat])
    assert "churn: 60 logins and logouts of one account (0 failed" in report
    assert "goal <= +5 %" in report
