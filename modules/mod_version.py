"""XEP-0092: Software Version."""

from __future__ import annotations

import platform

from pydantic import Field

from xmppd.api import IqRequest, Module, ModuleContext, Options, Scope, ns
from xmppd.api.stanza import Element, child, payload


class VersionOptions(Options):
    name: str = Field("xmppd", description="Software name reported to clients.")
    show_os: bool = Field(False, description="Also report the operating system.")


module = Module(
    "version",
    "XEP-0092: Software Version",
    options=VersionOptions,
    protocols=("XEP-0092 v1.1",),
)


@module.iq("get", ns.VERSION, "query", to=Scope.HOST)
async def software_version(ctx: ModuleContext[VersionOptions], req: IqRequest) -> Element:
    query = payload(ns.VERSION, "query")
    child(query, "name", text=ctx.options.name)
    child(query, "version", text=_server_version())
    if ctx.options.show_os:
        child(query, "os", text=f"{platform.system()} {platform.release()}")
    return req.result(query)


def _server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmppd")
    except PackageNotFoundError:
        return "unknown"
