"""``bench.common.wait_port`` with a process: only that process listening counts (a
parallel test's server once held the port given to a bench server, which was then
taken for started and the test logged in to the wrong server)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from bench.common import listens_on, wait_port
from tests.support.server import free_port

LISTENER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
time.sleep(30)
"""


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", *args])


def test_someone_else_listening_is_not_the_server_starting() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = _spawn("import time; time.sleep(30)")
        try:
            assert not listens_on(port, proc.pid)
            with pytest.raises(TimeoutError):
                wait_port(port, 1.0, proc)
            wait_port(port, 1.0)  # without a process, anyone listening will do
        finally:
            proc.kill()
            proc.wait()


def test_the_process_itself_listening_is_seen() -> None:
    port = free_port()
    proc = _spawn(LISTENER, str(port))
    try:
        wait_port(port, 20.0, proc)
        assert listens_on(port, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exits_is_reported() -> None:
    proc = _spawn("raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="status 3"):
        wait_port(free_port(), 20.0, proc)
