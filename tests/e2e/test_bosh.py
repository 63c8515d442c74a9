"""BOSH (XEP-0124 / XEP-0206) at /http-bind: a session that outlives its HTTP
requests, driving the same client stream as TCP; request ids in order, held requests,
wait, polling, terminate, and the error conditions, over raw HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.boshclient import (
    CLIENT,
    HTTPBIND,
    SASL,
    STREAMS,
    XBOSH,
    BoshClient,
    body,
)
from tests.support.clients import register_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient, tag

SM = "urn:xmpp:sm:3"


@pytest.fixture(scope="module")
def bosh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    extra = '[http]\nallowed_origins = ["https://web.example"]\nbosh_polling = "10s"\n'
    modules = {**DEFAULT_TEST_MODULES, "offline": {}}
    with running_server(
        tmp_path_factory.mktemp("bosh"), http=True, extra=extra, modules=modules
    ) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(server: XmppdServer, http: aiohttp.ClientSession) -> BoshClient:
    return BoshClient(http, server.http_url + "/http-bind")


async def test_session_creation_says_the_session_parameters(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    bosh = client(bosh_server, http)
    created = await bosh.create(wait=30, hold=3)
    assert created.tag == f"{{{HTTPBIND}}}body"
    assert created.get("sid")
    assert created.get("wait") == "30"
    assert created.get("hold") == "1"  # at most http.bosh_max_hold
    assert created.get("requests") == "2"
    assert created.get("inactivity") == "60" and created.get("polling") == "10"
    assert created.get("from") == "localhost"
    assert created.get(f"{{{XBOSH}}}version") == "1.0"
    features = await bosh.features(created)
    mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    assert "PLAIN" in mechanisms  # loopback counts as secure
    response = await bosh.send(type="terminate")
    assert response.get("type") == "terminate" and response.get("condition") is None


async def test_a_bosh_client_logs_in_and_chats_with_a_tcp_client(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(bosh_server, "boshann", "pw-ann")
    await register_account(bosh_server, "boshben", "pw-ben")
    bosh = client(bosh_server, http)
    jid = await bosh.login("boshann", "pw-ann", resource="web")
    assert jid == "boshann@localhost/web"
    async with await XmlClient.login(bosh_server, "boshben@localhost", "pw-ben") as ben:
        # An empty request is held until something arrives for the session.
        held = asyncio.create_task(bosh.send())
        ben.send(f"<message to='{jid}' type='chat'><body>over tcp</body></message>")
        response = await held
        (message,) = [el for el in response if el.tag == f"{{{CLIENT}}}message"]
        assert message.findtext(f"{{{CLIENT}}}body") == "over tcp"
        await bosh.send(
            f"<message xmlns='{CLIENT}' to='{ben.jid}' type='chat'><body>over bosh</body></message>"
        )
        got = await ben.expect(lambda el: el.tag == tag("message"))
        assert got.findtext(tag("body")) == "over bosh" and got.get("from") == jid
    end = await bosh.send(type="terminate")
    assert end.get("type") == "terminate"
    # The session is gone.
    gone = await bosh.send()
    assert (gone.get("type"), gone.get("condition")) == ("terminate", "item-not-found")


async def test_an_empty_request_is_answered_after_wait(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    bosh = client(bosh_server, http)
    created = await bosh.create(wait=1)
    await bosh.features(created)
    response = await bosh.send()
    assert response.get("type") is None and len(response) == 0


async def test_request_ids_are_handled_in_order(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(bosh_server, "boshorder", "pw-order")
    bosh = client(bosh_server, http)
    await bosh.login("boshorder", "pw-order")
    first, second = bosh.rid + 1, bosh.rid + 2
    bosh.rid = second
    ping = "<iq xmlns='jabber:client' type='get' id='{}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    # The second request arrives first: it waits for the first.
    later = asyncio.create_task(bosh.post(body(second, bosh.sid, ping.format("two"))))
    earlier = asyncio.create_task(bosh.post(body(first, bosh.sid, ping.format("one"))))
    answered = [el.get("id") for r in await asyncio.gather(earlier, later) for el in r]
    for wanted in ("one", "two"):  # an answer may come in a later response
        if wanted not in answered:
            await bosh.until(lambda el, w=wanted: el.get("id") == w)  # type: ignore[misc]
            answered.append(wanted)
    assert answered.index("one") < answered.index("two")
    # A lost response is sent again for the same rid.
    again = await bosh.post(body(second, bosh.sid))
    assert again.get("type") != "terminate"
    # A rid beyond the window ends the session.
    beyond = await bosh.post(body(bosh.rid + 10, bosh.sid))
    assert (beyond.get("type"), beyond.get("condition")) == ("terminate", "item-not-found")


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        ("not xml at all", "bad-request"),
        (f"<body xmlns='{HTTPBIND}' to='localhost' wait='5' hold='1'/>", "bad-request"),  # no rid
        (f"<body xmlns='{HTTPBIND}' rid='1' sid='nope'/>", "item-not-found"),
        (
            f"<body xmlns='{HTTPBIND}' rid='1' to='elsewhere.example' wait='5' hold='1'/>",
            "host-unknown",
        ),
        (
            "<!DOCTYPE body []><body xmlns='http://jabber.org/protocol/httpbind' rid='1'/>",
            "bad-request",
        ),
        (f"<other xmlns='{HTTPBIND}' rid='1'/>", "bad-request"),
    ],
)
async def test_bad_requests_get_terminate_conditions(
    bosh_server: XmppdServer, http: aiohttp.ClientSession, data: str, condition: str
) -> None:
    response = await client(bosh_server, http).post(data)
    assert (response.get("type"), response.get("condition")) == ("terminate", condition)


async def test_an_oversize_request_is_refused(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    big = body(1, "x", "x" * (300 * 1024))
    async with http.post(bosh_server.http_url + "/http-bind", data=big.encode()) as r:
        assert r.status == 413


async def test_polling_too_often_is_overactivity(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    bosh = client(bosh_server, http)
    created = await bosh.create(hold=0)
    assert created.get("requests") == "1"  # answered at once: a polling session
    first = await bosh.send()  # an empty poll
    assert first.get("type") != "terminate"
    response = await bosh.send()  # another one at once: closer than polling (10 s)
    assert (response.get("type"), response.get("condition")) == ("terminate", "policy-violation")


async def test_cors_for_allowed_origins(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    url = bosh_server.http_url + "/http-bind"
    headers = {"Origin": "https://web.example", "Access-Control-Request-Method": "POST"}
    async with http.options(url, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://web.example"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    async with http.post(url, data=b"x", headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403


async def test_a_stream_error_ends_the_session_with_remote_stream_error(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    bosh = client(bosh_server, http)
    created = await bosh.create()
    await bosh.features(created)
    response = await bosh.send(
        f"<message xmlns='{CLIENT}' to='x@localhost'><body>early</body></message>"
    )
    if response.get("type") != "terminate":
        response = await bosh.send()
    assert (response.get("type"), response.get("condition")) == ("terminate", "remote-stream-error")
    errors = [el for el in response if el.tag == f"{{{STREAMS}}}error"]
    assert errors and errors[0][0].tag.endswith("not-authorized")


async def test_a_bosh_session_resumes_over_tcp(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(bosh_server, "boshroam", "pw-roam")
    bosh = client(bosh_server, http)
    jid = await bosh.login("boshroam", "pw-roam", resource="roam")
    response = await bosh.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = [el for el in response if el.tag == f"{{{SM}}}enabled"]
    (enabled_el,) = enabled or [await bosh.until(lambda el: el.tag == f"{{{SM}}}enabled")]
    previd = enabled_el.get("id")
    # The browser tab goes away; the same session continues over TCP.
    tcp = await XmlClient.connect(bosh_server)
    try:
        await tcp.authenticate("boshroam", "pw-roam")
        tcp.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        await tcp.expect(lambda el: el.tag == f"{{{SM}}}resumed")
        reply = await tcp.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
        assert reply.get("type") == "result" and reply.get("to") == jid
    finally:
        await tcp.close()
    gone = await bosh.send()
    assert (gone.get("type"), gone.get("condition")) == ("terminate", "item-not-found")


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    extra = '[http]\nbosh_inactivity = "1s"\n'
    with running_server(tmp_path_factory.mktemp("bosh-idle"), http=True, extra=extra) as srv:
        yield srv


async def test_a_session_with_nothing_held_ends_after_inactivity(
    impatient_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(impatient_server, "dozer", "pw-doze")
    async with await XmlClient.login(impatient_server, "dozer@localhost", "pw-doze") as other:
        other.send("<presence/>")
        bosh = client(impatient_server, http)
        created_jid = await bosh.login("dozer", "pw-doze", resource="tab")
        assert bosh.created is not None and bosh.created.get("inactivity") == "1"
        await bosh.send(f"<presence xmlns='{CLIENT}'/>")
        await other.expect(
            lambda el: (
                el.tag == tag("presence")
                and el.get("from") == created_jid
                and el.get("type") is None
            )
        )
        # The client sends nothing more: one second later the session ends, and the
        # user's other resource sees the tab go offline.
        gone = await other.expect(
            lambda el: (
                el.tag == tag("presence")
                and el.get("from") == created_jid
                and el.get("type") == "unavailable"
            )
        )
        assert gone is not None
    late = await bosh.send()
    assert (late.get("type"), late.get("condition")) == ("terminate", "item-not-found")


async def test_bad_input_ends_only_its_own_session(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(bosh_server, "boshcalm", "pw-calm")
    await register_account(bosh_server, "boshwild", "pw-wild")
    calm, wild = client(bosh_server, http), client(bosh_server, http)
    await calm.login("boshcalm", "pw-calm")
    await wild.login("boshwild", "pw-wild")
    # Malformed bodies naming the session: refused (HTTP 200, terminate, bad-request).
    for data in (
        f"<body xmlns='{HTTPBIND}' sid='{wild.sid}' rid='{wild.rid + 1}'><unclosed></body>",
        f"<body xmlns='{HTTPBIND}' sid='{wild.sid}' rid='x{wild.rid + 1}'/>",
        f"<body xmlns='{HTTPBIND}' sid='{wild.sid}' rid='{wild.rid + 1}' pause='soon'/>",
    ):
        response = await wild.post(data)
        assert (response.get("type"), response.get("condition")) == ("terminate", "bad-request")
    # A rid long past (no response kept for it) is item-not-found.
    old = await wild.post(body(wild.rid - 50, wild.sid))
    assert (old.get("type"), old.get("condition")) == ("terminate", "item-not-found")
    # A rid far ahead ends the session; nothing answers on it afterwards.
    ahead = await wild.post(body(wild.rid + 1000, wild.sid))
    assert (ahead.get("type"), ahead.get("condition")) == ("terminate", "item-not-found")
    after = await wild.send()
    assert (after.get("type"), after.get("condition")) == ("terminate", "item-not-found")
    # The other session goes on.
    ping = "<iq xmlns='jabber:client' type='get' id='still' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    response = await calm.send(ping)
    pong = next((el for el in response if el.get("id") == "still"), None)
    if pong is None:
        pong = await calm.until(lambda el: el.get("id") == "still")
    assert pong.get("type") == "result"


async def test_a_bosh_client_gets_its_offline_messages(
    bosh_server: XmppdServer, http: aiohttp.ClientSession
) -> None:
    await register_account(bosh_server, "boshaway", "pw-away")
    await register_account(bosh_server, "boshsender", "pw-send")
    async with await XmlClient.login(bosh_server, "boshsender@localhost", "pw-send") as sender:
        sender.send(
            "<message to='boshaway@localhost' type='chat'><body>while you were out</body></message>"
        )
        await sender.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    bosh = client(bosh_server, http)
    await bosh.login("boshaway", "pw-away")
    response = await bosh.send(f"<presence xmlns='{CLIENT}'/>")
    got = next((el for el in response if el.tag == f"{{{CLIENT}}}message"), None)
    if got is None:
        got = await bosh.until(lambda el: el.tag == f"{{{CLIENT}}}message")
    assert got.findtext(f"{{{CLIENT}}}body") == "while you were out"
    assert got.find("{urn:xmpp:delay}delay") is not None
