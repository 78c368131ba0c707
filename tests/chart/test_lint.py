"""`helm lint` of the nexus chart and its values.schema.json."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import CHART, VALUES_DIR, run_helm


def _clean(output: str) -> None:
    assert "[ERROR]" not in output, output
    assert "[WARNING]" not in output, output
    assert "0 chart(s) failed" in output, output


@pytest.mark.parametrize("strict", [False, True])
def test_helm_lint_is_clean(helm, strict):
    proc = run_helm(helm, "lint", CHART, *(["--strict"] if strict else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _clean(proc.stdout)


def test_helm_lint_is_clean_with_the_guides_example_values(helm):
    proc = run_helm(helm, "lint", "--strict", CHART, "--values", VALUES_DIR / "guide-example.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _clean(proc.stdout)


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "nexus"
    assert chart["appVersion"] == "0.1.0"
    assert chart["type"] == "application"


def test_schema_is_draft_07_and_types_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert "global" in schema["properties"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, sch: dict, path: str) -> None:
        props = sch.get("properties")
        if props is None:
            return
        for key, value in node.items():
            assert key in props, f"{path}{key} has no schema"
            if isinstance(value, dict) and "properties" in props[key]:
                walk(value, props[key], f"{path}{key}.")

    walk(values, schema, "")


def test_every_value_is_documented_with_a_param_comment():
    text = (CHART / "values.yaml").read_text()
    documented = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("## @param "):
            documented.add(line.split()[2])
    values = yaml.safe_load(text)

    def leaves(node: object, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            out: list[str] = []
            for key, value in node.items():
                out += leaves(value, f"{path}.{key}" if path else key)
            return out
        return [path]

    missing = []
    for leaf in leaves(values, ""):
        # a documented ancestor ([object]/[array] params such as resources) covers its leaves
        parts = leaf.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if not prefixes & documented and not leaf.startswith("ingress.hosts"):
            missing.append(leaf)
    assert missing == []
    for key in ("name", "paths", "tls", "tlsHosts", "tlsSecret"):
        assert f"ingress.hosts[0].{key}" in documented


GUIDE_TABLE = [
    "global.imageRegistry",
    "global.imagePullSecrets",
    "global.storageClass",
    "image.registry",
    "image.repository",
    "image.pullPolicy",
    "imagePullSecrets",
    "nameOverride",
    "fullnameOverride",
    "nexus.redirectProtocol",
    "nexus.fqdn",
    "nexus.redis.enabled",
    "nexus.redis.nodes",
    "nexus.redis.useCluster",
    "nexus.redis.enableTls",
    "nexus.redis.password",
    "nexus.db.host",
    "nexus.db.port",
    "nexus.db.user",
    "nexus.db.password",
    "nexus.db.enableSSL",
    "podSecurityContext.runAsNonRoot",
    "podSecurityContext.runAsUser",
    "podSecurityContext.runAsGroup",
    "podSecurityContext.fsGroup",
    "resources",
    "affinity",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "monitoring.enabled",
    "service.type",
    "service.port",
    "service.httpsPort",
    "service.nodePorts.http",
    "service.nodePorts.https",
    "service.externalTrafficPolicy",
    "service.loadBalancerIP",
    "ingress.enabled",
    "ingress.annotations",
    "ingress.certManager",
    "ingress.hosts",
    "ingress.secrets",
    "podAnnotations",
]


def test_values_have_the_guides_table_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def get(path: str) -> object:
        node: object = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} missing"
            node = node[part]
        return node

    for path in GUIDE_TABLE:
        get(path)
    assert get("image.repository") == "nexus/nexus"
    assert get("image.pullPolicy") == "IfNotPresent"
    assert get("nexus.redirectProtocol") == "http://"
    assert get("nexus.redis.enabled") is True
    assert get("nexus.redis.nodes") == "redis://nexus-redis-master.default.svc.cluster.local:6379"
    assert get("nexus.redis.useCluster") is False
    assert get("nexus.redis.enableTls") is False
    assert get("nexus.redis.password") == ""
    assert get("nexus.db.host") == "nexus-postgres-postgresql.default.svc.cluster.local"
    assert get("nexus.db.port") == 5432
    assert get("nexus.db.user") == "nexus"
    assert get("nexus.db.password") == "nexus"
    assert get("nexus.db.enableSSL") is False
    assert get("podSecurityContext.runAsNonRoot") is True
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert get(f"podSecurityContext.{key}") == 500
    assert get("resources") == {"requests": {"cpu": "300m", "memory": "512Mi"}}
    assert get("monitoring.enabled") is False
    assert get("monitoring.alarms") is True
    assert get("service.type") == "LoadBalancer"
    assert get("service.port") == 80
    assert get("service.httpsPort") == 443
    assert get("service.externalTrafficPolicy") == "Cluster"
    assert get("ingress.enabled") is False
    assert get("ingress.certManager") is False
    [host] = get("ingress.hosts")
    assert host["name"] == "nexus.local"
    assert host["tls"] is False
    assert host["tlsHosts"] is None
    assert host["tlsSecret"] == "nexus.local-tls-secret"
    assert [p["path"] for p in host["paths"]] == [
        "/chat/v3/",
        "/nexus/v3/",
        "/ux/",
        "/admin/",
        "/auth/",
        "/health/",
        "/scxml/",
    ]
    assert {p["port"] for p in host["paths"]} == {"http"}
    assert get("deploymentType") == "Deployment"
    assert get("replicaCount") == 1
    assert get("service.enabled") is True
    assert get("nexus.social.retryTimeout") == 10000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=x"], "replicaCount"),
        (["--set", "deploymentType=DaemonSet"], "deploymentType"),
        (["--set", "nexus.redis.useCluster=maybe"], "useCluster"),
        (["--set", "service.type=External"], "service.type"),
        (["--set", "nexus.redirectProtocol=ftp://"], "redirectProtocol"),
        (["--set", "unknownTopLevelKey=1"], "unknownTopLevelKey"),
        (["--set", "nexus.db.hostname=x"], "hostname"),
        (["--set", "podSecurityContext.runAsUser=root"], "runAsUser"),
    ],
)
@pytest.mark.parametrize("command", ["lint", "template"])
def test_schema_rejects_wrong_values(helm, command, args, message):
    proc = run_helm(helm, command, CHART, *args)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "schema" in output
    assert message in output


def test_schema_accepts_the_guides_spellings(helm):
    # `--set version=` from the guide's install command, the example's `enableSsl` and the
    # table's `ingress.annotations: []`
    proc = run_helm(
        helm,
        "template",
        CHART,
        "--set",
        "version=9.0.1",
        "--set",
        "nexus.db.enableSsl=true",
        "--set-json",
        "ingress.annotations=[]",
        "--set",
        "ingress.enabled=true",
    )
    assert proc.returncode == 0, proc.stderr
    assert 'image: "nexus/nexus:9.0.1"' in proc.stdout


def test_chart_readme_lists_every_parameter():
    readme = (CHART / "README.md").read_text()
    for line in (CHART / "values.yaml").read_text().splitlines():
        line = line.strip()
        if line.startswith("## @param "):
            name = line.split()[2]
            assert f"| `{name}` |" in readme, f"{name} missing from chart/README.md"
