"""The running server's pid file (``<data_dir>/xmppd.pid``), so that ``xmppd reload``
can find the server that uses the same configuration and signal it.

Written once the server listens, removed when it stops. A stale file (the process is
gone, or is not xmppd) is reported, never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Final

PID_FILE: Final = "xmppd.pid"


def write_pid_file(data_dir: Path) -> Path:
    path = data_dir / PID_FILE
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)
    return path


def remove_pid_file(path: Path) -> None:
    """Remove ``path`` if it still names this process (another server may have
    started on the same data directory since)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def running_pid(data_dir: Path) -> int | None:
    """The pid of the xmppd serving from ``data_dir``, if one runs."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"xmppd" in cmdline else None


def signal_running(data_dir: Path, sig: signal.Signals, what: str) -> int:
    """Send ``sig`` to the running server; the exit status for the CLI."""
    pid = running_pid(data_dir)
    if pid is None:
        print(
            f"no running xmppd found (no live process in {data_dir / PID_FILE})",
            file=sys.stderr,
        )
        return 1
    os.kill(pid, sig)
    print(f"{what} requested from xmppd (pid {pid}); its log says what changed")
    return 0
