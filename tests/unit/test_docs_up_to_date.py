"""docs/hooks.md and docs/modules/ are generated from the code and must match it; the
user guide's list of default modules is the server's."""

from __future__ import annotations

import re
from pathlib import Path

from xmppd.docgen import write
from xmppd.modules import DEFAULT_MODULES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_generated_reference_docs_are_current() -> None:
    stale = write(DOCS, check=True)
    assert not stale, f"run `./dev xmppd gen-docs`; stale: {[str(p) for p in stale]}"


def test_the_user_guide_names_the_default_modules_and_the_others() -> None:
    guide = (DOCS / "user-guide.md").read_text()
    section = guide.split("## What the default modules give", 1)[1].split("\n## ", 1)[0]
    loaded, _, others = section.partition("Not loaded unless configured:")
    assert others, "the section says which modules are not loaded by default"
    for name in DEFAULT_MODULES:
        assert re.search(rf"\b{name}\b", loaded), name
    shipped = {p.stem.removeprefix("mod_") for p in (DOCS.parent / "modules").glob("mod_*")} - {
        "motd"
    }  # motd comes with admin_adhoc, and the section says so
    for name in sorted(shipped - set(DEFAULT_MODULES)):
        assert f"(`{name}`)" in others, name
