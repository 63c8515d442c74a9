"""The single-server container files stay usable: the ``Dockerfile`` copies what
exists and installs an extra pyproject.toml declares, its built-in configuration
passes ``check-config``, and its ports and health check match that configuration;
``compose.yaml`` runs it hardened beside PostgreSQL, and the configuration its header
asks for passes ``check-config`` and points at its database service. (The image
cannot be built here: no registry of base images is reachable.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from xmppd.config import load_config
from xmppd.configcheck import check_file
from xmppd.opsroutes import HEALTH_PATH

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DATA_DIR = "/var/lib/xmppd"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), comments left out."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def built_in_config() -> str:
    """The xmppd.toml the image writes with printf."""
    [run] = [rest for word, rest in instructions() if word == "RUN" and "printf" in rest]
    lines = re.findall(r"'([^']*)'", run.split("printf", 1)[1])
    assert lines[0] == "%s\\n", lines[0]
    return "\n".join(lines[1:]) + "\n"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def checkable(tmp_path: Path, text: str) -> Path:
    """``text`` with the container's data directory moved to ``tmp_path``, written to
    a file that ``check-config`` reads."""
    assert text.count(f'"{DATA_DIR}"') == 1
    config = tmp_path / "xmppd.toml"
    config.write_text(text.replace(f'"{DATA_DIR}"', f'"{tmp_path / "data"}"'))
    return config


def test_the_dockerfile_copies_what_exists_and_installs_a_declared_extra() -> None:
    steps = instructions()
    copies = [rest.split()[:-1] for word, rest in steps if word == "COPY" and "--from" not in rest]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = re.findall(r"pip install '\.\[([\w,]+)\]'", " ".join(r for _, r in steps))
    assert installs and set(installs[0].split(",")) <= set(extras)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [cmd] = [rest for word, rest in steps if word == "CMD"]
    assert yaml.safe_load(cmd)[0] in scripts
    [user] = [rest for word, rest in steps if word == "USER"]
    assert int(user.split(":")[0]) > 0  # not root


def test_the_built_in_config_passes_check_config_and_matches_the_image(
    tmp_path: Path,
) -> None:
    text = built_in_config()
    config_file = checkable(tmp_path, text)
    assert check_file(config_file) == []
    config = load_config(config_file)
    ports = {listener.port for listener in config.listeners}
    exposed = {int(p) for word, rest in instructions() if word == "EXPOSE" for p in rest.split()}
    assert ports <= exposed
    [http] = [listener for listener in config.listeners if listener.kind == "http"]
    assert http.address == "0.0.0.0"  # reachable through the published port
    [check] = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{http.port}{HEALTH_PATH}'" in check
    # the health check comes from inside the container: loopback is allowed by default
    assert "127.0.0.0/8" in config.http.ops_allowed


def test_the_compose_file_runs_xmppd_hardened_beside_postgresql(tmp_path: Path) -> None:
    services = compose()["services"]
    db, xmppd = services["db"], services["xmppd"]
    assert db["image"].startswith("postgres:") and "healthcheck" in db
    assert xmppd["build"] == "." and (COMPOSE.parent / "Dockerfile").exists()
    assert xmppd["depends_on"]["db"]["condition"] == "service_healthy"
    assert xmppd["read_only"] is True and xmppd["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in xmppd["security_opt"]
    volumes = xmppd["volumes"]
    assert any(v.endswith(f":{DATA_DIR}") for v in volumes)
    assert "./xmppd.toml:/etc/xmppd/xmppd.toml:ro" in volumes
    # HTTP (BOSH, WebSocket, /metrics, /health) only on the host's loopback
    [http] = [p for p in xmppd["ports"] if p.endswith(":5280")]
    assert http.startswith("127.0.0.1:")
    assert set(compose()["volumes"]) >= {"db-data", "xmppd-data"}

    # The configuration the file's header asks for, with the listeners of the image.
    header = []
    for line in COMPOSE.read_text().splitlines():
        if line.startswith("#   ") and not line.startswith("#   ..."):
            header.append(line[4:])
    wanted = "\n".join(h for h in header if not h.startswith(("XMPPD_", "docker ")))
    listeners = built_in_config().split("[[listeners]]", 1)[1]
    text = wanted.replace("<the password>", "secret") + "\n[[listeners]]" + listeners
    config_file = checkable(tmp_path, text)
    assert check_file(config_file) == []
    storage = urlsplit(load_config(config_file).storage.url)
    assert storage.hostname == "db" and storage.path == "/" + db["environment"]["POSTGRES_DB"]
    assert storage.username == db["environment"]["POSTGRES_USER"]
