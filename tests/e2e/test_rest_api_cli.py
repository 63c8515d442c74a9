"""The CLI talks to the running server through its control socket (``xmppd users``
shows who is online, ``xmppd deluser`` ends the user's sessions at once) and works on
the database itself when the server is down; the password policy applies to it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from tests.support.e2e import user_rows
from tests.support.server import running_server
from tests.support.wsclient import WsClient
from xmppd.control import socket_path

pytestmark = pytest.mark.timeout(180)


async def test_cli_through_the_running_server_then_the_database(tmp_path: Path) -> None:
    with running_server(tmp_path / "s", http=True) as srv:

        async def cli(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.to_thread(srv.cli, *args)
            return proc.returncode, proc.stdout, proc.stderr

        sock = socket_path(srv.data_dir)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        for name in ("alice", "bob"):
            code, out, err = await cli("adduser", f"{name}@localhost", "--password", f"pw-{name}")
            assert (code, out.strip()) == (0, f"created {name}@localhost"), err
        code, _, err = await cli("adduser", "carol@localhost", "--password", "abc")
        assert code == 1 and "too short" in err
        code, _, err = await cli("adduser", "alice@localhost", "--password", "pw-again")
        assert code == 1 and "already exists" in err

        alice = await WsClient.connect(srv)
        await alice.login("alice", "pw-alice", resource="desk")
        code, out, _ = await cli("users")
        assert code == 0
        assert out.splitlines() == ["alice@localhost\tonline: desk", "bob@localhost"]
        # The server did it: its audit log names the control socket.
        assert 'action="POST /api/v1/users" target=alice@localhost from=local' in srv.log_text()

        code, out, _ = await cli("passwd", "bob@localhost", "--password", "pw-bob-2")
        assert (code, out.strip()) == (0, "password of bob@localhost changed")
        before = await user_rows(srv, "alice")
        assert sum(before.values()) >= 2, before
        code, out, _ = await cli("deluser", "alice@localhost")
        assert (code, out.strip()) == (0, "deleted alice@localhost")
        await alice.wait_closed(timeout=5)  # at once, not at the next login
        assert alice.stream_error() == "not-authorized"
        await alice.close()
        assert sum((await user_rows(srv, "alice")).values()) == 0
        again = await WsClient.connect(srv)
        with pytest.raises(PermissionError):
            await again.login("alice", "pw-alice")
        await again.close()
        code, _, err = await cli("deluser", "alice@localhost")
        assert code == 1 and "does not exist" in err

    # The server is down: its socket is gone, and the CLI uses the database.
    assert not sock.exists()
    code, out, _ = await cli("users")
    assert (code, out.splitlines()) == (0, ["bob@localhost"])
    code, out, _ = await cli("adduser", "dave@localhost", "--password", "pw-dave")
    assert code == 0
    code, out, _ = await cli("deluser", "bob@localhost")
    assert (code, out.strip()) == (0, "deleted bob@localhost")
    code, out, _ = await cli("users")
    assert out.splitlines() == ["dave@localhost"]
    code, _, err = await cli("passwd", "dave@localhost", "--password", "ab")
    assert code == 1 and "too short" in err
