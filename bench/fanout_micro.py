"""In-process measure of a room's fan-out: one copy per occupant routed and serialised
one by one (what ``Room._to_all`` did before ``ctx.send_many``) against ``send_many``
(each copy routed and hooked, one serialisation for the room).

Not a benchmark of the whole server (``python -m bench`` is): a real server runs in
this process with real sessions on loopback sockets, one room with ``--occupants``
occupants, and the server-side time of ``--rounds`` fan-outs of one groupchat message
is measured for each way, alternating, best of ``--repeat``. Run:

    .venv/bin/python -m bench.fanout_micro --occupants 200 --rounds 50
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.e2e import PASSWORD, new_account
from tests.support.inprocess import inprocess_server
from tests.support.muc import instant_room, join
from tests.support.server import DEFAULT_TEST_MODULES
from tests.support.xmlclient import XmlClient
from xmppd.stanza import child, copy, element

TYPICAL = {**DEFAULT_TEST_MODULES, "carbons": {}, "mam": {}, "blocklist": {}, "csi": {}}


def groupchat(room: str) -> Any:
    message = element("message", {"type": "groupchat", "from": f"{room}/speaker", "id": "m1"})
    child(message, "body", text="Hello everyone, this is a message of ordinary length.")
    child(
        message, "occupant-id", {"id": "d3ZJbV9x2Qx0Rk1aWl9t"}, namespace="urn:xmpp:occupant-id:0"
    )
    child(
        message,
        "stanza-id",
        {"id": "01HZX8J6Q0C2Y3", "by": room},
        namespace="urn:xmpp:sid:0",
    )
    return message


async def run(occupants: int, rounds: int, repeat: int, modules: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with inprocess_server(Path(tmp), modules=modules) as srv:
            room = f"bench@conference.{srv.domain}"
            clients: list[XmlClient] = []
            try:
                for n in range(occupants):
                    jid = await new_account(srv, "f")
                    client = await XmlClient.login(srv, jid, PASSWORD, resource="r")
                    clients.append(client)
                    await join(client, room, f"n{n}")
                    if n == 0:
                        await instant_room(client, room)
                service = srv.server.hosts[srv.domain].services["muc"]
                target = service.rooms[room.split("@")[0]]
                ctx = target.ctx
                recipients = [s for o in target.occupants.values() for s in o.presences]
                template = groupchat(room)

                async def per_copy() -> None:
                    for session in recipients:
                        stanza = copy(template)
                        stanza.set("to", str(session))
                        await ctx.send(stanza)

                async def once() -> None:
                    await ctx.send_many(template, recipients)

                best = {"per copy (before)": float("inf"), "send_many (after)": float("inf")}
                for _ in range(repeat):
                    for name, fan in (("per copy (before)", per_copy), ("send_many (after)", once)):
                        start = time.perf_counter()
                        for _ in range(rounds):
                            await fan()
                        best[name] = min(best[name], time.perf_counter() - start)
                        await asyncio.sleep(0.2)  # let the clients drain their sockets
                deliveries = rounds * len(recipients)
                for name, took in best.items():
                    print(
                        f"{name:20} {len(recipients)} occupants: "
                        f"{took / deliveries * 1e6:6.2f} µs/delivery, "
                        f"{deliveries / took:9.0f} deliveries/s"
                    )
            finally:
                for client in clients:
                    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occupants", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--modules",
        choices=("test", "typical"),
        default="typical",
        help="test: the test suite's module set; typical: plus carbons, mam, blocklist, csi",
    )
    args = parser.parse_args()
    modules = TYPICAL if args.modules == "typical" else DEFAULT_TEST_MODULES
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.occupants, args.rounds, args.repeat, modules))


if __name__ == "__main__":
    main()
