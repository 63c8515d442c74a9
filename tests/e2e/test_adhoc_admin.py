"""XEP-0133 service administration over XEP-0050 ad-hoc commands, driven by slixmpp's
xep_0050/xep_0133 client as an admin and as a plain user, plus the XEP-0050 error
cases on a raw stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import pytest
from lxml import etree
from slixmpp.exceptions import IqError

from tests.support.clients import AuthFailed, Slix, register_account
from tests.support.e2e import PASSWORD, new_account, user_rows
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server
from tests.support.xmlclient import XmlClient, error_condition, tag

ADMIN = "boss@localhost"
ADMIN_PASSWORD = "boss-secret"
COMMANDS = "http://jabber.org/protocol/commands"
ADMIN_NS = "http://jabber.org/protocol/admin"
XDATA = "jabber:x:data"
ERASE = "urn:xmppd:admin:0#erase-user"
EXPORT = "urn:xmppd:admin:0#export-user"
PIE = "urn:xmpp:pie:0"
PLUGINS = ("xep_0030", "xep_0004", "xep_0050", "xep_0133")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "adhoc": {}, "admin_adhoc": {}, "vcard": {}, "mam": {}}
    tmp = tmp_path_factory.mktemp("adhoc")
    with running_server(tmp, modules=modules, admins=[ADMIN]) as srv:
        asyncio.run(register_account(srv, "boss", ADMIN_PASSWORD))
        yield srv


def admin(server: XmppdServer) -> Slix:
    return Slix(server, ADMIN, ADMIN_PASSWORD, plugins=PLUGINS)


async def run_command(client: Slix, node: str, answers: list[dict[str, Any]]) -> Any:
    """Run ``node`` with slixmpp's XEP-0050 client: each form shown is answered with
    the next dict of ``answers`` (``next``, or ``complete`` where that is the action
    offered); the final response (completed, or the error) is returned.

    slixmpp's callback flow (``start_command``) drops an error that comes after the
    first stage (an XEP-0050 error carries no <command/> to match the session by), so
    every stage is sent with ``send_command`` and awaited."""
    adhoc = client.xmpp.plugin["xep_0050"]
    domain = client.server.domain
    try:
        iq = await adhoc.send_command(domain, node, timeout=10)
        for values in answers:
            if iq["command"]["status"] != "executing":
                break
            form = iq["command"]["form"]
            form["type"] = "submit"
            form["values"] = values
            action = "complete" if "complete" in iq["command"]["actions"] else "next"
            iq = await adhoc.send_command(
                domain,
                node,
                action=action,
                payload=form,
                sessionid=iq["command"]["sessionid"],
                timeout=10,
            )
    except IqError as err:
        return err.iq
    return iq


def on_disconnect(client: Slix) -> asyncio.Future[None]:
    """Resolved when the server ends ``client``'s stream."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def resolve(_: object) -> None:
        if not ended.done():
            ended.set_result(None)

    client.xmpp.add_event_handler("disconnected", resolve)
    return ended


def result_values(iq: Any) -> dict[str, Any]:
    return {k: v for k, v in iq["command"]["form"]["values"].items() if k != "FORM_TYPE"}


def shape(el: Any) -> tuple[Any, ...]:
    """An element as names, attributes, text and children, whatever its prefixes and
    indentation."""
    return (
        el.tag,
        sorted(el.attrib.items()),
        (el.text or "").strip(),
        [shape(c) for c in el],
    )


async def can_log_in(server: XmppdServer, jid: str, password: str) -> bool:
    try:
        async with Slix(server, jid, password, initial_presence=False, fetch_roster=False):
            return True
    except AuthFailed:
        return False


# ----------------------------------------------------------------------------- discovery and access


async def test_admin_lists_the_admin_commands_a_user_lists_none(server: XmppdServer) -> None:
    user = await new_account(server, "plain")
    async with admin(server) as boss, Slix(server, user, PASSWORD, plugins=PLUGINS) as plain:
        items = await boss.xmpp.plugin["xep_0133"].get_commands()
        nodes = {item[1] for item in items["disco_items"]["items"]}
        for suffix in (
            "add-user",
            "delete-user",
            "change-user-password",
            "end-user-session",
            "get-user-roster",
            "get-online-users-list",
            "get-online-users-num",
            "get-registered-users-num",
            "announce",
            "set-motd",
        ):
            assert f"{ADMIN_NS}#{suffix}" in nodes
        assert ERASE in nodes and EXPORT in nodes
        info = await boss.xmpp.plugin["xep_0030"].get_info(
            jid=server.domain, node=f"{ADMIN_NS}#add-user"
        )
        assert ("automation", "command-node") in {
            (i[0], i[1]) for i in info["disco_info"]["identities"]
        }
        assert COMMANDS in info["disco_info"]["features"]

        theirs = await plain.xmpp.plugin["xep_0133"].get_commands()
        assert not theirs["disco_items"]["items"]
        with pytest.raises(IqError) as err:
            await plain.xmpp.plugin["xep_0030"].get_info(
                jid=server.domain, node=f"{ADMIN_NS}#add-user"
            )
        assert err.value.iq["error"]["condition"] == "item-not-found"


async def test_a_plain_user_is_forbidden_to_run_an_admin_command(server: XmppdServer) -> None:
    user = await new_account(server, "plain")
    async with Slix(server, user, PASSWORD, plugins=PLUGINS) as plain:
        reply = await run_command(plain, f"{ADMIN_NS}#add-user", [])
        assert reply["type"] == "error"
        assert reply["error"]["condition"] == "forbidden"
        reply = await run_command(plain, f"{ADMIN_NS}#get-registered-users-num", [])
        assert reply["error"]["condition"] == "forbidden"
    assert await can_log_in(server, user, PASSWORD)


# ----------------------------------------------------------------------------- accounts


async def test_add_user_then_change_password(server: XmppdServer) -> None:
    async with admin(server) as boss:
        reply = await run_command(
            boss,
            f"{ADMIN_NS}#add-user",
            [
                {
                    "accountjid": "made@localhost",
                    "password": "first-pw",
                    "password-verify": "first-pw",
                }
            ],
        )
        assert reply["type"] == "result" and reply["command"]["status"] == "completed"
        assert await can_log_in(server, "made@localhost", "first-pw")

        again = await run_command(
            boss,
            f"{ADMIN_NS}#add-user",
            [{"accountjid": "made@localhost", "password": "x1", "password-verify": "x1"}],
        )
        assert again["error"]["condition"] == "conflict"

        # The server's password policy holds here too (accounts.min_password_length).
        weak = await run_command(
            boss,
            f"{ADMIN_NS}#change-user-password",
            [{"accountjid": "made@localhost", "password": "abc"}],  # the tests allow 4+
        )
        assert weak["error"]["condition"] == "not-acceptable"

        reply = await run_command(
            boss,
            f"{ADMIN_NS}#change-user-password",
            [{"accountjid": "made@localhost", "password": "second-pw"}],
        )
        assert reply["command"]["status"] == "completed"
    assert not await can_log_in(server, "made@localhost", "first-pw")
    assert await can_log_in(server, "made@localhost", "second-pw")


async def test_another_hosts_account_is_not_allowed(server: XmppdServer) -> None:
    async with admin(server) as boss:
        reply = await run_command(
            boss,
            f"{ADMIN_NS}#change-user-password",
            [{"accountjid": "victim@example.org", "password": "pw"}],
        )
        assert reply["error"]["condition"] == "not-allowed"
        reply = await run_command(
            boss,
            f"{ADMIN_NS}#add-user",
            [{"accountjid": "x@localhost", "password": "a", "password-verify": "b"}],
        )
        assert reply["error"]["condition"] == "bad-request"


async def test_delete_user_ends_its_session_and_its_data(server: XmppdServer) -> None:
    user = await new_account(server, "doomed")
    local = user.split("@")[0]
    async with Slix(server, user, PASSWORD) as victim:
        ended = on_disconnect(victim)
        await victim.xmpp.update_roster("friend@localhost", name="F")
        assert (await user_rows(server, local))["mod_roster__items"] == 1
        async with admin(server) as boss:
            reply = await run_command(boss, f"{ADMIN_NS}#delete-user", [{"accountjids": [user]}])
            assert reply["command"]["status"] == "completed"
        async with asyncio.timeout(10):
            await ended
    assert not await can_log_in(server, user, PASSWORD)
    assert set((await user_rows(server, local)).values()) == {0}


async def test_end_user_session(server: XmppdServer) -> None:
    user = await new_account(server, "kicked")
    async with Slix(server, user, PASSWORD) as victim, admin(server) as boss:
        ended = on_disconnect(victim)
        reply = await run_command(boss, f"{ADMIN_NS}#end-user-session", [{"accountjids": [user]}])
        assert reply["command"]["status"] == "completed"
        async with asyncio.timeout(10):
            await ended
    assert await can_log_in(server, user, PASSWORD)  # the account stays


async def test_get_user_roster(server: XmppdServer) -> None:
    user = await new_account(server, "rostered")
    async with Slix(server, user, PASSWORD) as owner:
        await owner.xmpp.update_roster("pal@localhost", name="Pal", groups=["Friends"])
    async with admin(server) as boss:
        reply = await run_command(boss, f"{ADMIN_NS}#get-user-roster", [{"accountjid": user}])
    assert reply["command"]["status"] == "completed"
    x = reply.xml.find(f"{{{COMMANDS}}}command/{{{XDATA}}}x")
    item = x.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert item is not None and item.get("jid") == "pal@localhost" and item.get("name") == "Pal"
    assert item.findtext("{jabber:iq:roster}group") == "Friends"


async def test_counts_and_online_list(server: XmppdServer) -> None:
    listed = await asyncio.to_thread(server.cli, "users", server.domain)
    registered = len(listed.stdout.split())
    user = await new_account(server, "present")
    async with Slix(server, user, PASSWORD), admin(server) as boss:
        reply = await run_command(boss, f"{ADMIN_NS}#get-registered-users-num", [])
        assert result_values(reply)["registeredusersnum"] == str(registered + 1)
        reply = await run_command(boss, f"{ADMIN_NS}#get-online-users-num", [])
        online = int(result_values(reply)["onlineusersnum"])
        assert online >= 2  # the admin and the user (other tests' clients have left)
        reply = await run_command(boss, f"{ADMIN_NS}#get-online-users-list", [{"max_items": "100"}])
        jids = {str(j) for j in result_values(reply)["onlineuserjids"]}
        assert {user, ADMIN} <= jids and len(jids) == online
        reply = await run_command(
            boss, f"{ADMIN_NS}#get-registered-users-list", [{"max_items": "25"}]
        )
        assert len(result_values(reply)["registereduserjids"]) == min(25, registered + 1)


# ----------------------------------------------------------------------------- announcements


async def test_announce_reaches_every_online_session(server: XmppdServer) -> None:
    user = await new_account(server, "listener")
    async with Slix(server, user, PASSWORD) as listener, admin(server) as boss:
        reply = await run_command(
            boss,
            f"{ADMIN_NS}#announce",
            [{"subject": "Maintenance", "announcement": "Down at 06:00 UTC"}],
        )
        assert reply["command"]["status"] == "completed"
        msg = await listener.next_message(lambda m: m["body"] == "Down at 06:00 UTC")
        assert msg["type"] == "headline" and msg["subject"] == "Maintenance"
        assert str(msg["from"]) == server.domain


async def test_set_motd_greets_new_sessions_and_survives_a_restart(server: XmppdServer) -> None:
    user = await new_account(server, "greeted")
    async with admin(server) as boss:
        reply = await run_command(
            boss, f"{ADMIN_NS}#set-motd", [{"motd": "Welcome back", "subject": "Hi"}]
        )
        assert reply["command"]["status"] == "completed"
    restart(server)
    async with Slix(server, user, PASSWORD) as greeted:
        msg = await greeted.next_message(lambda m: m["type"] == "headline")
        assert msg["body"] == "Welcome back" and msg["subject"] == "Hi"
    async with admin(server) as boss:
        reply = await run_command(boss, f"{ADMIN_NS}#delete-motd", [])
        assert reply["command"]["status"] == "completed"
    async with await XmlClient.login(server, user, PASSWORD) as raw:
        answer = await raw.iq("get", "<motd xmlns='urn:xmppd:motd:0'/>", to=server.domain)
        assert error_condition(answer) == "item-not-found"


# ----------------------------------------------------------------------------- XEP-0050 errors (raw)


def command(node: str, **attrs: str) -> str:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<command xmlns='{COMMANDS}' node='{node}'{extra}/>"


def app_condition(reply: etree._Element) -> str | None:
    error = reply.find(tag("error"))
    found = None if error is None else error.find(f"{{{COMMANDS}}}*")
    return None if found is None else etree.QName(found).localname


def command_of(reply: etree._Element) -> etree._Element:
    el = reply.find(f"{{{COMMANDS}}}command")
    assert el is not None, etree.tostring(reply)
    return el


def actions_of(cmd: etree._Element) -> etree._Element:
    el = cmd.find(f"{{{COMMANDS}}}actions")
    assert el is not None, etree.tostring(cmd)
    return el


SUBMIT_ERASE = (
    f"<x xmlns='{XDATA}' type='submit'><field var='accountjids'><value>{{jid}}</value>"
    "</field><field var='grace'><value>0</value></field></x>"
)


async def test_xep0050_errors(server: XmppdServer) -> None:
    async with await XmlClient.login(server, ADMIN, ADMIN_PASSWORD, resource="a") as boss:
        reply = await boss.iq("set", command("urn:nope"), to=server.domain)
        assert error_condition(reply) == "item-not-found"

        node = f"{ADMIN_NS}#add-user"
        reply = await boss.iq("set", command(node, action="dance"), to=server.domain)
        assert error_condition(reply) == "bad-request"
        assert app_condition(reply) == "malformed-action"

        reply = await boss.iq("set", command(node, sessionid="forged"), to=server.domain)
        assert (error_condition(reply), app_condition(reply)) == ("bad-request", "bad-sessionid")

        started = command_of(await boss.iq("set", command(node), to=server.domain))
        assert started.get("status") == "executing"
        sid = started.get("sessionid", "")
        assert actions_of(started).get("execute") == "complete"

        # The session belongs to this command and this resource only.
        other = f"{ADMIN_NS}#delete-user"
        reply = await boss.iq("set", command(other, sessionid=sid), to=server.domain)
        assert app_condition(reply) == "bad-sessionid"
        async with await XmlClient.login(server, ADMIN, ADMIN_PASSWORD, resource="b") as twin:
            reply = await twin.iq("set", command(node, sessionid=sid), to=server.domain)
            assert app_condition(reply) == "bad-sessionid"

        # No form submitted, a wrong action, no previous stage.
        reply = await boss.iq("set", command(node, sessionid=sid), to=server.domain)
        assert app_condition(reply) == "bad-payload"
        reply = await boss.iq("set", command(node, sessionid=sid, action="next"), to=server.domain)
        assert app_condition(reply) == "bad-action"
        reply = await boss.iq("set", command(node, sessionid=sid, action="prev"), to=server.domain)
        assert app_condition(reply) == "bad-action"

        canceled = await boss.iq(
            "set", command(node, sessionid=sid, action="cancel"), to=server.domain
        )
        assert command_of(canceled).get("status") == "canceled"
        reply = await boss.iq("set", command(node, sessionid=sid), to=server.domain)
        assert app_condition(reply) == "bad-sessionid"


async def test_multi_stage_erase_with_prev_and_cancel(server: XmppdServer) -> None:
    user = await new_account(server, "erasable")
    submit = SUBMIT_ERASE.format(jid=user)
    async with await XmlClient.login(server, ADMIN, ADMIN_PASSWORD) as boss:
        first = command_of(await boss.iq("set", command(ERASE), to=server.domain))
        sid = first.get("sessionid", "")
        assert actions_of(first).get("execute") == "next"
        cmd = f"<command xmlns='{COMMANDS}' node='{ERASE}' sessionid='{sid}' action='complete'>"
        reply = await boss.iq("set", cmd + submit + "</command>", to=server.domain)
        assert app_condition(reply) == "bad-action"  # stage 1 of 3 offers only next

        cmd = f"<command xmlns='{COMMANDS}' node='{ERASE}' sessionid='{sid}' action='next'>"
        second = command_of(await boss.iq("set", cmd + submit + "</command>", to=server.domain))
        actions = actions_of(second)
        assert actions.get("execute") == "complete"
        assert actions.find(f"{{{COMMANDS}}}prev") is not None
        back = command_of(
            await boss.iq("set", command(ERASE, sessionid=sid, action="prev"), to=server.domain)
        )
        assert back.find(f"{{{XDATA}}}x/{{{XDATA}}}field[@var='grace']") is not None
        canceled = await boss.iq(
            "set", command(ERASE, sessionid=sid, action="cancel"), to=server.domain
        )
        assert command_of(canceled).get("status") == "canceled"
    assert await can_log_in(server, user, PASSWORD)  # nothing was erased


async def test_export_command_returns_the_users_data(server: XmppdServer) -> None:
    user = await new_account(server, "exported")
    async with Slix(server, user, PASSWORD) as owner:
        await owner.xmpp.update_roster("pal@localhost", name="Pal", groups=["Friends"])
    async with admin(server) as boss:
        reply = await run_command(boss, EXPORT, [{"accountjid": user}])
    assert reply["command"]["status"] == "completed", reply
    assert result_values(reply) == {"accountjid": user, "files": "0"}
    x = reply.xml.find(f"{{{COMMANDS}}}command/{{{XDATA}}}x")
    [found] = x.findall(f"{{{PIE}}}server-data")
    document = etree.fromstring(ElementTree.tostring(found))  # slixmpp's ElementTree -> lxml
    account = document.find(f"{{{PIE}}}host/{{{PIE}}}user")
    assert account is not None and account.get("name") == user.split("@")[0]
    assert document.find(f"{{{PIE}}}host").get("jid") == server.domain
    item = account.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert item is not None and item.get("jid") == "pal@localhost" and item.get("name") == "Pal"
    assert account.find("{urn:xmpp:pie:0#scram}scram-credentials") is not None
    assert PASSWORD not in etree.tostring(document).decode()
    # The same document as the operator's own command gives.
    cli = await asyncio.to_thread(server.cli, "export-user", user)
    assert cli.returncode == 0, cli.stderr
    theirs = etree.fromstring(cli.stdout.encode())
    assert shape(document) == shape(theirs)


async def test_export_command_refusals(server: XmppdServer) -> None:
    user = await new_account(server, "private")
    async with admin(server) as boss:
        reply = await run_command(boss, EXPORT, [{"accountjid": "nobody@localhost"}])
        assert reply["error"]["condition"] == "item-not-found"
        reply = await run_command(boss, EXPORT, [{"accountjid": "bob@elsewhere.example"}])
        assert reply["error"]["condition"] == "not-allowed"
    async with Slix(server, user, PASSWORD, plugins=PLUGINS) as plain:
        reply = await run_command(plain, EXPORT, [{"accountjid": ADMIN}])
        assert reply["error"]["condition"] == "forbidden"
        assert reply.xml.find(f".//{{{PIE}}}server-data") is None


async def test_erase_command_erases_now(server: XmppdServer) -> None:
    user = await new_account(server, "gone")
    async with admin(server) as boss:
        reply = await run_command(
            boss, ERASE, [{"accountjids": [user], "grace": "0"}, {"confirm": True}]
        )
        assert reply["command"]["status"] == "completed", reply
    assert not await can_log_in(server, user, PASSWORD)
    assert set((await user_rows(server, user.split("@")[0])).values()) == {0}


async def test_erase_command_with_grace_disables_at_once(server: XmppdServer) -> None:
    user = await new_account(server, "paused")
    local = user.split("@")[0]
    async with Slix(server, user, PASSWORD) as victim, admin(server) as boss:
        ended = on_disconnect(victim)
        await victim.xmpp.update_roster("pal@localhost", name="Pal")
        reply = await run_command(
            boss, ERASE, [{"accountjids": [user], "grace": "7"}, {"confirm": True}]
        )
        assert reply["command"]["status"] == "completed", reply
        async with asyncio.timeout(10):
            await ended
    assert not await can_log_in(server, user, PASSWORD)
    rows = await user_rows(server, local)
    assert rows["xmppd_accounts"] == 1 and rows["mod_roster__items"] == 1  # kept for 7 days
    assert rows["xmppd_scram"] == 0
