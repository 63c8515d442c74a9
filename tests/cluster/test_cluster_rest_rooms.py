"""The REST API's room endpoints in a cluster: a request that reaches a node which does
not hold the room acts on the room where it lives (its node, chosen by rendezvous
hashing), so occupants see the changes and the answers describe the real room."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_muc import closing
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.muc import MUC_USER, codes, is_from, user_in_room
from tests.support.server import XmppdServer
from tests.support.xmlclient import tag
from xmppd.cluster.membership import rendezvous_owner

NODES = ("node1", "node2")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path, nodes=2, http=True) as nodes:
        yield nodes


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def room_name_on(node: str) -> str:
    """A room name whose JID rendezvous hashing places on ``node``."""
    for i in range(1000):
        if rendezvous_owner(f"team{i}@conference.localhost", NODES) == node:
            return f"team{i}"
    raise AssertionError("no name found")


class Api:
    """``/api/v1`` of one node with one token."""

    def __init__(self, http: aiohttp.ClientSession, node: XmppdServer, token: str) -> None:
        self.http, self.base, self.token = http, node.http_url + "/api/v1", token

    async def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            data = await response.read()
            return response.status, (await response.json() if data else None)


def admin_token(node: XmppdServer) -> str:
    made = node.cli("token", "create", "groups", "--scope", "rooms")
    assert made.returncode == 0, made.stderr
    found = re.search(r"xat_\S+", made.stdout)
    assert found, made.stdout
    return found.group(0)


async def test_room_endpoints_act_on_the_node_holding_the_room(
    cluster: ClusterNodes, http: aiohttp.ClientSession
) -> None:
    node1, node2 = cluster.nodes
    token = admin_token(node1)
    api1, api2 = Api(http, node1, token), Api(http, node2, token)
    name = room_name_on("node2")
    room = f"{name}@conference.localhost"
    base = f"/hosts/localhost/rooms/{name}"

    # Created through node 1: the room lives on node 2.
    status, info = await api1(
        "POST", "/hosts/localhost/rooms", {"name": name, "settings": {"name": "Team"}}
    )
    assert status == 201, info
    assert info["jid"] == room
    # An occupant joining through node 1 finds the room made (no "new room" 201).
    alice, joined, alice_jid = await user_in_room(node1, room, "alice", prefix="alice")
    async with closing(alice):
        assert "201" not in codes(joined.self_presence)
        assert "110" in codes(joined.self_presence)

        # Occupants asked through node 1: those of the real room.
        status, listed = await api1("GET", base + "/occupants")
        assert status == 200, listed
        assert [(o["nick"], o["jid"]) for o in listed["occupants"]] == [("alice", alice_jid)]

        # A member added through node 1: the occupant is told (XEP-0045 §9.3), and node 2
        # shows the affiliation.
        status, problem = await api1(
            "PUT", f"{base}/affiliations/{alice_jid}", {"affiliation": "member"}
        )
        assert status == 204, problem

        def member_notice(el: Any) -> bool:
            found = el.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
            return (
                el.tag == tag("presence")
                and is_from(room, "alice")(el)  # type: ignore[operator]
                and found is not None
                and found.get("affiliation") == "member"
            )

        await alice.expect(member_notice)
        status, shown = await api2("GET", base)
        assert status == 200
        assert shown["affiliations"] == {alice_jid: "member"}
        assert shown["occupants"] == 1
        status, shown = await api1("GET", base)
        assert shown["occupants"] == 1, "node 1 answered from a copy of its own"

        # Destroyed through node 1: the occupant gets the destroy notice.
        status, _ = await api1("DELETE", base)
        assert status == 204

        def destroyed(el: Any) -> bool:
            return (
                el.tag == tag("presence")
                and el.get("type") == "unavailable"
                and el.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy") is not None
            )

        await alice.expect(destroyed)
    for api in (api1, api2):
        assert (await api("GET", base))[0] == 404
        assert name not in (await api("GET", "/hosts/localhost/rooms"))[1]["rooms"]
    assert "Traceback" not in node1.log_text() + node2.log_text()
