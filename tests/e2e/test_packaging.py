"""Installing xmppd like a server: the systemd unit passes ``systemd-analyze verify``
and its security check, the LICENSE file is the licence pyproject.toml names,
``xmppd run --loopback`` (what ``./dev run`` does) listens on loopback only and says
how to listen publicly, and the wheel installs ``modules/`` and ``hooks/`` as
``xmppd_modules`` and ``xmppd_hooks`` (no top-level ``modules`` or ``hooks``) and runs
from a fresh virtual environment, away from the checkout."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
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


INSTALLED_AS = {"xmppd": "xmppd", "modules": "xmppd_modules", "hooks": "xmppd_hooks"}
"""Folder of the repository → the package it is installed as (pyproject.toml)."""


def folder_packages() -> set[str]:
    """The packages the folders hold, under their installed names."""
    found = set()
    for folder, name in INSTALLED_AS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "node_modules" not in init.parts:
                parts = init.parent.relative_to(ROOT / folder).parts
                found.add(".".join((name, *parts)))
    return found


def test_the_package_list_is_the_folders_under_project_names() -> None:
    """setuptools cannot discover packages through a renaming ``package-dir``, so they
    are listed: a new package folder must be added there, or wheels miss it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"xmppd_modules": "modules", "xmppd_hooks": "hooks"}
    listed = set(setuptools["packages"])
    data_only = {"xmppd_modules.mod_webclient.web"}
    assert listed - data_only == folder_packages()
    assert not {p.partition(".")[0] for p in listed} & {"modules", "hooks"}


def build_wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of what the Dockerfile copies (the checkout's own
    build directory stays untouched)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    for folder in INSTALLED_AS:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("xmppd-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment with only the wheel installed; its dependencies come
    from this test environment's site-packages, added after its own (a path entry, so
    the editable install's import hook there, which maps to this checkout, is not
    run). The python of the new environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    done = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(own, "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_the_wheel_installs_project_names_and_serves_from_a_fresh_venv(
    tmp_path: Path,
) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"xmppd", "xmppd_modules", "xmppd_hooks", "xmppd-0.1.0.dist-info"}
    for path in (
        "xmppd_modules/mod_roster.py",
        "xmppd_modules/mod_muc/room.py",
        "xmppd_modules/mod_webclient/init.js",
        "xmppd_modules/mod_webclient/web/package-lock.json",
        "xmppd_hooks/word_filter.py",
        "xmppd/migrations/script.py.mako",
    ):
        assert path in names
    shipped = {n.removesuffix("/__init__.py").replace("/", ".") for n in names}
    assert folder_packages() <= shipped

    python = fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == "None None", "generic top-level names importable"
    checkout = str(ROOT.resolve())
    for line in lines[1:]:  # where xmppd, xmppd_modules, xmppd_hooks come from
        assert line.startswith(str(tmp_path / "venv")) and checkout not in line, line

    # check-config imports every shipped module and hook file, and one from
    # server.module_paths, which joins the xmppd_modules package
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "mod_extra.py").write_text(EXTRA_MODULE)
    port = free_port()
    config = elsewhere / "xmppd.toml"
    listeners = f'[[listeners]]\naddress = "127.0.0.1"\nport = {port}\ntls = "starttls"\n'
    server = f'[server]\ndata_dir = "{tmp_path / "data"}"\nmodule_paths = ["{extra}"]\n'
    modules = "".join(f"{name} = {{}}\n" for name in SHIPPED_MODULES)
    config.write_text(
        server + listeners + "[modules]\n" + modules + "extra = {}\n" + HOOKS_TABLES + ANALYTICS
    )
    xmppd = python.parent / "xmppd"
    checked = subprocess.run(
        [str(xmppd), "--config", str(config), "check-config"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # run with the default modules (no [modules] table) and answer a client
    config.write_text(server + listeners + HOOKS_TABLES)
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(xmppd), "--config", str(config), "run"],
            cwd=elsewhere,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "stream:features" in stream_features(port), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0, log.read_text()


PROBE = """
import importlib.util, xmppd, xmppd_modules, xmppd_hooks, xmppd_modules.mod_muc
print(importlib.util.find_spec("modules"), importlib.util.find_spec("hooks"))
for mod in (xmppd, xmppd_modules, xmppd_hooks, xmppd_modules.mod_muc):
    print(mod.__file__)
"""

SHIPPED_MODULES = sorted(
    p.stem.removeprefix("mod_") if p.is_file() else p.name.removeprefix("mod_")
    for p in (ROOT / "modules").iterdir()
    if p.name.startswith("mod_") and (p.suffix == ".py" or (p / "__init__.py").exists())
)

EXTRA_MODULE = """
from xmppd.api import Module
from xmppd_modules.mod_roster import ROSTER  # a module of the package it joins

module = Module("extra", "A module from server.module_paths", depends=("roster",))
assert ROSTER
"""

HOOKS_TABLES = """
[hooks.word_filter]
patterns = ["casino"]
[hooks.muc_word_filter]
patterns = ["casino"]
"""

ANALYTICS = """
[hooks.analytics]
webhook_url = "http://127.0.0.1:9/events"
"""


def stream_features(port: int) -> str:
    """What the server answers to a client's stream header, up to its features."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        received = b""
        while b"</stream:features>" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received.decode()
