"""The REST API (/api/v1) on a real server (aiohttp on its HTTP listener, WebSocket
clients as the users): every endpoint refuses a missing, wrong or revoked token, a
token of the wrong scope and another host's user; the admin endpoints (users,
sessions, messages, rosters with pushes, stats), user tokens and the /me endpoints,
the password policy, JSON errors and the audit log."""

from __future__ import annotations

import io
import logging
import re
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.e2e import user_rows
from tests.support.inprocess import InProcessServer, inprocess_server
from tests.support.server import DEFAULT_TEST_MODULES
from tests.support.wsclient import WsClient
from xmppd.adminapi import all_routes
from xmppd.adminapi.base import ApiContext
from xmppd.apitokens import MAX_USER_TOKENS, ApiTokens, UserTokens
from xmppd.jid import JID
from xmppd.stanza import Element

pytestmark = pytest.mark.timeout(120)
CLIENT = "jabber:client"
ROSTER = "jabber:iq:roster"

# A valid body for every endpoint that takes one, so that only what a test varies fails.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/users"): {"jid": "newbie@localhost", "password": "long-enough"},
    ("PUT", "/users/{jid}/password"): {"password": "long-enough"},
    ("POST", "/users/{jid}/erasure"): {"grace_days": 1},
    ("POST", "/users/{jid}/tokens"): {"name": "backend"},
    ("POST", "/users/{jid}/messages"): {"body": "hello"},
    ("POST", "/hosts/{host}/announce"): {"body": "maintenance at noon"},
    ("PUT", "/users/{jid}/roster/{contact}"): {"name": "Carol"},
    ("POST", "/auth/token"): {"jid": "bob@localhost", "password": "wrong-one"},
    ("POST", "/me/messages"): {"to": "bob@localhost", "body": "hi"},
    ("PUT", "/me/presence"): {"show": "away"},
    ("POST", "/hosts/{host}/rooms"): {"name": "lobby"},
    ("PATCH", "/hosts/{host}/rooms/{room}"): {"public": False},
    ("PUT", "/hosts/{host}/rooms/{room}/affiliations/{jid}"): {"affiliation": "member"},
}
PARAMS = {
    "jid": "bob@localhost",
    "host": "localhost",
    "resource": "r",
    "contact": "c@x.example",
    "room": "lobby",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def concrete(path: str, **override: str) -> str:
    values = {**PARAMS, **override}
    return "/api/v1" + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


class Api:
    """A small client of /api/v1 with one token."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.http, self.base, self.token = http, base, token

    async def __call__(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = bearer(token or self.token) if (token or self.token) else {}
        async with self.http.request(
            method, self.base + "/api/v1" + path, json=body, headers=headers
        ) as r:
            text = await r.text()
            if text:
                assert r.content_type == "application/json", text
            return r.status, (await r.json()) if text else None


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[InProcessServer]:
    modules = {**DEFAULT_TEST_MODULES, "mam": {"default": "always"}, "offline": {}}
    async with inprocess_server(tmp_path, http=True, modules=modules) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def admin_token(srv: InProcessServer, scope: str = "admin") -> str:
    _, text = await ApiTokens(srv.server.core.db).create(f"test-{scope}", scope)
    return text


async def online(srv: InProcessServer, user: str, resource: str = "desk") -> WsClient:
    client = await WsClient.connect(srv)  # type: ignore[arg-type]
    await client.login(user, f"pw-{user}", resource=resource)
    await client.send_now(f"<presence xmlns='{CLIENT}'/>")
    return client


def is_message(body: str) -> Any:
    def match(el: Element) -> bool:
        return el.tag == f"{{{CLIENT}}}message" and el.findtext(f"{{{CLIENT}}}body") == body

    return match


async def test_every_endpoint_refuses_bad_tokens_scopes_and_foreign_users(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    core = srv.server.core
    await core.accounts.create(JID.parse("bob@localhost"), "pw-bob")
    tokens = ApiTokens(core.db)
    _, admin = await tokens.create("all", "admin")
    _, reader = await tokens.create("reader", "read-only")
    _, rooms = await tokens.create("rooms", "rooms")
    revoked_token, revoked = await tokens.create("gone", "admin")
    assert await tokens.revoke(revoked_token.token_id)
    api = Api(http, srv.http_url, None)
    status, issued = await api("POST", "/users/bob@localhost/tokens", {"name": "app"}, token=admin)
    assert status == 201
    user_token = issued["token"]
    routes = all_routes(ApiContext(core))
    assert len(routes) >= 26
    for route in routes:
        body = BODIES.get((route.method, route.path))
        url = concrete(route.path)
        what = f"{route.method} {route.path}"
        if route.scope == "public":
            continue
        for token in (None, "xat_nothing_here", admin[:-3] + "abc", revoked, "xut_a_b"):
            headers = bearer(token) if token else {}
            async with http.request(
                route.method, srv.http_url + url, json=body, headers=headers
            ) as r:
                assert r.status == 401, (what, token)
                problem = await r.json()
                assert problem["error"] == "unauthorized"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        # The wrong kind or scope of token: 403.
        if route.scope == "user":
            wrong = [admin, reader]
        elif route.scope == "read-only":
            wrong = [user_token]
        else:
            wrong = [user_token, reader] + ([rooms] if route.scope != "rooms" else [])
        for token in wrong:
            status, problem = await api(route.method, url[len("/api/v1") :], body, token=token)
            assert status == 403, (what, status, problem)
            assert problem["error"] == "forbidden"
        # Another host's user, or a malformed one: never found. (Room members may be
        # anyone's accounts: federation.)
        if "{jid}" in route.path and "{room}" not in route.path:
            for foreign in ("bob@elsewhere.example", "bob@localhost/res", "@@", "localhost"):
                path = concrete(route.path, jid=foreign)[len("/api/v1") :]
                status, problem = await api(route.method, path, body, token=admin)
                assert status == 404, (what, foreign, status, problem)
        if "{host}" in route.path:
            path = concrete(route.path, host="elsewhere.example")[len("/api/v1") :]
            status, problem = await api(route.method, path, body, token=admin)
            assert status == 404, (what, status, problem)
    # The user token was issued for bob: it never reads another user's data.
    status, _ = await api("GET", "/users/bob@localhost/roster", token=user_token)
    assert status == 403
    status, me = await api("GET", "/me", token=user_token)
    assert (status, me) == (200, {"jid": "bob@localhost"})
    # Creating a user of another host is refused as well.
    status, _ = await api(
        "POST", "/users", {"jid": "x@elsewhere.example", "password": "long-enough"}, token=admin
    )
    assert status == 404
    assert not await core.accounts.exists(JID.parse("x@elsewhere.example"))


async def test_invalid_bodies_name_the_field_and_the_password_policy_applies(
    srv: InProcessServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    api = Api(http, srv.http_url, await admin_token(srv, "users"))
    status, problem = await api("POST", "/users", {"jid": "a@localhost"})
    assert status == 422 and problem["field"] == "password", problem
    status, problem = await api("POST", "/users", {"jid": "a@localhost", "password": 5})
    assert status == 422 and problem["field"] == "password", problem
    status, problem = await api("POST", "/users", {"jid": "a@localhost", "password": "abc"})
    assert (status, problem["error"], problem["field"]) == (422, "weak-password", "password")
    status, problem = await api("GET", "/users?limit=0")
    assert status == 422 and problem["field"] == "limit", problem
    async with http.post(
        srv.http_url + "/api/v1/users", data=b"{not json", headers=bearer(api.token or "")
    ) as r:
        assert r.status == 422 and (await r.json())["error"] == "invalid-body"
    status, problem = await api("GET", "/users?host=elsewhere.example")
    assert (status, problem["error"]) == (404, "not-found")
    status, problem = await api("GET", "/no/such/thing")
    assert (status, problem["error"]) == (404, "not-found")
    with caplog.at_level(logging.INFO, logger="xmppd.audit"):
        status, _ = await api("POST", "/users", {"jid": "a@localhost", "password": "pw-a-ok"})
    assert status == 201
    [line] = [r.getMessage() for r in caplog.records if r.name == "xmppd.audit"]
    assert re.fullmatch(
        r"audit at=\S+Z token=[0-9a-f]{16} name=test-users scope=users "
        r'action="POST /api/v1/users" target=a@localhost from=127.0.0.1 status=201',
        line,
    ), line
    assert "pw-a-ok" not in caplog.text and (api.token or "")[4:] not in caplog.text


async def test_users_sessions_messages_and_stats(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    core = srv.server.core
    api = Api(http, srv.http_url, await admin_token(srv))
    for name in ("alice", "bob", "carol"):
        status, _ = await api(
            "POST", "/users", {"jid": f"{name}@localhost", "password": f"pw-{name}"}
        )
        assert status == 201
    status, page = await api("GET", "/users?limit=2")
    assert page == {"host": "localhost", "users": ["alice", "bob"], "next": "bob"}
    status, page = await api("GET", "/users?limit=2&after=bob")
    assert page == {"host": "localhost", "users": ["carol"], "next": None}

    desk = await online(srv, "alice", "desk")
    phone = await online(srv, "alice", "phone")
    status, info = await api("GET", "/users/alice@localhost")
    assert status == 200 and info["online"] is True
    assert [s["jid"] for s in info["sessions"]] == ["alice@localhost/desk", "alice@localhost/phone"]
    assert {s["transport"] for s in info["sessions"]} == {"websocket"}
    status, info = await api("GET", "/users/bob@localhost")
    assert (info["online"], info["sessions"]) == (False, [])
    status, _ = await api("GET", "/users/nobody@localhost")
    assert status == 404

    # Messages from the server, and a headline to everyone online.
    status, sent = await api(
        "POST", "/users/alice@localhost/messages", {"body": "from the admin", "type": "chat"}
    )
    assert status == 202
    got = await desk.expect(is_message("from the admin"))
    assert got.get("from") == "localhost" and got.get("type") == "chat"
    status, sent = await api("POST", "/hosts/localhost/announce", {"body": "restart at 5"})
    assert status == 202 and sent["recipients"] == 2
    for client in (desk, phone):
        got = await client.expect(is_message("restart at 5"))
        assert got.get("type") == "headline"

    status, stats = await api("GET", "/stats")
    assert status == 200
    assert stats["sessions"] == 2 and stats["sessions_by_transport"]["websocket"] == 2
    assert stats["hosts"]["localhost"] == {"sessions": 2, "online_users": 1}
    assert stats["stanzas_routed"] > 0 and stats["storage_latency_ms"] > 0
    assert 0 < stats["uptime_seconds"] < 600

    # Kick one session, then all; unknown ones are 404.
    status, _ = await api("DELETE", "/users/alice@localhost/sessions/phone")
    assert status == 204
    await phone.wait_closed()
    assert phone.stream_error() == "policy-violation"
    status, _ = await api("DELETE", "/users/alice@localhost/sessions/phone")
    assert status == 404
    again = await online(srv, "alice", "laptop")
    status, kicked = await api("DELETE", "/users/alice@localhost/sessions")
    assert (status, kicked) == (200, {"closed": 2})
    for client in (desk, again):
        await client.wait_closed()
    status, listing = await api("GET", "/sessions")
    assert listing == {"sessions": []}

    # A new password: the old one fails, the new one works; too short is refused.
    status, problem = await api("PUT", "/users/bob@localhost/password", {"password": "ab"})
    assert status == 422 and problem["error"] == "weak-password"
    status, _ = await api("PUT", "/users/bob@localhost/password", {"password": "new-bob-pw"})
    assert status == 204
    bob = await WsClient.connect(srv)  # type: ignore[arg-type]
    with pytest.raises(PermissionError):
        await bob.login("bob", "pw-bob")
    await bob.close()
    bob = await WsClient.connect(srv)  # type: ignore[arg-type]
    await bob.login("bob", "new-bob-pw")
    await bob.close()
    for client in (desk, phone, again):
        await client.close()
    assert core.sessions.endpoints() == []


async def test_roster_changes_are_pushed_to_online_resources(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    core = srv.server.core
    await core.accounts.create(JID.parse("alice@localhost"), "pw-alice")
    api = Api(http, srv.http_url, await admin_token(srv, "users"))
    alice = await online(srv, "alice")
    await alice.iq("get", f"<query xmlns='{ROSTER}'/>")  # now interested in pushes
    item = {"name": "Carol", "subscription": "both", "groups": ["Friends"]}
    status, entry = await api("PUT", "/users/alice@localhost/roster/carol@example.org", item)
    assert status == 200 and entry["jid"] == "carol@example.org"

    def push(subscription: str) -> Any:
        def match(el: Element) -> bool:
            found = el.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
            return (
                el.get("type") == "set"
                and found is not None
                and found.get("subscription") == subscription
            )

        return match

    pushed = await alice.expect(push("both"))
    assert pushed.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item").get("name") == "Carol"  # type: ignore[union-attr]
    status, roster = await api("GET", "/users/alice@localhost/roster")
    assert roster["items"] == [
        {
            "jid": "carol@example.org",
            "name": "Carol",
            "subscription": "both",
            "ask": False,
            "groups": ["Friends"],
        }
    ]
    status, _ = await api("PUT", "/users/alice@localhost/roster/a@b@c", item)
    assert status == 422
    status, _ = await api("DELETE", "/users/alice@localhost/roster/carol@example.org")
    assert status == 204
    await alice.expect(push("remove"))
    status, _ = await api("DELETE", "/users/alice@localhost/roster/carol@example.org")
    assert status == 404
    status, roster = await api("GET", "/users/alice@localhost/roster")
    assert roster["items"] == []
    await alice.close()


async def test_an_account_holds_a_bounded_number_of_user_tokens(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Each token is a row: past MAX_USER_TOKENS, a new token replaces the oldest, and
    expired ones go when a new one is asked for; every kept token still works."""
    core = srv.server.core
    carol = JID.parse("carol@localhost")
    await core.accounts.create(carol, "pw-carol")
    tokens = UserTokens(core.db)
    await tokens.create(carol, "short-lived", lifetime=0.01)
    issued = [await tokens.create(carol, f"t{i}") for i in range(MAX_USER_TOKENS)]
    anon = Api(http, srv.http_url, None)
    request = {"jid": "carol@localhost", "password": "pw-carol", "name": "one more"}
    status, newest = await anon("POST", "/auth/token", request)
    assert status == 201, newest
    held = await tokens.list(carol)
    assert len(held) == MAX_USER_TOKENS
    names = {t.name for t in held}
    assert "short-lived" not in names and "t0" not in names and "t1" in names
    assert "one more" in names
    for text in (newest["token"], issued[-1][1]):
        status, me = await Api(http, srv.http_url, text)("GET", "/me")
        assert (status, me) == (200, {"jid": "carol@localhost"})
    status, _ = await Api(http, srv.http_url, issued[0][1])("GET", "/me")
    assert status == 401


async def test_user_tokens_and_the_me_endpoints(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    core = srv.server.core
    for name in ("alice", "bob"):
        await core.accounts.create(JID.parse(f"{name}@localhost"), f"pw-{name}")
    admin = Api(http, srv.http_url, await admin_token(srv))
    for a, b in (("alice", "bob"), ("bob", "alice")):
        await admin("PUT", f"/users/{a}@localhost/roster/{b}@localhost", {"subscription": "both"})
    anon = Api(http, srv.http_url, None)

    # A wrong password is throttled like a failed login (same throttle, same slots).
    throttle = srv.server.throttle
    throttle.free_failures = 1
    before = throttle.failures("127.0.0.1")
    status, problem = await anon(
        "POST", "/auth/token", {"jid": "alice@localhost", "password": "guess-1"}
    )
    assert (status, problem["error"]) == (401, "unauthorized")
    started = time.monotonic()
    status, _ = await anon("POST", "/auth/token", {"jid": "alice@localhost", "password": "guess-2"})
    assert status == 401 and time.monotonic() - started >= 0.25
    assert throttle.failures("127.0.0.1") == before + 2
    assert throttle.failures("127.0.0.1", account="alice@localhost") == 2
    status, _ = await anon("POST", "/auth/token", {"jid": "nobody@localhost", "password": "x"})
    assert status == 401
    status, issued = await anon(
        "POST", "/auth/token", {"jid": "alice@localhost", "password": "pw-alice", "name": "app"}
    )
    assert status == 201 and issued["token"].startswith("xut_")
    assert issued["expires_at"] > time.time() + 86400
    me = Api(http, srv.http_url, issued["token"])
    assert await me("GET", "/me") == (200, {"jid": "alice@localhost"})

    bob = await online(srv, "bob")
    status, _ = await me("POST", "/me/messages", {"to": "bob@localhost", "body": "one"})
    assert status == 202
    got = await bob.expect(is_message("one"))
    assert got.get("from") == "alice@localhost"
    await bob.send_now(
        f"<message xmlns='{CLIENT}' to='alice@localhost' type='chat'><body>two</body></message>"
    )
    status, _ = await me("POST", "/me/messages", {"to": "bob@localhost", "body": "three"})
    assert status == 202
    await bob.expect(is_message("three"))
    status, problem = await me("POST", "/me/messages", {"to": "@@", "body": "x"})
    assert status == 422 and problem["field"] == "to"

    # The archive, by peer, paged (the writer flushes before a query).
    bodies: list[str] = []
    after = ""
    while True:
        status, page = await me("GET", f"/me/archive?with=bob@localhost&limit=2{after}")
        assert status == 200, page
        bodies += [m["body"] for m in page["messages"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert bodies == ["one", "two", "three"], bodies
    status, page = await me("GET", "/me/archive?with=nobody@localhost")
    assert page["messages"] == []
    status, page = await me("GET", "/me/archive?start=2100-01-01T00:00:00Z")
    assert page["messages"] == []
    status, _ = await me("GET", "/me/archive?after=999999")
    assert status == 404

    status, roster = await me("GET", "/me/roster")
    assert [i["jid"] for i in roster["items"]] == ["bob@localhost"]
    status, _ = await me("PUT", "/me/presence", {"show": "dnd", "status": "in a meeting"})
    assert status == 204
    presence = await bob.expect(
        lambda el: el.tag == f"{{{CLIENT}}}presence" and el.get("from") == "alice@localhost/api"
    )
    assert presence.findtext(f"{{{CLIENT}}}show") == "dnd"

    # Alice's token reaches only Alice: the admin endpoints are closed to it.
    for method, path in (
        ("GET", "/users/bob@localhost/roster"),
        ("GET", "/users/alice@localhost"),
        ("GET", "/sessions"),
    ):
        status, _ = await me(method, path)
        assert status == 403
    # A password change kills the user's tokens.
    await admin("PUT", "/users/alice@localhost/password", {"password": "changed-pw"})
    status, _ = await me("GET", "/me")
    assert status == 401
    await bob.close()


async def test_user_deleted_through_the_api_while_online(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    core = srv.server.core
    api = Api(http, srv.http_url, await admin_token(srv, "users"))
    for name in ("erin", "frank"):
        await api("POST", "/users", {"jid": f"{name}@localhost", "password": f"pw-{name}"})
    await api("PUT", "/users/erin@localhost/roster/frank@localhost", {"subscription": "both"})
    await api("POST", "/users/erin@localhost/tokens", {"name": "app"})
    erin = await online(srv, "erin")
    await erin.send_now(
        f"<message xmlns='{CLIENT}' to='frank@localhost' type='chat'><body>hi</body></message>"
    )
    await api("POST", "/users/erin@localhost/messages", {"body": "archived"})
    await erin.expect(is_message("archived"))
    before = await user_rows(srv, "erin")  # type: ignore[arg-type]
    assert sum(before.values()) >= 4, before
    status, _ = await api("DELETE", "/users/erin@localhost")
    assert status == 204
    await erin.wait_closed()
    assert erin.stream_error() == "not-authorized"
    await erin.close()
    after = await user_rows(srv, "erin")  # type: ignore[arg-type]
    assert sum(after.values()) == 0, after
    again = await WsClient.connect(srv)  # type: ignore[arg-type]
    with pytest.raises(PermissionError):
        await again.login("erin", "pw-erin")
    await again.close()
    assert await api("GET", "/users/erin@localhost") == (
        404,
        {"error": "not-found", "detail": "no user erin@localhost", "field": None},
    )
    assert sum((await user_rows(srv, "frank")).values()) > 0  # type: ignore[arg-type]
    assert not core.sessions.endpoints()


async def test_rooms_as_groups(srv: InProcessServer, http: aiohttp.ClientSession) -> None:
    core = srv.server.core
    await core.accounts.create(JID.parse("alice@localhost"), "pw-alice")
    api = Api(http, srv.http_url, await admin_token(srv, "rooms"))
    muc = "conference.localhost"
    group = {
        "name": "team",
        "owners": ["alice@localhost"],
        "admins": ["bob@localhost"],
        "members": ["carol@example.org"],
        "settings": {"name": "The team", "members_only": True},
    }
    status, info = await api("POST", "/hosts/localhost/rooms", group)
    assert status == 201, info
    assert info["jid"] == f"team@{muc}" and info["settings"]["persistent"] is True
    assert info["affiliations"] == {
        "alice@localhost": "owner",
        "bob@localhost": "admin",
        "carol@example.org": "member",
    }
    status, problem = await api("POST", "/hosts/localhost/rooms", group)
    assert (status, problem["error"]) == (409, "conflict")
    status, problem = await api(
        "POST", "/hosts/localhost/rooms", {**group, "name": "x", "owners": ["not a jid@@"]}
    )
    assert (status, problem["field"]) == (422, "owners")
    assert await api("GET", "/hosts/localhost/rooms") == (
        200,
        {"service": muc, "rooms": ["team"]},
    )

    alice = await online(srv, "alice")
    await alice.send_now(
        f"<presence xmlns='{CLIENT}' to='team@{muc}/Alice'>"
        "<x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
    await alice.expect(
        lambda el: el.tag == f"{{{CLIENT}}}presence" and el.get("from") == f"team@{muc}/Alice"
    )
    status, occupants = await api("GET", "/hosts/localhost/rooms/team/occupants")
    assert occupants == {
        "occupants": [
            {"nick": "Alice", "jid": "alice@localhost", "role": "moderator", "affiliation": "owner"}
        ]
    }

    # Members in and out, an admin made.
    path = "/hosts/localhost/rooms/team/affiliations"
    assert (await api("PUT", f"{path}/dave@localhost", {"affiliation": "member"}))[0] == 204
    assert (await api("PUT", f"{path}/bob@localhost", {"affiliation": "owner"}))[0] == 204
    assert (await api("DELETE", f"{path}/carol@example.org"))[0] == 204
    assert (await api("DELETE", f"{path}/carol@example.org"))[0] == 404
    status, problem = await api("PUT", f"{path}/erin@localhost", {"affiliation": "king"})
    assert (status, problem["field"]) == (422, "affiliation")
    status, info = await api("GET", "/hosts/localhost/rooms/team")
    assert info["affiliations"] == {
        "alice@localhost": "owner",
        "bob@localhost": "owner",
        "dave@localhost": "member",
    }
    # Configuration: occupants hear of it (status 104).
    status, info = await api("PATCH", "/hosts/localhost/rooms/team", {"public": False})
    assert status == 200 and info["settings"]["public"] is False
    notice = await alice.expect(
        lambda el: (
            el.tag == f"{{{CLIENT}}}message"
            and el.find(".//{http://jabber.org/protocol/muc#user}status[@code='104']") is not None
        )
    )
    assert notice.get("from") == f"team@{muc}"
    status, problem = await api("PATCH", "/hosts/localhost/rooms/team", {"history_length": 10**6})
    assert (status, problem["field"]) == (422, "history_length")

    # Destroyed: the occupant is told, the room is gone.
    assert (await api("DELETE", "/hosts/localhost/rooms/team"))[0] == 204
    gone = await alice.expect(
        lambda el: el.tag == f"{{{CLIENT}}}presence" and el.get("type") == "unavailable"
    )
    assert gone.find(".//{http://jabber.org/protocol/muc#user}destroy") is not None
    assert (await api("GET", "/hosts/localhost/rooms/team"))[0] == 404
    assert (await api("GET", "/hosts/localhost/rooms"))[1]["rooms"] == []
    await alice.close()


async def test_data_requests_export_and_erasure(
    srv: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """GDPR over the API: the export holds what the account stored (XEP-0227 in a
    .tar.gz); an erasure with a grace period disables the account at once and can be
    cancelled; an erasure without one leaves no row."""
    api = Api(http, srv.http_url, await admin_token(srv, "users"))
    assert (await api("POST", "/users", {"jid": "gina@localhost", "password": "pw-gina"}))[0] == 201
    await api("PUT", "/users/gina@localhost/roster/hal@localhost", {"name": "Hal"})
    headers = bearer(api.token or "")
    async with http.get(srv.http_url + "/api/v1/users/gina@localhost/export", headers=headers) as r:
        assert r.status == 200
        assert r.content_type == "application/gzip"
        assert "gina@localhost.tar.gz" in r.headers["Content-Disposition"]
        data = await r.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        document = tar.extractfile("export.xml")
        assert document is not None
        xml = document.read().decode()
    assert "gina" in xml and "hal@localhost" in xml and "Hal" in xml

    gina = await online(srv, "gina")
    status, pending = await api("POST", "/users/gina@localhost/erasure", {"grace_days": 1})
    assert status == 200 and pending["jid"] == "gina@localhost"
    assert abs(pending["erase_at"] - (time.time() + 86400)) < 120
    await gina.wait_closed()  # disabled at once
    await gina.close()
    again = await WsClient.connect(srv)  # type: ignore[arg-type]
    with pytest.raises(PermissionError):
        await again.login("gina", "pw-gina")
    await again.close()
    assert await api("GET", "/users/gina@localhost/erasure") == (200, pending)
    assert (await api("DELETE", "/users/gina@localhost/erasure"))[0] == 204
    status, problem = await api("GET", "/users/gina@localhost/erasure")
    assert status == 404 and problem["error"] == "not-found"

    status, problem = await api("POST", "/users/gina@localhost/erasure", {"grace_days": 400})
    assert status == 422 and problem["field"] == "grace_days"
    status, done = await api("POST", "/users/gina@localhost/erasure", {})
    assert (status, done) == (200, {"jid": "gina@localhost", "erase_at": None})
    rows = await user_rows(srv, "gina")  # type: ignore[arg-type]
    assert sum(rows.values()) == 0, rows
    assert (await api("GET", "/users/gina@localhost"))[0] == 404
