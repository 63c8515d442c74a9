"""A real xmppd server run inside the test's event loop, on real loopback sockets.

For tests that must read the server's own state as an operator would (its metrics and
health registries) while clients use it over the network: the same configuration as
``running_server`` writes, the same ``Server.start``, listeners on ports the OS picks.
The object it yields has the attributes the test clients use (``domain``,
``starttls_port``, ``direct_tls_port``, ``cafile``), so ``XmlClient`` and ``Slix``
connect to it as to a server in a subprocess.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.server import DEFAULT_TEST_MODULES, postgres_database, write_config
from xmppd.config import load_config
from xmppd.server import Server


@dataclass
class InProcessServer:
    """A started ``Server`` and where clients find it."""

    server: Server
    data_dir: Path
    config_path: Path
    starttls_port: int
    direct_tls_port: int
    domain: str
    backend: str
    storage_url: str
    http_port: int | None = None

    @property
    def http_url(self) -> str:
        assert self.http_port is not None, "started without http"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def cafile(self) -> Path:
        return self.data_dir / "certs" / f"{self.domain}.crt"


@asynccontextmanager
async def inprocess_server(
    tmp: Path,
    *,
    backend: str = "sqlite",
    modules: dict[str, dict[str, Any]] | None = None,
    domain: str = "localhost",
    storage_url: str | None = None,
    http: bool = False,
    extra: str = "",
) -> AsyncIterator[InProcessServer]:
    """Start a server with ``backend`` storage (or ``storage_url`` as given), stop it after."""
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    stack = ExitStack()
    try:
        if storage_url is not None:
            url = storage_url
        elif backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp / 'xmppd.sqlite3'}"
        else:
            # The PostgreSQL helper runs its own event loop: enter and leave it off this one.
            url = await asyncio.to_thread(stack.enter_context, postgres_database())
        data_dir = tmp / "data"
        config_path = tmp / "xmppd.toml"
        write_config(
            config_path,
            data_dir=data_dir,
            storage_url=url,
            starttls_port=0,
            direct_tls_port=0,
            domain=domain,
            modules=DEFAULT_TEST_MODULES if modules is None else modules,
            http_port=0 if http else None,
            extra=extra,
        )
        server = Server(load_config(config_path))
        await server.start()
        try:
            ports = dict(server.listening_ports)
            yield InProcessServer(
                server,
                data_dir,
                config_path,
                ports["starttls"],
                ports["direct"],
                domain,
                backend,
                url,
                ports.get("http"),
            )
        finally:
            await server.stop()
    finally:
        await asyncio.to_thread(stack.close)
