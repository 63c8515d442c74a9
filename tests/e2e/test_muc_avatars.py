"""Room avatars (XEP-0486, MUC Avatars): an owner publishes the room's vcard-temp,
everyone in the room hears of the change (status 104 and the room's bare-JID presence
with the avatar hash), the hash is in the room's disco#info, anyone may fetch the
vCard, only owners may set it, an empty vCard removes it, and a persistent room keeps
its avatar across a restart. Raw XML clients, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.e2e import PASSWORD
from tests.support.muc import DISCO_INFO, codes, create_room, join, user_in_room
from tests.support.server import running_server
from tests.support.xmlclient import XmlClient, error_condition, tag

VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # stands in for a small PNG
IMAGE_HASH = hashlib.sha1(IMAGE).hexdigest()


def vcard_with_photo(image: bytes = IMAGE) -> str:
    data = base64.b64encode(image).decode()
    return (
        f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE>"
        f"<BINVAL>{data[:60]}\n{data[60:]}</BINVAL></PHOTO></vCard>"
    )


async def avatar_hashes(client: XmlClient, room: str) -> list[str]:
    info = await client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
    assert info.get("type") == "result"
    features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    assert VCARD in features
    for field in info.iter("{jabber:x:data}field"):
        if field.get("var") == "muc#roominfo_avatarhash":
            return [v.text or "" for v in field.iter("{jabber:x:data}value")]
    return []


def room_presence(room: str) -> object:
    def match(el: object) -> bool:
        return (
            getattr(el, "tag", None) == tag("presence")
            and el.get("from") == room  # type: ignore[attr-defined]
            and el.find(f"{{{UPDATE}}}x") is not None  # type: ignore[attr-defined]
        )

    return match


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_owner_publishes_a_room_avatar_that_survives_a_restart(
    tmp_path: Path, backend: str
) -> None:
    """(A persistent room's vCard is read from the database, so the PostgreSQL run
    checks its storage there; the restart is on SQLite, where the test harness keeps
    the database between two starts.)"""
    with running_server(tmp_path, backend=backend) as server:
        owner, room, _ = await create_room(server, fields={"muc#roomconfig_persistentroom": "1"})
        guest, _, _ = await user_in_room(server, room, "guest")
        try:
            assert await avatar_hashes(guest, room) == []
            empty = await guest.iq("get", f"<vCard xmlns='{VCARD}'/>", to=room)
            assert empty.get("type") == "result"
            assert len(empty.find(f"{{{VCARD}}}vCard")) == 0  # type: ignore[arg-type]

            # A participant may not set it.
            refused = await guest.iq("set", vcard_with_photo(), to=room)
            assert error_condition(refused) == "forbidden"

            reply = await owner.iq("set", vcard_with_photo(), to=room)
            assert reply.get("type") == "result"
            # Everyone in the room hears of it: status 104, and the room's presence.
            notice = await guest.expect(lambda el: el.tag == tag("message") and "104" in codes(el))
            assert notice.get("from") == room
            presence = await guest.expect(room_presence(room))  # type: ignore[arg-type]
            assert presence.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH

            assert await avatar_hashes(guest, room) == [IMAGE_HASH]
            got = await guest.iq("get", f"<vCard xmlns='{VCARD}'/>", to=room)
            binval = got.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL")
            assert binval is not None
            assert base64.b64decode("".join(binval.split())) == IMAGE
        finally:
            await guest.close()
            await owner.close()
    if backend != "sqlite":
        return
    with running_server(tmp_path) as server:
        await register_account(server, "late", PASSWORD)
        late = await XmlClient.login(server, f"late@{server.domain}", PASSWORD, resource="r")
        try:
            assert await avatar_hashes(late, room) == [IMAGE_HASH]
            # A joining occupant gets the room's avatar presence too.
            await join(late, room, "late")
            presence = await late.expect(room_presence(room))  # type: ignore[arg-type]
            assert presence.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH
        finally:
            await late.close()


async def test_an_empty_vcard_removes_the_avatar_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path) as server:
        owner, room, _ = await create_room(server)  # a temporary room: kept in memory
        try:
            assert (await owner.iq("set", vcard_with_photo(), to=room)).get("type") == "result"
            first = await owner.expect(room_presence(room))  # type: ignore[arg-type]
            assert first.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH
            assert await avatar_hashes(owner, room) == [IMAGE_HASH]
            bad = await owner.iq(
                "set",
                f"<vCard xmlns='{VCARD}'><PHOTO><BINVAL>not base64!</BINVAL></PHOTO></vCard>",
                to=room,
            )
            assert error_condition(bad) == "bad-request"
            huge = await owner.iq("set", vcard_with_photo(b"x" * 120_000), to=room)
            assert error_condition(huge) == "not-acceptable"
            assert await avatar_hashes(owner, room) == [IMAGE_HASH]  # unchanged

            removed = await owner.iq("set", f"<vCard xmlns='{VCARD}'/>", to=room)
            assert removed.get("type") == "result"
            presence = await owner.expect(room_presence(room))  # type: ignore[arg-type]
            assert presence.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") in (None, "")
            assert await avatar_hashes(owner, room) == []
        finally:
            await owner.close()
