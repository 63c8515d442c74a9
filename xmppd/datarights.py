"""Data requests (GDPR): export everything stored about an account, and erase it, at
once or after a grace period.

Every module contributes through hooks, so nothing here knows a module's tables:
``user_export`` gives the XEP-0227 elements, ``user_export_files`` the stored files
(uploads), and ``user_removed`` deletes (see :func:`xmppd.users.remove_user`).

An erasure with a grace period disables the account at once (its credentials and
FAST tokens are revoked and its sessions end; the account row stays, so the name
cannot be registered again) and records when the data goes in the account's key/value
data (store ``xmppd.erasure``). The server's sweeper (:func:`erasure_sweeper`) erases
due accounts at start-up and then as they fall due, so the schedule survives a
restart. The record goes with the account's key/value data when it is erased. In a
cluster one node sweeps: the owner of :data:`SWEEPER_KEY` by rendezvous hashing over
the live nodes (another takes over within a sweep interval when it leaves or dies), so
an account is erased once, not by every node at the same moment.

These functions are the logic layer for the CLI (``xmppd export``, ``xmppd erase``),
the ad-hoc command of ``mod_admin_adhoc`` and the REST admin API.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from xmppd import hooks
from xmppd.auth.accounts import NoSuchAccount
from xmppd.core import Core
from xmppd.events import Drop
from xmppd.export import to_bytes
from xmppd.jid import JID, InvalidJID
from xmppd.storage.keyval import KeyValueStore
from xmppd.storage.schema import keyval
from xmppd.users import end_sessions, export_user, remove_user

log = logging.getLogger(__name__)

ERASURE_STORE: Final = "xmppd.erasure"
"""Key/value store of the accounts waiting for erasure: the Unix time it is due."""
MAX_GRACE: Final = 366 * 86400.0
"""Longest grace period accepted (a year)."""
SWEEP_INTERVAL: Final = 60.0
"""Seconds between two looks for due erasures (sooner when one falls due before)."""
SWEEPER_KEY: Final = "xmppd:erasure-sweeper"
"""The placement key of the erasure sweeper in a cluster (one node sweeps)."""
EXPORT_XML: Final = "export.xml"
"""The XEP-0227 document's name in an export archive; files go under ``files/``."""


@dataclass(frozen=True, slots=True)
class PendingErasure:
    """An account disabled and waiting for erasure at ``erase_at`` (Unix time)."""

    jid: JID
    erase_at: float


# ----------------------------------------------------------------------------- export


async def export_files(core: Core, jid: JID) -> tuple[hooks.UserFile, ...]:
    """The files stored for the account (``user_export_files``), existing ones only."""
    bare = jid.bare
    host = core.hosts[bare.domain]
    found = await host.bus.fold(hooks.USER_EXPORT_FILES, (), hooks.UserEvent(bare))
    if isinstance(found, Drop):
        return ()
    exists = await asyncio.gather(*(asyncio.to_thread(f.path.is_file) for f in found))
    return tuple(f for f, ok in zip(found, exists, strict=True) if ok)


def _archive_name(index: int, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip(" .")
    return f"files/{index:04d}-{safe[:120] or 'file'}"


def _write_tar(dest: Path, document: bytes, files: tuple[hooks.UserFile, ...]) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        info = tarfile.TarInfo(EXPORT_XML)
        info.size = len(document)
        info.mtime = int(time.time())
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(document))
        for index, f in enumerate(files, 1):
            tar.add(f.path, arcname=_archive_name(index, f.name), recursive=False)
    tmp.chmod(0o600)
    tmp.replace(dest)


async def write_export(core: Core, jid: JID, dest: Path) -> int:
    """Write the account's data to ``dest`` as a ``.tar.gz``: ``export.xml`` (XEP-0227)
    and ``files/NNNN-name`` for each stored file. Returns the number of files.
    Raises :class:`NoSuchAccount`."""
    if not await core.accounts.exists(jid.bare):
        raise NoSuchAccount(str(jid.bare))
    document = to_bytes(await export_user(core, jid))
    files = await export_files(core, jid)
    await asyncio.to_thread(_write_tar, dest, document, files)
    return len(files)


# ----------------------------------------------------------------------------- erasure


def _store(domain: str, core: Core) -> KeyValueStore:
    return KeyValueStore(core.db, domain, ERASURE_STORE)


async def erase_user(core: Core, jid: JID, grace: float = 0.0) -> PendingErasure | None:
    """Erase an account: at once when ``grace`` (seconds) is 0, returning ``None``;
    otherwise disable it now and erase it ``grace`` seconds later, returning when.
    Raises :class:`NoSuchAccount`, or ``ValueError`` for a grace out of range."""
    bare = jid.bare
    if not 0 <= grace <= MAX_GRACE:
        raise ValueError(f"grace period must be between 0 and {MAX_GRACE / 86400:.0f} days")
    if not await core.accounts.exists(bare):
        raise NoSuchAccount(str(bare))
    if grace == 0:
        await remove_user(core, bare)
        log.info("erased account %s", bare)
        return None
    erase_at = time.time() + grace
    await core.accounts.revoke_credentials(bare)
    await _store(bare.domain, core).set(bare.local, repr(erase_at))
    await end_sessions(core, bare, "account disabled")
    log.info("disabled account %s; its data is erased after %.0f s", bare, grace)
    return PendingErasure(bare, erase_at)


async def pending_erasure(core: Core, jid: JID) -> PendingErasure | None:
    """When ``jid``'s data is due to go, if it waits for erasure."""
    value = await _store(jid.domain, core).get(jid.local)
    return None if value is None else PendingErasure(jid.bare, float(value))


async def cancel_erasure(core: Core, jid: JID) -> bool:
    """Forget a pending erasure. The account stays disabled until its password is set
    again (``set_password``); ``False`` when none was pending."""
    store = _store(jid.domain, core)
    if await store.get(jid.local) is None:
        return False
    await store.delete(jid.local)
    return True


async def pending_erasures(core: Core) -> list[PendingErasure]:
    """Every account waiting for erasure on this server's hosts, soonest first."""
    rows = await core.db.fetch_all(
        sa.select(keyval.c.host, keyval.c.username, keyval.c.value).where(
            keyval.c.store == ERASURE_STORE, keyval.c.host.in_(list(core.hosts))
        )
    )
    pending = []
    for row in rows:
        try:
            pending.append(PendingErasure(JID(row.username, row.host), float(row.value)))
        except (InvalidJID, ValueError):
            log.warning("ignoring a malformed erasure record for %s@%s", row.username, row.host)
    return sorted(pending, key=lambda p: p.erase_at)


async def run_due_erasures(core: Core, now: float | None = None) -> list[JID]:
    """Erase every account whose grace period is over; end any session that a pending
    account still has (disabled from another process, such as the CLI)."""
    now = time.time() if now is None else now
    erased = []
    for pending in await pending_erasures(core):
        if pending.erase_at <= now:
            await remove_user(core, pending.jid)
            log.info("erased account %s (grace period over)", pending.jid)
            erased.append(pending.jid)
        elif core.sessions.of(pending.jid):
            await end_sessions(core, pending.jid, "account disabled")
    return erased


def sweeps_here(core: Core) -> bool:
    """Whether this process runs the erasures: always outside a cluster; in one, the
    node owning :data:`SWEEPER_KEY` (another node sweeps when it is gone)."""
    cluster = core.cluster
    return cluster is None or cluster.owner_of(SWEEPER_KEY) == cluster.name


async def erasure_sweeper(core: Core) -> None:
    """Run :func:`run_due_erasures` now and then until cancelled (the server's task);
    in a cluster only on the node :func:`sweeps_here` names, the others only look."""
    while True:
        delay = SWEEP_INTERVAL
        try:
            if sweeps_here(core):
                await run_due_erasures(core)
            upcoming = await pending_erasures(core)
            if upcoming:
                delay = min(delay, max(0.5, upcoming[0].erase_at - time.time()))
        except Exception:
            log.exception("erasure sweeper: could not erase due accounts")
        await asyncio.sleep(delay)


__all__ = [
    "ERASURE_STORE",
    "EXPORT_XML",
    "MAX_GRACE",
    "PendingErasure",
    "cancel_erasure",
    "erase_user",
    "erasure_sweeper",
    "export_files",
    "pending_erasure",
    "pending_erasures",
    "run_due_erasures",
    "SWEEPER_KEY",
    "sweeps_here",
    "write_export",
]
