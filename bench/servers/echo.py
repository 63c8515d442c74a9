"""The trivial echo server of :mod:`bench.echo_server`, launched like the real servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import DOMAIN, REPO_ROOT
from bench.servers.base import Rosters, Server


class EchoServer(Server):
    name = "echo"

    def __init__(self, workdir: Path, port: int, domain: str = DOMAIN) -> None:
        super().__init__(workdir, port, domain)
        self.roster_users = 0
        self.roster_size = 0

    def version(self) -> str:
        return f"bench.echo_server (Python {sys.version.split()[0]})"

    def credential_storage(self) -> str:
        return "none (any password is accepted)"

    def configure(self) -> None:
        pass

    def create_accounts(
        self, users: Sequence[str], password: str, rosters: Rosters | None = None
    ) -> None:
        """Any credentials are accepted; the rosters are the presence scenario's ring
        (:func:`bench.common.contact_indices`), which the echo server recomputes."""
        if rosters:
            self.roster_users = len(rosters)
            self.roster_size = len(next(iter(rosters.values())))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def cwd(self) -> Path:
        return REPO_ROOT

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.echo_server",
            "--port",
            str(self.port),
            "--domain",
            self.domain,
            "--roster-users",
            str(self.roster_users),
            "--roster-size",
            str(self.roster_size),
            *self._tls_args(),
        ]

    def _tls_args(self) -> list[str]:
        if not self.features.tls or self.certs is None:
            return []
        return ["--cert", str(self.certs.cert), "--key", str(self.certs.key)]
