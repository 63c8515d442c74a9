"""``server.workers``: one supervisor process and N worker processes on one machine.

``xmppd run`` with ``server.workers`` > 1 becomes the supervisor. It does, once, what
must not be done N times — create the data directory, generate missing certificates,
bring the database schema up to date, settle the server secret (in the database when
it lives there) — then starts the workers, each ``xmppd run --worker <i>`` with the
same configuration file:

* every worker binds every listener with SO_REUSEPORT (the kernel spreads new
  connections over them) and is a cluster node named ``<node>-w<i>`` (the workers form
  a local cluster through Redis, as nodes on several machines do);
* each serves its own control socket (``<data_dir>/xmppd-w<i>.ctl``) and, on the HTTP
  listeners, its own ``/metrics`` (every series of a worker carries ``node``);
* the supervisor writes the pid file, so ``xmppd reload`` (SIGHUP) reaches it: it
  passes SIGHUP on to every worker; SIGTERM and SIGINT stop every worker, and the
  supervisor exits when they all have;
* a worker that dies is started again after a back-off (0.5 s, doubling up to 30 s,
  back to 0.5 s once a worker ran for a minute); meanwhile the other workers keep
  serving, and its sessions are cleaned up by its next run (or by the others, when
  it stays away longer than ``[cluster] node_timeout``);
* a worker that fails before it ever listened on its first start (a port in use, a
  bad certificate) stops everything: the supervisor exits with its status.

Workers are told their supervisor's pid (``XMPPD_SUPERVISOR``) and ask the kernel to
end them if it dies (``PR_SET_PDEATHSIG``), so no orphan keeps the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Final

from xmppd.config import ServerConfig

log = logging.getLogger(__name__)

SUPERVISOR_ENV: Final = "XMPPD_SUPERVISOR"
"""The supervisor's pid, in a worker's environment."""
READY_FD_ENV: Final = "XMPPD_READY_FD"
"""The pipe a worker writes one byte to once it listens."""
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
STABLE_AFTER: Final = 60.0
"""A worker that ran this long is healthy: its next restart waits FIRST_BACKOFF again."""
STOP_TIMEOUT: Final = 60.0
"""How long stopping workers may take before they are killed."""
_PR_SET_PDEATHSIG: Final = 1


async def prepare(config: ServerConfig) -> None:
    """What the supervisor does before the workers start: data directory,
    certificates, database schema, server secret."""
    from xmppd.server_secret import load as load_secret
    from xmppd.storage.database import Database
    from xmppd.tls import load_host_certificate

    data_dir = config.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)

    def certificates() -> None:
        tls = config.tls
        for domain, section in config.hosts.items():
            load_host_certificate(
                domain,
                section.certificate or tls.certificate,
                section.key or tls.key,
                data_dir,
                min_version=tls.min_version,
                session_tickets=tls.session_tickets,
            )

    await asyncio.to_thread(certificates)
    db = Database(config.storage_url(), pool_size=1)
    try:
        await db.start(auto_upgrade=config.storage.auto_upgrade)
        await load_secret(config, db)
    finally:
        await db.close()


def worker_command(config: ServerConfig, index: int, *, loopback: bool) -> list[str]:
    """The command line of worker ``index`` (the same configuration file)."""
    command = [sys.executable, "-m", "xmppd"]
    if config.source is not None:
        command += ["--config", str(Path(config.source).resolve())]
    command += ["run", "--worker", str(index)]
    if loopback:
        command.append("--loopback")
    return command


class Supervisor:
    """Starts ``count`` workers, keeps them running, passes signals on to them."""

    def __init__(self, config: ServerConfig, count: int, *, loopback: bool = False) -> None:
        self.config = config
        self.count = count
        self.loopback = loopback
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        """The running worker processes by index."""
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._failed: int | None = None
        self._killer: asyncio.Task[None] | None = None

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (or a worker's failure on its first start): the exit
        status of ``xmppd run``."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        log.info("supervisor (pid %d): starting %d workers", os.getpid(), self.count)
        try:
            keepers = [
                asyncio.create_task(self._keep(i), name=f"worker-{i}") for i in range(self.count)
            ]
            results = await asyncio.gather(*keepers, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        finally:
            if self._killer is not None:
                self._killer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._killer
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("supervisor: every worker has stopped")
        return self._failed or 0

    def _stop(self, why: str) -> None:
        if self._stopping.is_set():
            return
        log.info("supervisor: %s: stopping %d workers", why, len(self.workers))
        self._stopping.set()
        self._forward(signal.SIGTERM)
        self._killer = asyncio.get_running_loop().create_task(self._kill_after(STOP_TIMEOUT))

    def _forward(self, sig: signal.Signals) -> None:
        for index, proc in list(self.workers.items()):
            if proc.returncode is None:
                log.debug("supervisor: %s to worker %d (pid %d)", sig.name, index, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _keep(self, index: int) -> None:
        """Run worker ``index``, starting it again whenever it dies."""
        loop = asyncio.get_running_loop()
        failures = 0
        first = True
        while not self._stopping.is_set():
            started = loop.time()
            try:
                ready, code = await self._run_once(index)
            except OSError as exc:  # cannot even start a process: stop them all
                log.error("supervisor: cannot start worker %d: %s", index, exc)
                self._failed = 1
                self._stop("a worker could not start")
                return
            if self._stopping.is_set():
                return
            if first and not ready:
                log.error(
                    "supervisor: worker %d failed at start (status %s); stopping", index, code
                )
                self._failed = code if code else 1
                self._stop("a worker could not start")
                return
            first = False
            failures = 0 if loop.time() - started >= STABLE_AFTER else failures + 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1)) if failures else 0.0
            delay = max(delay, FIRST_BACKOFF)
            log.warning(
                "supervisor: worker %d exited (status %s); starting it again in %.1f s",
                index,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            self.restarts += 1

    async def _run_once(self, index: int) -> tuple[bool, int | None]:
        """Start worker ``index`` and wait for it to end: (did it ever listen, status)."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[READY_FD_ENV] = str(write_fd)
        try:
            proc = await asyncio.create_subprocess_exec(
                *worker_command(self.config, index, loopback=self.loopback),
                pass_fds=(write_fd,),
                env=env,
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.workers[index] = proc
        log.info("supervisor: worker %d started (pid %d)", index, proc.pid)
        try:
            ready = await _wait_ready(read_fd)
            if ready:
                log.info("supervisor: worker %d (pid %d) is serving", index, proc.pid)
            if self._stopping.is_set() and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # started while stopping
            code = await proc.wait()
        finally:
            self.workers.pop(index, None)
        return ready, code

    async def _kill_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        for index, proc in list(self.workers.items()):
            if proc.returncode is None:
                log.warning(
                    "supervisor: worker %d (pid %d) did not stop; killing it", index, proc.pid
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


async def _wait_ready(read_fd: int) -> bool:
    """True once the worker wrote its byte; False if it ended first (EOF)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return bool(await reader.read(1))
    finally:
        transport.close()


# ---------------------------------------------------------------------- in a worker


def die_with_supervisor() -> None:
    """In a worker: end (SIGTERM) when the supervisor dies, and exit now if it already
    has (Linux only; elsewhere a no-op)."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if str(os.getppid()) != parent:
        raise SystemExit("the supervisor is gone")


def signal_ready() -> None:
    """In a worker: tell the supervisor that this worker listens."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(int(fd), b"1")
        os.close(int(fd))
