"""The trivial echo server of :mod:`bench.echo_server`, launched like the real servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import REPO_ROOT
from bench.servers.base import Server


class EchoServer(Server):
    name = "echo"

    def version(self) -> str:
        return f"bench.echo_server (Python {sys.version.split()[0]})"

    def credential_storage(self) -> str:
        return "none (any password is accepted)"

    def configure(self) -> None:
        pass

    def create_accounts(self, users: Sequence[str], password: str) -> None:
        pass  # any credentials are accepted

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
        ]
