"""Installing xmppd like a server: the systemd unit passes ``systemd-analyze verify``
and its security check, the LICENSE file is the licence pyproject.toml names, and
``xmppd run --loopback`` (what ``./dev run`` does) listens on loopback only and says
how to listen publicly."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.server import free_port

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "config" / "systemd" / "xmppd.service"


def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's ``xmppd`` (verify checks
    that the program exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    xmppd = Path(sys.executable).parent / "xmppd"
    assert xmppd.exists(), xmppd
    unit = tmp_path / "xmppd.service"
    text = UNIT.read_text()
    assert "ExecStart=/opt/xmppd/bin/xmppd run" in text
    unit.write_text(text.replace("/opt/xmppd/bin/xmppd", str(xmppd)))
    return unit


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on directives it ignores; any message is a mistake in the unit
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_systemd_unit_is_hardened(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    text = unit.read_text()
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert setting in text
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout  # systemd rates <= 2.0 as "OK"


def test_the_license_file_is_the_license_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "AGPL-3.0-or-later"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("GNU AFFERO GENERAL PUBLIC LICENSE")
    assert "Version 3, 19 November 2007" in text
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port and len(address) == width:
                found.add(address)
    return found


def test_run_loopback_binds_loopback_only_and_says_how_to_go_public(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "xmppd.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[listeners]]\naddress = "0.0.0.0"\nport = {port}\ntls = "starttls"\n'
    )
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xmppd", "--config", str(config), "run", "--loopback"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        text = log.read_text()
        assert "listening on loopback (127.0.0.1) only" in text
        assert "./dev run --public" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls"
"""


def run_dev(tmp_path: Path, *args: str) -> list[str]:
    """Run a copy of ``./dev`` whose virtual environment holds fake tools that record
    how they are called; the calls, in order."""
    work = tmp_path / "checkout"
    work.mkdir(exist_ok=True)
    shutil.copy(ROOT / "dev", work / "dev")
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    # The web client counts as installed (its npm install is not what is tested here).
    web = work / "modules" / "mod_webclient" / "web"
    (web / "node_modules").mkdir(parents=True, exist_ok=True)
    lock = web / "package-lock.json"
    lock.write_text("{}\n")
    digest = hashlib.sha1(lock.read_bytes()).hexdigest()[:12]
    (web / "node_modules" / f".xmppd-installed-{digest}").touch()
    bin_dir = work / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("python", "pip", "xmppd", "ruff", "mypy", "pytest"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    calls = work / "venv" / "calls"
    calls.write_text("")
    subprocess.run(
        ["bash", str(work / "dev"), *args],
        env={"PATH": "/usr/bin:/bin", "XMPPD_VENV": "venv"},
        check=True,
        timeout=60,
    )
    return [call.rstrip() for call in calls.read_text().splitlines()]


def test_dev_run_installs_only_what_running_needs_and_binds_loopback(tmp_path: Path) -> None:
    calls = run_dev(tmp_path, "run", "--config", "x.toml")
    assert "pip install -q -e ." in calls
    assert not any("[test]" in call for call in calls)
    assert calls[-1] == "xmppd run --loopback --config x.toml"
    # installed once: the next run only runs
    assert run_dev(tmp_path, "run", "--public") == ["xmppd run"]
    # lint brings the test and lint tools, once, besides the base install
    calls = run_dev(tmp_path, "lint")
    assert "pip install -q -e .[test]" in calls
    assert calls[-1] == "mypy"
    assert run_dev(tmp_path, "lint")[0] == "ruff check ."
