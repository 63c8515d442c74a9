"""Issue #4's acceptance stories with every piece working together (stream management,
offline storage, the archive, carbons), on SQLite and PostgreSQL.

A phone is cut off mid-conversation (socket closed without ``</stream>``): what is sent
meanwhile arrives after it resumes, exactly once, in order; when it stays away past the
resume timeout, the messages arrive at its next login from offline storage; and the
archive holds every message exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from lxml import etree

from tests.support.clients import Slix, register_account
from tests.support.mam import everything
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, tag

SM = "urn:xmpp:sm:3"
CARBONS = "urn:xmpp:carbons:2"
PASSWORD = "phone-pass"
MODULES = {**DEFAULT_TEST_MODULES, "carbons": {}, "csi": {}, "offline": {}, "mam": {}}
RESUME_TIMEOUT = 2.0
_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp(f"mobile-{request.param}"),
        backend=request.param,
        modules=MODULES,
        extra=f"[c2s]\nresume_timeout = '{RESUME_TIMEOUT}s'\n",
    ) as server:
        yield server


async def new_user(server: XmppdServer) -> str:
    name = f"mob{next(_names)}"
    await register_account(server, name, PASSWORD)
    return f"{name}@{server.domain}"


def is_message(el: Element) -> bool:
    return el.tag == tag("message")


async def receive(client: XmlClient, count: int, timeout: float = 15) -> list[Element]:
    """The next ``count`` messages, plus any that arrive just after (a duplicate would)."""
    got = [await client.expect(is_message, timeout) for _ in range(count)]
    await asyncio.sleep(0.3)
    return got + [await client.expect(is_message) for _ in client.pending(is_message)]


def bodies(messages: list[Element]) -> list[str]:
    return [el.findtext(tag("body")) or "" for el in messages]


async def phone_online(server: XmppdServer, jid: str) -> tuple[XmlClient, str]:
    """A phone with resumable stream management and initial presence; its SM id."""
    phone = await XmlClient.login(server, jid, PASSWORD, resource="phone")
    phone.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await phone.expect(lambda el: el.tag == f"{{{SM}}}enabled")
    phone.send("<presence/>")
    await phone.expect(lambda el: el.tag == tag("presence"))
    return phone, enabled.get("id") or ""


async def resume(server: XmppdServer, jid: str, previd: str, h: int) -> XmlClient:
    phone = await XmlClient.connect(server)
    await phone.authenticate(jid.split("@")[0], PASSWORD)
    phone.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
    await phone.expect(lambda el: el.tag == f"{{{SM}}}resumed")
    return phone


async def test_cut_off_phone_loses_nothing_and_the_archive_has_everything_once(
    srv: XmppdServer,
) -> None:
    phone_jid, friend_jid = await new_user(srv), await new_user(srv)
    phone, previd = await phone_online(srv, phone_jid)
    async with Slix(srv, f"{friend_jid}/pc", PASSWORD) as friend:
        full = f"{phone_jid}/phone"
        friend.xmpp.send_message(mto=full, mbody="m0", mtype="chat")
        assert bodies(await receive(phone, 1)) == ["m0"]
        # The phone acks the presence and m0, then loses signal mid-conversation.
        phone.send(f"<a xmlns='{SM}' h='2'/>")
        await asyncio.sleep(0.2)
        phone.abort()
        for i in (1, 2, 3):
            friend.xmpp.send_message(mto=full, mbody=f"m{i}", mtype="chat")
        await friend.xmpp.plugin["xep_0199"].ping(jid=srv.domain, timeout=10)

        # Back within the timeout: m1..m3 once, in order.
        back = await resume(srv, phone_jid, previd, 2)
        assert bodies(await receive(back, 3)) == ["m1", "m2", "m3"]
        back.send(f"<a xmlns='{SM}' h='5'/>")
        await asyncio.sleep(0.2)
        # Cut off again; this time it stays away past the resume timeout.
        back.abort()
        for i in (4, 5, 6):
            friend.xmpp.send_message(mto=full, mbody=f"m{i}", mtype="chat")
        await friend.xmpp.plugin["xep_0199"].ping(jid=srv.domain, timeout=10)
        await asyncio.sleep(RESUME_TIMEOUT + 1.5)

    # Next login: m4..m6 from offline storage, once, in order, with a delay stamp.
    late = await XmlClient.login(srv, phone_jid, PASSWORD, resource="phone")
    try:
        late.send("<presence/>")
        got = await receive(late, 3)
        assert bodies(got) == ["m4", "m5", "m6"]
        assert all(el.find("{urn:xmpp:delay}delay") is not None for el in got)
        # The archive holds the whole conversation, each message exactly once.
        archived = [item.body for item in await everything(late)]
        assert archived == [f"m{i}" for i in range(7)]
    finally:
        await late.close()
        await phone.close()


async def test_two_resources_see_each_others_messages_and_both_find_them_in_the_archive(
    srv: XmppdServer,
) -> None:
    user, friend_jid = await new_user(srv), await new_user(srv)
    phone = await XmlClient.login(srv, user, PASSWORD, resource="phone")
    try:
        reply = await phone.iq("set", f"<enable xmlns='{CARBONS}'/>", to=None)
        assert reply.get("type") == "result"
        async with (
            Slix(srv, f"{user}/laptop", PASSWORD) as laptop,
            Slix(srv, f"{friend_jid}/pc", PASSWORD) as friend,
        ):
            laptop.xmpp.send_message(mto=friend_jid, mbody="from the laptop", mtype="chat")
            await friend.next_message(lambda m: m["body"] == "from the laptop")
            friend.xmpp.send_message(mto=f"{user}/laptop", mbody="to the laptop", mtype="chat")
            await laptop.next_message(lambda m: m["body"] == "to the laptop")
            copies = await receive(phone, 2)
        kinds = [etree.QName(el[0]).localname for el in copies]
        assert kinds == ["sent", "received"]
        assert [el.findtext(f".//{tag('body')}") for el in copies] == [
            "from the laptop",
            "to the laptop",
        ]
        # Both resources find the whole conversation in the archive.
        for device in (phone, await XmlClient.login(srv, user, PASSWORD, resource="laptop")):
            archived = [item.body for item in await everything(device, {"with": friend_jid})]
            assert archived == ["from the laptop", "to the laptop"]
            await device.close()
    finally:
        await phone.close()
