"""``/api/v1/users/{jid}/export`` and ``/api/v1/users/{jid}/erasure``: data requests
(GDPR) over the API, on the logic of :mod:`xmppd.datarights` (the same as the CLI's
``xmppd export`` / ``xmppd erase`` and the admin ad-hoc command)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

from pydantic import BaseModel, Field

from xmppd import datarights
from xmppd.adminapi.base import ApiContext, ApiError, Call, Download, Route, not_found

MAX_EXPORT_BYTES: Final = 512 * 1024 * 1024
"""Largest export the API answers with (it is built in memory); above it, 413 and the
CLI (``xmppd export``), which writes to a file."""


class ErasureRequest(BaseModel):
    grace_days: float = Field(
        0.0,
        ge=0,
        le=datarights.MAX_GRACE / 86400,
        description="0: erase now; else disable the account now and erase it after this "
        "many days (kept across restarts).",
    )


class Erasure(BaseModel):
    """An erasure: done (``erase_at`` null) or pending until ``erase_at``."""

    jid: str
    erase_at: float | None = Field(None, description="Unix time; null: already erased")


class DataRequestResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/users/{jid}/export",
                self.export,
                "users",
                "Everything stored about an account: a .tar.gz of export.xml (XEP-0227) "
                "and its uploaded files",
                download="application/gzip",
                errors=(404, 413),
            ),
            Route(
                "POST",
                "/users/{jid}/erasure",
                self.erase,
                "users",
                "Erase an account and all its data, now or after a grace period during "
                "which it is disabled",
                body=ErasureRequest,
                response=Erasure,
                errors=(404,),
            ),
            Route(
                "GET",
                "/users/{jid}/erasure",
                self.pending,
                "read-only",
                "When an account's pending erasure is due",
                response=Erasure,
                errors=(404,),
            ),
            Route(
                "DELETE",
                "/users/{jid}/erasure",
                self.cancel,
                "users",
                "Cancel a pending erasure (the account stays disabled until its password "
                "is set again)",
                status=204,
                errors=(404,),
            ),
        ]

    async def export(self, call: Call) -> Download:
        jid = await self.api.existing_account(call.params["jid"])
        files = await datarights.export_files(self.api.core, jid)
        size = sum(f.path.stat().st_size for f in files if f.path.exists())
        if size > MAX_EXPORT_BYTES:
            raise ApiError(
                413,
                "too-large",
                f"the export holds {size} bytes of files; use `xmppd export {jid}`",
            )
        with tempfile.TemporaryDirectory(prefix="xmppd-export-") as tmp:
            dest = Path(tmp) / "export.tar.gz"
            await datarights.write_export(self.api.core, jid, dest)
            data = dest.read_bytes()
        return Download(filename=f"{jid.local}@{jid.domain}.tar.gz", data=data)

    async def erase(self, call: Call) -> Erasure:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        body: ErasureRequest = call.body
        pending = await datarights.erase_user(self.api.core, jid, body.grace_days * 86400)
        return Erasure(jid=str(jid), erase_at=None if pending is None else pending.erase_at)

    async def pending(self, call: Call) -> Erasure:
        jid = self.api.account(call.params["jid"])
        pending = await datarights.pending_erasure(self.api.core, jid)
        if pending is None:
            raise not_found(f"no erasure of {jid} is pending")
        return Erasure(jid=str(jid), erase_at=pending.erase_at)

    async def cancel(self, call: Call) -> None:
        jid = self.api.account(call.params["jid"])
        call.audit_target = str(jid)
        if not await datarights.cancel_erasure(self.api.core, jid):
            raise not_found(f"no erasure of {jid} is pending")
