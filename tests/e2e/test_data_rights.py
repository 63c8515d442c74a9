"""Data requests (GDPR): ``xmppd export`` gives everything a real client stored (XEP-0227
XML plus the uploaded files), ``xmppd erase`` removes every row and file, at once or
after a grace period that a restart does not forget; the archive retention deletes
old rows only (per host and per account)."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from lxml import etree
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.clients import AuthFailed, Slix, register_account
from tests.support.e2e import PASSWORD, new_account, until_equal, user_rows
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server

PIE = "urn:xmpp:pie:0"
EXPORT = "urn:xmppd:export:0"
ROSTER = "jabber:iq:roster"
VCARD = "vcard-temp"
CLIENT = "jabber:client"
PLUGINS = ("xep_0030", "xep_0054", "xep_0363", "xep_0191")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "vcard": {},
        "private": {},
        "blocklist": {},
        "offline": {},
        "pep": {},
        "mam": {},
        "http_upload": {"max_file_size": "1MiB"},
    }
    tmp = tmp_path_factory.mktemp(f"gdpr-{request.param}")
    with running_server(tmp, backend=request.param, http=True, modules=modules) as srv:
        yield srv


async def can_log_in(server: XmppdServer, jid: str, password: str = PASSWORD) -> bool:
    try:
        async with Slix(server, jid, password, initial_presence=False, fetch_roster=False):
            return True
    except AuthFailed:
        return False


async def live_a_little(server: XmppdServer, owner: str, friend: str) -> bytes:
    """What a real client stores: a roster item, a vCard, archived chat, an offline
    message, a block and an upload. Returns the uploaded bytes."""
    data = os.urandom(2000)
    async with Slix(server, owner, PASSWORD, plugins=PLUGINS) as me:
        await me.xmpp.update_roster(friend, name="Friend", groups=["Pals"])
        vcard = me.xmpp.plugin["xep_0054"].stanza.VCardTemp()
        vcard["FN"] = "Owner Person"
        await me.xmpp.plugin["xep_0054"].publish_vcard(vcard)
        await me.xmpp.plugin["xep_0191"].block("spammer@example.net")
        url = await me.xmpp.plugin["xep_0363"].upload_file(
            "notes.txt", size=len(data), content_type="text/plain", input_file=io.BytesIO(data)
        )
        async with Slix(server, friend, PASSWORD) as pal:
            me.xmpp.send_message(mto=friend, mbody="hello from owner", mtype="chat")
            await pal.next_message(lambda m: m["body"] == "hello from owner")
            pal.xmpp.send_message(mto=owner, mbody="hi back", mtype="chat")
            await me.next_message(lambda m: m["body"] == "hi back")
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200 and await r.read() == data
    async with Slix(server, friend, PASSWORD) as pal:
        pal.xmpp.send_message(mto=owner, mbody="while you were out", mtype="chat")
        await pal.xmpp.plugin["xep_0030"].get_info(jid=server.domain)  # processed in order
    return data


async def upload_rows(server: XmppdServer, owner: str) -> int:
    engine = create_async_engine(server.storage_url)
    try:
        async with engine.connect() as conn:
            n = await conn.scalar(
                sa.text("SELECT count(*) FROM mod_http_upload__files WHERE owner = :o"),
                {"o": owner},
            )
    finally:
        await engine.dispose()
    return int(n or 0)


def stored_files(server: XmppdServer) -> set[str]:
    folder = server.data_dir / "mod_http_upload"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def test_export_contains_what_the_client_stored(server: XmppdServer, tmp_path: Path) -> None:
    owner = await new_account(server, "exporter")
    friend = await new_account(server, "pal")
    data = await live_a_little(server, owner, friend)

    out = tmp_path / "export.tar.gz"
    result = await asyncio.to_thread(server.cli, "export", owner, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 files" in result.stdout
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == "export.xml"
        doc = etree.fromstring(tar.extractfile("export.xml").read())  # type: ignore[union-attr]
        uploaded = [n for n in names if n.startswith("files/")]
        assert len(uploaded) == 1 and uploaded[0].endswith("notes.txt")
        assert tar.extractfile(uploaded[0]).read() == data  # type: ignore[union-attr]
    assert out.stat().st_mode & 0o077 == 0  # only the operator may read it

    local = owner.split("@")[0]
    user = doc.find(f"{{{PIE}}}host/{{{PIE}}}user[@name='{local}']")
    assert user is not None
    item = user.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item[@jid='{friend}']")
    assert item is not None and item.get("name") == "Friend"
    assert user.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN") == "Owner Person"
    bodies = {b.text for b in user.iter(f"{{{CLIENT}}}body")}
    assert {"hello from owner", "hi back", "while you were out"} <= bodies
    offline = user.find(f"{{{PIE}}}offline-messages")
    assert offline is not None
    assert "while you were out" in {b.text for b in offline.iter(f"{{{CLIENT}}}body")}
    assert user.find(".//{urn:xmpp:blocking}item[@jid='spammer@example.net']") is not None
    listed = user.find(f"{{{EXPORT}}}uploads/{{{EXPORT}}}file")
    assert listed is not None and listed.get("name") == "notes.txt"
    assert listed.get("size") == str(len(data))
    assert user.find(f"{{{EXPORT}}}last") is not None  # the last logout


async def test_erase_now_removes_every_row_and_file(server: XmppdServer) -> None:
    owner = await new_account(server, "erased")
    friend = await new_account(server, "witness")
    await live_a_little(server, owner, friend)
    local = owner.split("@")[0]
    before = await user_rows(server, local)
    for table in (
        "mod_roster__items",
        "mod_mam__archive",
        "mod_offline__messages",
        "mod_blocklist__items",
        "mod_last__seen",
        "xmppd_accounts",
        "xmppd_scram",
        "xmppd_keyval",  # the vCard
    ):
        assert before.get(table, 0) > 0, (table, before)
    assert await upload_rows(server, owner) == 1
    files_before = stored_files(server)

    result = await asyncio.to_thread(server.cli, "erase", owner)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"erased {owner}"

    after = await user_rows(server, local)
    assert set(after) == set(before) and set(after.values()) == {0}, after
    assert await upload_rows(server, owner) == 0
    assert len(stored_files(server)) == len(files_before) - 1
    assert not await can_log_in(server, owner)
    assert await can_log_in(server, friend)  # nobody else is touched


async def test_erase_errors(server: XmppdServer) -> None:
    result = await asyncio.to_thread(server.cli, "erase", "nobody@localhost")
    assert result.returncode == 1 and "does not exist" in result.stderr
    user = await new_account(server, "graceless")
    result = await asyncio.to_thread(server.cli, "erase", user, "--grace", "soon")
    assert result.returncode != 0 and "--grace" in result.stderr
    result = await asyncio.to_thread(server.cli, "erase", user, "--grace", "400")
    assert result.returncode == 1 and "grace period" in result.stderr
    result = await asyncio.to_thread(server.cli, "erase", user, "--cancel")
    assert result.returncode == 1
    assert await can_log_in(server, user)


@pytest.mark.timeout(180)  # four CLI runs (each starts the modules) and a restart
async def test_grace_period_disables_at_once_and_survives_a_restart(server: XmppdServer) -> None:
    later = await new_account(server, "later")
    soon = await new_account(server, "soon")
    for user in (later, soon):
        async with Slix(server, user, PASSWORD) as client:
            await client.xmpp.update_roster("someone@localhost", name="S")

    result = await asyncio.to_thread(server.cli, "erase", later, "--grace", "1")
    assert result.returncode == 0 and "disabled" in result.stdout, result.stderr
    result = await asyncio.to_thread(server.cli, "erase", soon, "--grace", "3s")
    assert result.returncode == 0, result.stderr
    assert not await can_log_in(server, later)
    assert not await can_log_in(server, soon)
    assert (await user_rows(server, later.split("@")[0]))["mod_roster__items"] == 1

    restart(server)  # the schedule lives in the database, not in a process

    soon_local = soon.split("@")[0]

    async def rows_of_soon() -> set[int]:
        return set((await user_rows(server, soon_local)).values())

    await until_equal(rows_of_soon, {0}, timeout=30)
    later_rows = await user_rows(server, later.split("@")[0])
    assert later_rows["mod_roster__items"] == 1 and later_rows["xmppd_accounts"] == 1
    assert not await can_log_in(server, later)


async def test_a_pending_erasure_can_be_cancelled(server: XmppdServer) -> None:
    later = await new_account(server, "undecided")
    result = await asyncio.to_thread(server.cli, "erase", later, "--grace", "1")
    assert result.returncode == 0, result.stderr
    assert not await can_log_in(server, later)
    # Changing one's mind: cancel, then a new password enables the account again.
    result = await asyncio.to_thread(server.cli, "erase", later, "--cancel")
    assert result.returncode == 0, result.stderr
    result = await asyncio.to_thread(server.cli, "passwd", later, "--password", "new-pw-1")
    assert result.returncode == 0, result.stderr
    assert await can_log_in(server, later, "new-pw-1")


# ----------------------------------------------------------------------------- retention

DAY_IDS = (86_400 * 1000) << 20
"""An archive id is the time in ms shifted left by 20: this many ids per day."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def retention_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    mam = {"retention": "30d", "retention_by_user": {"short": "1d", "keeper": "forever"}}
    modules = {**DEFAULT_TEST_MODULES, "mam": mam}
    tmp = tmp_path_factory.mktemp(f"retention-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules, http=True) as srv:
        yield srv


async def age_rows(server: XmppdServer, username: str, days: float, limit: int) -> None:
    """Make ``limit`` of ``username``'s archive rows ``days`` older (ids carry the time)."""
    engine = create_async_engine(server.storage_url)
    try:
        async with engine.begin() as conn:
            ids = (
                await conn.execute(
                    sa.text(
                        "SELECT id FROM mod_mam__archive WHERE username = :u ORDER BY id LIMIT :n"
                    ),
                    {"u": username, "n": limit},
                )
            ).scalars()
            for archive_id in list(ids):
                await conn.execute(
                    sa.text(
                        "UPDATE mod_mam__archive SET id = :new, stamp = stamp - :us "
                        "WHERE username = :u AND id = :old"
                    ),
                    {
                        "new": archive_id - int(days * DAY_IDS),
                        "us": int(days * 86_400e6),
                        "u": username,
                        "old": archive_id,
                    },
                )
    finally:
        await engine.dispose()


async def archive_ages(server: XmppdServer, username: str) -> list[int]:
    """Age in whole days of each of ``username``'s archive rows."""
    engine = create_async_engine(server.storage_url)
    try:
        async with engine.connect() as conn:
            ids = (
                await conn.execute(
                    sa.text("SELECT id FROM mod_mam__archive WHERE username = :u"),
                    {"u": username},
                )
            ).scalars()
            now_ms = int(time.time() * 1000)
            return sorted((now_ms - (i >> 20)) // 86_400_000 for i in ids)
    finally:
        await engine.dispose()


async def test_retention_deletes_old_rows_only(retention_server: XmppdServer) -> None:
    server = retention_server
    for name in ("short", "keeper", "other"):
        await register_account(server, name, PASSWORD)
    async with (
        Slix(server, "short@localhost", PASSWORD) as short,
        Slix(server, "keeper@localhost", PASSWORD) as keeper,
        Slix(server, "other@localhost", PASSWORD) as other,
    ):
        for sender, to, receiver in ((short, "other", other), (keeper, "other", other)):
            for n in range(4):
                sender.xmpp.send_message(mto=f"{to}@localhost", mbody=f"m{n}", mtype="chat")
                await receiver.next_message(lambda m, n=n: m["body"] == f"m{n}")

    async def counts() -> list[int]:
        return [len(await archive_ages(server, u)) for u in ("short", "keeper", "other")]

    await until_equal(counts, [4, 4, 8])

    await age_rows(server, "short", 2, 2)  # past its own 1 day
    await age_rows(server, "keeper", 40, 2)  # past the host's 30 days, but kept forever
    await age_rows(server, "other", 2, 6)  # within the host's 30 days...
    await age_rows(server, "other", 38, 3)  # ...but 3 of them now past it (40 days)
    restart(server)  # retention runs at start-up, then hourly

    async def short_ages() -> list[int]:
        return await archive_ages(server, "short")

    await until_equal(short_ages, [0, 0])
    assert await archive_ages(server, "keeper") == [0, 0, 40, 40]
    assert await archive_ages(server, "other") == [0, 0, 2, 2, 2]

    async def expired_counted() -> bool:
        # The counter moves when the sweep has finished, after the rows it deleted
        # are gone: poll it too (a busy machine showed the rows gone first).
        async with aiohttp.ClientSession() as http, http.get(server.http_url + "/metrics") as r:
            return 'xmppd_mod_mam_archive_expired_total{host="localhost"} 5.0' in await r.text()

    await until_equal(expired_counted, True)
