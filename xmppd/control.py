"""The local control socket: the REST API of a running server, for the ``xmppd`` CLI.

A running server serves ``/api/v1`` on the Unix socket ``<data_dir>/xmppd.ctl``
(mode 0600: whoever may read the server's data directory may administer it, as with
the database itself), acting with scope ``admin`` as the principal
``control-socket``. The CLI's account commands try it first, so that ``xmppd
deluser`` ends the user's sessions through the server and ``xmppd users`` shows who
is online; when no server answers there, they work on the database directly.

With ``server.workers`` each worker serves its own socket, ``xmppd-w<N>.ctl``; the
CLI asks whichever answers first. Any worker acts for all of them: the session
registry of a cluster sees and ends sessions on every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web

from xmppd.adminapi.base import Principal
from xmppd.httproutes import CLIENT, HttpClient
from xmppd.metrics import CONTENT_TYPE
from xmppd.workermetrics import NODE_HEADER

if TYPE_CHECKING:
    from xmppd.adminapi import AdminApi

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "xmppd.ctl"
MAX_SOCKET_PATH: Final = 107
"""The longest Unix socket path Linux binds (``sun_path`` is 108 bytes)."""
PRINCIPAL: Final = Principal("local", "control-socket", "admin")


def socket_path(data_dir: Path, worker: int | None = None) -> Path:
    """The control socket of the server (or of its worker number ``worker``)."""
    name = SOCKET_NAME if worker is None else f"xmppd-w{worker}.ctl"
    return data_dir.resolve() / name


def socket_paths(data_dir: Path) -> list[Path]:
    """Every control socket present in ``data_dir``: the single server's, then the
    workers' in worker order."""
    single = socket_path(data_dir)
    workers = sorted(
        data_dir.resolve().glob("xmppd-w*.ctl"),
        key=lambda p: int(p.stem[len("xmppd-w") :]) if p.stem[len("xmppd-w") :].isdigit() else 0,
    )
    return ([single] if single.exists() else []) + workers


class ControlSocket:
    """Serves ``api`` on ``<data_dir>/xmppd.ctl`` (``xmppd-w<N>.ctl`` for worker N)
    while the server runs."""

    def __init__(
        self,
        api: AdminApi,
        data_dir: Path,
        *,
        worker: int | None = None,
        metrics: Callable[[], bytes] | None = None,
        node: str = "",
    ) -> None:
        """``metrics`` (a worker's): also serve ``GET /metrics``, this process's own
        metrics, for the worker that answers a scrape (:mod:`xmppd.workermetrics`)."""
        self.api = api
        self.path = socket_path(data_dir, worker)
        self._metrics = metrics
        self._node = node
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            log.warning("no control socket: the path %s is too long for a Unix socket", self.path)
            return
        app = web.Application(client_max_size=1024 * 1024)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a server that did not stop cleanly
        old = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve_metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._metrics is not None
        return web.Response(
            body=self._metrics(), headers={NODE_HEADER: self._node, "Content-Type": CONTENT_TYPE}
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request[CLIENT] = HttpClient(address="local", secure=True, base_url="")
        return await self.api.dispatch(request, as_principal=PRINCIPAL)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class ServerDown(Exception):
    """No running server answers on the control socket."""


class _NotConnected(ServerDown):
    """Nothing accepted the connection on one socket (the request never ran)."""


async def call(
    data_dir: Path, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One request to the running server's API (``path`` under ``/api/v1``): its
    status and decoded JSON (``None`` when empty). :class:`ServerDown` when no server
    answers on any control socket (with workers: the first worker that answers)."""
    found = socket_paths(data_dir)
    if not found:
        raise ServerDown(str(socket_path(data_dir)))
    for sock in found:
        try:
            return await _call(sock, method, path, body)
        except _NotConnected:
            continue  # a stale socket, or a worker restarting: try the next one
    raise ServerDown(", ".join(str(p) for p in found))


async def _call(sock: Path, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=str(sock))
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, f"http://xmppd/api/v1{path}", json=body) as response,
        ):
            text = await response.text()
            return response.status, json.loads(text) if text else None
    except (aiohttp.ClientConnectorError, FileNotFoundError) as exc:
        raise _NotConnected(str(exc)) from None
    except aiohttp.ClientConnectionError as exc:  # connected: the request may have run
        raise ServerDown(str(exc)) from None
