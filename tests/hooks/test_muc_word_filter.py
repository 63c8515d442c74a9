"""hooks/muc_word_filter.py: a hook file on the MUC's groupchat fold masks or refuses
words in room messages (real server, raw streams)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.muc import create_room, groupchat, next_groupchat, user_in_room
from tests.support.server import XmppdServer, running_server
from tests.support.xmlclient import error_condition


@pytest.fixture(scope="module", params=["mask", "refuse"])
def filtered_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    options = {"patterns": ["(?i)darn"], "action": request.param}
    with running_server(
        tmp_path_factory.mktemp("mucwf"), hooks={"muc_word_filter": options}
    ) as srv:
        srv.action = request.param  # type: ignore[attr-defined]
        yield srv


async def test_room_words_are_masked_or_refused(filtered_server: XmppdServer) -> None:
    owner, room, _ = await create_room(filtered_server)
    bob, _, _ = await user_in_room(filtered_server, room, "bob")
    try:
        bob.send(
            f"<message to='{room}' type='groupchat' id='w1'><body>Darn it, again</body></message>"
        )
        if filtered_server.action == "mask":  # type: ignore[attr-defined]
            for client in (owner, bob):
                await next_groupchat(client, room, "**** it, again")
        else:
            refusal = await bob.expect(lambda el: el.get("id") == "w1")
            assert error_condition(refusal) == "policy-violation"
        await groupchat(bob, room, "all clean")
        got = await next_groupchat(owner, room, "all clean")  # the room goes on
        assert got.get("from") == f"{room}/bob"
        # In refuse mode the filtered message never reached the owner before this one.
        assert not owner.pending(lambda el: "it, again" in (el.findtext("{*}body") or ""))
    finally:
        await owner.close()
        await bob.close()
