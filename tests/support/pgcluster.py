"""A PostgreSQL server of the test's own, on a free port, that the test may stop and
start again (fault tests). Never the shared server on 5432.

Uses ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``; as root (initdb
refuses it) they run as the ``postgres`` user through ``runuser``. Where that is not
possible the test is skipped with the reason (and fails under ``CI=true``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port, service_unavailable


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PrivatePostgres:
    """One cluster: ``url`` for SQLAlchemy (asyncpg); :meth:`stop` and :meth:`start`."""

    bindir: Path
    base: Path
    port: int
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50"
        )
        self._pg_ctl("-w", "-t", "30", "-o", options, "-l", str(self.base / "log"), "start")

    def stop(self) -> None:
        """Stop it (fast shutdown: sessions are ended, as when a database goes away)."""
        self._pg_ctl("-w", "-t", "30", "-m", "fast", "stop")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None:
        service_unavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        raise AssertionError  # pragma: no cover (service_unavailable raises)
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="xmppd-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                service_unavailable("running as root and there is no postgres user for initdb")
            if shutil.which("runuser") is None:
                service_unavailable("running as root and runuser is missing")
            os.chown(base, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        init = subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(base / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if init.returncode != 0:
            service_unavailable(f"initdb failed: {init.stderr.decode(errors='replace')[-500:]}")
        cluster = PrivatePostgres(bindir, base, free_port(), run_as)
        cluster.start()
        try:
            yield cluster
        finally:
            if (cluster.data / "postmaster.pid").exists():
                cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
