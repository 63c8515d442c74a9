"""XEP-0398: User Avatar to vCard-Based Avatars Conversion.

A user's avatar lives in two places: the PEP nodes of XEP-0084 (``urn:xmpp:avatar:data``
and ``urn:xmpp:avatar:metadata``, read by Conversations, Dino, Gajim...) and the
``PHOTO`` of the XEP-0054 vCard, whose SHA-1 the server puts in presence (XEP-0153,
mod_vcard). This module keeps them in sync, in both directions, and advertises
``urn:xmpp:pep-vcard-conversion:0`` on every account (disco#info of the bare JID):

- **PEP to vCard** (XEP-0398 §4.1): when a client publishes to (or retracts from, purges,
  deletes) its own metadata node, the avatar it announces (the first ``<info/>`` without
  a ``url``) is looked up in the data node and stored as the vCard ``PHOTO`` (``TYPE`` and
  ``BINVAL``; the other vCard fields are kept). mod_vcard then sends the account's
  presence again with the new hash. It is copied only if its SHA-1 matches the item id
  and, as XEP-0398 §8 advises, only if the data node's access model is ``open``: the
  vCard is world-readable, so a contacts-only avatar stays out of it (see
  ``copy_restricted_avatars``). Publishing an empty ``<metadata/>`` (avatar disabled)
  removes the ``PHOTO`` if it was that avatar.
- **vCard to PEP** (§4.2): when a client sets a vCard whose photo differs from the
  stored one, the image is published to the data node (item id: its SHA-1), then a
  ``<metadata>`` with one ``<info bytes id type [width height]/>`` (the type sniffed from
  the image bytes, else the vCard's ``TYPE``; PNG, GIF and JPEG sizes are read from
  their headers); the metadata node's subscribers are notified by mod_pep as usual. A
  node created this way gets the ``open`` access model (the vCard is public anyway);
  an existing node keeps its configuration. Removing the photo from the vCard disables
  the PEP avatar (empty ``<metadata/>``) if it was that avatar.

Only an account's own clients trigger a conversion: their IQ is noted on its way in
(``user_send_packet``), and the copy is made when the success reply passes on its way
back (``user_receive_packet``), before the client gets it. The copy is written through
mod_vcard's and mod_pep's own IQ handlers, as the account, so their limits and
notifications apply; the server's own IQs are never noted, so a copy never triggers the
reverse copy (and each side is only written when it differs).

**Limits.** A change is never refused because of its copy: the side the client wrote
is what it asked for. An avatar that cannot be copied (over ``max_image_size``, not
fitting in the vCard under mod_vcard's ``max_size``, or a contacts-only PEP avatar) is
not copied; if the other side held the previous avatar, that copy is cleared, so
clients reading it do not keep showing a picture the user replaced.

Not implemented: the optional rewriting of a client's non-empty XEP-0153 hash that
differs from the server's (§5), image format conversion, and copies of changes made
without a client IQ (by another module or the CLI). The module stores nothing itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Final, Literal

from pydantic import Field

from xmppd.api import (
    JID,
    IqTimeout,
    KeyedLocks,
    Module,
    ModuleContext,
    Options,
    OwnIqWatch,
    Priority,
    Size,
    hooks,
    ns,
)
from xmppd.api.hooks import DiscoInfo, DiscoQuery, PacketContext
from xmppd.api.stanza import Element, child, copy, element, new_id, parse, payload, serialize
from xmppd_modules.mod_pep import PEP
from xmppd_modules.mod_pep.common import NS_OWNER, NS_PUBLISH_OPTIONS, NS_PUBSUB
from xmppd_modules.mod_vcard import AVATARS, NS_VCARD

NS_DATA: Final = "urn:xmpp:avatar:data"
NS_METADATA: Final = "urn:xmpp:avatar:metadata"
FEATURE: Final = "urn:xmpp:pep-vcard-conversion:0"
"""XEP-0398 §3: advertised on the account."""

NEW_NODE_OPTIONS: Final = {"pubsub#access_model": "open"}
"""Publish-options of an avatar node this module creates (XEP-0398 §8, XEP-0084 §4)."""
TIMEOUT: Final = 30.0
MAX_PENDING: Final = 16
"""Noted IQs one session may have awaiting their reply (the oldest is forgotten)."""

_P: Final = f"{{{NS_PUBSUB}}}"
_O: Final = f"{{{NS_OWNER}}}"
_V: Final = f"{{{NS_VCARD}}}"
_M: Final = f"{{{NS_METADATA}}}"


class AvatarConversionOptions(Options):
    max_image_size: Size = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest avatar image (decoded bytes) that is copied between PEP and "
        "the vCard ('64KiB'); a larger one is not copied (and a stale copy is cleared). "
        "A PEP avatar must also fit in the vCard (mod_vcard's max_size; base64 makes it "
        "4/3 larger).",
    )
    copy_restricted_avatars: bool = Field(
        False,
        description="Also copy a PEP avatar whose data node is not 'open' (e.g. "
        "'presence', contacts only) into the vCard, which anyone may read. XEP-0398 §8 "
        "advises against it.",
    )


module = Module(
    "avatar_conversion",
    "XEP-0398: User Avatar to vCard-Based Avatars Conversion",
    options=AvatarConversionOptions,
    depends=("vcard", "pep"),
    protocols=("XEP-0398 v1.0.0", "XEP-0084 v1.1.4"),
)
Ctx = ModuleContext[AvatarConversionOptions]


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class Image:
    """An avatar image and its content type."""

    data: bytes
    type: str

    @property
    def sha1(self) -> str:
        """XEP-0084/XEP-0153: hex SHA-1 of the image bytes (the avatar's id)."""
        return hashlib.sha1(self.data).hexdigest()


_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_type(data: bytes) -> str | None:
    """The content type the image bytes declare (XEP-0153 §5: the data wins over TYPE)."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame marker of a JPEG."""
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height in pixels, read from a PNG, GIF or JPEG header (else ``None``)."""
    kind = sniff_type(data)
    size: tuple[int, int] | None = None
    if kind == "image/png" and len(data) >= 24 and data[12:16] == b"IHDR":
        size = struct.unpack(">II", data[16:24])
    elif kind == "image/gif" and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif kind == "image/jpeg":
        size = _jpeg_size(data)
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def decode_base64(text: str | None) -> bytes | None:
    """Base64 character data, line breaks and spaces ignored (``None``: empty or invalid)."""
    if not text:
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


def vcard_photo(vcard: Element) -> Image | None:
    """The avatar of a vCard: its ``PHOTO/BINVAL``, with the sniffed type or ``TYPE``."""
    photo = vcard.find(f"{_V}PHOTO")
    if photo is None:
        return None
    data = decode_base64(photo.findtext(f"{_V}BINVAL"))
    if data is None:
        return None
    declared = (photo.findtext(f"{_V}TYPE") or "").strip()
    kind = sniff_type(data) or declared
    return Image(data, kind) if kind else None


def with_photo(vcard: Element, image: Image | None) -> Element:
    """A copy of ``vcard`` whose ``PHOTO`` shows ``image`` (none: no ``PHOTO``); the other
    fields stay where they were."""
    out = copy(vcard)
    photos = out.findall(f"{_V}PHOTO")
    index = list(out).index(photos[0]) if photos else len(out)
    for photo in photos:
        out.remove(photo)
    if image is not None:
        photo = payload(NS_VCARD, "PHOTO")
        child(photo, "TYPE", text=image.type)
        child(photo, "BINVAL", text=base64.b64encode(image.data).decode("ascii"))
        out.insert(index, photo)
    return out


def chosen_info(metadata: Element) -> Element | None:
    """XEP-0398 §4.1: the ``<info/>`` of the avatar stored at the data node (the first
    without a ``url``); ``None`` for a metadata without one (avatar disabled)."""
    for info in metadata.iterfind(f"{_M}info"):
        if info.get("url") is None and info.get("id"):
            return info
    return None


def metadata_for(image: Image | None) -> Element:
    """The ``<metadata/>`` announcing ``image`` (none: the empty one, avatar disabled)."""
    metadata = payload(NS_METADATA, "metadata")
    if image is not None:
        attrs = {"bytes": str(len(image.data)), "id": image.sha1, "type": image.type}
        size = dimensions(image.data)
        if size is not None:
            attrs.update(width=str(size[0]), height=str(size[1]))
        child(metadata, "info", attrs)
    return metadata


# ----------------------------------------------------------------------------- reading


async def _request(ctx: Ctx, owner: JID, kind: str, query: Element) -> Element | None:
    """Send an IQ as the account to itself; the reply on success, else ``None``."""
    iq = element("iq", {"type": kind, "id": new_id(), "from": str(owner), "to": str(owner)})
    iq.append(query)
    try:
        reply = await ctx.request(iq, timeout=TIMEOUT)
    except IqTimeout:
        ctx.log.warning("avatar of %s: no answer to a %s %s", owner, kind, query.tag)
        return None
    if reply.get("type") != "result":
        ctx.log.warning("avatar of %s: a %s %s was refused", owner, kind, query.tag)
        return None
    return reply


async def _own_vcard(ctx: Ctx, owner: JID) -> Element | None:
    """The account's vCard, as mod_vcard gives it to the account (empty when none)."""
    reply = await _request(ctx, owner, "get", payload(NS_VCARD, "vCard"))
    return None if reply is None else reply.find(f"{_V}vCard")


async def _vcard_hash(ctx: Ctx, owner: JID) -> str:
    """SHA-1 of the vCard photo ("" when there is none)."""
    return await ctx.service(AVATARS).get(owner) or ""


async def _current_info(ctx: Ctx, owner: JID) -> Element | None:
    """The ``<info/>`` of the avatar the metadata node announces now, if any."""
    last = await ctx.service(PEP).last_item(owner, NS_METADATA)
    if last is None:
        return None
    metadata = parse(last.payload.encode("utf-8"))
    return chosen_info(metadata) if metadata.tag == f"{_M}metadata" else None


async def _pep_hash(ctx: Ctx, owner: JID) -> str:
    """The id (SHA-1) of the avatar the metadata node announces ("" when none)."""
    info = await _current_info(ctx, owner)
    return "" if info is None else info.get("id", "").lower()


async def _copyable_pep_image(ctx: Ctx, owner: JID, info: Element) -> Image | None:
    """The image ``info`` announces, from the data node, if it may go into the vCard."""
    store = ctx.service(PEP)
    item_id = info.get("id", "")
    config = await store.node(owner, NS_DATA)
    if config is None:
        return None
    if config.access_model != "open" and not ctx.options.copy_restricted_avatars:
        ctx.log.debug("avatar of %s: data node not open, not copied to the vCard", owner)
        return None
    page = await store.items(owner, NS_DATA, newest=1, ids=[item_id], budget=1)
    if not page.items:
        return None
    data_el = parse(page.items[0].payload.encode("utf-8"))
    data = decode_base64(data_el.text) if data_el.tag == f"{{{NS_DATA}}}data" else None
    if data is None or hashlib.sha1(data).hexdigest() != item_id.lower():
        ctx.log.info("avatar of %s: data item %s does not match its id", owner, item_id)
        return None
    kind = sniff_type(data) or (info.get("type") or "").strip() or "image/png"
    return Image(data, kind)


# ----------------------------------------------------------------------------- checks


def _too_big(ctx: Ctx, size: int) -> bool:
    return size > ctx.options.max_image_size


async def _fits_vcard(ctx: Ctx, owner: JID, image: Image) -> bool:
    """Can ``image`` be the account's vCard photo (size limits of both modules)?"""
    if _too_big(ctx, len(image.data)):
        return False
    vcard = await _own_vcard(ctx, owner)
    room = ctx.service(AVATARS).max_vcard_size
    return vcard is None or len(serialize(with_photo(vcard, image))) <= room


# ----------------------------------------------------------------------------- the copies


async def _publish(ctx: Ctx, owner: JID, node: str, item_id: str | None, item: Element) -> bool:
    """Publish ``item`` as the account; a node created now gets the open access model."""
    pubsub = payload(NS_PUBSUB, "pubsub")
    publish = child(pubsub, "publish", {"node": node})
    child(publish, "item", {"id": item_id} if item_id else {}).append(item)
    if await ctx.service(PEP).node(owner, node) is None:
        form = child(
            child(pubsub, "publish-options"), "x", {"type": "submit"}, namespace=ns.DATA_FORMS
        )
        hidden = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(hidden, "value", text=NS_PUBLISH_OPTIONS)
        for var, value in NEW_NODE_OPTIONS.items():
            child(child(form, "field", {"var": var}), "value", text=value)
    return await _request(ctx, owner, "set", pubsub) is not None


async def vcard_to_pep(ctx: Ctx, owner: JID, before: str) -> None:
    """XEP-0398 §4.2: the vCard photo changed; make the PEP avatar the same."""
    after = await _vcard_hash(ctx, owner)
    if after == before:
        return
    current = await _pep_hash(ctx, owner)
    if not after:
        if before and current == before:  # the photo removed was the PEP avatar too
            await _publish(ctx, owner, NS_METADATA, None, metadata_for(None))
        return
    if current == after:
        return
    vcard = await _own_vcard(ctx, owner)
    image = None if vcard is None else vcard_photo(vcard)
    if image is None or image.sha1 != after or _too_big(ctx, len(image.data)):
        if before and current == before:  # not copyable: drop the stale PEP copy
            await _publish(ctx, owner, NS_METADATA, None, metadata_for(None))
        return
    data = payload(NS_DATA, "data")
    data.text = base64.b64encode(image.data).decode("ascii")
    if await _publish(ctx, owner, NS_DATA, after, data):
        await _publish(ctx, owner, NS_METADATA, after, metadata_for(image))


async def pep_to_vcard(ctx: Ctx, owner: JID, before: str) -> None:
    """XEP-0398 §4.1: the metadata node changed; make the vCard photo the same."""
    info = await _current_info(ctx, owner)
    in_vcard = await _vcard_hash(ctx, owner)
    if info is None:
        if before and in_vcard == before:  # the avatar disabled was the vCard photo too
            await _set_vcard_photo(ctx, owner, None)
        return
    if info.get("id", "").lower() == in_vcard:
        return
    image = await _copyable_pep_image(ctx, owner, info)
    if image is not None and await _fits_vcard(ctx, owner, image):
        await _set_vcard_photo(ctx, owner, image)
    elif before and in_vcard == before:  # not copyable: drop the stale vCard copy
        await _set_vcard_photo(ctx, owner, None)


async def _set_vcard_photo(ctx: Ctx, owner: JID, image: Image | None) -> None:
    vcard = await _own_vcard(ctx, owner)
    if vcard is None or (image is None and vcard.find(f"{_V}PHOTO") is None):
        return
    await _request(ctx, owner, "set", with_photo(vcard, image))


# ----------------------------------------------------------------------------- hooks


@dataclass(frozen=True, slots=True)
class Pending:
    """A client's IQ that changes one side of its avatar, awaiting its reply."""

    side: Literal["vcard", "pep"]
    before: str
    """The avatar (SHA-1) of that side before the change ("" when none)."""


PENDING: Final = OwnIqWatch[Pending]("avatar_conversion.pending", limit=MAX_PENDING)
LOCKS: Final = KeyedLocks()
"""Serializes the copies made for one account."""


def _changes_metadata(pubsub: Element) -> bool:
    """A pubsub set that publishes, retracts, purges or deletes the metadata node."""
    if pubsub.tag == f"{_P}pubsub":
        names = (f"{_P}publish", f"{_P}retract")
    elif pubsub.tag == f"{_O}pubsub":
        names = (f"{_O}purge", f"{_O}delete")
    else:
        return False
    return any(a.tag in names and a.get("node") == NS_METADATA for a in pubsub)


# Late: see the IQ as it is finally routed (after filters that might change or drop it).
@module.fold(hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def note_change(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element:
    """A client's IQ set that changes its vCard or its avatar metadata: remember what
    the avatar was, to copy the change when the reply says it succeeded."""
    if stanza.tag != "iq" or stanza.get("type") != "set" or len(stanza) != 1:
        return stanza
    query = stanza[0]
    side: Literal["vcard", "pep"]
    if query.tag == f"{_V}vCard":
        side = "vcard"
    elif _changes_metadata(query):
        side = "pep"
    else:
        return stanza
    if not PENDING.applies_to(stanza, pctx.session):
        return stanza
    owner = pctx.session.jid.bare
    before = await (_vcard_hash if side == "vcard" else _pep_hash)(ctx, owner)
    PENDING.note(ctx.sessions, stanza, pctx.session, Pending(side, before))
    return stanza


@module.fold(hooks.USER_RECEIVE_PACKET)
async def copy_on_success(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element:
    """The reply to a noted IQ: on success, update the other side before it is delivered."""
    outcome = PENDING.reply(ctx.sessions, stanza, pctx.session)
    if outcome is None or not outcome[1]:
        return stanza
    pending, owner = outcome[0], pctx.session.jid.bare
    lock = LOCKS.lock(owner)
    async with lock:
        if pending.side == "vcard":
            await vcard_to_pep(ctx, owner, pending.before)
        else:
            await pep_to_vcard(ctx, owner, pending.before)
    return stanza


@module.fold(hooks.DISCO_INFO)
async def disco_info(ctx: Ctx, info: DiscoInfo, query: DiscoQuery) -> DiscoInfo:
    """XEP-0398 §3: the account says its server converts avatars."""
    if not query.to.local or query.node is not None:
        return info
    return replace(info, features=(*info.features, FEATURE))
