"""Small helpers shared by the launchers, the generator and the scenarios."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Container
from pathlib import Path

#: XMPP domain served by every server under test.
DOMAIN = "bench.local"
#: Every benchmark account has this password (keeps bulk account creation cheap).
PASSWORD = "bench-secret"
#: SCRAM/PBKDF2 iteration count used for stored credentials on every server.
SCRAM_ITERATIONS = 4096
#: Core the server under test is pinned to, and the core of the load generator.
SERVER_CPU = 0
GENERATOR_CPU = 1
#: Ports that belong to other services on this machine or to the XMPP defaults.
FORBIDDEN_PORTS = frozenset({1883, 3306, 4222, 4369, 5222, 5223, 5269, 5280, 5432, 5672, 6379})

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


#: Salt of every benchmark account's SCRAM credentials, on every server (see
#: :func:`bench.xmpp.scram_keys`: the generator then runs PBKDF2 once per server).
SCRAM_SALT = b"xmppd-bench-salt"


def user_name(index: int, prefix: str = "u") -> str:
    """Local part of the benchmark account number ``index``.

    ``u00000``... are the accounts of the sessions, TLS and chat scenarios (empty
    rosters), ``p00000``... those of the presence scenario (rosters of ``roster_size``
    mutual contacts).
    """
    return f"{prefix}{index:05d}"


PRESENCE_PREFIX = "p"


def contact_indices(index: int, users: int, roster_size: int) -> list[int]:
    """Contacts of presence account ``index``: the ``roster_size / 2`` accounts on each
    side of it on a ring of ``users``, so every roster has ``roster_size`` entries and
    every subscription is mutual (``both``)."""
    half = roster_size // 2
    if users <= 2 * half:
        raise ValueError(f"{users} presence users cannot have {roster_size} contacts each")
    return [(index + d) % users for d in range(-half, half + 1) if d != 0]


def presence_rosters(users: int, roster_size: int) -> dict[str, list[str]]:
    """Local part -> contacts' local parts, for every presence account."""
    return {
        user_name(i, PRESENCE_PREFIX): [
            user_name(c, PRESENCE_PREFIX) for c in contact_indices(i, users, roster_size)
        ]
        for i in range(users)
    }


def free_port(address: str = "127.0.0.1", avoid: Container[int] = ()) -> int:
    """A currently unused TCP port of the loopback ``address`` that is none of the
    forbidden ones nor in ``avoid``, claimed (:func:`claim_port`) against the other
    processes of a test run."""
    for attempt in range(10_000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            port = int(sock.getsockname()[1])
        if port in FORBIDDEN_PORTS or port <= 1024 or port in avoid:
            continue
        if claim_port(port) or attempt > 5_000:  # the claims are a help, never a hang
            return port
    raise RuntimeError("no free loopback port")


_CLAIMS = Path(tempfile.gettempdir()) / "xmppd-test-ports"
"""Where :func:`free_port` claims ports across the processes of one test run."""
_CLAIM_SECONDS = 600.0
"""How long a claimed port stays withheld from other processes (longer than a test
that stops and restarts its server on the same ports; short enough that a whole run
claims a few thousand of the kernel's ~28,000 ephemeral ports at a time)."""


def claim_port(port: int) -> bool:
    """Claim ``port`` for this process among the processes of a test run (the suite's
    parallel workers): the kernel can offer the port another worker was just given,
    before that worker's server binds it, and a server then started on it finds the
    other one listening (a bench test once logged in to another worker's server and got
    ``host-unknown``). A claim is a file made exclusively; one older than
    :data:`_CLAIM_SECONDS` is stale and taken over."""
    _CLAIMS.mkdir(exist_ok=True)
    claim = _CLAIMS / str(port)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        try:
            if time.time() - claim.stat().st_mtime < _CLAIM_SECONDS:
                return False
            os.utime(claim)
        except FileNotFoundError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "server"
) -> None:
    """Block until something accepts TCP connections on ``port``; given ``proc``, until
    ``proc`` or one of its descendants does (another program listening on the port, such
    as a parallel test's server given the same free port, does not count: ``proc`` then
    fails to bind and exits, which is reported)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        if port_open(port) and (proc is None or listens_on(port, proc.pid)):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def listens_on(port: int, pid: int) -> bool:
    """Whether a listening TCP socket on ``port`` is open in ``pid`` or a descendant
    (the sockets of /proc/net/tcp{,6} in state LISTEN, matched by inode to the processes'
    file descriptors)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    for member in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{member}/fd/{fd}") in inodes:
                    return True
            except OSError:
                continue
    return False


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed by one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` plus its descendants, seconds."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def tree_rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` plus its descendants, in KiB."""
    return sum(rss_kb(p) for p in process_tree(pid))


CpuSample = dict[int, tuple[int, int]]


def cpu_sample() -> CpuSample:
    """Per-core (busy, total) jiffies from /proc/stat."""
    sample: CpuSample = {}
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            parts = line.split()
            values = [int(v) for v in parts[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])
            sample[int(parts[0][3:])] = (total - idle, total)
    return sample


def cpu_busy_pct(before: CpuSample, after: CpuSample, cpu: int) -> float | None:
    """Share of time core ``cpu`` was busy between two samples, in percent."""
    if cpu not in before or cpu not in after:
        return None
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return round(100.0 * busy / total, 1) if total > 0 else None


#: Niceness applied to our autogroups (``--nice``); 0 leaves scheduling alone.
NICE = {"value": 0}


def apply_nice(pid: int, value: int) -> None:
    """Give ``pid``'s scheduler autogroup niceness ``value``.

    With ``kernel.sched_autogroup_enabled`` every session is its own scheduling group and
    plain niceness only counts inside the group, so the group's niceness is what decides
    how much a busy unrelated session on the same core takes from us.
    """
    if value == 0:
        return
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as fh:
        fh.write(str(value))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, value)


def run_text(cmd: list[str], timeout: float = 30.0) -> str:
    """Output of a short command, or an empty string when it fails."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).decode(errors="replace").strip()


def deb_version(package: str) -> str:
    """Installed version of a Debian package, or an empty string."""
    out = run_text(["dpkg-query", "-W", "-f", "${Version}", package])
    return out if out and "no packages found" not in out else ""
