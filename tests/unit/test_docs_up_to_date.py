"""docs/hooks.md and docs/modules/ are generated from the code and must match it."""

from __future__ import annotations

from pathlib import Path

from xmppd.docgen import write

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_generated_reference_docs_are_current() -> None:
    stale = write(DOCS, check=True)
    assert not stale, f"run `./dev xmppd gen-docs`; stale: {[str(p) for p in stale]}"
