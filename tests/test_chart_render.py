"""The Helm chart rendered by Helm itself (helm-python-sdk: Helm's Go code as a library, no binary) for
four value sets (defaults with the required values, production, external broker and databases, a lab
with TLS off), linted, installed in client dry-run (the kubeVersion check), every object validated
strictly against the Kubernetes 1.29 and the newest schemas, and checked against the security review:
NetworkPolicies, PDBs, anti-affinity, seccomp, no service-account tokens, read-only root file systems,
resources on every container, TLS on everything exposed, startup probes, HPAs, the migration hook."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "edu-platform"
RELEASE, NAMESPACE = "edu-platform", "iot"
OLDEST, NEWEST = "1.29.0", kv.latest_version()

REQUIRED: dict[str, Any] = {
    "postgresql": {"url": "postgresql://edu:pw@pg.internal:5432/edu"},
    "influxdb": {"url": "influxdb://edu:pw@influx.internal:8086/iot"},
    "redis": {"url": "redis://:pw@redis.internal:6379/0"},
    "mqtt": {"password": "svc-pw", "adminPassword": "admin-pw"},
    "configSigning": {"privateKey": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"},
    "mosquitto": {"tls": {"existingSecret": "mqtt-tls"}},
    "api": {"ingress": {"host": "iot.school.example", "tlsSecretName": "api-tls"}},
}
_SECRETS = {
    "postgresql": {"existingSecret": "edu-creds"},
    "influxdb": {"existingSecret": "edu-creds"},
    "redis": {"existingSecret": "edu-creds"},
    "configSigning": {"existingSecret": "edu-creds"},
}
PRODUCTION: dict[str, Any] = {
    **_SECRETS,
    "image": {"repository": "registry.school.example/edu-platform", "tag": "0.1.0"},
    "mqtt": {
        "existingSecret": "edu-creds",
        "adminExistingSecret": "edu-creds",
        "publicUrl": "mqtts://mqtt.school.example:8883",
    },
    "mosquitto": {
        "tls": {"existingSecret": "mqtt-tls", "requireClientCertificate": True},
        "memory": {"limitMiB": 4096},
        "deviceService": {"loadBalancerSourceRanges": ["203.0.113.0/24"]},
    },
    "networkPolicy": {"deviceSources": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
    "api": {"ingress": {"host": "iot.school.example", "tlsSecretName": "api-tls", "className": "nginx"}},
    "monitoring": {"serviceMonitor": True, "rules": True, "labels": {"release": "kube-prometheus-stack"}},
    "istio": {"enabled": True, "canary": {"version": "0.2.0", "weight": 20}},
    "logLevel": "WARNING",
}
EXTERNAL: dict[str, Any] = {
    **_SECRETS,
    "mqtt": {
        "existingSecret": "edu-creds",
        "adminExistingSecret": "edu-creds",
        "externalUrl": "mqtt://emqx.internal:1883",
        "publicUrl": "mqtts://mqtt.school.example:8883",
    },
    "mosquitto": {"enabled": False},
    "api": {"ingress": {"host": "iot.school.example", "tlsSecretName": "api-tls"}},
    "networkPolicy": {
        "egress": {
            "postgresql": {"to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "ports": [5432]},
            "mqtt": {"to": [{"ipBlock": {"cidr": "10.30.0.0/24"}}], "ports": [1883]},
        }
    },
}
LAB: dict[str, Any] = {
    **REQUIRED,
    "mosquitto": {"tls": {"enabled": False}, "deviceService": {"type": "NodePort", "allowPlaintext": True}},
    "api": {"ingress": {"enabled": False}, "hpa": {"enabled": False}, "replicas": 1},
    "bridge": {"hpa": {"enabled": False}, "replicas": 1},
    "worker": {"hpa": {"enabled": False}},
    "monitoring": {"serviceMonitor": False, "rules": False, "dashboards": {"enabled": False}},
}
VALUE_SETS = {"defaults": REQUIRED, "production": PRODUCTION, "external": EXTERNAL, "lab": LAB}
CRD_GROUPS = ("monitoring.coreos.com/", "networking.istio.io/")


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@cache
def _chart() -> Any:
    return helm.Chart.load(str(CHART))


def render(values: dict[str, Any]) -> dict[str, str]:
    return dict(_chart().render(values, name=RELEASE, namespace=NAMESPACE))


def objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, text in render(values).items():
        if name.endswith("NOTES.txt"):
            continue
        out += [d for d in yaml.safe_load_all(text) if d]
    return out


@cache
def rendered(set_name: str) -> tuple[dict[str, Any], ...]:
    return tuple(objects(VALUE_SETS[set_name]))


def by_kind(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def component(o: dict[str, Any]) -> str:
    return str(o["metadata"]["labels"].get("app.kubernetes.io/component", ""))


# ---- lint, install, schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_lints_clean(set_name: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[set_name], strict=True, kube_version=f"v{OLDEST}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_installs_in_client_dry_run(set_name: str) -> None:
    """The path that checks Chart.yaml's kubeVersion and renders the hooks as an install would."""
    release = helm.Config(storage_driver="memory", namespace=NAMESPACE).install(
        _chart(), RELEASE, VALUE_SETS[set_name], dry_run="client"
    )
    assert release["manifest"].count("\nkind: ") >= 10


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_every_object_validates_strictly(set_name: str, version: str) -> None:
    checked = 0
    for o in rendered(set_name):
        if o["apiVersion"].startswith(CRD_GROUPS):
            continue  # CRDs: the PrometheusRule goes through promtool (tests/test_alerts.py)
        kv.validate(o, version, strict=True)
        checked += 1
    assert checked >= 15


def test_value_sets_render_what_they_say() -> None:
    kinds = {name: sorted({o["kind"] for o in rendered(name)}) for name in VALUE_SETS}
    assert {"ServiceMonitor", "PrometheusRule", "VirtualService", "DestinationRule"} <= set(kinds["production"])
    assert "StatefulSet" in kinds["external"] and not any(component(o) == "mosquitto" for o in rendered("external"))
    assert "Ingress" not in kinds["lab"] and "HorizontalPodAutoscaler" not in kinds["lab"]
    assert "ServiceMonitor" not in kinds["defaults"]  # "auto": this render has no Prometheus Operator API


# ---- the security review -------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_every_pod_is_locked_down(set_name: str) -> None:
    for where, spec in pod_specs(rendered(set_name)):
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            res = c.get("resources", {})
            assert res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"), (where, c["name"])
            assert res["requests"].get("cpu"), (where, c["name"])


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_long_running_containers_have_startup_liveness_and_readiness_probes(set_name: str) -> None:
    for where, spec in pod_specs(rendered(set_name)):
        if where.startswith("Job/"):
            continue
        for c in spec["containers"]:
            assert "startupProbe" in c and "livenessProbe" in c, (where, c["name"])
            assert "initialDelaySeconds" not in c["livenessProbe"], (where, c["name"])


@pytest.mark.parametrize("set_name", ["defaults", "production", "external"])
def test_replicated_components_have_pdb_anti_affinity_and_hpa(set_name: str) -> None:
    objs = rendered(set_name)
    pdbs = {component(o) for o in objs if o["kind"] == "PodDisruptionBudget"}
    hpas = {
        o["spec"]["scaleTargetRef"]["name"].rsplit("-", 1)[1] for o in objs if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert pdbs == {"api", "bridge", "worker"} and hpas == {"api", "bridge", "worker"}
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet") and component(o) in ("api", "bridge", "worker"):
            anti = o["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            assert term["topologyKey"] == "kubernetes.io/hostname"
            assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component(o)
            assert "replicas" not in o["spec"]  # the HPA owns the count


def _policies(set_name: str) -> dict[str, dict[str, Any]]:
    return {component(o) or "default-deny": o["spec"] for o in rendered(set_name) if o["kind"] == "NetworkPolicy"}


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for r in rules for p in r.get("ports", [])}


def test_network_policies_follow_the_tiers() -> None:
    p = _policies("defaults")
    deny = p["default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    assert deny["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "edu-platform",
        "app.kubernetes.io/instance": RELEASE,
    }
    broker = p["mosquitto"]
    plain, devices = broker["ingress"]
    assert _ports([plain]) == {1883} and plain["from"][0]["podSelector"]["matchExpressions"][0]["values"] == [
        "api",
        "bridge",
        "worker",
    ]
    assert _ports([devices]) == {8883} and "from" not in devices  # devices from anywhere, TLS port only
    assert broker["egress"] == []
    assert _ports(p["bridge"]["egress"]) == {53, 1883, 8086, 5432, 6379}
    assert _ports(p["api"]["egress"]) == {53, 1883, 8086, 5432, 6379}
    assert _ports(p["worker"]["egress"]) == {53, 1883, 6379, 5432, 443}
    assert _ports(p["db-migrate"]["egress"]) == {53, 5432}
    api_from = p["api"]["ingress"][0]["from"]
    assert api_from[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert _ports(p["api"]["ingress"]) == {8080} and _ports(p["bridge"]["ingress"]) == {9108}
    # production narrows device sources; external databases get their own destinations
    assert _policies("production")["mosquitto"]["ingress"][1]["from"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    ext = _policies("external")
    assert "mosquitto" not in ext
    mqtt_rule = next(r for r in ext["bridge"]["egress"] if _ports([r]) == {1883})
    assert mqtt_rule["to"] == [{"ipBlock": {"cidr": "10.30.0.0/24"}}]


def test_tls_on_everything_exposed_by_default() -> None:
    objs = rendered("defaults")
    services = by_kind(objs, "Service")
    devices = services[f"{RELEASE}-mosquitto-devices"]
    assert devices["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in devices["spec"]["ports"]] == [8883]
    assert services[f"{RELEASE}-mosquitto"]["spec"]["type"] == "ClusterIP"
    conf = by_kind(objs, "ConfigMap")[f"{RELEASE}-mosquitto"]["data"]["mosquitto.conf"]
    assert "listener 8883\nprotocol mqtt\ncafile /mosquitto/certs/ca.crt\n" in conf and "tls_version tlsv1.2" in conf
    ingress = by_kind(objs, "Ingress")[f"{RELEASE}-api"]["spec"]
    assert ingress["tls"] == [{"hosts": ["iot.school.example"], "secretName": "api-tls"}]
    # devices get the broker's CA at enrollment: the API mounts ca.crt from the broker's TLS Secret
    api = by_kind(objs, "Deployment")[f"{RELEASE}-api"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in api["containers"][0]["env"]}
    assert env["EDU_MQTT_CA_FILE"] == "/etc/edu/mqtt-ca/ca.crt"
    assert {
        "name": "mqtt-ca",
        "secret": {"secretName": "mqtt-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in api["volumes"]
    prod_conf = by_kind(rendered("production"), "ConfigMap")[f"{RELEASE}-mosquitto"]["data"]["mosquitto.conf"]
    assert "require_certificate true" in prod_conf


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"mosquitto": {"tls": {"enabled": False}}}, "deviceService.allowPlaintext"),
        ({"mosquitto": {"tls": {"existingSecret": ""}}}, "mosquitto.tls.existingSecret is required"),
        ({"api": {"ingress": {"host": ""}}}, "api.ingress.host is required"),
        ({"api": {"ingress": {"tlsSecretName": ""}}}, "api.ingress.tlsSecretName is required"),
        ({"postgresql": {"url": ""}}, "postgresql.url (or postgresql.existingSecret) is required"),
    ],
)
def test_insecure_or_incomplete_values_fail_with_a_clear_message(over: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(merged(REQUIRED, over))


def test_plaintext_lab_renders_only_when_asked_and_without_tls_objects() -> None:
    objs = rendered("lab")
    devices = by_kind(objs, "Service")[f"{RELEASE}-mosquitto-devices"]
    assert devices["spec"]["type"] == "NodePort" and [p["port"] for p in devices["spec"]["ports"]] == [1883]
    conf = by_kind(objs, "ConfigMap")[f"{RELEASE}-mosquitto"]["data"]["mosquitto.conf"]
    assert "listener 8883" not in conf and "certfile" not in conf
    api = by_kind(objs, "Deployment")[f"{RELEASE}-api"]
    assert api["spec"]["replicas"] == 1
    assert "EDU_MQTT_CA_FILE" not in str(api)


# ---- rollouts, hooks, logging --------------------------------------------------------------------


def _checksums(values: dict[str, Any]) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        for o in objects(values)
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def test_existing_secrets_feed_the_pods_checksum() -> None:
    """With every credential in existingSecrets the chart's own Secret renders empty, which used to make
    checksum/secret a constant. Now it covers each existingSecret (its data through `lookup` on a live
    upgrade; offline, its name) and secrets.rolloutToken."""
    base = merged(REQUIRED, PRODUCTION)
    first = _checksums(base)
    assert len(set(first.values())) == 1 and len(first) == 4  # api, bridge, worker, mosquitto
    renamed = _checksums(merged(base, {"redis": {"existingSecret": "edu-creds-v2"}}))
    bumped = _checksums(merged(base, {"secrets": {"rolloutToken": "2025-01-14"}}))
    assert set(first.values()).isdisjoint(renamed.values()) and set(first.values()).isdisjoint(bumped.values())
    helper = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret" $.Release.Namespace $name' in helper


def test_migration_runs_before_install_and_upgrade_with_its_secret_first() -> None:
    objs = rendered("defaults")
    job = by_kind(objs, "Job")[f"{RELEASE}-db-migrate"]
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade" and ann["helm.sh/hook-weight"] == "0"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "iotctl",
        "db",
        "upgrade",
        "--db",
        "$(EDU_DB_URL)",
    ]
    secret = by_kind(objs, "Secret")[RELEASE]["metadata"]["annotations"]
    assert secret["helm.sh/hook"] == "pre-install,pre-upgrade" and int(secret["helm.sh/hook-weight"]) < 0
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and component(o) == "db-migrate")
    assert int(policy["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0


def test_log_level_reaches_every_process() -> None:
    objs = rendered("production")
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job") or component(o) == "mosquitto":
            continue
        c = o["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert "WARNING" in c["command"] or env.get("EDU_LOG_LEVEL") == "WARNING", o["metadata"]["name"]


def test_istio_canary_weights_and_circuit_breaker() -> None:
    objs = rendered("production")
    vs = by_kind(objs, "VirtualService")[f"{RELEASE}-api"]["spec"]
    weights = {r["destination"]["subset"]: r["weight"] for r in vs["http"][0]["route"]}
    assert weights == {"stable": 80, "canary": 20}
    dr = by_kind(objs, "DestinationRule")[f"{RELEASE}-api"]["spec"]
    assert dr["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5
    assert {s["name"] for s in dr["subsets"]} == {"stable", "canary"}
    assert not any(o["apiVersion"].startswith("networking.istio.io/") for o in rendered("defaults"))


# ---- the broker's memory -------------------------------------------------------------------------


def broker_conf(values: dict[str, Any]) -> dict[str, str]:
    conf = by_kind(tuple(objects(values)), "ConfigMap")[f"{RELEASE}-mosquitto"]["data"]["mosquitto.conf"]
    out: dict[str, str] = {}
    for line in conf.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, value)
    return out


def test_broker_limits_follow_the_pods_memory() -> None:
    """docs/deployment.md "Broker memory": heap cap = 75% of the pod limit; half of it shared by the
    bridge sessions (HPA max), a quarter of each session's share in flight and the rest queued; the other
    half of the heap at 64 KiB per connection."""
    conf = broker_conf(REQUIRED)
    mib = 1024 * 1024
    heap = 2048 * mib * 75 // 100
    assert int(conf["memory_limit"]) == heap == 1536 * mib
    session = heap // 2 // 8
    assert int(conf["max_inflight_bytes"]) == session // 4 == 24 * mib
    assert int(conf["max_queued_bytes"]) == session - session // 4 == 72 * mib
    assert int(conf["max_connections"]) == (heap // 2) // (64 * 1024) == 12288
    # every session full and every connection used still fits the heap, and the heap the container
    per_session = int(conf["max_inflight_bytes"]) + int(conf["max_queued_bytes"])
    assert 8 * per_session + 12288 * 64 * 1024 <= int(conf["memory_limit"]) < 2048 * mib
    big = broker_conf(
        merged(REQUIRED, {"mosquitto": {"memory": {"limitMiB": 4096}}, "bridge": {"hpa": {"maxReplicas": 4}}})
    )
    assert int(big["max_queued_bytes"]) + int(big["max_inflight_bytes"]) == 4096 * mib * 75 // 100 // 2 // 4
    sts = by_kind(rendered("defaults"), "StatefulSet")[f"{RELEASE}-mosquitto"]
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2048Mi"


def test_dynsec_file_is_private() -> None:
    sts = by_kind(rendered("defaults"), "StatefulSet")[f"{RELEASE}-mosquitto"]["spec"]["template"]["spec"]
    init = sts["initContainers"][0]["command"][-1]
    assert "umask 077" in init and "chmod 0600 /mosquitto/data/dynamic-security.json" in init
    assert sts["containers"][0]["command"][-1].startswith("umask 077 && exec mosquitto")
