"""XEP-0398 avatar conversion end to end, on SQLite and PostgreSQL, with slixmpp clients:
a PEP avatar (XEP-0084) shows up in the vCard and in the XEP-0153 presence hash, a vCard
photo shows up in PEP with a notification, disabling one side clears the other, the
account advertises ``urn:xmpp:pep-vcard-conversion:0``, oversized avatars are refused
without changing anything, and contacts-only avatars stay out of the public vCard."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from typing import Any, Final

import pytest
from lxml import etree
from slixmpp.exceptions import IqError

from tests.support.blocking import assert_no_crash
from tests.support.clients import Slix
from tests.support.e2e import (
    ALL_PLUGINS,
    befriend,
    new_account,
    online,
    presence,
    settle,
    take,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from xmppd.api.stanza import parse
from xmppd_modules.mod_avatar_conversion import (
    Image,
    chosen_info,
    dimensions,
    sniff_type,
    vcard_photo,
    with_photo,
)

NS_DATA: Final = "urn:xmpp:avatar:data"
NS_METADATA: Final = "urn:xmpp:avatar:metadata"
FEATURE: Final = "urn:xmpp:pep-vcard-conversion:0"
VCARD: Final = "vcard-temp"
UPDATE: Final = "vcard-temp:x:update"
PUBSUB: Final = "http://jabber.org/protocol/pubsub"
EVENT: Final = "http://jabber.org/protocol/pubsub#event"
ERRORS: Final = "http://jabber.org/protocol/pubsub#errors"
PUBLISH_OPTIONS: Final = "http://jabber.org/protocol/pubsub#publish-options"
DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"

VCARD_MAX: Final = 4096
IMAGE_MAX: Final = 2048
MODULES: Final = {
    **DEFAULT_TEST_MODULES,
    "vcard": {"max_size": f"{VCARD_MAX}B"},
    "pep": {},
    "avatar_conversion": {"max_image_size": f"{IMAGE_MAX}B"},
}

PEP_PLUGINS: Final = (*ALL_PLUGINS, "xep_0054", "xep_0060", "xep_0115", "xep_0163", "xep_0084")
"""A client that publishes and follows XEP-0084 avatars (and may edit its vCard), but
does not put XEP-0153 hashes in its presence: what it carries is the server's."""
VCARD_PLUGINS: Final = (*ALL_PLUGINS, "xep_0054", "xep_0153")
"""A client that knows only vCard-based avatars."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    tmp = tmp_path_factory.mktemp(f"xmppd-avatar-{request.param}")
    with running_server(tmp, backend=request.param, modules=MODULES) as srv:
        yield srv
        assert_no_crash(srv)


# ----------------------------------------------------------------------------- helpers


def png(side: int, seed: int) -> bytes:
    """A valid RGB PNG of ``side`` x ``side`` random pixels (about 3·side² bytes)."""
    rnd = random.Random(seed)
    rows = b"".join(b"\x00" + rnd.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


async def pep_client(server: XmppdServer, jid: str) -> tuple[Slix, asyncio.Queue[Any]]:
    """A PEP avatar client, online, and the queue of metadata notifications it gets."""
    client = await online(server, jid, plugins=PEP_PLUGINS)
    events: asyncio.Queue[Any] = asyncio.Queue()
    client.xmpp.add_event_handler("avatar_metadata_publish", events.put_nowait)
    return client, events


async def vcard_client(server: XmppdServer, jid: str) -> Slix:
    return await online(server, jid, plugins=VCARD_PLUGINS)


def open_access(client: Slix) -> Any:
    """Publish-options asking for the open access model (XEP-0398 §8)."""
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS)
    form.add_field(var="pubsub#access_model", value="open")
    return form


async def publish_avatar(client: Slix, image: bytes, side: int, *, open_: bool = True) -> None:
    """XEP-0084 §4.1-4.2: the data item, then the metadata announcing it."""
    avatars = client.xmpp.plugin["xep_0084"]
    options = {"options": open_access(client)} if open_ else {}
    await avatars.publish_avatar(image, timeout=20, **options)
    info = {"id": sha1(image), "type": "image/png", "bytes": len(image)}
    info.update(width=str(side), height=str(side))
    await avatars.publish_avatar_metadata(info, timeout=20, **options)


async def set_vcard(client: Slix, fn: str, image: bytes | None = None, desc: str = "") -> None:
    card = client.xmpp.plugin["xep_0054"].make_vcard()
    card["FN"] = fn
    if desc:
        card["DESC"] = desc
    if image is not None:
        card["PHOTO"]["TYPE"] = "image/png"
        card["PHOTO"]["BINVAL"] = image
    await client.xmpp.plugin["xep_0054"].publish_vcard(card, timeout=20)


async def vcard_of(reader: Slix, owner: str) -> tuple[str | None, bytes | None, str | None]:
    """(FN, photo bytes, photo TYPE) of ``owner``'s vCard, as ``reader`` fetches it."""
    result = await reader.xmpp.plugin["xep_0054"].get_vcard(owner, cached=False, timeout=20)
    card = result.xml.find(f"{{{VCARD}}}vCard")
    assert card is not None
    binval = card.findtext(f"{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL")
    photo = base64.b64decode("".join(binval.split())) if binval else None
    kind = card.findtext(f"{{{VCARD}}}PHOTO/{{{VCARD}}}TYPE")
    return card.findtext(f"{{{VCARD}}}FN"), photo, kind


def photo_in(p: Any) -> str | None:
    """The XEP-0153 photo hash a presence carries ("" for an empty <photo/>)."""
    photo = p.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    return None if photo is None else (photo.text or "")


def hash_from(sender: Any, expected: str) -> Any:
    is_available = presence("available", sender)
    return lambda p: is_available(p) and photo_in(p) == expected


def infos(metadata: Any) -> list[dict[str, str]]:
    """The ``<info/>`` attributes of a ``<metadata/>`` element."""
    return [dict(i.attrib) for i in metadata.iterfind(f"{{{NS_METADATA}}}info")]


def event_metadata(message: Any) -> Any:
    path = f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item/{{{NS_METADATA}}}metadata"
    return message.xml.find(path)


async def current_metadata(reader: Slix, owner: str) -> tuple[str, list[dict[str, str]]]:
    """(item id, infos) of the last item of ``owner``'s metadata node."""
    result = await reader.xmpp.plugin["xep_0060"].get_items(owner, NS_METADATA, timeout=20)
    items = result.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    assert items, "no metadata item"
    metadata = items[-1].find(f"{{{NS_METADATA}}}metadata")
    assert metadata is not None
    return items[-1].get("id", ""), infos(metadata)


async def data_item(reader: Slix, owner: str, item_id: str) -> bytes:
    result = await reader.xmpp.plugin["xep_0084"].retrieve_avatar(owner, item_id, timeout=20)
    text = result.xml.findtext(f".//{{{NS_DATA}}}data")
    assert text, "no avatar data"
    return base64.b64decode("".join(text.split()))


async def refusal(call: Any) -> tuple[str, str | None, str]:
    """(condition, pubsub#errors condition, text) of the IqError the awaitable raises."""
    with pytest.raises(IqError) as caught:
        await call
    iq = caught.value.iq
    app = None
    for el in iq.xml.iter():
        if isinstance(el.tag, str) and el.tag.startswith(f"{{{ERRORS}}}"):
            app = el.tag.split("}", 1)[1]
    return str(iq["error"]["condition"]), app, str(iq["error"]["text"])


async def stop(*clients: Slix) -> None:
    for client in clients:
        await client.stop()


# ----------------------------------------------------------------------------- the helpers


def test_image_headers_give_the_type_and_size() -> None:
    """The metadata's type, width and height come from the image bytes."""
    assert (sniff_type(png(5, seed=0)), dimensions(png(5, seed=0))) == ("image/png", (5, 5))
    gif = b"GIF89a" + struct.pack("<HH", 40, 30) + bytes(10)
    assert (sniff_type(gif), dimensions(gif)) == ("image/gif", (40, 30))
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof0 = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 48, 64) + bytes(12)
    jpeg = b"\xff\xd8" + app0 + sof0
    assert (sniff_type(jpeg), dimensions(jpeg)) == ("image/jpeg", (64, 48))
    webp = b"RIFF" + bytes(4) + b"WEBPVP8 " + bytes(16)
    assert (sniff_type(webp), dimensions(webp)) == ("image/webp", None)
    assert (sniff_type(b"plain text"), dimensions(b"\xff\xd8\xff")) == (None, None)


def test_photo_is_replaced_in_place_and_url_infos_are_skipped() -> None:
    vcard = parse(
        b"<vCard xmlns='vcard-temp'><FN>A</FN><PHOTO><EXTVAL>https://example.org/a.png"
        b"</EXTVAL></PHOTO><NICKNAME>a</NICKNAME></vCard>"
    )
    image = png(4, seed=0)
    changed = with_photo(vcard, Image(image, "image/png"))
    assert [etree.QName(el).localname for el in changed] == ["FN", "PHOTO", "NICKNAME"]
    assert vcard_photo(changed) == Image(image, "image/png")
    removed = with_photo(changed, None)
    assert [etree.QName(el).localname for el in removed] == ["FN", "NICKNAME"]
    metadata = parse(
        f"<metadata xmlns='{NS_METADATA}'><info id='a' url='https://example.org/a.png' "
        "type='image/png' bytes='1'/><info id='b' type='image/png' bytes='1'/></metadata>".encode()
    )
    info = chosen_info(metadata)
    assert info is not None and info.get("id") == "b"
    assert chosen_info(parse(f"<metadata xmlns='{NS_METADATA}'/>".encode())) is None


# ----------------------------------------------------------------------------- PEP to vCard


async def test_pep_avatar_reaches_vcard_and_presence(server: XmppdServer) -> None:
    """XEP-0398 §4.1 and §5: Alice publishes a PEP avatar; Bob, who knows only vCard
    avatars, sees its hash in her presence and its bytes in her vCard (her name kept)."""
    alice_jid, bob_jid = await new_account(server, "pa"), await new_account(server, "pb")
    alice, _ = await pep_client(server, alice_jid)
    bob = await vcard_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        await set_vcard(alice, "Alice")

        image = png(8, seed=1)
        await publish_avatar(alice, image, 8)
        await take(bob.presences, hash_from(alice.xmpp.boundjid, sha1(image)))
        assert await vcard_of(bob, alice_jid) == ("Alice", image, "image/png")

        # Her later presences carry it too; an update element without <photo/> ("not
        # ready") is replaced by the server's, an empty <photo/> ("no avatar") is kept.
        from_alice = presence("available", alice.xmpp.boundjid)
        for show, update, expected in (
            ("away", None, sha1(image)),
            ("xa", "<x xmlns='vcard-temp:x:update'/>", sha1(image)),
            ("dnd", "<x xmlns='vcard-temp:x:update'><photo/></x>", ""),
        ):
            stanza = alice.xmpp.make_presence(pshow=show)
            if update is not None:
                stanza.append(ET.fromstring(update))
            stanza.send()
            seen = await take(bob.presences, from_alice)
            assert (seen["show"], photo_in(seen)) == (show, expected)
    finally:
        await stop(alice, bob)


async def test_only_the_owner_triggers_a_conversion(server: XmppdServer) -> None:
    """Access checks are those of mod_vcard and mod_pep: Bob may neither set Alice's
    vCard nor publish to her avatar nodes, and nothing is copied."""
    alice_jid, bob_jid = await new_account(server, "oa"), await new_account(server, "ob")
    alice, _ = await pep_client(server, alice_jid)
    bob, _ = await pep_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        image = png(8, seed=11)
        await publish_avatar(alice, image, 8)
        mine = await current_metadata(alice, alice_jid)

        forged = png(8, seed=12)
        card = bob.xmpp.plugin["xep_0054"].make_vcard()
        card["PHOTO"]["TYPE"] = "image/png"
        card["PHOTO"]["BINVAL"] = forged
        denied = bob.xmpp.plugin["xep_0054"].publish_vcard(card, jid=alice_jid, timeout=20)
        assert (await refusal(denied))[0] == "forbidden"
        pubsub = bob.xmpp.plugin["xep_0060"]
        data = ET.fromstring(f"<data xmlns='{NS_DATA}'>{base64.b64encode(forged).decode()}</data>")
        denied = pubsub.publish(alice_jid, NS_DATA, id=sha1(forged), payload=data, timeout=20)
        assert (await refusal(denied))[0] == "forbidden"
        meta = ET.fromstring(
            f"<metadata xmlns='{NS_METADATA}'><info id='{sha1(forged)}' type='image/png' "
            f"bytes='{len(forged)}'/></metadata>"
        )
        denied = pubsub.publish(alice_jid, NS_METADATA, id=sha1(forged), payload=meta, timeout=20)
        assert (await refusal(denied))[0] == "forbidden"

        assert await current_metadata(alice, alice_jid) == mine
        assert (await vcard_of(alice, alice_jid))[1] == image
    finally:
        await stop(alice, bob)


async def test_contacts_only_avatar_stays_out_of_the_vcard(server: XmppdServer) -> None:
    """XEP-0398 §8: an avatar published with the 'presence' access model (the default
    here) is not copied into the vCard, which anyone may read."""
    alice_jid, bob_jid = await new_account(server, "ra"), await new_account(server, "rb")
    alice, _ = await pep_client(server, alice_jid)
    bob, _ = await pep_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        image = png(8, seed=2)
        await publish_avatar(alice, image, 8, open_=False)
        assert await data_item(bob, alice_jid, sha1(image)) == image  # contacts see it
        assert await vcard_of(alice, alice_jid) == (None, None, None)
    finally:
        await stop(alice, bob)


# ----------------------------------------------------------------------------- vCard to PEP


async def test_vcard_photo_is_published_to_pep(server: XmppdServer) -> None:
    """XEP-0398 §4.2: Alice, a vCard-only client, sets a photo; Bob, a PEP client, is
    notified of the new metadata and fetches the image; the data node is open."""
    alice_jid, bob_jid = await new_account(server, "va"), await new_account(server, "vb")
    stranger_jid = await new_account(server, "vs")
    alice = await vcard_client(server, alice_jid)
    bob, bob_events = await pep_client(server, bob_jid)
    stranger, stranger_events = await pep_client(server, stranger_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        image = png(9, seed=3)
        await set_vcard(alice, "Alice", image)

        def announces(message: Any) -> bool:
            metadata = event_metadata(message)
            return (
                str(message["from"]) == alice_jid and metadata is not None and bool(infos(metadata))
            )

        event = await take(bob_events, announces, 20)
        expected = {"id": sha1(image), "bytes": str(len(image)), "type": "image/png"}
        assert infos(event_metadata(event)) == [{**expected, "width": "9", "height": "9"}]
        assert await current_metadata(bob, alice_jid) == (sha1(image), infos(event_metadata(event)))
        assert await data_item(bob, alice_jid, sha1(image)) == image
        # Open access model: someone without a subscription may fetch it too, but is not
        # notified (no presence subscription).
        assert await data_item(stranger, alice_jid, sha1(image)) == image
        assert stranger_events.empty()

        # Setting the same photo again (a name change) publishes nothing new.
        await set_vcard(alice, "Alice Liddell", image)
        await settle(alice, bob)
        assert bob_events.empty()
        assert await vcard_of(bob, alice_jid) == ("Alice Liddell", image, "image/png")
    finally:
        await stop(alice, bob, stranger)


async def test_a_copy_does_not_come_back(server: XmppdServer) -> None:
    """No loop: the vCard written from a PEP avatar is not published back to PEP, so
    Bob gets exactly one notification: Alice's own item, as she published it."""
    alice_jid, bob_jid = await new_account(server, "la"), await new_account(server, "lb")
    alice, _ = await pep_client(server, alice_jid)
    bob, bob_events = await pep_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        image = png(7, seed=4)
        await publish_avatar(alice, image, 7)
        event = await take(bob_events, lambda m: event_metadata(m) is not None, 20)
        mine = {"id": sha1(image), "bytes": str(len(image)), "type": "image/png"}
        assert infos(event_metadata(event)) == [{**mine, "width": "7", "height": "7"}]
        await settle(alice, bob)
        assert bob_events.empty()
        assert (await vcard_of(bob, alice_jid))[1] == image
    finally:
        await stop(alice, bob)


# ----------------------------------------------------------------------------- disabling


async def test_disabling_the_pep_avatar_clears_the_vcard_photo(server: XmppdServer) -> None:
    alice_jid, bob_jid = await new_account(server, "da"), await new_account(server, "db")
    alice, _ = await pep_client(server, alice_jid)
    bob = await vcard_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        await set_vcard(alice, "Alice")
        image = png(8, seed=5)
        await publish_avatar(alice, image, 8)
        await take(bob.presences, hash_from(alice.xmpp.boundjid, sha1(image)))

        await alice.xmpp.plugin["xep_0084"].stop(timeout=20)  # an empty <metadata/>
        await take(bob.presences, hash_from(alice.xmpp.boundjid, ""))
        assert await vcard_of(bob, alice_jid) == ("Alice", None, None)
    finally:
        await stop(alice, bob)


async def test_removing_the_vcard_photo_disables_the_pep_avatar(server: XmppdServer) -> None:
    alice_jid, bob_jid = await new_account(server, "ea"), await new_account(server, "eb")
    alice = await vcard_client(server, alice_jid)
    bob, _ = await pep_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        image = png(8, seed=6)
        await set_vcard(alice, "Alice", image)
        assert (await current_metadata(bob, alice_jid))[0] == sha1(image)

        await set_vcard(alice, "Alice")
        assert (await current_metadata(bob, alice_jid))[1] == []
    finally:
        await stop(alice, bob)


# ----------------------------------------------------------------------------- discovery


async def account_features(reader: Slix, account: str) -> set[str]:
    info = await reader.xmpp.plugin["xep_0030"].get_info(jid=account, timeout=20)
    return {f.get("var", "") for f in info.xml.iter(f"{{{DISCO_INFO}}}feature")}


async def test_accounts_advertise_the_conversion(server: XmppdServer) -> None:
    """XEP-0398 §3: the feature is on the account (not on the server)."""
    alice_jid, bob_jid = await new_account(server, "fa"), await new_account(server, "fb")
    alice = await vcard_client(server, alice_jid)
    bob = await vcard_client(server, bob_jid)
    try:
        assert FEATURE in await account_features(alice, alice_jid)
        assert FEATURE in await account_features(bob, alice_jid)
        assert FEATURE not in await account_features(alice, server.domain)
    finally:
        await stop(alice, bob)


def test_no_feature_without_the_module(tmp_path_factory: pytest.TempPathFactory) -> None:
    modules = {**DEFAULT_TEST_MODULES, "vcard": {}, "pep": {}}
    with running_server(tmp_path_factory.mktemp("xmppd-no-avatar"), modules=modules) as srv:

        async def check() -> None:
            jid = await new_account(srv, "nf")
            alice = await vcard_client(srv, jid)
            try:
                features = await account_features(alice, jid)
                assert f"{PUBSUB}#publish" in features and FEATURE not in features
            finally:
                await alice.stop()

        asyncio.run(check())


# ----------------------------------------------------------------------------- limits


async def test_an_avatar_too_big_to_copy_is_kept_and_its_stale_copy_cleared(
    server: XmppdServer,
) -> None:
    """The side the client wrote always takes the change; the copy is skipped when it
    cannot be made, and the other side stops showing the replaced picture."""
    alice_jid, bob_jid = await new_account(server, "za"), await new_account(server, "zb")
    alice, _ = await pep_client(server, alice_jid)
    bob = await vcard_client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        await set_vcard(alice, "Alice")
        small = png(8, seed=7)
        await publish_avatar(alice, small, 8)
        assert await vcard_of(bob, alice_jid) == ("Alice", small, "image/png")

        # A PEP avatar over max_image_size: published, not copied; the vCard drops the
        # small picture it held rather than keep showing it.
        big = png(30, seed=8)
        assert len(big) > IMAGE_MAX
        await publish_avatar(alice, big, 30)
        assert (await current_metadata(alice, alice_jid))[0] == sha1(big)
        assert await vcard_of(bob, alice_jid) == ("Alice", None, None)

        # A vCard photo over max_image_size (the vCard itself is within mod_vcard's
        # limit) is stored; PEP, which did not hold the vCard's picture, is left alone.
        mid = png(28, seed=9)
        assert len(mid) > IMAGE_MAX and len(base64.b64encode(mid)) + 200 < VCARD_MAX
        await set_vcard(alice, "Alice", mid)
        assert await vcard_of(bob, alice_jid) == ("Alice", mid, "image/png")
        assert (await current_metadata(alice, alice_jid))[0] == sha1(big)

        # An avatar under max_image_size that does not fit in the vCard beside the rest:
        # published, and the vCard keeps its own (different) photo.
        fits = png(24, seed=10)
        assert len(fits) <= IMAGE_MAX
        await set_vcard(alice, "Alice", small, desc="x" * 2500)
        assert 2500 + len(base64.b64encode(fits)) > VCARD_MAX
        await publish_avatar(alice, fits, 24)
        assert (await current_metadata(alice, alice_jid))[0] == sha1(fits)
        name, photo, _ = await vcard_of(bob, alice_jid)
        assert name == "Alice" and photo != fits
    finally:
        await stop(alice, bob)
