# ruff: noqa: E501  (the case table below reads best as one case per line)
"""The chart's alerts, tested with Prometheus' own tools: the PrometheusRule is rendered by Helm, its
groups go through ``promtool check rules``, and ``promtool test rules`` runs every alert against series
where it must fire and series where it must stay silent (including the cases that were wrong before:
a bridge restart or scale-up is not a broker drop; API and bridge alerts fire when the pods are gone;
no alert relies on a kubernetes_pod_name label). Every alert also has a runbook section in
docs/deployment.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install -y --no-install-recommends prometheus)"
)

VALUES: dict[str, Any] = {
    "postgresql": {"url": "postgresql://edu@pg/edu"},
    "influxdb": {"url": "influxdb://influx:8086/iot"},
    "redis": {"url": "redis://redis:6379/0"},
    "mqtt": {"password": "s", "adminPassword": "a"},
    "configSigning": {"privateKey": "k"},
    "mosquitto": {"tls": {"existingSecret": "mqtt-tls"}},
    "api": {"ingress": {"host": "iot.example", "tlsSecretName": "api-tls"}},
    "monitoring": {"rules": True},
}
B = 'job="edu-platform-bridge",namespace="iot"'
A = 'job="edu-platform-api",namespace="iot"'
W = 'job="edu-platform-worker",namespace="iot"'


@dataclass
class Case:
    alert: str
    why: str
    series: dict[str, str]
    at: str
    fires: bool
    labels: dict[str, str] = field(default_factory=dict)


CASES = [
    # --- BrokerDroppingMessages: a rising broker count fires; restarts and scale-ups of the bridge do not
    Case("BrokerDroppingMessages", "the broker's count rises",
         {f'bridge_broker_dropped_messages{{{B},pod="b-0"}}': "5x10 5+3x20",
          f'bridge_broker_dropped_messages{{{B},pod="b-1"}}': "5x10 5+3x20"}, "25m", True),
    Case("BrokerDroppingMessages", "a new replica starts at 0 and then reports the broker's total",
         {f'bridge_broker_dropped_messages{{{B},pod="b-0"}}': "40x30",
          f'bridge_broker_dropped_messages{{{B},pod="b-1"}}': "_x15 0x2 40x12"}, "25m", False),
    Case("BrokerDroppingMessages", "the only replica restarts (0 until $SYS arrives)",
         {f'bridge_broker_dropped_messages{{{B},pod="b-0"}}': "40x15 0x2 40x12"}, "25m", False),
    Case("BrokerDroppingMessages", "the broker restarts (its count starts again) and drops after",
         {f'bridge_broker_dropped_messages{{{B},pod="b-0"}}': "40x15 0x2 2+2x12"}, "25m", True),
    # --- BridgeNotStoring
    Case("BridgeNotStoring", "telemetry arrives, nothing stored",
         {f"bridge_messages_received_total{{{B}}}": "0+100x40", f"bridge_messages_stored_total{{{B}}}": "500x40"},
         "30m", True),
    Case("BridgeNotStoring", "telemetry arrives and is stored",
         {f"bridge_messages_received_total{{{B}}}": "0+100x40",
          f"bridge_messages_stored_total{{{B}}}": "0+100x40"}, "30m", False),
    # --- BridgeDisconnected
    Case("BridgeDisconnected", "a replica disconnected for 10 minutes",
         {f'bridge_mqtt_connected{{{B},pod="b-0"}}': "1x20", f'bridge_mqtt_connected{{{B},pod="b-1"}}': "1x5 0x15"},
         "20m", True),
    Case("BridgeDisconnected", "a 3-minute reconnect",
         {f'bridge_mqtt_connected{{{B},pod="b-0"}}': "1x10 0x3 1x10"}, "14m", False),
    # --- BridgeDown / ApiDown: fire when the pods are gone, not only when they report 0
    Case("BridgeDown", "every replica is down", {f'up{{{B},pod="b-0"}}': "1x5 0x15"}, "15m", True),
    Case("BridgeDown", "the replicas are gone: no series at all", {f"up{{{A}}}": "1x20"}, "15m", True),
    Case("BridgeDown", "one of two replicas is down",
         {f'up{{{B},pod="b-0"}}': "1x20", f'up{{{B},pod="b-1"}}': "0x20"}, "15m", False),
    Case("ApiDown", "the API pods are gone", {f"up{{{B}}}": "1x20"}, "10m", True),
    Case("ApiDown", "one API replica answers", {f'up{{{A},pod="a-0"}}': "1x20", f'up{{{A},pod="a-1"}}': "0x20"},
         "10m", False),
    # --- BridgeBacklogSaturated (0.8 x maxBacklog 20000 = 16000)
    Case("BridgeBacklogSaturated", "17,000 held for 15 minutes", {f'bridge_backlog_messages{{{B},pod="b-0"}}': "17000x20"},
         "15m", True),
    Case("BridgeBacklogSaturated", "15,000 held", {f'bridge_backlog_messages{{{B},pod="b-0"}}': "15000x20"},
         "15m", False),
    # --- BridgeWriteFailures
    Case("BridgeWriteFailures", "tsdb writes keep failing",
         {f'bridge_write_failures_total{{{B},sink="tsdb"}}': "0+5x30"}, "25m", True, {"sink": "tsdb"}),
    Case("BridgeWriteFailures", "one burst of failures, then none",
         {f'bridge_write_failures_total{{{B},sink="tsdb"}}': "0+5x3 15x27"}, "25m", False),
    # --- BridgeSlowWrites
    Case("BridgeSlowWrites", "writes take 1-2.5 s",
         {f'bridge_write_latency_seconds_bucket{{{B},le="0.1"}}': "0x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="1"}}': "0x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="2.5"}}': "0+10x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="+Inf"}}': "0+10x30"}, "25m", True),
    Case("BridgeSlowWrites", "writes take under 0.1 s",
         {f'bridge_write_latency_seconds_bucket{{{B},le="0.1"}}': "0+10x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="1"}}': "0+10x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="2.5"}}': "0+10x30",
          f'bridge_write_latency_seconds_bucket{{{B},le="+Inf"}}': "0+10x30"}, "25m", False),
    # --- SideEffectsDropped: also when only one of the two counters exists
    Case("SideEffectsDropped", "dead letters dropped", {f"bridge_deadletters_dropped_total{{{B}}}": "0x10 3x10"},
         "15m", True),
    Case("SideEffectsDropped", "nothing dropped",
         {f"bridge_deadletters_dropped_total{{{B}}}": "0x20", f"bridge_events_dropped_total{{{B}}}": "0x20"},
         "15m", False),
    # --- SignatureFailures
    Case("SignatureFailures", "1 bad signature per second",
         {f'bridge_rejected_total{{{B},reason="bad_signature"}}': "0+60x30"}, "25m", True),
    Case("SignatureFailures", "many invalid readings, no forgery",
         {f'bridge_rejected_total{{{B},reason="invalid"}}': "0+600x30"}, "25m", False),
    # --- DevicesSilent: replicas each report the devices they saw; the freshest report counts
    Case("DevicesSilent", "six devices silent",
         {f'bridge_device_last_seen_age_seconds{{{B},pod="b-0",device_id="d{i}"}}': "1000+60x30" for i in range(6)},
         "25m", True),
    Case("DevicesSilent", "six devices silent on one replica, fresh on the other",
         {**{f'bridge_device_last_seen_age_seconds{{{B},pod="b-0",device_id="d{i}"}}': "1000+60x30" for i in range(6)},
          **{f'bridge_device_last_seen_age_seconds{{{B},pod="b-1",device_id="d{i}"}}': "5x30" for i in range(6)}},
         "25m", False),
    # --- ApiErrors
    Case("ApiErrors", "9% of requests fail",
         {f'edu_api_requests_total{{{A},status="500"}}': "0+10x30", f'edu_api_requests_total{{{A},status="200"}}': "0+100x30"},
         "25m", True),
    Case("ApiErrors", "1% of requests fail",
         {f'edu_api_requests_total{{{A},status="500"}}': "0+1x30", f'edu_api_requests_total{{{A},status="200"}}': "0+100x30"},
         "25m", False),
    # --- EnrollmentFailures
    Case("EnrollmentFailures", "one failed enrollment a minute",
         {f'edu_enrollments_total{{{A},outcome="token_used"}}': "0+1x60"}, "60m", True),
    Case("EnrollmentFailures", "many enrollments, none failed",
         {f'edu_enrollments_total{{{A},outcome="enrolled"}}': "0+5x60", f'edu_enrollments_total{{{A},outcome="token_used"}}': "0x60"},
         "60m", False),
    # --- AnalyticsStalled
    Case("AnalyticsStalled", "stored, not scored",
         {f"bridge_readings_stored_total{{{B}}}": "0+500x50", f"edu_anomaly_readings_scored_total{{{W}}}": "100x50",
          f"up{{{W}}}": "1x50"}, "45m", True),
    Case("AnalyticsStalled", "stored, and the workers are gone",
         {f"bridge_readings_stored_total{{{B}}}": "0+500x50"}, "45m", True),
    Case("AnalyticsStalled", "stored and scored",
         {f"bridge_readings_stored_total{{{B}}}": "0+500x50",
          f"edu_anomaly_readings_scored_total{{{W}}}": "0+500x50", f"up{{{W}}}": "1x50"}, "45m", False),
    # --- WebhookFailures
    Case("WebhookFailures", "a failure a minute", {f"edu_anomaly_webhook_failures_total{{{W}}}": "0+1x60"}, "60m", True),
    Case("WebhookFailures", "three failures, long ago", {f"edu_anomaly_webhook_failures_total{{{W}}}": "0+1x3 3x57"},
         "60m", False),
]  # fmt: skip


def _rules() -> dict[str, Any]:
    out = helm.Chart.load(str(ROOT / "charts" / "edu-platform")).render(VALUES, name="edu-platform", namespace="iot")
    rule = yaml.safe_load(out["edu-platform/templates/prometheusrule.yaml"])
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def _alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"]}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(_rules()))
    done = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 15 rules found" in done.stdout


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for name, rule in _alerts(_rules()).items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        anchor = ann["runbook_url"].rsplit("#", 1)[1]
        assert anchor == f"runbook-{name.lower()}", name
        assert re.search(rf"^#### Runbook: {name}$", doc, re.M), f"docs/deployment.md has no runbook for {name}"
        assert "kubernetes_pod_name" not in rule["expr"], name


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = set(_alerts(_rules()))
    assert {c.alert for c in CASES if c.fires} == alerts
    assert {c.alert for c in CASES if not c.fires} == alerts


def test_promtool_test_rules(tmp_path: Path) -> None:
    rules = _rules()
    alerts = _alerts(rules)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = []
    for case in CASES:
        exp: list[dict[str, Any]] = []
        if case.fires:
            rule = alerts[case.alert]
            ann = {
                k: v.replace("{{ $labels.sink }}", case.labels.get("sink", "")) for k, v in rule["annotations"].items()
            }
            exp = [{"exp_labels": {**rule["labels"], **case.labels}, "exp_annotations": ann}]
        tests.append(
            {
                "name": f"{case.alert}: {case.why}",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": exp}],
            }
        )
    (tmp_path / "alerts_test.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, width=1000)
    )
    done = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
