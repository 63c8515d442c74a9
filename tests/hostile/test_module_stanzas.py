"""Stanza handlers of every module under random well-formed stanzas (issue 15 fuzzing).

A real server with (nearly) every module loaded gets generated stanzas in each module's
namespaces (:mod:`tests.hostile.stanzafuzz`): every IQ must be answered with a result or
an RFC 6120 error, the stream must stay open and the server must keep serving; at the
end its log must show no crash. Every crasher a longer campaign found
(``python -m tests.hostile.fuzz``) is replayed as a regression case.

``XMPPD_FUZZ_STANZAS`` sets how many generated stanzas the suite sends (default 150).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.hostile.stanzafuzz import check as check_case
from tests.hostile.stanzafuzz import crashers, generate
from tests.support.muc import join
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient

PASSWORD: Final = "fuzz-secret"
STANZAS: Final = int(os.environ.get("XMPPD_FUZZ_STANZAS", "150"))
BATCH: Final = 50
"""Stanzas per connection (a fresh one keeps the test client's inbox small)."""

FUZZ_MODULES: Final[dict[str, dict[str, Any]]] = {
    **DEFAULT_TEST_MODULES,
    "offline": {},
    "carbons": {},
    "mam": {},
    "blocklist": {},
    "bookmarks": {},
    "private": {},
    "vcard": {},
    "pep": {},
    "pubsub": {},
    "csi": {},
    "motd": {},
    "push": {},
    "avatar_conversion": {},
}
CRASH: Final = re.compile(r"Traceback|^\S+ \S+ (ERROR|CRITICAL) ", re.M)

pytestmark = pytest.mark.timeout(600)


def _known_errors(log: str) -> list[str]:
    return [m.group(0) for m in CRASH.finditer(log)]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("fuzz"), modules=FUZZ_MODULES) as srv:
        for user in ("fuzz", "other"):
            proc = srv.cli("adduser", f"{user}@{srv.domain}", input=f"{PASSWORD}\n")
            assert proc.returncode == 0, proc.stderr
        yield srv


async def _client(srv: XmppdServer) -> XmlClient:
    client = await XmlClient.login(srv, f"fuzz@{srv.domain}", PASSWORD, resource="r")
    client.send("<presence/>")
    return client


async def _run(srv: XmppdServer, cases: list[Any]) -> list[tuple[str, str]]:
    failures: list[tuple[str, str]] = []
    for start in range(0, len(cases), BATCH):
        client = await _client(srv)
        try:
            if start == 0:  # a room to address (ignore whether it already exists)
                await join(client, f"room@conference.{srv.domain}", "me")
            for case in cases[start : start + BATCH]:
                problem = await check_case(client, case)
                if problem is not None:
                    failures.append((case.xml[:600], problem))
                    if not client.is_connected:
                        await client.close()
                        client = await _client(srv)
        finally:
            await client.close()
    return failures


async def test_random_stanzas_to_every_module(fuzz_server: XmppdServer) -> None:
    srv = fuzz_server
    cases = [generate(seed, srv.domain) for seed in range(STANZAS)]
    failures = await _run(srv, cases)
    assert not failures, failures[:5]
    errors = _known_errors(srv.log_text())
    assert not errors, f"{len(errors)} crashes in the log; first: {errors[0]}"


async def test_kept_crashers_are_handled(fuzz_server: XmppdServer) -> None:
    srv = fuzz_server
    cases = crashers()
    if not cases:
        pytest.skip("no crashers kept")
    failures = await _run(srv, cases)
    assert not failures, failures[:5]
    tail = srv.log_text()
    assert not _known_errors(tail), _known_errors(tail)[:3]


def test_generation_is_reproducible() -> None:
    assert generate(7, "localhost") == generate(7, "localhost")
    assert Path(__file__).parent.joinpath("stanzafuzz.py").exists()
