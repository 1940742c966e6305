"""The Grafana dashboards in the chart: each loads as a dashboard, has the panels it promises, and every
metric name its PromQL queries use is one the code exports (bridge, API with its fleet gauges, analytics
worker; plus Prometheus' own ``up``), every InfluxQL query reads a measurement the time-series store
writes, and the ConfigMap carries them with the sidecar's label."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "charts" / "edu-platform" / "dashboards"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
    # aggregation operators, which may stand before `by (...)` rather than their own `(`
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
}  # fmt: skip


def _sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry exports, from its metric families (labelled metrics count even
    before their first sample)."""
    out: set[str] = set()
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            out |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        elif kind == "summary":
            out |= {name, f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
        out |= {s.name for s in family.samples}
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    import cloud_core.analytics.worker  # noqa: F401  (its counters live in the default registry)
    from broker_bridge.metrics import Metrics as BridgeMetrics
    from cloud_core.api.app import Metrics as ApiMetrics
    from cloud_core.api.fleet_metrics import FleetCollector
    from cloud_core.core.config import CloudSettings
    from cloud_core.core.db import create_all, make_engine

    bridge = BridgeMetrics()
    bridge.watch_last_seen(lambda: {"d1": 0.0})
    api = ApiMetrics()
    state = tmp_path_factory.mktemp("api")
    engine = make_engine(f"sqlite:///{state / 'meta.db'}")
    create_all(engine)
    api.registry.register(FleetCollector(engine, CloudSettings(state_dir=state)))
    names = _sample_names(bridge.registry) | _sample_names(api.registry) | _sample_names(REGISTRY)
    engine.dispose()
    return names | {"up"}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _targets(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in d["panels"] for t in p.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names
    (inside {...} or by/without/on/ignoring (...)) or parts of strings and durations."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # ranges and subqueries
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = m.group(), expr[m.end() :].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def test_the_four_dashboards_load_with_their_panels() -> None:
    ds = _dashboards()
    assert set(ds) == {"fleet-overview", "ingest-pipeline", "device-detail", "anomalies"}
    for name, d in ds.items():
        assert d["uid"] and d["title"].startswith("edu-platform / ") and d["panels"], name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            assert p["targets"] and p["gridPos"]["w"] > 0, (name, p["title"])
    titles = {name: " | ".join(p["title"] for p in d["panels"]) for name, d in ds.items()}
    for want in ("Devices by liveness", "Readings stored / s", "Rejections by reason", "Loss ledger"):
        assert want in titles["fleet-overview"]
    for want in ("per replica", "batch size", "Write latency", "Backlog", "Broker drops", "retries"):
        assert want in titles["ingest-pipeline"]
    variables = {v["name"] for v in ds["device-detail"]["templating"]["list"]}
    assert {"device", "field"} <= variables
    assert "episodes" in titles["anomalies"].lower()


@pytest.mark.parametrize("name", sorted(_dashboards()))
def test_every_metric_a_dashboard_queries_is_exported(name: str, exported: set[str]) -> None:
    d = _dashboards()[name]
    exprs = [t["expr"] for t in _targets(d) if "expr" in t]
    for v in d["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict) and "label_values(" in q.get("query", ""):
            exprs.append(q["query"].split("label_values(", 1)[1].rsplit(",", 1)[0])
    used = set().union(*(_metric_names(e) for e in exprs)) if exprs else set()
    unknown = used - exported
    assert not unknown, f"{name} queries metrics nothing exports: {sorted(unknown)}"
    if name != "device-detail":
        assert len(used) >= 3, used


def test_influxql_queries_read_what_the_store_writes() -> None:
    from iot_protocol import FIELD_RANGES

    d = _dashboards()["device-detail"]
    queries = [t["query"] for t in _targets(d) if "query" in t]
    assert queries
    measurements = {m for q in queries for m in re.findall(r'FROM "([^"]+)"', q)}
    assert measurements <= {"sensor_readings", "sensor_readings_hourly", "sensor_readings_daily"}
    fields = {f for q in queries for f in re.findall(r'mean\("([^"$]+)"\)', q)}
    assert fields <= set(FIELD_RANGES) | {"quality_score"}, fields
    field_var = next(v for v in d["templating"]["list"] if v["name"] == "field")
    assert set(field_var["query"].split(",")) <= set(FIELD_RANGES) | {"quality_score"}


def test_metric_name_parser_catches_a_wrong_name(exported: set[str]) -> None:
    assert _metric_names('sum by (pod) (rate(bridge_readings_stored_totl{namespace="x"}[5m]))') == {
        "bridge_readings_stored_totl"
    }
    assert "bridge_readings_stored_totl" not in exported and "bridge_readings_stored_total" in exported


def test_dashboards_configmap_carries_every_dashboard_with_the_sidecar_label() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
    values = {
        "postgresql": {"url": "postgresql://edu@pg/edu"},
        "influxdb": {"url": "influxdb://influx:8086/iot"},
        "redis": {"url": "redis://redis:6379/0"},
        "mqtt": {"password": "s", "adminPassword": "a"},
        "configSigning": {"privateKey": "k"},
        "mosquitto": {"tls": {"existingSecret": "mqtt-tls"}},
        "api": {"ingress": {"host": "iot.example", "tlsSecretName": "api-tls"}},
    }
    out = helm.Chart.load(str(ROOT / "charts" / "edu-platform")).render(values, name="edu-platform", namespace="iot")
    cm = yaml.safe_load(out["edu-platform/templates/dashboards-configmap.yaml"])
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(cm["data"]) == {f"{n}.json" for n in _dashboards()}
    for key, text in cm["data"].items():
        assert json.loads(text) == _dashboards()[key[: -len(".json")]]
