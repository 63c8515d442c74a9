"""Common launcher logic: pinned start on the server core, readiness wait, stop, RSS."""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, ClassVar

from bench.common import (
    DOMAIN,
    NICE,
    SERVER_CPU,
    apply_nice,
    tree_cpu_seconds,
    tree_rss_kb,
    wait_port,
)


class ServerUnavailable(RuntimeError):
    """The server cannot be run on this machine (not installed, not implemented yet...)."""


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
    def create_accounts(self, users: Sequence[str], password: str) -> None:
        """Create ``users`` (local parts) in bulk; called after :meth:`configure`, stopped."""

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
