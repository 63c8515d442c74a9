"""Launchers for the servers under test, one small module per server."""

from __future__ import annotations

from pathlib import Path

from bench.servers.base import Server, ServerUnavailable
from bench.servers.echo import EchoServer
from bench.servers.ejabberd import EjabberdServer
from bench.servers.prosody import ProsodyServer
from bench.servers.xmppd import XmppdServer

SERVERS: dict[str, type[Server]] = {
    "xmppd": XmppdServer,
    "prosody": ProsodyServer,
    "ejabberd": EjabberdServer,
    "echo": EchoServer,
}


def make_server(name: str, workdir: Path, port: int) -> Server:
    return SERVERS[name](workdir, port)


__all__ = ["SERVERS", "Server", "ServerUnavailable", "make_server"]
