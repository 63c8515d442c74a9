"""The admin REST API (/api/v1) on a real server: bearer tokens stored hashed and
their scopes, users paged, created and deleted (the deleted user's session is closed),
sessions listed, the OpenAPI document, and the ``xmppd token`` commands."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from tests.support.inprocess import inprocess_server
from tests.support.server import write_config
from tests.support.wsclient import WsClient
from xmppd import cli
from xmppd.apitokens import ApiTokens
from xmppd.jid import JID
from xmppd.storage.schema import api_tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_users_and_sessions(tmp_path: Path) -> None:
    async with (
        inprocess_server(tmp_path, http=True) as srv,
        aiohttp.ClientSession() as http,
    ):
        core = srv.server.core
        tokens = ApiTokens(core.db)
        _, reader = await tokens.create("dashboard", "read-only")
        users_token, manager = await tokens.create("provisioning", "users")
        # Only a hash of the secret is stored.
        stored = await core.db.fetch_all(sa.select(api_tokens.c.secret_hash))
        assert len(stored) == 2
        assert all(manager.rsplit("_", 1)[1] not in row.secret_hash for row in stored)

        url = srv.http_url + "/api/v1"
        async with http.get(url + "/users") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(url + "/users", headers=bearer(manager[:-2] + "xx")) as r:
            assert r.status == 401
        new = {"jid": "alice@localhost", "password": "pw-alice"}
        async with http.post(url + "/users", json=new, headers=bearer(reader)) as r:
            assert r.status == 403

        for name in ("carol", "alice", "bob"):
            body = {"jid": f"{name}@localhost", "password": f"pw-{name}"}
            async with http.post(url + "/users", json=body, headers=bearer(manager)) as r:
                assert r.status == 201
                assert (await r.json()) == {"jid": f"{name}@localhost"}
        async with http.post(url + "/users", json=new, headers=bearer(manager)) as r:
            assert r.status == 409
        async with http.post(
            url + "/users",
            json={"jid": "x@elsewhere.example", "password": "long-enough"},
            headers=bearer(manager),
        ) as r:
            assert r.status == 404

        async with http.get(url + "/users?limit=2", headers=bearer(reader)) as r:
            assert r.status == 200
            page = await r.json()
        assert page == {"host": "localhost", "users": ["alice", "bob"], "next": "bob"}
        async with http.get(url + "/users?limit=2&after=bob", headers=bearer(reader)) as r:
            assert (await r.json())["users"] == ["carol"]
            assert (await r.json())["next"] is None

        client = await WsClient.connect(srv)  # type: ignore[arg-type]
        await client.login("alice", "pw-alice", resource="desk")
        async with http.get(url + "/sessions", headers=bearer(reader)) as r:
            sessions = (await r.json())["sessions"]
        assert [s["jid"] for s in sessions] == ["alice@localhost/desk"]

        async with http.delete(url + "/users/alice@localhost", headers=bearer(reader)) as r:
            assert r.status == 403
        async with http.delete(url + "/users/alice@localhost", headers=bearer(manager)) as r:
            assert r.status == 204
        await client.wait_closed()
        assert client.stream_error() == "not-authorized"
        await client.close()
        assert not await core.accounts.exists(JID.parse("alice@localhost"))
        async with http.delete(url + "/users/alice@localhost", headers=bearer(manager)) as r:
            assert r.status == 404
        async with http.get(url + "/sessions", headers=bearer(reader)) as r:
            assert (await r.json())["sessions"] == []

        # A revoked token stops working at once.
        assert await tokens.revoke(users_token.token_id)
        async with http.get(url + "/users", headers=bearer(manager)) as r:
            assert r.status == 401

        async with http.get(srv.http_url + "/api/openapi.json") as r:
            doc = await r.json()
        assert doc["openapi"].startswith("3.")
        assert {"/api/v1/users", "/api/v1/users/{jid}", "/api/v1/sessions"} <= set(doc["paths"])
        assert doc["components"]["schemas"]["NewUser"]["required"] == ["jid", "password"]


def test_token_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "xmppd.toml"
    write_config(
        config,
        data_dir=tmp_path / "data",
        storage_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        starttls_port=0,
        direct_tls_port=0,
        domain="localhost",
        modules={},
    )
    assert cli.main(["-c", str(config), "token", "create", "ci", "--scope", "admin"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("xat_")
    assert cli.main(["-c", str(config), "token", "list"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    token_id, scope, name = line.split("\t")
    assert (scope, name) == ("admin", "ci") and text.startswith(f"xat_{token_id}_")
    assert text.split("_", 2)[2] not in line
    assert cli.main(["-c", str(config), "token", "revoke", token_id]) == 0
    assert cli.main(["-c", str(config), "token", "revoke", token_id]) == 1
    assert cli.main(["-c", str(config), "token", "list"]) == 0
    assert capsys.readouterr().out.strip() == ""


async def test_the_api_page_and_openapi_document(tmp_path: Path) -> None:
    async with (
        inprocess_server(tmp_path, http=True) as srv,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(srv.http_url + "/api") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
        assert "/api/openapi.json" in page and "/hosts/{host}/rooms" in page
        async with http.get(srv.http_url + "/api/v2/users") as r:
            assert r.status == 404
        async with http.get(srv.http_url + "/api/openapi.json") as r:
            doc = await r.json()
        operations = [op for path in doc["paths"].values() for op in path.values()]
        assert len(operations) >= 26
        for op in operations:
            assert {"401", "422"} <= set(op["responses"]), op["operationId"]
            public = op.get("security") == []
            assert public or "403" in op["responses"], op["operationId"]
        assert doc["paths"]["/api/v1/auth/token"]["post"]["security"] == []
