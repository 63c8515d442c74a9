"""The cluster deployment examples stay deployable: every Kubernetes manifest of
``config/kubernetes/`` passes the Kubernetes schemas of two releases (strict:
unknown fields are errors), the manifests refer only to what exists (labels,
Services, ports, volumes, Secrets), and the xmppd.toml they embed, like the one of
``config/compose.cluster.yaml``, passes the server's own ``check-config``. Offline:
kubernetes-validate bundles its schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from cryptography import x509

from tests.support.deploy_examples import (
    COMPOSE,
    GENERATED_SECRETS,
    KUBE,
    OPERATOR_SECRETS,
    ROOT,
    compose,
    compose_nodes,
    configmap_toml,
    env_value,
    generated_secrets,
    kustomization,
    load_config_text,
    one,
    pod_templates,
    resources,
    selects,
    xmppd_container,
)
from xmppd.config import ServerConfig, load_config
from xmppd.configcheck import check_file
from xmppd.tls import generate_self_signed

# The oldest Kubernetes release the manifests promise to work on, and the newest whose
# schemas the installed kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def checked(tmp_path: Path, text: str) -> ServerConfig:
    """The configuration ``text`` as the server reads it, after ``xmppd check-config``
    found no problem in it (its certificate paths, which point inside a pod or a
    container, replaced by a certificate made here)."""
    config = tmp_path / "xmppd.toml"
    config.write_text(text)
    loaded = load_config(config)  # every key is one the server knows
    cert, key = tmp_path / "host.crt", tmp_path / "host.key"
    generate_self_signed(next(iter(loaded.hosts)), cert, key)
    local = text
    for path, mine in (
        (loaded.tls.certificate, cert),
        (loaded.tls.key, key),
        (loaded.server.data_dir, tmp_path / "data"),
    ):
        assert path is not None and local.count(f'"{path}"') == 1, path
        local = local.replace(f'"{path}"', f'"{mine}"')
    checkable = tmp_path / "checkable.toml"
    checkable.write_text(local)
    assert check_file(checkable) == []
    return loaded


def test_kustomization_lists_every_manifest_and_keeps_secrets_out_of_git() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert (KUBE / ".gitignore").read_text().split() == ["secrets.env"]
    text = (KUBE / "kustomization.yaml").read_text()
    for name, keys in GENERATED_SECRETS.items():
        assert {g["name"] for g in kustomization()["secretGenerator"]} >= {name}
        for key in keys:  # the comment's command makes every key
            assert f"{key}=" in text, key
    for name in OPERATOR_SECRETS:  # the comment says how to make it
        assert f"create secret tls {name}" in text


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_the_kubernetes_schemas(version: str) -> None:
    documents = resources()
    documents += [("secretGenerator", s) for s in generated_secrets()]
    assert len(documents) >= 10
    for name, resource in documents:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']}: {exc}")


def test_a_broken_manifest_fails_the_schemas() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    statefulset = one("StatefulSet", "xmppd")
    misspelt = {**statefulset, "spec": {**statefulset["spec"], "replica": 3}}
    wrong_type = {**statefulset, "spec": {**statefulset["spec"], "replicas": "three"}}
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_manifests_refer_only_to_what_exists() -> None:
    all_resources = [r for _, r in resources()] + generated_secrets()
    names = {(r["kind"], r["metadata"]["name"]) for r in all_resources}
    secret_keys = {**GENERATED_SECRETS, **OPERATOR_SECRETS}
    for workload, template in pod_templates():
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        labels = template["metadata"]["labels"]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels), where
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", ())}
        volumes |= {
            c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", ())
        }
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, where
            if "secret" in volume:
                keys = secret_keys[volume["secret"]["secretName"]]
                assert {i["key"] for i in volume["secret"].get("items", ())} <= keys, where
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", ()):
                assert mount["name"] in volumes, f"{where}: volume {mount['name']}"
            for env in container.get("env", ()):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys[ref["name"]], f"{where}: {env['name']}"
        if workload["kind"] == "StatefulSet":
            service = one("Service", workload["spec"]["serviceName"])
            assert service["spec"]["clusterIP"] == "None", where
    for _, service in resources():
        if service["kind"] != "Service":
            continue
        pods = [
            t
            for _, t in pod_templates()
            if selects(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert pods, f"Service/{service['metadata']['name']} selects no pod"
        ports = {
            p.get("name"): p["containerPort"]
            for t in pods
            for c in t["spec"]["containers"]
            for p in c.get("ports", ())
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), (service["metadata"], port)
    budget = one("PodDisruptionBudget", "xmppd")
    labels = one("StatefulSet", "xmppd")["spec"]["template"]["metadata"]["labels"]
    assert selects(budget["spec"]["selector"]["matchLabels"], labels)
    # int-or-string: the schema takes any string, the API server a number or "N%"
    unavailable = budget["spec"]["maxUnavailable"]
    assert isinstance(unavailable, int) or re.fullmatch(r"\d+%", unavailable)
    for _, policy in resources():
        if policy["kind"] == "NetworkPolicy":
            for rule in policy["spec"]["ingress"]:
                for peer in rule["from"]:
                    assert selects(peer["podSelector"]["matchLabels"], labels)


def test_the_xmppd_nodes_are_three_hardened_and_probed_on_health() -> None:
    statefulset = one("StatefulSet", "xmppd")
    assert statefulset["spec"]["replicas"] == 3
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60  # room for a drain
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}\n" in dockerfile
    container = xmppd_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    probes = {
        kind: " ".join(container[kind]["exec"]["command"])
        for kind in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert "/health/ready'" in probes["readinessProbe"]
    assert "/health/live'" in probes["livenessProbe"]
    # The probes ask a plain HTTP listener on the pod's loopback, which the server's
    # default http.ops_allowed (loopback) answers.
    config = load_config_text(configmap_toml())
    for probe in probes.values():
        url = urlsplit(re.search(r"'(http://[^']+)'", probe).group(1))  # type: ignore[union-attr]
        listeners = [
            x
            for x in config.listeners
            if x.kind == "http" and x.port == url.port and x.tls == "none"
        ]
        assert listeners and listeners[0].address == url.hostname == "127.0.0.1", probe
    assert config.http.ops_allowed == ("127.0.0.0/8", "::1/128")


def test_the_configmap_is_a_valid_xmppd_config_for_these_manifests(tmp_path: Path) -> None:
    config = checked(tmp_path, configmap_toml())
    container = xmppd_container()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {
        v["name"]: v for v in one("StatefulSet", "xmppd")["spec"]["template"]["spec"]["volumes"]
    }
    # the file the server reads is the ConfigMap's
    config_path = PurePosixPath(env_value(container, "XMPPD_CONFIG"))
    mount = mounts[str(config_path.parent)]
    assert volumes[mount["name"]]["configMap"]["name"] == "xmppd-config"
    assert config_path.name == "xmppd.toml"
    # data_dir is a writable volume, server.key in it comes from the shared Secret
    data = mounts[str(config.server.data_dir)]
    assert "emptyDir" in volumes[data["name"]] and not data.get("readOnly")
    key = mounts[str(config.server.data_dir / "server.key")]
    assert volumes[key["name"]]["secret"]["secretName"] == "xmppd-secrets"
    # the certificate and its key are the xmppd-tls Secret's files
    assert config.tls.certificate is not None and config.tls.key is not None
    tls = mounts[str(config.tls.certificate.parent)]
    assert volumes[tls["name"]]["secret"]["secretName"] == "xmppd-tls"
    assert {config.tls.certificate.name, config.tls.key.name} == OPERATOR_SECRETS["xmppd-tls"]
    # PostgreSQL and Redis are the Services of these manifests; no password in the file
    storage = urlsplit(config.storage.url)
    assert storage.password is None
    assert env_value(container, "PGPASSWORD") == {
        "secretKeyRef": {"name": "xmppd-secrets", "key": "postgres-password"}
    }
    postgres = one("Service", str(storage.hostname))
    assert storage.port in {p["port"] for p in postgres["spec"]["ports"]}
    assert config.cluster.enabled and config.cluster.redis_mode == "single"
    redis = urlsplit(config.cluster.redis_url)
    assert redis.port in {p["port"] for p in one("Service", str(redis.hostname))["spec"]["ports"]}
    assert config.cluster.node == ""  # each node is named after its pod
    # the load balancer publishes every public listener, and only those
    balancer = one("Service", "xmppd")
    assert balancer["spec"]["type"] == "LoadBalancer"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    published = {ports[p["targetPort"]] for p in balancer["spec"]["ports"]}
    public = {x.port for x in config.listeners if x.address != "127.0.0.1"}
    assert published == public
    assert {x.kind for x in config.listeners if x.port in published} == {"c2s", "s2s", "http"}


def test_the_compose_file_runs_three_distinct_nodes_on_one_redis_and_postgresql(
    tmp_path: Path,
) -> None:
    services = compose()["services"]
    nodes = compose_nodes()
    assert len(nodes) == 3
    text = compose()["configs"]["xmppd.toml"]["content"]
    config = checked(tmp_path, text)
    # each node is named after its hostname ([cluster] node left empty): all distinct
    assert config.cluster.node == ""
    assert len({n["hostname"] for n in nodes.values()}) == 3
    redis = urlsplit(config.cluster.redis_url)
    storage = urlsplit(config.storage.url)
    assert redis.hostname in services and storage.hostname in services
    assert storage.password is None
    assert "redis-server" in services[redis.hostname]["command"]
    assert services[storage.hostname]["image"].startswith("postgres:")
    shared = {"xmppd-shared:/var/lib/xmppd-shared:ro"}
    data_volumes = set()
    for name, node in nodes.items():
        assert node["build"] == ".." and (COMPOSE.parent / node["build"] / "Dockerfile").exists()
        depends = node["depends_on"]
        for engine in (redis.hostname, storage.hostname):
            assert depends[engine]["condition"] == "service_healthy", name
            assert "healthcheck" in services[engine], engine
        assert depends["xmppd-init"]["condition"] == "service_completed_successfully"
        assert "/health/ready'" in " ".join(node["healthcheck"]["test"]), name
        assert node["environment"]["PGPASSWORD"].startswith("${XMPPD_DB_PASSWORD")
        assert node["read_only"] is True and node["cap_drop"] == ["ALL"]
        volumes = set(node["volumes"])
        assert shared <= volumes, name
        data_volumes |= {v for v in volumes - shared if v.endswith(f":{config.server.data_dir}")}
        assert "server.key" in " ".join(node["command"])
    assert len(data_volumes) == 3  # a data volume of its own for each node
    assert config.tls.certificate is not None
    assert config.tls.certificate.parent == PurePosixPath("/var/lib/xmppd-shared")


def haproxy_config() -> str:
    text = compose()["configs"]["haproxy.cfg"]["content"]
    assert isinstance(text, str)
    return text


def test_haproxy_spreads_every_public_listener_over_the_three_nodes() -> None:
    config = load_config_text(compose()["configs"]["xmppd.toml"]["content"])
    hostnames = sorted(n["hostname"] for n in compose_nodes().values())
    sections = re.split(r"^listen ", haproxy_config(), flags=re.M)[1:]
    bound = set()
    for section in sections:
        port = int(re.search(r"^\s+bind :(\d+)$", section, re.M).group(1))  # type: ignore[union-attr]
        bound.add(port)
        servers = re.findall(r"^\s+server (\S+) (\S+):(\d+)$", section, re.M)
        assert sorted(s[0] for s in servers) == hostnames, section
        assert all(host == name and int(p) == port for name, host, p in servers), section
    assert bound == {x.port for x in config.listeners}
    published = {int(p.rsplit(":", 2)[-1]) for p in compose()["services"]["haproxy"]["ports"]}
    assert published == bound


def test_the_haproxy_config_is_valid(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    good = tmp_path / "haproxy.cfg"
    good.write_text(haproxy_config())
    bad = tmp_path / "broken.cfg"
    bad.write_text(haproxy_config().replace("balance leastconn", "balance fewestconn", 1))

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
        )

    done = check(good)
    assert done.returncode == 0, done.stderr
    # the only warnings: the nodes' names resolve only inside the compose network
    warnings = [line for line in done.stderr.splitlines() if "[WARNING]" in line]
    assert warnings and all("could not resolve address 'xmppd-" in w for w in warnings)
    assert check(bad).returncode != 0


def test_the_compose_init_makes_one_secret_and_certificate_once(tmp_path: Path) -> None:
    init = compose()["services"]["xmppd-init"]
    assert init["image"] == compose_nodes()["xmppd-1"]["image"]
    program, flag, script = init["command"]
    assert (program, flag) == ("python", "-c")
    assert script.count('"/var/lib/xmppd-shared"') == 1
    script = script.replace('"/var/lib/xmppd-shared"', f'"{tmp_path}"')
    made: dict[int, dict[str, bytes]] = {}
    for run in range(2):  # a second run (the next `up`) changes nothing
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        made[run] = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert made[0] == made[1]
    config = load_config_text(compose()["configs"]["xmppd.toml"]["content"])
    assert config.tls.certificate is not None and config.tls.key is not None
    assert set(made[0]) == {"server.key", config.tls.certificate.name, config.tls.key.name}
    assert re.fullmatch(rb"[0-9a-f]{64}\n", made[0]["server.key"])
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0
    pem = x509.load_pem_x509_certificate(made[0][config.tls.certificate.name])
    names = pem.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(config.hosts) <= set(names.get_values_for_type(x509.DNSName))
    # each node copies the secret from the shared volume it mounts
    for node in compose_nodes().values():
        assert f"install -m 0600 {config.tls.certificate.parent}/server.key " in node["command"][-1]
