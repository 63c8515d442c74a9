"""The cluster deployment examples as data: the Kubernetes manifests that
``config/kubernetes/kustomization.yaml`` lists, the Secrets it generates, and
``config/compose.cluster.yaml`` (read by tests/unit/test_cluster_deploy.py and
tests/e2e/test_cluster_node_probes.py)."""

from __future__ import annotations

import functools
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.pgcluster import PrivatePostgres
from xmppd.config import ServerConfig, parse_config

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "config" / "kubernetes"
COMPOSE = ROOT / "config" / "compose.cluster.yaml"
# Made by the operator (kustomization.yaml's comment says how), not in the repository.
GENERATED_SECRETS = {"xmppd-secrets": {"postgres-password", "server.key"}}
OPERATOR_SECRETS = {"xmppd-tls": {"tls.crt", "tls.key"}}

Resource = dict[str, Any]


def kustomization() -> Resource:
    data: Resource = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return data


@functools.cache
def _documents(path: Path) -> tuple[Resource, ...]:
    """The YAML documents of ``path``, parsed once (callers must not change them)."""
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def resources() -> list[tuple[str, Resource]]:
    """(file name, resource) of every document of every manifest kustomization.yaml lists."""
    return [(name, doc) for name in kustomization()["resources"] for doc in _documents(KUBE / name)]


def generated_secrets() -> list[Resource]:
    """The Secrets kustomization.yaml's secretGenerator makes, with placeholder values."""
    made = []
    for generator in kustomization()["secretGenerator"]:
        keys = GENERATED_SECRETS[generator["name"]]
        made.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "type": generator.get("type", "Opaque"),
                "stringData": dict.fromkeys(sorted(keys), "placeholder"),
            }
        )
    return made


def one(kind: str, name: str) -> Resource:
    matches = [r for _, r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_templates() -> Iterator[tuple[Resource, Resource]]:
    """(workload, pod template) of every Deployment and StatefulSet."""
    for _, resource in resources():
        if resource["kind"] in ("Deployment", "StatefulSet"):
            yield resource, resource["spec"]["template"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def xmppd_container() -> Resource:
    (container,) = one("StatefulSet", "xmppd")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def env_value(container: Resource, name: str) -> Any:
    (entry,) = [e for e in container.get("env", ()) if e["name"] == name]
    return entry.get("value", entry.get("valueFrom"))


def configmap_toml() -> str:
    text = one("ConfigMap", "xmppd-config")["data"]["xmppd.toml"]
    assert isinstance(text, str)
    return text


def compose() -> Resource:
    data: Resource = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_nodes() -> dict[str, Resource]:
    """The compose services that run an xmppd node (with the xmppd.toml config)."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if any(c.get("source") == "xmppd.toml" for c in service.get("configs", ()))
    }


def load_config_text(text: str) -> ServerConfig:
    return parse_config(tomllib.loads(text), text=text)


def create_xmppd_database(pg: PrivatePostgres, password: str) -> None:
    """The role and database ``xmppd`` the examples' storage.url names, in ``pg``."""
    psql = [*pg.run_as, str(pg.bindir / "psql"), "-h", str(pg.base), "-p", str(pg.port)]
    for sql in (
        f"CREATE ROLE xmppd LOGIN PASSWORD '{password}'",
        "CREATE DATABASE xmppd OWNER xmppd",
    ):
        subprocess.run([*psql, "-U", "postgres", "-c", sql], check=True, capture_output=True)


def lost_its_port(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """A node of an example exited because a port found free was taken before it bound
    it (the examples listen on every address, and the suite runs in parallel): start
    it again on other ports."""
    return proc.poll() is not None and "address already in use" in log.read_text(errors="replace")
