"""XEP-0202: Entity Time."""

from __future__ import annotations

import datetime

from xmppd.api import IqRequest, Module, ModuleContext, NoOptions, Scope, ns
from xmppd.api.stanza import Element, child, payload

module: Module[NoOptions] = Module("time", "XEP-0202: Entity Time", protocols=("XEP-0202 v2.0",))


@module.iq("get", ns.TIME, "time", to=Scope.HOST)
async def entity_time(ctx: ModuleContext[NoOptions], req: IqRequest) -> Element:
    now = datetime.datetime.now(datetime.UTC)
    reply = payload(ns.TIME, "time")
    child(reply, "tzo", text="+00:00")
    child(reply, "utc", text=now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
    return req.result(reply)
