"""Accounts without a client (the xmppd CLI), and that deleting one deletes all its data."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.clients import AuthFailed, Slix
from tests.support.e2e import user_rows
from tests.support.server import XmppdServer


async def cli(server: XmppdServer, *args: str, input: str | None = None) -> tuple[int, str]:
    result = await asyncio.to_thread(server.cli, *args, input=input)
    return result.returncode, result.stdout + result.stderr


async def rows_mentioning(server: XmppdServer, username: str) -> dict[str, int]:
    """Rows in every table that has a username column, for this user on this host."""
    return await user_rows(server, username)


async def test_cli_account_lifecycle(server: XmppdServer) -> None:
    code, out = await cli(server, "adduser", "carol@localhost", "--password", "first-pw")
    assert code == 0, out
    code, out = await cli(server, "adduser", "carol@localhost", "--password", "again")
    assert code == 1 and "already exists" in out
    code, out = await cli(server, "users")
    assert "carol@localhost" in out.split()
    async with Slix(server, "carol@localhost", "first-pw"):
        pass
    code, out = await cli(server, "passwd", "carol@localhost", input="second-pw\n")
    assert code == 0, out
    with pytest.raises(AuthFailed):
        await Slix(server, "carol@localhost", "first-pw").start()
    async with Slix(server, "carol@localhost", "second-pw"):
        pass


async def test_bad_jid_and_unknown_host_are_refused(server: XmppdServer) -> None:
    code, out = await cli(server, "adduser", "not a jid@@", "--password", "x")
    assert code != 0 and "invalid JID" in out
    code, out = await cli(server, "adduser", "dave@elsewhere.example", "--password", "x")
    assert code != 0 and "not a host of this server" in out


async def test_deleting_an_account_deletes_all_its_data(server: XmppdServer) -> None:
    code, out = await cli(server, "adduser", "erin@localhost", "--password", "erin-pw")
    assert code == 0, out
    code, out = await cli(server, "adduser", "frank@localhost", "--password", "frank-pw")
    assert code == 0, out
    async with Slix(server, "erin@localhost", "erin-pw") as erin:
        await erin.xmpp.update_roster("frank@localhost", name="Frank")
        erin.xmpp.send_presence_subscription(pto="frank@localhost")
        await erin.roster_pushes.get()
    # Erin went offline: her last-seen time is stored too.
    before = await rows_mentioning(server, "erin")
    assert sum(before.values()) >= 3, before
    code, out = await cli(server, "deluser", "erin@localhost")
    assert code == 0, out
    after = await rows_mentioning(server, "erin")
    assert after and all(n == 0 for n in after.values()), after
    with pytest.raises(AuthFailed):
        await Slix(server, "erin@localhost", "erin-pw").start()
