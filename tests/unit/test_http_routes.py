"""The HTTP route registry: exact paths and prefixes, owners, HEAD from GET."""

from __future__ import annotations

import pytest
from aiohttp import web

from xmppd.httproutes import HttpRoutes, RouteTaken


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def other(request: web.Request) -> web.StreamResponse:
    return web.Response(text="other")


def test_exact_paths_and_the_longest_prefix_match() -> None:
    routes = HttpRoutes()
    assert routes.add("GET", "/upload/", ok, owner="mod_a")
    routes.add("PUT", "/upload/big/", other, owner="mod_a")
    routes.add("GET", "/hello", other)
    assert routes.find("GET", "/upload/slot/name.png") is ok
    assert routes.find("PUT", "/upload/big/x") is other
    assert routes.find("GET", "/hello") is other
    assert routes.find("HEAD", "/hello") is other  # GET answers HEAD
    assert routes.find("GET", "/hello/more") is None
    assert routes.find("POST", "/hello") is None
    assert routes.methods_for("/hello") is not None
    assert routes.methods_for("/nothing") is None


def test_a_route_has_one_owner() -> None:
    routes = HttpRoutes()
    assert routes.add("GET", "/x", ok, owner="mod_a")
    assert not routes.add("GET", "/x", other, owner="mod_a")  # the same module, another host
    assert routes.find("GET", "/x") is ok
    with pytest.raises(RouteTaken):
        routes.add("GET", "/x", other, owner="mod_b")
    routes.remove("GET", "/x")
    assert routes.find("GET", "/x") is None
    assert routes.add("GET", "/x", other, owner="mod_b")


def test_bad_routes_are_refused() -> None:
    routes = HttpRoutes()
    with pytest.raises(ValueError):
        routes.add("FETCH", "/x", ok)
    with pytest.raises(ValueError):
        routes.add("GET", "x", ok)
