"""An operator reads the log: one INFO line per login, failed login and session end in
the documented format (docs/admin-guide.md, "Logs and fail2ban"), which the shipped
fail2ban filter and jail (docs/fail2ban/) match with Debian's fail2ban; JSON lines
and a log file when configured; one debug line per stanza; CLI commands print only
their result."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import AuthFailed, Slix
from tests.support.e2e import PASSWORD, new_account, until_equal
from tests.support.server import XmppdServer, running_server, service_unavailable
from tests.support.xmlclient import XmlClient

FAIL2BAN = Path(__file__).parents[2] / "docs" / "fail2ban"
FAILED_ATTEMPTS = 3

LOGIN = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO xmppd\.auth: login: address=127\.0\.0\.1 "
    r"jid=(?P<jid>\S+) mechanism=(?P<mechanism>\S+) transport=tcp$",
    re.M,
)
FAILED = re.compile(
    r"^\S+ INFO xmppd\.auth: login failed: address=127\.0\.0\.1 user=(?P<user>\S+) "
    r"mechanism=PLAIN reason=not-authorized transport=tcp$",
    re.M,
)
ENDED = re.compile(
    r"^\S+ INFO xmppd\.session: session ended: address=127\.0\.0\.1 jid=(?P<jid>\S+) "
    r"reason=(?P<reason>.+) transport=tcp$",
    re.M,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("xmppd-logs")) as srv:
        yield srv


async def fail_logins(server: XmppdServer, jid: str, times: int) -> None:
    for _ in range(times):
        intruder = Slix(server, jid, "wrong password", mechanism="PLAIN")
        with pytest.raises(AuthFailed):
            await intruder.start()
        await intruder.stop()


async def test_logins_failures_and_session_ends_are_logged(server: XmppdServer) -> None:
    jid = await new_account(server, "logged")
    await fail_logins(server, jid, 1)
    async with Slix(server, jid, PASSWORD, mechanism="SCRAM-SHA-256") as client:
        full = client.jid
        client.xmpp.send_message(mto=jid, mbody="note to self", mtype="chat")
        await client.next_message(lambda m: m["body"] == "note to self")

    async def end_logged() -> bool:
        return any(m["jid"] == full for m in ENDED.finditer(server.log_text()))

    await until_equal(end_logged, True)  # written once the server saw the stream close
    log = server.log_text()
    user = jid.split("@")[0]
    assert user in [m["user"] for m in FAILED.finditer(log)]
    assert (full, "SCRAM-SHA-256") in [(m["jid"], m["mechanism"]) for m in LOGIN.finditer(log)]
    ended = {m["jid"]: m["reason"] for m in ENDED.finditer(log)}
    assert ended.get(full) == "closed-by-peer", ended
    assert "wrong password" not in log and PASSWORD not in log
    # log_level = "debug": one line per stanza, in and out
    assert re.search(rf"DEBUG xmppd\.stream\.c2s: c2s {re.escape(full)} in: <message", log)
    assert re.search(rf"DEBUG xmppd\.stream\.c2s: c2s {re.escape(full)} out: <message", log)


async def test_a_crafted_user_name_cannot_forge_fields_or_lines(server: XmppdServer) -> None:
    for name in ("x address=192.0.2.9", "y\nlogin failed: address=192.0.2.9 user=z"):
        async with await XmlClient.connect(server) as client:
            with pytest.raises(PermissionError):
                await client.authenticate(name, "whatever")
    lines = [line for line in server.log_text().splitlines() if "login failed" in line]
    assert len(lines) >= 2
    assert all(
        re.match(r"^\S+ INFO xmppd\.auth: login failed: address=127\.0\.0\.1 ", x) for x in lines
    )
    assert not any("address=192.0.2.9 " in x.split(" user=")[0] for x in lines)


def fail2ban_regex(log: Path) -> str:
    if shutil.which("fail2ban-regex") is None:
        service_unavailable("fail2ban-regex is not installed (apt-get install fail2ban)")
    done = subprocess.run(
        ["fail2ban-regex", str(log), str(FAIL2BAN / "filter.d" / "xmppd.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_the_fail2ban_filter_matches_every_failed_login(
    server: XmppdServer, tmp_path: Path
) -> None:
    jid = await new_account(server, "target")
    before = len(FAILED.findall(server.log_text()))
    await fail_logins(server, jid, FAILED_ATTEMPTS)

    async def failed_lines() -> int:  # the line may land just after the client's failure
        return len(FAILED.findall(server.log_text()))

    await until_equal(failed_lines, before + FAILED_ATTEMPTS)
    log = tmp_path / "xmppd.log"
    log.write_text(server.log_text())
    failed = len(FAILED.findall(log.read_text()))
    out = fail2ban_regex(log)
    hits = re.search(r"^Failregex: (\d+) total", out, re.M)
    assert hits is not None, out
    assert int(hits.group(1)) == failed, out  # successful logins and the rest: not matched


def test_the_jail_passes_fail2bans_configuration_test(server: XmppdServer, tmp_path: Path) -> None:
    """The jail and filter, installed into a copy of Debian's /etc/fail2ban (without its
    default sshd jail) and pointed at the test server's log, pass ``fail2ban-client -t``."""
    if shutil.which("fail2ban-client") is None or not Path("/etc/fail2ban/jail.conf").exists():
        service_unavailable("fail2ban is not installed (apt-get install fail2ban)")
    etc = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", etc)
    for default in (etc / "jail.d").iterdir():
        default.unlink()
    shutil.copy(FAIL2BAN / "filter.d" / "xmppd.conf", etc / "filter.d" / "xmppd.conf")
    jail = (FAIL2BAN / "jail.d" / "xmppd.conf").read_text()
    assert "/var/lib/xmppd/xmppd.log" in jail
    (etc / "jail.d" / "xmppd.conf").write_text(
        jail.replace("/var/lib/xmppd/xmppd.log", str(server.log_path))
    )
    done = subprocess.run(
        ["fail2ban-client", "-c", str(etc), "-t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


async def test_json_lines_in_a_file_match_the_filter_too(tmp_path: Path) -> None:
    options = {"log_level": "info", "log_target": "file", "log_format": "json"}
    with running_server(tmp_path / "json", server=options) as srv:
        jid = await new_account(srv, "jsonuser")
        await fail_logins(srv, jid, 2)
        async with Slix(srv, jid, PASSWORD) as client:
            full = client.jid
        log_file = srv.data_dir / "xmppd.log"
    # the server has stopped: every session's end is logged
    assert srv.log_text().strip() == ""  # nothing on stderr
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = [r["fields"] for r in records if "fields" in r]
    user = jid.split("@")[0]
    assert [e["user"] for e in events if e["event"] == "login failed"] == [user, user]
    assert any(e["event"] == "login" and e["jid"] == full for e in events)
    assert any(e["event"] == "session ended" and e["jid"] == full for e in events)
    assert not any(r["level"] == "DEBUG" for r in records)  # info: no per-stanza lines
    out = fail2ban_regex(log_file)
    hits = re.search(r"^Failregex: (\d+) total", out, re.M)
    assert hits is not None and int(hits.group(1)) == 2, out


def test_cli_commands_print_only_their_result(server: XmppdServer) -> None:
    added = server.cli("adduser", f"quiet@{server.domain}", "--password", "quiet-pw-1")
    assert added.returncode == 0, added.stderr
    assert added.stderr == ""
    listed = server.cli("users", server.domain)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""
    lines = listed.stdout.splitlines()
    assert f"quiet@{server.domain}" in lines
    assert all("@" in line and " " not in line.strip() for line in lines), lines
