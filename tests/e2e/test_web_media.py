"""Pictures, videos, location and nickname between real clients (slixmpp): a picture
uploaded through XEP-0363 and shared as an XEP-0066 out-of-band URL, in a chat and in a
room, downloads byte-identical; a 50 MB video downloads whole and seeks; user location
(XEP-0080) and user nickname (XEP-0172) published through PEP reach a subscribed
contact that asked for them (+notify)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from slixmpp import JID as SlixJID

from tests.support.clients import Slix
from tests.support.e2e import (
    ALL_PLUGINS,
    PASSWORD,
    manual_subscriptions,
    new_account,
    online,
    subscribe,
    take,
)
from tests.support.muc import new_room
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server

UPLOADER = ("xep_0030", "xep_0363", "xep_0066", "xep_0045", "xep_0004")
VIEWER = ("xep_0030", "xep_0066", "xep_0045", "xep_0004")
PEP_PLUGINS = (*ALL_PLUGINS, "xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0080", "xep_0172")


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "pep": {}, "http_upload": {}}
    with running_server(tmp_path_factory.mktemp("media"), http=True, modules=modules) as srv:
        yield srv


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200, url
        assert r.headers["Content-Type"] == "image/jpeg"
        return await r.read()


def oob_url(message: Any) -> str:
    return str(message["oob"]["url"])


async def test_a_picture_is_shared_by_url_in_a_chat_and_in_a_room(
    media_server: XmppdServer,
) -> None:
    alice_jid = await new_account(media_server, "photographer")
    bob_jid = await new_account(media_server, "viewer")
    alice = await online(media_server, alice_jid, plugins=UPLOADER)
    bob = await online(media_server, bob_jid, plugins=VIEWER)
    try:
        picture = os.urandom(700 * 1024)
        url = await alice.xmpp.plugin["xep_0363"].upload_file(
            "sunset.jpg",
            size=len(picture),
            content_type="image/jpeg",
            input_file=io.BytesIO(picture),
        )
        # 1:1 chat: the body and the out-of-band data carry the URL (XEP-0066 §3).
        msg = alice.xmpp.make_message(mto=SlixJID(bob_jid), mbody=url, mtype="chat")
        msg["oob"]["url"] = url
        msg["oob"]["desc"] = "sunset"
        msg.send()
        got = await take(bob.messages, lambda m: bool(oob_url(m)))
        assert got["from"].bare == alice_jid
        assert oob_url(got) == url and got["body"] == url
        assert await download(oob_url(got)) == picture

        # The same in a room.
        room = SlixJID(new_room(media_server, "photos"))
        a_muc, b_muc = alice.xmpp.plugin["xep_0045"], bob.xmpp.plugin["xep_0045"]
        await a_muc.join_muc_wait(room, "alice", maxstanzas=0, timeout=10)
        form = await a_muc.get_room_config(room)
        form["type"] = "submit"
        await a_muc.set_room_config(room, form)
        await b_muc.join_muc_wait(room, "bob", maxstanzas=0, timeout=10)
        second = os.urandom(300 * 1024)
        room_url = await alice.xmpp.plugin["xep_0363"].upload_file(
            "second.jpg",
            size=len(second),
            content_type="image/jpeg",
            input_file=io.BytesIO(second),
        )
        msg = alice.xmpp.make_message(mto=room, mbody=room_url, mtype="groupchat")
        msg["oob"]["url"] = room_url
        msg.send()
        got = await take(
            bob.messages, lambda m: m["type"] == "groupchat" and oob_url(m) == room_url
        )
        assert str(got["from"]) == f"{room}/alice"
        assert await download(oob_url(got)) == second
    finally:
        await alice.stop()
        await bob.stop()


async def test_location_and_nickname_reach_a_subscribed_contact(
    media_server: XmppdServer,
) -> None:
    o = await new_account(media_server, "traveller")
    c = await new_account(media_server, "follower")
    owner = await online(media_server, o, plugins=PEP_PLUGINS)
    follower = await online(media_server, c)
    await subscribe(follower, owner)
    await follower.stop()
    listener: Slix | None = None
    try:
        await owner.xmpp.plugin["xep_0080"].publish_location(
            lat=48.8566, lon=2.3522, locality="Paris", country="France"
        )
        await owner.xmpp.plugin["xep_0172"].publish_nick("Ally")
        # The contact comes online with caps that ask for geoloc+notify and nick+notify:
        # it gets the last items, then each new one.
        listener = manual_subscriptions(
            Slix(media_server, c, PASSWORD, plugins=PEP_PLUGINS, initial_presence=False)
        )
        locations: asyncio.Queue[Any] = asyncio.Queue()
        nicks: asyncio.Queue[Any] = asyncio.Queue()
        listener.xmpp.add_event_handler("user_location_publish", locations.put_nowait)
        listener.xmpp.add_event_handler("user_nick_publish", nicks.put_nowait)
        await listener.start()
        listener.xmpp.send_presence()
        where = await take(locations, lambda m: True, 20)
        assert where["from"] == o
        geoloc = where["pubsub_event"]["items"]["item"]["geoloc"]
        assert (float(geoloc["lat"]), float(geoloc["lon"])) == (48.8566, 2.3522)
        assert geoloc["locality"] == "Paris"
        nick = await take(nicks, lambda m: True, 20)
        assert nick["from"] == o
        assert nick["pubsub_event"]["items"]["item"]["nick"]["nick"] == "Ally"
        await owner.xmpp.plugin["xep_0172"].publish_nick("Ally on the road")
        renamed = await take(nicks, lambda m: True, 20)
        assert renamed["pubsub_event"]["items"]["item"]["nick"]["nick"] == "Ally on the road"
        await owner.xmpp.plugin["xep_0080"].publish_location(
            lat=45.764, lon=4.8357, locality="Lyon"
        )
        moved = await take(locations, lambda m: True, 20)
        assert moved["pubsub_event"]["items"]["item"]["geoloc"]["locality"] == "Lyon"
    finally:
        await owner.stop()
        if listener is not None:
            await listener.stop()


async def test_a_50_mb_video_downloads_whole_and_seeks(media_server: XmppdServer) -> None:
    owner = await new_account(media_server, "filmmaker")
    video = os.urandom(50 * 1024 * 1024)
    client = await online(media_server, owner, plugins=UPLOADER)
    try:
        url = await client.xmpp.plugin["xep_0363"].upload_file(
            "holiday.mp4", size=len(video), content_type="video/mp4", input_file=io.BytesIO(video)
        )
    finally:
        await client.stop()
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "video/mp4"
            assert r.headers["Accept-Ranges"] == "bytes"
            digest = hashlib.sha256()
            async for chunk in r.content.iter_chunked(1024 * 1024):
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(video).digest()
        # Seeking near the end, as a video player does.
        start = len(video) - 3_000_000
        async with http.get(url, headers={"Range": f"bytes={start}-"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes {start}-{len(video) - 1}/{len(video)}"
            assert await r.read() == video[start:]
