"""Account lifecycle across the server: create, export and remove an account, with the
hooks that let every module add or delete its part (``user_registered``,
``user_export``, ``user_removed``)."""

from __future__ import annotations

from xmppd import hooks
from xmppd.auth.scram import SCRAM_HASHES
from xmppd.core import Core
from xmppd.events import Drop
from xmppd.export import export_document
from xmppd.jid import JID
from xmppd.sessions import end_sessions as close_sessions
from xmppd.stanza import Element


async def register_user(core: Core, jid: JID, password: str) -> None:
    """Create an account and announce it (``user_registered``)."""
    await core.accounts.create(jid.bare, password)
    host = core.hosts.get(jid.domain)
    if host is not None:
        await host.bus.run(hooks.USER_REGISTERED, hooks.UserEvent(jid.bare))


async def export_user(core: Core, jid: JID) -> Element:
    """The account's data as a XEP-0227 ``<server-data>`` document (credentials as
    SCRAM keys: there is no password to export), gathered through ``user_export``."""
    bare = jid.bare
    host = core.hosts[bare.domain]
    creds = [
        c
        for h in SCRAM_HASHES
        if (c := await core.accounts.get_scram(bare.domain, bare.local, h)) is not None
    ]
    parts = await host.bus.fold(hooks.USER_EXPORT, (), hooks.UserEvent(bare))
    return export_document(bare, creds, () if isinstance(parts, Drop) else parts)


async def end_sessions(core: Core, jid: JID, text: str) -> None:
    """Close every session of the account ``jid`` (in a cluster: on every node) and
    wait for their teardown."""
    registry = core.sessions
    await close_sessions(registry, registry.of(jid.bare), "not-authorized", text)


async def remove_user(core: Core, jid: JID) -> bool:
    """Delete an account and all its data; its sessions are closed.

    Order matters: the credentials go first (no new login can start), then the
    sessions end and their teardown (presence, last seen) finishes, then modules
    delete the user's data, so nothing is written back afterwards; the account row
    goes last, so the name cannot be registered again while its data is deleted.
    """
    bare = jid.bare
    host = core.hosts.get(bare.domain)
    existed = await core.accounts.exists(bare)
    await core.accounts.revoke_credentials(bare)
    for attempt in range(2):  # a second pass catches a login that was mid-flight
        await end_sessions(core, bare, "account removed")
        if host is not None and attempt == 0:
            await host.bus.run(hooks.USER_REMOVED, hooks.UserEvent(bare))
    await core.accounts.delete(bare)
    return existed
