"""Common launcher logic: pinned start on the server core, readiness wait, stop, RSS."""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar, Literal

from bench import pg
from bench.certs import CertFiles
from bench.common import (
    DOMAIN,
    NICE,
    SERVER_CPU,
    apply_nice,
    tree_cpu_seconds,
    tree_rss_kb,
    wait_port,
)

ArchiveBackend = Literal["sqlite", "postgresql"]
Rosters = Mapping[str, Sequence[str]]
"""Local part -> local parts of its contacts (every subscription mutual, ``both``)."""


class ServerUnavailable(RuntimeError):
    """The server cannot be run on this machine (not installed, not implemented yet...)."""


@dataclass(frozen=True, slots=True)
class Features:
    """What a scenario needs on top of the base configuration (roster, presence, disco,
    ping; plain TCP; no archive)."""

    tls: bool = False
    """STARTTLS offered and required, with the run's certificate."""
    archive: ArchiveBackend | None = None
    """Message archive (XEP-0313) on for every account, stored in this database."""
    muc: bool = False
    """Group chat (XEP-0045) service at ``conference.<domain>``: temporary rooms, usable
    as soon as created (no locking), no history on join, no rate or size limit below the
    benchmark's (see :data:`MUC_MAX_OCCUPANTS`)."""
    mobile: bool = False
    """What a phone relies on (the ``storm`` scenario): XEP-0198 stream management with
    resumption, and offline storage (XEP-0160) for messages to accounts without a
    session."""
    registration: bool = False
    """In-band registration (XEP-0077) open to anyone, with no interval between two
    registrations from one address (all of the bench's come from 127.0.0.1)."""
    web: bool = False
    """An HTTP listener on :attr:`Server.http_port` (loopback) with XMPP over WebSocket at
    :meth:`Server.ws_url` and HTTP File Upload (XEP-0363) at ``upload.<domain>``, files up
    to :data:`UPLOAD_MAX_BYTES`, no quota below the benchmark's."""


#: Occupants a room may hold, where a server has a limit (the largest room is 5,000).
MUC_MAX_OCCUPANTS = 10_000


#: Largest file the upload services accept (``web``), and bytes a user may upload.
UPLOAD_MAX_BYTES = 64 * 1024 * 1024
UPLOAD_QUOTA_BYTES = 16 * 1024 * 1024 * 1024


def upload_domain(domain: str) -> str:
    """The HTTP File Upload service of ``domain``."""
    return f"upload.{domain}"


def muc_domain(domain: str) -> str:
    """The group chat service of ``domain``."""
    return f"conference.{domain}"


def sqlite_count(path: Path, table: str) -> int:
    """Rows of ``table`` in an SQLite file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


class Server(abc.ABC):
    """One server under test, run as our own child process from a private directory."""

    name: ClassVar[str]
    #: seconds to wait for the listener after start
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, workdir: Path, port: int, domain: str = DOMAIN) -> None:
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.domain = domain
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "server.log"
        self._log: IO[bytes] | None = None
        #: store plaintext passwords where the server can (``--plain-storage``)
        self.plain_storage = False
        #: features of the configuration written by :meth:`configure`
        self.features = Features()
        #: certificate for :attr:`Features.tls` (set by the runner)
        self.certs: CertFiles | None = None
        #: database of the archive while :attr:`Features.archive` is "postgresql"
        self.pg_database: str | None = None
        #: loopback port of the HTTP listener while :attr:`Features.web` (set by the
        #: scenario before :meth:`using`)
        self.http_port = 0

    # -- to implement ---------------------------------------------------------------------
    def check_available(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`ServerUnavailable` when this server cannot be started."""

    @abc.abstractmethod
    def version(self) -> str:
        """Human-readable version string of the server (and its runtime)."""

    @abc.abstractmethod
    def configure(self) -> None:
        """Write the configuration into :attr:`dir`."""

    @abc.abstractmethod
    def create_accounts(
        self, users: Sequence[str], password: str, rosters: Rosters | None = None
    ) -> None:
        """Create ``users`` (local parts) in bulk, and the roster items of ``rosters``;
        called after :meth:`configure`, while the server is stopped."""

    def ws_url(self) -> str:
        """The XMPP-over-WebSocket endpoint while :attr:`Features.web`."""
        raise ServerUnavailable(f"WebSocket is not configured for {self.name}")

    def archive_rows(self) -> int | None:
        """Rows in the message archive (after a run with :attr:`Features.archive`)."""
        return None

    def fill_archive(self, user: str, peers: Sequence[str], count: int) -> list[int]:
        """Write ``count`` archived messages of ``user`` straight into the archive
        database (server stopped); returns their archive ids, oldest first."""
        raise ServerUnavailable(f"archive-query is not implemented for {self.name}")

    def prepare_archive(self, users: Sequence[str], password: str) -> None:  # noqa: B027
        """Make the archive database of :attr:`features` ready (schema, accounts when
        the server keeps them there); :attr:`pg_database` exists already."""

    @contextlib.contextmanager
    def using(
        self, features: Features, users: Sequence[str] = (), password: str = ""
    ) -> Iterator[None]:
        """Run with ``features`` (a PostgreSQL archive gets a database of its own,
        dropped afterwards); the base configuration is restored on exit."""
        self.stop()
        self.features = features
        try:
            if features.archive == "postgresql":
                self.pg_database = pg.new_name(self.name)
                pg.create_database(self.pg_database)
            self.configure()
            if features.archive is not None:
                self.prepare_archive(users, password)
            yield
        finally:
            self.stop()
            if self.pg_database is not None:
                with contextlib.suppress(pg.PostgresUnavailable):
                    pg.drop_database(self.pg_database)
                self.pg_database = None
            self.features = Features()
            self.configure()

    @abc.abstractmethod
    def command(self) -> list[str]:
        """Foreground command line of the server (without the CPU pinning)."""

    def credential_storage(self) -> str:
        """How account passwords are stored (what a PLAIN login has to verify against)."""
        return "plain" if self.plain_storage else "scram-sha-1, 4096 iterations"

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.dir

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already running")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *self.command()],
            cwd=self.cwd(),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal must not hit the server directly
        )
        apply_nice(self.proc.pid, NICE["value"])
        try:
            wait_port(self.port, self.start_timeout, self.proc, self.name)
            self.after_start()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, (RuntimeError, TimeoutError)):
                raise RuntimeError(f"{exc}; log tail:\n{self.log_tail()}") from exc
            raise

    def run_once(self, timeout: float) -> int:
        """Run the server command pinned like :meth:`start` until it exits by itself
        (a set-up run); killed after ``timeout`` s.  Returns the exit status."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== run once {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), *self.command()],
                cwd=self.cwd(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                return proc.wait(timeout)
            except BaseException:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                raise

    def after_start(self) -> None:
        """Extra readiness wait after the port accepts connections."""
        time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(5)
            # Anything the server left behind in its own session (helpers) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        """RSS of the server process and its children, KiB."""
        return tree_rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time used by the server process and its children so far."""
        return tree_cpu_seconds(self.pid) if self.proc is not None else 0.0

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
