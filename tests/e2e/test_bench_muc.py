"""The group-chat benchmark (``python -m bench muc``) against a real xmppd started by the
bench's own launcher with ``Features(muc=True)``: the generated configuration loads
mod_muc at conference.<domain>, the generator's joins complete on the self-presence, a
nickname in use is refused, and every occupant times each groupchat copy exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.common import PASSWORD
from bench.servers.base import Features, muc_domain
from bench.servers.xmppd import XmppdServer
from bench.xmpp import Connection, MucRecorder, XmppError, login
from tests.support.server import free_port

USERS = ["u0", "u1", "u2"]


class Watched(Connection):
    """A generator connection that signals every read (so the test awaits arrivals)."""

    arrived: asyncio.Event

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.arrived.set()


def test_bench_room_on_xmppd(tmp_path: Path) -> None:
    server = XmppdServer(tmp_path, free_port())
    server.features = Features(muc=True)
    server.configure()
    assert "muc = { lock_new_rooms = false" in server.config_path.read_text()
    server.create_accounts(USERS, PASSWORD)
    server.start()
    try:
        asyncio.run(asyncio.wait_for(_room(server), 30))
    finally:
        server.stop()


async def _room(server: XmppdServer) -> None:
    arrived = asyncio.Event()

    def factory() -> Connection:
        conn = Watched()
        conn.arrived = arrived
        return conn

    room = f"bench3@{muc_domain(server.domain)}".encode()
    conns = [
        await login("127.0.0.1", server.port, server.domain, u, PASSWORD, "b0", factory)
        for u in USERS
    ]
    rec = MucRecorder()
    for conn in conns:
        await conn.join_room(room + b"/" + conn.user)
        conn.tail = b""
        conn.muc_rec = rec
    # u0 and u1 were in the room when the others joined: 2 + 1 join presences reached them.
    while rec.presences < 3:
        arrived.clear()
        await arrived.wait()
    # A second session of u2 asking for u0's nickname is refused (XEP-0045 §7.2.9).
    intruder = await login("127.0.0.1", server.port, server.domain, "u2", PASSWORD, "b1")
    with pytest.raises(XmppError, match="conflict"):
        await intruder.join_room(room + b"/u0")
    intruder.close()
    for i in range(4):
        conns[i % 2].send(
            b"<message type='groupchat' to='"
            + room
            + b"'><body>%d:9:%d</body></message>" % (i, 1_000_000 + i)
        )
    while len(rec.lat.get(9, [])) < 4 * len(conns):
        arrived.clear()
        await arrived.wait()
    assert len(rec.lat[9]) == 12
    assert rec.errors == 0
    for conn in conns:
        conn.close()
