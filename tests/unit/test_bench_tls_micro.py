"""The TLS handshake micro-benchmark measures what it says: full handshakes are full,
resumed ones resume from xmppd's ticket, and the server's CPU is counted."""

from __future__ import annotations

from pathlib import Path

from bench.tls_micro import measure


def test_full_and_resumed_handshakes_are_what_they_say(tmp_path: Path) -> None:
    figures = measure(handshakes=5, repeat=1, directory=tmp_path)
    # measure() raises if a full handshake resumed or a resumed one did not.
    assert set(figures) == {"full", "resumed"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in figures.values())
