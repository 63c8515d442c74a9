"""XEP-0054: vcard-temp, with XEP-0153 vCard-Based Avatars.

An account stores its vCard with an IQ set to its own bare JID (anyone else:
``forbidden``); a vCard larger than ``max_size`` (serialized) is refused with
``policy-violation``, one with elements outside any namespace (``xmlns=''``) with
``not-acceptable``. vCards are world-readable (XEP-0054 §5):

- one's own vCard: the stored one, or an empty ``<vCard xmlns='vcard-temp'/>`` result
  when there is none (§3.1 allows either that or an error);
- another account's: the stored one; ``item-not-found`` when the account exists but
  has no vCard, ``service-unavailable`` when there is no such account (§3.3 asks for
  an error in both cases; RFC 6121 §8.5.1 for the second).

XEP-0153: when the account has a vCard, the server adds
``<x xmlns='vcard-temp:x:update'><photo>SHA-1</photo></x>`` (an empty ``<photo/>``
when the vCard has no ``PHOTO/BINVAL``) to the available and unavailable presence its
clients send, unless the client put its own ``vcard-temp:x:update`` element with a
``<photo/>`` in it (an element without ``<photo/>`` is replaced, XEP-0398 §5).
When a vCard set changes that hash, the available presence of each of the account's
resources is broadcast again with the new hash (not for resources whose client manages
the element itself). The hashes of online accounts are kept in memory; in a cluster,
the node that stores a vCard tells the others to drop theirs (``ctx.invalidate``).

Storage: the key/value store ``vcard`` (the vCard as a JSON form of its element tree,
and its photo hash under the key ``photo_hash``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable
from typing import Final

from pydantic import Field

from xmppd.api import (
    INVALIDATE_ALL,
    JID,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    ServiceKey,
    SessionKey,
    Size,
    StanzaError,
    hooks,
)
from xmppd.api.hooks import PacketContext, SessionEvent, StanzaEvent, UserEvent
from xmppd.api.stanza import Element, child, copy, find_child, payload, serialize
from xmppd_modules.mod_private import decode, encode

NS_VCARD: Final = "vcard-temp"
NS_VCARD_UPDATE: Final = "vcard-temp:x:update"
STORE: Final = "vcard"
HASH_KEY: Final = "photo_hash"


class VcardOptions(Options):
    max_size: Size = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest vCard an account may store, serialized, in bytes ('64KiB').",
    )
    avatar_hash_in_presence: bool = Field(
        True,
        description="XEP-0153: add the vCard photo's SHA-1 to the presence clients send "
        "(when they did not add it themselves), and broadcast presence again when it "
        "changes.",
    )


module = Module(
    "vcard",
    "XEP-0054: vcard-temp",
    options=VcardOptions,
    protocols=("XEP-0054 v1.2", "XEP-0153 v1.1"),
)
Ctx = ModuleContext[VcardOptions]

module.feature(NS_VCARD)  # XEP-0054 §4: the server supports vcard-temp

SERVER_ADDED: Final = SessionKey("vcard.server_added_update", False)
"""The session's last presence got its vcard-temp:x:update element from the server."""


# ----------------------------------------------------------------------------- avatars


def photo_hash(vcard: Element) -> str:
    """XEP-0153 §2: hex SHA-1 of the decoded ``PHOTO/BINVAL``; ``""`` when there is none
    (or it is not base64)."""
    binval = vcard.find(f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL")
    if binval is None or not binval.text:
        return ""
    try:
        data = base64.b64decode("".join(binval.text.split()), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return hashlib.sha1(data).hexdigest() if data else ""


class Avatars:
    """Photo hashes of online accounts (``None``: the account has no vCard)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._hashes: dict[JID, str | None] = {}
        ctx.on_invalidate("photo", self._invalidated)

    def _invalidated(self, key: str) -> None:
        """Another node of the cluster stored a vCard: drop this node's hash."""
        if key == INVALIDATE_ALL:
            self._hashes.clear()
        else:
            self._hashes.pop(JID.parse(key), None)

    async def get(self, user: JID) -> str | None:
        if user in self._hashes:
            return self._hashes[user]
        generation = self._ctx.invalidation_generation
        found = await self._ctx.keyval(STORE).get(user.local, HASH_KEY)
        if self._ctx.sessions.is_online(user) and generation == self._ctx.invalidation_generation:
            return self._hashes.setdefault(user, found)
        return found

    def set(self, user: JID, value: str) -> Awaitable[object]:
        """The account stored a vCard with this photo hash (other nodes drop theirs:
        await it before answering)."""
        if self._ctx.sessions.is_online(user):
            self._hashes[user] = value
        return self._ctx.invalidate("photo", str(user))

    def forget(self, user: JID) -> None:
        self._hashes.pop(user, None)

    def removed(self, user: JID) -> Awaitable[object]:
        """The account was deleted: forget its hash here and on the other nodes."""
        self.forget(user)
        return self._ctx.invalidate("photo", str(user))

    @property
    def max_vcard_size(self) -> int:
        """The ``max_size`` option: the largest vCard (serialized) an account may store."""
        return self._ctx.options.max_size


AVATARS: Final = ServiceKey[Avatars]("vcard.avatars")


@module.on_load
async def provide(ctx: Ctx) -> None:
    ctx.provide(AVATARS, Avatars(ctx))


def _update_element(photo: str) -> Element:
    update = payload(NS_VCARD_UPDATE, "x")
    child(update, "photo", text=photo or None)
    return update


@module.fold(hooks.USER_SEND_PACKET)
async def add_photo_hash(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element:
    """XEP-0153 §4.1 done by the server: the hash in the presence the client sends."""
    if (
        stanza.tag != "presence"
        or stanza.get("type") not in (None, "unavailable")
        or not ctx.options.avatar_hash_in_presence
    ):
        return stanza
    session = pctx.session
    own = find_child(stanza, NS_VCARD_UPDATE, "x")
    if own is not None and find_child(own, NS_VCARD_UPDATE, "photo") is not None:
        ctx.sessions.set_state(
            session, SERVER_ADDED, False
        )  # the client's own (an empty <photo/> included)
        return stanza
    photo = await ctx.service(AVATARS).get(session.jid.bare)
    if photo is None:
        if own is not None:
            ctx.sessions.set_state(session, SERVER_ADDED, False)
        return stanza  # no vCard: nothing to say
    out = copy(stanza)
    if own is not None:
        # XEP-0398 §5: an update element without <photo/> (the client is "not ready")
        # is replaced by the server's.
        out.remove(out[stanza.index(own)])
    out.append(_update_element(photo))
    ctx.sessions.set_state(session, SERVER_ADDED, True)
    return out


async def _broadcast_new_hash(ctx: Ctx, user: JID, photo: str) -> None:
    """Send each available resource's presence again, with the new hash."""
    for session in ctx.sessions.available(user):
        presence = session.presence
        if presence is None:
            continue
        existing = find_child(presence, NS_VCARD_UPDATE, "x")
        if existing is not None:
            client_photo = find_child(existing, NS_VCARD_UPDATE, "photo")
            if not ctx.sessions.get_state(session, SERVER_ADDED) and client_photo is not None:
                continue  # the client manages its own element
            presence.remove(existing)
        presence.append(_update_element(photo))
        ctx.sessions.set_state(session, SERVER_ADDED, True)
        await ctx.run(hooks.PRESENCE_OUT, StanzaEvent(presence, user, session.jid, session))


# ----------------------------------------------------------------------------- IQs


@module.iq("get", NS_VCARD, "vCard", to=Scope.BARE)
async def get_vcard(ctx: Ctx, req: IqRequest) -> Element:
    user = req.to.bare
    stored = await ctx.keyval(STORE).get(user.local)
    if stored is not None:
        return req.result(decode(json.loads(stored)))
    if req.is_from_owner:
        return req.result(payload(NS_VCARD, "vCard"))
    if not await ctx.account_exists(user):
        raise StanzaError("service-unavailable")
    raise StanzaError("item-not-found", "this account has no vCard")


@module.iq("set", NS_VCARD, "vCard", to=Scope.BARE)
async def set_vcard(ctx: Ctx, req: IqRequest) -> Element:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "only its owner may change a vCard")
    vcard = req.payload
    if any(isinstance(d.tag, str) and not d.tag.startswith("{") for d in vcard.iterdescendants()):
        # Rebuilt from storage, it would take the vcard-temp namespace: refuse, not change.
        raise StanzaError("not-acceptable", "vCard elements must be in the vcard-temp namespace")
    if len(serialize(vcard)) > ctx.options.max_size:
        raise StanzaError(
            "policy-violation", f"a vCard may hold at most {ctx.options.max_size} bytes"
        )
    user = req.to.bare
    photo = photo_hash(vcard)
    store = ctx.keyval(STORE)
    avatars = ctx.service(AVATARS)
    before = await avatars.get(user)
    await store.set(user.local, json.dumps(encode(vcard)))
    await store.set(user.local, photo, HASH_KEY)
    await avatars.set(user, photo)
    if photo != (before or "") and ctx.options.avatar_hash_in_presence:
        await _broadcast_new_hash(ctx, user, photo)
    return req.result()


@module.on(hooks.RESOURCE_UNBOUND)
async def drop_cache(ctx: Ctx, event: SessionEvent) -> None:
    user = event.session.jid.bare
    if not ctx.sessions.is_online(user):
        ctx.service(AVATARS).forget(user)


@module.on(hooks.USER_REGISTERED)
async def fresh_account(ctx: Ctx, event: UserEvent) -> None:
    ctx.service(AVATARS).forget(event.jid.bare)  # deleted by another process (the CLI)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.service(AVATARS).removed(event.jid.bare)
    await ctx.keyval(STORE).delete(event.jid.local)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: the stored vCard, if any."""
    stored = await ctx.keyval(STORE).get(event.jid.local)
    return parts if stored is None else (*parts, decode(json.loads(stored)))
