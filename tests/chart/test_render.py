"""`helm template` of the nexus chart under several value sets, checked object by object.

Every rendered manifest is validated against the Kubernetes OpenAPI schemas (strict: unknown
fields are errors); the Prometheus Operator objects, which those schemas do not cover, are checked
field by field here.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, NAMESPACE, RELEASE, Render

K8S_VERSION = "1.33.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
FULLNAME = RELEASE  # the release name contains the chart name, so fullname == release name

GUIDE_PATHS = ["/chat/v3/", "/nexus/v3/", "/ux/", "/admin/", "/auth/", "/health/"]
DEFAULT_PATHS = [*GUIDE_PATHS, "/scxml/"]

# Secrets the test value sets pass in; none may appear outside a Secret object.
DB_PASSWORD = "p@ss:w/rd 1+x"
REDIS_PASSWORD = "r3dis-Pw-5b1e"
NEXUS_SECRET = "signing-secret-0c9d7a"
SOCIAL_APIKEY = "social-key-44e1"
CLIENT_SECRET = "client-secret-a8b2"
GUIDE_DB_PASSWORD = "guide-db-pw-91c2"
GUIDE_REDIS_PASSWORD = "guide-redis-pw-7f3a"
ALL_SECRETS = [
    DB_PASSWORD,
    REDIS_PASSWORD,
    NEXUS_SECRET,
    SOCIAL_APIKEY,
    CLIENT_SECRET,
    GUIDE_DB_PASSWORD,
    GUIDE_REDIS_PASSWORD,
]

CONFIG_FILES = {
    "environment.yaml": (
        "apiVersion: nexus/v1\nkind: Environment\nname: environment\n"
        "spec:\n  options:\n    nexus.url: http://nexus.nexus.svc\n"
    ),
    "users.yaml": (
        "apiVersion: nexus/v1\nkind: User\nname: nexus\n"
        "spec:\n  username: nexus\n  password: ${env:NEXUS_USER_PASSWORD}\n"
    ),
}

SECRETS_VALUES: dict[str, Any] = {
    "nexus": {
        "fqdn": "https://digital.example.org",
        "secret": NEXUS_SECRET,
        "clientSecret": CLIENT_SECRET,
        "workers": 4,
        "redis": {
            "nodes": "rediss://r1.example.org:6380,rediss://r2.example.org:6380",
            "useCluster": True,
            "enableTls": True,
            "password": REDIS_PASSWORD,
        },
        "db": {
            "host": "pg.example.org",
            "port": 6432,
            "name": "nexus_prod",
            "user": "nexus-app",
            "password": DB_PASSWORD,
            "enableSsl": True,
        },
        "social": {"apikey": SOCIAL_APIKEY, "retryTimeout": 5000},
    },
    "config": {"files": CONFIG_FILES},
    "extraEnvVars": [
        {
            "name": "NEXUS_USER_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "nexus-users", "key": "nexus"}},
        }
    ],
    "replicaCount": 3,
}

INGRESS_TABLE_VALUES: dict[str, Any] = {
    "service": {"type": "NodePort", "nodePorts": {"http": 30080, "https": "30443"}},
    "ingress": {
        "enabled": True,
        "ingressClassName": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "10m"},
        "certManager": True,
        "clusterIssuer": "letsencrypt-prod",
        "hosts": [
            {
                "name": "nexus.example.org",
                "paths": [{"path": p, "port": "http"} for p in DEFAULT_PATHS],
                "tls": True,
                "tlsHosts": None,
                "tlsSecret": "nexus.example.org-tls",
            }
        ],
        "secrets": [
            {
                "name": "nexus.example.org-tls",
                "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
            }
        ],
    },
}

EXISTING_VALUES: dict[str, Any] = {
    "existingSecret": "nexus-credentials",
    "existingConfig": "nexus-declarative-config",
    "nexus": {"db": {"host": "pg.example.org", "user": "nexus", "enableSSL": True}},
    "service": {"type": "LoadBalancer", "loadBalancerIP": "10.0.0.10"},
}

STATEFULSET_VALUES: dict[str, Any] = {
    "deploymentType": "StatefulSet",
    "replicaCount": 2,
    "global": {
        "imageRegistry": "registry.example.org",
        "imagePullSecrets": ["global-cred", {"name": "shared-cred"}],
        "storageClass": "fast-ssd",
    },
    "imagePullSecrets": [{"name": "shared-cred"}, "local-cred"],
    "image": {"tag": "1.2.3"},
    "persistence": {"enabled": True, "size": "2Gi"},
    "service": {"type": "ClusterIP"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "nexus"}],
    "priorityClassName": "high-priority",
    "podAnnotations": {"example.org/team": "digital"},
    "podLabels": {"example.org/tier": "backend"},
    "commonLabels": {"example.org/owner": "channels"},
    "commonAnnotations": {"example.org/contact": "channels@example.org"},
    "config": {
        "files": {
            "queues.yaml": {
                "apiVersion": "nexus/v1",
                "kind": "Queue",
                "name": "asynchold",
                "spec": {"enabled": True},
            }
        }
    },
}

VALUE_SETS: dict[str, Any] = {
    "defaults": None,
    "guide-example": "guide-example.yaml",
    "monitoring-on": {"monitoring": {"enabled": True}},
    "monitoring-no-alarms": {"monitoring": {"enabled": True, "alarms": False}},
    "ingress-table-shape": INGRESS_TABLE_VALUES,
    "secrets": SECRETS_VALUES,
    "existing": EXISTING_VALUES,
    "statefulset": STATEFULSET_VALUES,
}


@pytest.fixture(scope="module")
def renders(render) -> dict[str, Render]:
    out = {name: render(values) for name, values in VALUE_SETS.items()}
    for name, r in out.items():
        assert r.returncode == 0, f"helm template ({name}) failed:\n{r.stderr}"
    return out


def secret_data(r: Render, name: str = FULLNAME) -> dict[str, str]:
    return {
        k: base64.b64decode(v).decode() for k, v in r.one("Secret", name).get("data", {}).items()
    }


# --- every manifest is valid ---------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_validate_against_kubernetes_schemas(renders, name):
    r = renders[name]
    assert r.docs
    for doc in r.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_has_standard_labels_and_namespace(renders, name):
    for doc in renders[name].docs:
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE, (doc["kind"], meta["name"])
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "nexus"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "nexus-0.1.0"


# --- workload --------------------------------------------------------------------------------


def test_defaults_render_a_deployment_with_the_guides_security_context(renders):
    r = renders["defaults"]
    assert r.of_kind("StatefulSet") == []
    dep = r.one("Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "nexus",
        "app.kubernetes.io/instance": RELEASE,
    }
    pod = dep["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (500, 500, 500)
    assert sc["runAsNonRoot"] is True
    csc = r.container()["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert r.container()["resources"] == {"requests": {"cpu": "300m", "memory": "512Mi"}}


def test_container_runs_nexus_serve_with_ports_and_probes(renders):
    c = renders["defaults"].container()
    assert c["image"] == "nexus/nexus:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in c  # the image's ENTRYPOINT is `nexus`
    assert c["args"][0] == "serve"
    assert c["args"][1:] == ["--host", "0.0.0.0", "--port", "8080", "--metrics-port", "4004"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "metrics": 4004}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/detail", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_writable_paths_are_volumes_and_config_is_mounted(renders):
    r = renders["defaults"]
    c = r.container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/nexus/config"]["readOnly"] is True
    assert {"/app/var", "/tmp"} <= set(mounts)
    volumes = {v["name"]: v for v in r.workload()["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/nexus/config"]["name"]]["configMap"]["name"] == "nexus-config"
    assert volumes[mounts["/app/var"]["name"]]["emptyDir"] == {}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {}


def test_default_env_follows_design_section_3(renders):
    r = renders["defaults"]
    env = r.env()
    plain = {k: v["value"] for k, v in env.items() if "value" in v}
    assert plain == {
        "NEXUS_CONFIG": "/etc/nexus/config",
        "NEXUS_FQDN": "http://nexus.nexus.svc",
        "NEXUS_REDIRECT_PROTOCOL": "http://",
        "NEXUS_WORKERS": "1",
        "NEXUS_LOG_FORMAT": "json",
        "NEXUS_REDIS_URL": "redis://nexus-redis-master.default.svc.cluster.local:6379",
        "NEXUS_REDIS_CLUSTER": "false",
        "NEXUS_REDIS_TLS": "false",
        "NEXUS_SOCIAL_RETRY_TIMEOUT": "10000",
    }
    from_secret = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
    assert {k: ref["key"] for k, ref in from_secret.items()} == {
        "NEXUS_DB_PASSWORD": "db-password",
        "NEXUS_DB_URL": "db-url",
        "NEXUS_REDIS_PASSWORD": "redis-password",
        "NEXUS_SECRET": "nexus-secret",
        "NEXUS_CLIENT_SECRET": "client-secret",
        "NEXUS_SOCIAL_APIKEY": "social-apikey",
    }
    assert {ref["name"] for ref in from_secret.values()} == {FULLNAME}
    data = secret_data(r)
    assert data["db-url"] == (
        "postgresql://nexus:nexus@nexus-postgres-postgresql.default.svc.cluster.local:5432/nexus"
    )
    assert data["db-password"] == "nexus"
    assert data["redis-password"] == ""
    assert len(data["nexus-secret"]) == 48  # generated when nexus.secret is empty


def test_env_from_custom_values(renders):
    r = renders["secrets"]
    env = r.env()
    assert env["NEXUS_FQDN"]["value"] == "https://digital.example.org"
    assert env["NEXUS_WORKERS"]["value"] == "4"
    assert env["NEXUS_REDIS_URL"]["value"] == (
        "rediss://r1.example.org:6380,rediss://r2.example.org:6380"
    )
    assert env["NEXUS_REDIS_CLUSTER"]["value"] == "true"
    assert env["NEXUS_REDIS_TLS"]["value"] == "true"
    assert env["NEXUS_SOCIAL_RETRY_TIMEOUT"]["value"] == "5000"
    assert env["NEXUS_USER_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "nexus-users",
        "key": "nexus",
    }
    data = secret_data(r)
    # user and password percent-encoded; db name from nexus.db.name; enableSsl (the guide
    # example's spelling) appends ?ssl=true
    assert data["db-url"] == (
        "postgresql://nexus-app:p%40ss%3Aw%2Frd%201%2Bx@pg.example.org:6432/nexus_prod?ssl=true"
    )
    assert data["db-password"] == DB_PASSWORD
    assert data["redis-password"] == REDIS_PASSWORD
    assert data["nexus-secret"] == NEXUS_SECRET
    assert data["social-apikey"] == SOCIAL_APIKEY
    assert data["client-secret"] == CLIENT_SECRET


def test_existing_secret_and_config_are_referenced_not_rendered(renders):
    r = renders["existing"]
    assert r.of_kind("Secret") == []
    assert r.of_kind("ConfigMap") == []
    env = r.env()
    names = [e["name"] for e in r.container()["env"]]
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
    assert {ref["name"] for ref in refs.values()} == {"nexus-credentials"}
    assert refs["NEXUS_DB_PASSWORD"]["key"] == "db-password"
    assert refs["NEXUS_SECRET"]["key"] == "nexus-secret"
    assert "optional" not in refs["NEXUS_DB_PASSWORD"]
    assert "optional" not in refs["NEXUS_SECRET"]
    for name in ("NEXUS_REDIS_PASSWORD", "NEXUS_SOCIAL_APIKEY", "NEXUS_CLIENT_SECRET"):
        assert refs[name]["optional"] is True
    # the URL is composed by the kubelet from the password defined before it
    assert env["NEXUS_DB_URL"]["value"] == (
        "postgresql://nexus:$(NEXUS_DB_PASSWORD)@pg.example.org:5432/nexus?ssl=true"
    )
    assert names.index("NEXUS_DB_PASSWORD") < names.index("NEXUS_DB_URL")
    volumes = r.workload()["spec"]["template"]["spec"]["volumes"]
    config = next(v for v in volumes if v["name"] == "config")
    assert config["configMap"]["name"] == "nexus-declarative-config"


def test_config_files_become_the_config_configmap(renders):
    cm = renders["secrets"].one("ConfigMap", "nexus-config")
    assert set(cm["data"]) == set(CONFIG_FILES)
    for name, content in CONFIG_FILES.items():
        assert yaml.safe_load(cm["data"][name]) == yaml.safe_load(content)


def test_checksum_annotations_follow_config_and_secret(render):
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        r = render(values)
        assert r.returncode == 0, r.stderr
        return r.workload()["spec"]["template"]["metadata"]["annotations"]

    base = {"nexus": {"secret": NEXUS_SECRET}, "config": {"files": CONFIG_FILES}}
    changed_config = {
        "nexus": {"secret": NEXUS_SECRET},
        "config": {"files": {**CONFIG_FILES, "extra.yaml": "apiVersion: nexus/v1\n"}},
    }
    changed_secret = {"nexus": {"secret": NEXUS_SECRET + "-rotated"}, **{"config": base["config"]}}
    a, b, c = annotations(base), annotations(changed_config), annotations(changed_secret)
    for ann in (a, b, c):
        assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/config"])
        assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/secret"])
    assert annotations(base) == a  # deterministic
    assert b["checksum/config"] != a["checksum/config"]
    assert b["checksum/secret"] == a["checksum/secret"]
    assert c["checksum/secret"] != a["checksum/secret"]
    assert c["checksum/config"] == a["checksum/config"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_secret_value_outside_secrets(renders, name):
    r = renders[name]
    for doc in r.docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for secret in ALL_SECRETS:
            assert secret not in text, f"{secret!r} leaks into {doc['kind']} {doc['metadata']}"
            encoded = base64.b64encode(secret.encode()).decode()
            assert encoded not in text
    for env in r.container()["env"]:
        value = env.get("value", "")
        assert not any(s in value for s in ALL_SECRETS), env
        if env["name"] in {"NEXUS_DB_URL", "NEXUS_DB_PASSWORD", "NEXUS_SECRET"}:
            assert "$(NEXUS_DB_PASSWORD)" in value or "valueFrom" in env, env


def test_guide_example_renders_as_the_guide_describes(renders):
    r = renders["guide-example"]
    dep = r.one("Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 1
    c = r.container()
    assert c["image"] == "pureengage-docker-staging.jfrog.io/nexus/nexus:0.1.0"
    pod = dep["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mycred"}]
    env = r.env()
    assert env["NEXUS_FQDN"]["value"] == "http://digital.example.com"
    assert env["NEXUS_REDIS_CLUSTER"]["value"] == "true"
    assert env["NEXUS_REDIS_URL"]["value"] == "redis://redis-cluster.infra.svc.cluster.local:6379"
    data = secret_data(r)
    assert data["db-url"] == (
        "postgresql://nexus:guide-db-pw-91c2@pgdb-nexus.infra.svc.cluster.local:5432/nexus"
    )
    assert data["redis-password"] == GUIDE_REDIS_PASSWORD
    svc = r.one("Service", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in svc["spec"]
    # the example's ingress shape: hosts[].host and a top-level tls[]
    ing = r.one("Ingress", FULLNAME)
    assert ing["spec"]["tls"] == [{"hosts": ["digital.example.com"], "secretName": "letsencrypt"}]
    [rule] = ing["spec"]["rules"]
    assert rule["host"] == "digital.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == GUIDE_PATHS[:5]
    assert r.one("ServiceMonitor", FULLNAME)
    assert r.one("PrometheusRule", FULLNAME)


# --- Service, Ingress, PDB -------------------------------------------------------------------


def test_default_service_is_a_load_balancer_with_http_https_and_metrics(renders):
    svc = renders["defaults"].one("Service", FULLNAME)
    spec = svc["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Cluster"
    ports = {p["name"]: p for p in spec["ports"]}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (80, "http")
    assert (ports["https"]["port"], ports["https"]["targetPort"]) == (443, "http")
    assert (ports["metrics"]["port"], ports["metrics"]["targetPort"]) == (4004, "metrics")
    assert not any("nodePort" in p for p in spec["ports"])
    assert "loadBalancerIP" not in spec
    assert spec["selector"] == {
        "app.kubernetes.io/name": "nexus",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_node_ports_and_load_balancer_ip(renders):
    ports = {p["name"]: p for p in renders["ingress-table-shape"].one("Service")["spec"]["ports"]}
    assert ports["http"]["nodePort"] == 30080
    assert ports["https"]["nodePort"] == 30443
    assert "nodePort" not in ports["metrics"]
    lb = renders["existing"].one("Service")["spec"]
    assert lb["loadBalancerIP"] == "10.0.0.10"


def test_ingress_in_the_tables_shape_with_tls_and_cert_manager(renders):
    r = renders["ingress-table-shape"]
    ing = r.one("Ingress", FULLNAME)
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    ann = ing["metadata"]["annotations"]
    assert ann["kubernetes.io/tls-acme"] == "true"
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "10m"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [
        {"hosts": ["nexus.example.org"], "secretName": "nexus.example.org-tls"}
    ]
    [rule] = ing["spec"]["rules"]
    assert rule["host"] == "nexus.example.org"
    paths = rule["http"]["paths"]
    assert [p["path"] for p in paths] == DEFAULT_PATHS
    for p in paths:
        assert p["pathType"] == "Prefix"
        assert p["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
    tls = r.one("Secret", "nexus.example.org-tls")
    assert tls["type"] == "kubernetes.io/tls"
    crt = base64.b64decode(tls["data"]["tls.crt"]).decode()
    assert crt.startswith("-----BEGIN CERTIFICATE-----")
    assert base64.b64decode(tls["data"]["tls.key"]).decode().startswith("-----BEGIN PRIVATE")
    assert r.env()["NEXUS_FQDN"]["value"] == "http://nexus.example.org"


def test_default_values_carry_the_guides_ingress_paths(render):
    r = render({"ingress": {"enabled": True}})
    assert r.returncode == 0, r.stderr
    [rule] = r.one("Ingress")["spec"]["rules"]
    assert rule["host"] == "nexus.local"
    assert [p["path"] for p in rule["http"]["paths"]] == DEFAULT_PATHS
    assert "tls" not in r.one("Ingress")["spec"]
    assert "annotations" not in r.one("Ingress")["metadata"]


def test_no_ingress_by_default(renders):
    assert renders["defaults"].of_kind("Ingress") == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [("defaults", {"maxUnavailable": 1}), ("secrets", {"maxUnavailable": 1})],
)
def test_pod_disruption_budget_allows_one_pod_down(renders, name, expected):
    pdb = renders[name].one("PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    spec = dict(pdb["spec"])
    assert spec.pop("selector") == {
        "matchLabels": {"app.kubernetes.io/name": "nexus", "app.kubernetes.io/instance": RELEASE}
    }
    assert spec == expected


def test_pod_disruption_budget_min_available(render):
    r = render({"replicaCount": 3, "pdb": {"minAvailable": 2}})
    assert r.returncode == 0, r.stderr
    spec = r.one("PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == 2
    assert "maxUnavailable" not in spec


# --- StatefulSet -----------------------------------------------------------------------------


def test_statefulset_with_headless_service_and_volumes(renders):
    r = renders["statefulset"]
    assert r.of_kind("Deployment") == []
    sts = r.one("StatefulSet", FULLNAME)
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == "nexus-headless"
    headless = r.one("Service", "nexus-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "var"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = sts["spec"]["template"]["spec"]
    assert "var" not in {v["name"] for v in pod["volumes"]}
    assert pod["imagePullSecrets"] == [
        {"name": "global-cred"},
        {"name": "shared-cred"},
        {"name": "local-cred"},
    ]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "high-priority"
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert r.container()["image"] == "registry.example.org/nexus/nexus:1.2.3"
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.org/team"] == "digital"
    assert sts["spec"]["template"]["metadata"]["labels"]["example.org/tier"] == "backend"
    for doc in r.docs:
        assert doc["metadata"]["labels"]["example.org/owner"] == "channels"
        assert doc["metadata"]["annotations"]["example.org/contact"] == "channels@example.org"
    # a config file given as a mapping is rendered as YAML
    cm = r.one("ConfigMap", "nexus-config")
    assert (
        yaml.safe_load(cm["data"]["queues.yaml"])
        == STATEFULSET_VALUES["config"]["files"]["queues.yaml"]
    )
    assert r.one("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": sts["spec"]["selector"],
    }


# --- monitoring ------------------------------------------------------------------------------


def test_monitoring_off_renders_no_prometheus_objects(renders):
    r = renders["defaults"]
    assert r.of_kind("ServiceMonitor") == []
    assert r.of_kind("PrometheusRule") == []
    annotations = r.workload()["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations


def test_service_monitor_scrapes_metrics_every_15s(renders):
    r = renders["monitoring-on"]
    sm = r.one("ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # the selector picks the main Service (which has a port named metrics), not the headless one
    svc = r.one("Service", FULLNAME)
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= svc["metadata"]["labels"].items()
    assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
    annotations = r.workload()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "4004"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_statefulset_headless_service_is_not_scraped(render):
    r = render({**STATEFULSET_VALUES, "monitoring": {"enabled": True}})
    assert r.returncode == 0, r.stderr
    selector = r.one("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    matching = [
        s["metadata"]["name"]
        for s in r.of_kind("Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert matching == [FULLNAME]


def _rules(r: Render) -> dict[str, dict[str, Any]]:
    pr = r.one("PrometheusRule", FULLNAME)
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    rules: dict[str, dict[str, Any]] = {}
    for group in pr["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            rules[rule["alert"]] = rule
    return rules


def _squash(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


def test_prometheus_rule_has_the_guides_two_alerts(renders):
    rules = _rules(renders["monitoring-on"])
    assert set(rules) == {"NexusErrorRate", "NexusMemoryUsageHigh"}
    sel = f'job="{FULLNAME}", namespace="{NAMESPACE}"'

    err = rules["NexusErrorRate"]
    assert err["annotations"]["summary"] == "Nexus error rate"
    assert _squash(err["expr"]) == (
        f"sum by (namespace, pod) (rate(nexus_errors_total{{{sel}}}[5m]))"
        f" / sum by (namespace, pod) (rate(nexus_request_total{{{sel}}}[5m])) > 0.2"
    )
    mem = rules["NexusMemoryUsageHigh"]
    assert mem["annotations"]["summary"] == "Memory usage is above 3000 Mb"
    assert _squash(mem["expr"]) == (
        f"max by (namespace, pod) (nexus_process_resident_memory_bytes{{{sel}}})"
        " > 3000 * 1024 * 1024"
    )
    for rule in rules.values():
        assert rule["for"] == "15m"
        assert rule["labels"] == {"severity": "critical"}
        # alert names are Prometheus identifiers; the guide's titles live in the summary
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", rule["alert"])
        # Prometheus templating survives Helm rendering
        assert "{{ $labels.pod }}" in rule["annotations"]["description"]


def test_alarms_can_be_turned_off(renders):
    r = renders["monitoring-no-alarms"]
    assert r.one("ServiceMonitor", FULLNAME)
    assert r.of_kind("PrometheusRule") == []


# --- values that cannot work -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"monitoring": {"enabled": True}, "service": {"enabled": False}}, "service.enabled"),
        ({"nexus": {"redis": {"enabled": False}}, "replicaCount": 2}, "replicaCount=1"),
        ({"nexus": {"db": {"host": ""}}}, "nexus.db.host is required"),
    ],
)
def test_inconsistent_values_fail_with_a_message(render, values, message):
    r = render(values)
    assert r.returncode != 0
    assert message in r.stderr


def test_redis_disabled_falls_back_to_the_in_process_cache(render):
    r = render({"nexus": {"redis": {"enabled": False}}})
    assert r.returncode == 0, r.stderr
    assert r.env()["NEXUS_REDIS_URL"]["value"] == "memory://"


# --- NOTES.txt -------------------------------------------------------------------------------


def test_notes_explain_the_health_detail_check(render, tmp_path: Path):
    # `helm template` does not print NOTES.txt; render it through tpl in a copy of the chart.
    chart = tmp_path / "nexus"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    r = render({"ingress": {"enabled": True}}, chart=chart)
    assert r.returncode == 0, r.stderr
    notes = r.one("ConfigMap", "notes")["data"]["notes"]
    assert "NEXUS_URL=http://nexus.local" in notes
    assert '/health/detail"' in notes
    assert '"state": "green"' in notes
    assert '"db": {"ready": true}' in notes
    assert '"cache": {"ready": true}' in notes
