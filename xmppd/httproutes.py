"""The routes of the HTTP listeners, as one registry the core owns.

The HTTP front (:mod:`xmppd.transports.http`) serves one aiohttp application on
every ``kind = "http"`` listener; it looks each request up here, at request time, so
a module loaded or unloaded while the server runs adds or removes its routes
(``ModuleContext.http_route``) without rebuilding anything. The core's own routes
(WebSocket, BOSH, discovery) are registered the same way.

A path is matched exactly, or, when it ends with ``/``, as a prefix (the longest
registered prefix wins): ``/upload/`` serves ``/upload/<slot>/<name>``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

HttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An aiohttp request handler."""

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@dataclass(frozen=True, slots=True)
class HttpClient:
    """Who sent an HTTP request, as the HTTP front worked it out."""

    address: str
    """The client's IP address: the peer's, or (from a trusted proxy) the last
    untrusted address of ``X-Forwarded-For``."""
    secure: bool
    """The request came over TLS (ours, or a trusted proxy's), or from loopback with
    ``http.loopback_is_secure``."""
    base_url: str
    """Where the outside world reaches this server (``http.public_url``, or the
    request's scheme and ``Host``), without a trailing slash."""


CLIENT: Final = web.RequestKey("xmppd_http_client", HttpClient)
"""Set on every request by the HTTP front before any handler runs."""


def client_of(request: web.Request) -> HttpClient:
    """The :class:`HttpClient` of a request served by an HTTP listener."""
    return request[CLIENT]


class RouteTaken(ValueError):
    """Something else already serves this method and path."""


class HttpRoutes:
    """(method, path) → handler, for every HTTP listener of the server."""

    __slots__ = ("_exact", "_owners", "_prefixes")

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, HttpHandler]] = {}
        self._prefixes: dict[str, dict[str, HttpHandler]] = {}
        self._owners: dict[tuple[str, str], str] = {}

    def add(self, method: str, path: str, handler: HttpHandler, *, owner: str = "core") -> bool:
        """Serve ``method`` (``GET``, ``PUT``... ; ``GET`` also answers ``HEAD``) on
        ``path``. ``False`` (nothing changes) when ``owner`` serves it already (a module
        loaded on several hosts); :class:`RouteTaken` when someone else does."""
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unknown HTTP method {method!r}")
        if not path.startswith("/"):
            raise ValueError(f"an HTTP path starts with '/': {path!r}")
        table = self._prefixes if path.endswith("/") else self._exact
        methods = table.setdefault(path, {})
        if method in methods:
            if self._owners.get((method, path)) == owner:
                return False
            raise RouteTaken(f"{method} {path} is already served")
        methods[method] = handler
        self._owners[(method, path)] = owner
        return True

    def remove(self, method: str, path: str) -> None:
        table = self._prefixes if path.endswith("/") else self._exact
        methods = table.get(path)
        self._owners.pop((method.upper(), path), None)
        if methods is not None:
            methods.pop(method.upper(), None)
            if not methods:
                del table[path]

    def methods_for(self, path: str) -> dict[str, HttpHandler] | None:
        """The handlers by method of the route ``path`` falls under (``None``: no route)."""
        found = self._exact.get(path)
        if found is not None:
            return found
        best: str | None = None
        for prefix in self._prefixes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self._prefixes[best] if best is not None else None

    def find(self, method: str, path: str) -> HttpHandler | None:
        """The handler for a request, ``None`` when nothing serves it."""
        methods = self.methods_for(path)
        if methods is None:
            return None
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        return handler
