"""The Helm chart, checked without helm (none on this machine): YAML parses, every `.Values` path a
template uses exists, template actions balance, every env var a template sets is one the process it
runs actually reads, every command it runs exists, and the broker config keeps mosquitto.conf's limits.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from broker_bridge.settings import BridgeSettings
from cloud_core.analytics.settings import AnalyticsSettings
from cloud_core.core.config import CloudSettings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "edu-platform"
TEMPLATES = CHART / "templates"
ACTION = re.compile(r"{{-?(.*?)-?}}", re.S)
EDU_VAR = re.compile(r"\bEDU_[A-Z0-9_]+\b")


def _templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _env_names(settings: type[Any], prefix: str) -> set[str]:
    return {prefix + name.upper() for name in settings.model_fields}


def _defines() -> dict[str, str]:
    """Named templates of _helpers.tpl: name -> body."""
    text = (TEMPLATES / "_helpers.tpl").read_text()
    out: dict[str, str] = {}
    for m in re.finditer(r'{{-? define "([^"]+)" -?}}(.*?){{-? end -?}}\s*(?={{-? define|{{/\*|\Z)', text, re.S):
        out[m.group(1)] = m.group(2)
    return out


def _expanded(text: str, defines: dict[str, str], seen: frozenset[str] = frozenset()) -> str:
    """``text`` followed by the bodies of every named template it includes (recursively)."""
    parts = [text]
    for name in re.findall(r'include "([^"]+)"', text):
        if name in defines and name not in seen:
            parts.append(_expanded(defines[name], defines, seen | {name}))
    return "\n".join(parts)


def _command(text: str) -> list[str]:
    """The `command:` list of the (single) container of a template, template actions replaced by "X"."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith('command: ["iotctl"'))
    return yaml.safe_load(ACTION.sub('"X"', line.strip())[len("command:") :])


def _cli(args: list[str]) -> Any:
    """The click command ``iotctl <args...>`` resolves to (options stop the walk)."""
    assert args[0] == "iotctl"
    module = importlib.import_module(f"iotctl.commands.{args[1]}")
    cmd = typer.main.get_command(module.app)  # typer may vendor its own click: duck-type the groups
    for word in args[2:]:
        if word.startswith("-") or not hasattr(cmd, "commands"):
            break
        sub = cmd.commands.get(word)
        assert sub is not None, f"iotctl {args[1]} has no sub-command {word!r}"
        cmd = sub
    return cmd


# --- YAML and values ----------------------------------------------------------------------------------


def test_chart_yaml_is_a_v2_application_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "edu-platform"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"]


def test_every_values_path_a_template_uses_exists_in_values_yaml() -> None:
    values = _values()
    missing: list[str] = []
    used = 0
    for name, text in _templates().items():
        aliases = dict(re.findall(r"(\$\w+)\s*:=\s*\.Values((?:\.\w+)+)", text))
        paths = re.findall(r"\.Values((?:\.\w+)+)", text)
        for alias, prefix in aliases.items():
            paths += [prefix + rest for rest in re.findall(re.escape(alias) + r"((?:\.\w+)+)", text)]
        for path in paths:
            node: Any = values
            for key in path.strip(".").split("."):
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{name}: .Values{path}")
                    break
                node = node[key]
            used += 1
    assert not missing, missing
    assert used > 100  # the regexes found the references at all


def test_every_value_in_values_yaml_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not m or i == 0:
            continue
        indent = len(m.group(1))
        prev = lines[i - 1].strip()
        # a key is documented by the comment right above it, or is a plain child of a commented block
        # (resources.requests.cpu, ...) whose parent carries the comment.
        if prev.startswith("#"):
            continue
        parent = next(
            (lines[j] for j in range(i - 1, -1, -1) if re.match(rf"^\s{{0,{max(indent - 1, 0)}}}\S", lines[j])),
            "",
        )
        if indent and parent.strip().split(":")[0] in (
            "resources",
            "requests",
            "limits",
            "podSecurityContext",
            "securityContext",
            "capabilities",
            "image",
        ):
            continue
        if indent and prev.endswith(":"):  # first child of a commented group, e.g. `service:` -> `type`
            continue
        uncommented.append(f"{i + 1}: {line.strip()}")
    assert not uncommented, uncommented


# --- template syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_templates()))
def test_template_actions_balance(name: str) -> None:
    text = _templates()[name]
    assert text.count("{{") == text.count("}}"), "unbalanced {{ }}"
    # no action opens inside another one
    depth = 0
    for m in re.finditer(r"{{|}}", text):
        depth += 1 if m.group() == "{{" else -1
        assert depth in (0, 1), f"nested or stray braces near offset {m.start()}"
    # block structure: if/with/range/define open, end closes, else only inside an if/with/range
    stack: list[str] = []
    for m in ACTION.finditer(text):
        body = m.group(1).strip()
        if body.startswith("/*"):
            assert body.endswith("*/"), f"unterminated comment: {body[:40]}"
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("if", "with", "range", "define", "block"):
            stack.append(word)
        elif word == "else":
            assert stack and stack[-1] in ("if", "with", "range"), f"stray else: {body}"
        elif word == "end":
            assert stack, f"{{{{ end }}}} without an opening block near offset {m.start()}"
            stack.pop()
    assert not stack, f"unclosed blocks: {stack}"


def test_helpers_define_what_templates_include() -> None:
    defines = _defines()
    text = (TEMPLATES / "_helpers.tpl").read_text()
    assert len(defines) == len(re.findall(r"{{-? define ", text))
    for name, body in _templates().items():
        for used in re.findall(r'include "([^"]+)"', body):
            assert used in defines, f"{name} includes undefined {used}"
    # (print $.Template.BasePath "/x.yaml") checksums point at files that exist
    for name, body in _templates().items():
        for path in re.findall(r'\$\.Template\.BasePath "/([^"]+)"', body):
            assert (TEMPLATES / path).is_file(), f"{name}: checksum of missing {path}"


# --- env vars and commands against the code -----------------------------------------------------------


CLOUD = _env_names(CloudSettings, "EDU_")
BRIDGE = _env_names(BridgeSettings, "EDU_BRIDGE_")
ANALYTICS = _env_names(AnalyticsSettings, "EDU_ANALYTICS_")


def _worker_envvars() -> set[str]:
    cmd = _cli(["iotctl", "anomalies", "worker"])
    return {p.envvar for p in cmd.params if isinstance(p.envvar, str)}


@pytest.mark.parametrize(
    ("template", "readers"),
    [
        ("api-deployment.yaml", lambda: CLOUD),
        ("bridge-statefulset.yaml", lambda: BRIDGE),
        ("worker-deployment.yaml", lambda: _worker_envvars() | ANALYTICS),
    ],
)
def test_every_env_var_a_template_sets_is_read_by_its_process(template: str, readers: Any) -> None:
    text = _expanded(_templates()[template], _defines())
    set_vars = set(EDU_VAR.findall(text))
    assert set_vars, "no EDU_* variables found"
    unknown = set_vars - readers()
    assert not unknown, f"{template} sets variables nothing reads: {sorted(unknown)}"


def test_key_settings_are_set_where_they_matter() -> None:
    t = {name: _expanded(text, _defines()) for name, text in _templates().items()}
    api, bridge, worker = t["api-deployment.yaml"], t["bridge-statefulset.yaml"], t["worker-deployment.yaml"]
    # listen on the pod IP, not loopback (the settings' defaults)
    assert re.search(r"EDU_API_HOST\s+value: \"0\.0\.0\.0\"", api)
    assert re.search(r"EDU_BRIDGE_METRICS_HOST\s+value: \"0\.0\.0\.0\"", bridge)
    # one signing key and one service password for every replica, never generated per pod
    assert "EDU_CONFIG_SIGNING_KEY_PATH" in api and "EDU_MQTT_PASSWORD" in api
    # stable identities from the pod name
    assert re.search(r"EDU_BRIDGE_CLIENT_ID\s+valueFrom:\s+fieldRef:\s+fieldPath: metadata.name", bridge)
    assert re.search(r"EDU_ANALYTICS_CONSUMER\s+valueFrom:\s+fieldRef:\s+fieldPath: metadata.name", worker)
    assert "kind: StatefulSet" in bridge
    # the bridge and the workers agree on the stream
    assert "EDU_BRIDGE_STREAM_NAME" in bridge and "EDU_ANALYTICS_STREAM" in worker


def test_db_migrate_job_passes_only_variables_it_uses() -> None:
    text = _expanded(_templates()["db-migrate-job.yaml"], _defines())
    expanded_in_command = set(re.findall(r"\$\((EDU_[A-Z0-9_]+)\)", text))
    assert expanded_in_command == {"EDU_DB_URL"}
    for var in set(EDU_VAR.findall(text)) - expanded_in_command:
        assert var in CLOUD, var  # EDU_STATE_DIR, EDU_LOG_LEVEL
    assert '"helm.sh/hook": pre-install,pre-upgrade' in text


def test_non_edu_env_vars_are_used_by_the_script_that_gets_them() -> None:
    for name, text in _templates().items():
        for var in re.findall(r"- name: ([A-Z][A-Z0-9_]*)\s*$", text, re.M):
            if var.startswith("EDU_"):
                continue
            assert f'"${var}"' in text, f"{name}: {var} is set but no script reads it"


@pytest.mark.parametrize(
    "template", ["api-deployment.yaml", "bridge-statefulset.yaml", "worker-deployment.yaml", "db-migrate-job.yaml"]
)
def test_commands_exist_with_their_options(template: str) -> None:
    args = _command(_templates()[template])
    if (
        args[1:3] == ["db", "upgrade"]
        and "upgrade" not in typer.main.get_command(importlib.import_module("iotctl.commands.db").app).commands
    ):  # type: ignore[attr-defined]
        pytest.skip("`iotctl db upgrade` (Alembic) arrives with its own change; the chart already runs it")
    cmd = _cli(args)
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    for word in args:
        if word.startswith("--"):
            assert word in opts, f"{' '.join(args)}: no option {word}"


def test_chart_defaults_satisfy_the_settings_validators() -> None:
    v = _values()
    b = v["bridge"]
    BridgeSettings(
        mqtt_url="mqtt://broker:1883",
        receive_maximum=b["receiveMaximum"],
        max_backlog=b["maxBacklog"],
        session_expiry_s=b["sessionExpirySeconds"],
        metrics_port=b["metricsPort"],
        share_group=b["shareGroup"],
        mqtt_protocol=v["mqtt"]["protocol"],
        stream_name=v["worker"]["stream"],
    )
    CloudSettings(api_port=v["api"]["port"], mqtt_protocol=v["mqtt"]["protocol"], topic_prefix=v["topicPrefix"])
    assert AnalyticsSettings(group=v["worker"]["group"], stream=v["worker"]["stream"]).stream == "edu:readings"
    assert b["hpa"]["minReplicas"] <= b["hpa"]["maxReplicas"]


def test_scrape_annotations_on_every_pod() -> None:
    t = {name: _expanded(text, _defines()) for name, text in _templates().items()}
    v = _values()
    for template, port in [
        ("api-deployment.yaml", ".Values.api.port"),
        ("bridge-statefulset.yaml", "$b.metricsPort"),
        ("worker-deployment.yaml", "$w.metricsPort"),
    ]:
        assert f'"edu-platform.scrapeAnnotations" (dict "port" {port})' in t[template]
    assert 'prometheus.io/scrape: "true"' in _defines()["edu-platform.scrapeAnnotations"]
    assert (v["api"]["port"], v["bridge"]["metricsPort"], v["worker"]["metricsPort"]) == (8080, 9108, 9110)
    for template in ("mosquitto-statefulset.yaml", "db-migrate-job.yaml"):
        assert "prometheus.io/scrape" in t[template]
    # probes on the endpoints the processes serve
    assert "path: /health" in t["api-deployment.yaml"] and "path: /ready" in t["api-deployment.yaml"]
    assert "path: /health" in t["bridge-statefulset.yaml"] and "path: /ready" in t["bridge-statefulset.yaml"]


# --- the broker configuration -------------------------------------------------------------------------


LIMITS = {
    "max_queued_messages": "maxQueuedMessages",
    "max_inflight_messages": "maxInflightMessages",
    "max_packet_size": "maxPacketSize",
    "max_keepalive": "maxKeepalive",
}


def _reference_conf() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, value.strip())
    return out


def test_configmap_keeps_the_reference_limits_and_directives() -> None:
    ref = _reference_conf()
    limits = _values()["mosquitto"]["limits"]
    for directive, value_key in LIMITS.items():
        assert str(limits[value_key]) == ref[directive], directive
    template = _templates()["mosquitto-configmap.yaml"]
    directives = {ln.strip().split(" ", 1)[0] for ln in template.splitlines() if re.match(r"^    [a-z_]+ ", ln)}
    # everything the reference sets, the chart sets too
    assert set(ref) <= directives, sorted(set(ref) - directives)
    m = _values()["mosquitto"]
    assert m["autosaveInterval"] == int(ref["autosave_interval"])
    assert m["persistentClientExpiration"] == ref["persistent_client_expiration"]
    # the memory limits the chart derives from the pod's memory are the reference's, for the defaults
    rendered = _rendered_conf_values()
    for directive in ("memory_limit", "max_inflight_bytes", "max_queued_bytes", "max_connections"):
        assert rendered[directive] == ref[directive], directive


REQUIRED_VALUES: dict[str, Any] = {
    "postgresql": {"url": "postgresql://edu@pg/edu"},
    "influxdb": {"url": "influxdb://influx:8086/iot"},
    "redis": {"url": "redis://redis:6379/0"},
    "mqtt": {"password": "s", "adminPassword": "a"},
    "configSigning": {"privateKey": "k"},
    "mosquitto": {"tls": {"existingSecret": "mqtt-tls"}},
    "api": {"ingress": {"host": "iot.example", "tlsSecretName": "api-tls"}},
}


def _render_mosquitto_conf(values: dict[str, Any], tls: bool) -> str:
    """The ConfigMap's mosquitto.conf as Helm renders it (helm-python-sdk)."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
    over = {**REQUIRED_VALUES, "mosquitto": {**values["mosquitto"], "tls": {**values["mosquitto"]["tls"],
            "enabled": tls, "existingSecret": "mqtt-tls"}, "deviceService": {"type": "ClusterIP"}}}  # fmt: skip
    out = helm.Chart.load(str(CHART)).render(over, name="edu-platform", namespace="iot")
    doc = yaml.safe_load(out["edu-platform/templates/mosquitto-configmap.yaml"])
    return str(doc["data"]["mosquitto.conf"])


def _rendered_conf_values() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _render_mosquitto_conf(_values(), tls=True).splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, value)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str, package: str) -> str:
    """Where the server fixtures find it (a non-root PATH lacks /usr/sbin); missing is a failure, as for
    the fixtures: scripts/test installs it."""
    from iot_testing import ServerBinaryMissing, find_binary

    try:
        return find_binary(name, package)
    except ServerBinaryMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def test_rendered_broker_config_starts_with_the_init_steps_dynsec_file(tmp_path: Path) -> None:
    """The ConfigMap's mosquitto.conf and the init container's `mosquitto_ctrl dynsec init` work together:
    the broker starts, refuses anonymous clients and accepts the admin."""
    from cloud_core.broker.mosquitto_process import BrokerBinaryMissing, find_dynsec_plugin

    mosquitto = _binary("mosquitto", "mosquitto")
    mosquitto_ctrl = _binary("mosquitto_ctrl", "mosquitto-clients")
    mosquitto_pub = _binary("mosquitto_pub", "mosquitto-clients")
    values = _values()
    values["mosquitto"]["port"] = port = _free_port()
    try:
        values["mosquitto"]["dynsecPluginPath"] = str(find_dynsec_plugin())
    except BrokerBinaryMissing as exc:
        pytest.fail(f"dynamic security plugin not found: {exc}", pytrace=False)
    conf = _render_mosquitto_conf(values, tls=False).replace("/mosquitto/data/", f"{tmp_path}/")
    if os.geteuid() == 0:  # in the pod it runs as uid 1883 already; as root here, do not drop to `mosquitto`
        conf += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    # the init container's script and the broker's command, verbatim from the rendered StatefulSet
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
    out = helm.Chart.load(str(CHART)).render(REQUIRED_VALUES, name="edu-platform", namespace="iot")
    pod = yaml.safe_load(out["edu-platform/templates/mosquitto-statefulset.yaml"])["spec"]["template"]["spec"]
    init_script = pod["initContainers"][0]["command"][-1].replace("/mosquitto/data", str(tmp_path))
    # the pod's image has them on PATH; here they may be in /usr/sbin (found like the fixtures do)
    path = os.pathsep.join([str(Path(mosquitto_ctrl).parent), str(Path(mosquitto).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "DYNSEC_ADMIN_USERNAME": "admin", "DYNSEC_ADMIN_PASSWORD": "pw"}
    subprocess.run(["sh", "-c", init_script], check=True, capture_output=True, env=env)
    dynsec = tmp_path / "dynamic-security.json"
    assert dynsec.stat().st_mode & 0o777 == 0o600
    subprocess.run(["sh", "-c", init_script], check=True, capture_output=True, env=env)  # kept, not overwritten
    main = pod["containers"][0]["command"]
    main[-1] = main[-1].replace("/mosquitto/config/mosquitto.conf", str(tmp_path / "mosquitto.conf"))
    proc = subprocess.Popen(main, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "broker did not start"
                time.sleep(0.05)
        ok = subprocess.run(
            [
                mosquitto_ctrl,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-u",
                "admin",
                "-P",
                "pw",
                "dynsec",
                "getDefaultACLAccess",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert ok.returncode == 0 and "publishClientSend" in ok.stdout, ok.stdout + ok.stderr
        # the plugin rewrites the file on every change (a device enrolled): it stays 0600 (umask 077)
        before = dynsec.stat().st_ino, dynsec.read_bytes()
        made = subprocess.run(
            [mosquitto_ctrl, "-h", "127.0.0.1", "-p", str(port), "-u", "admin", "-P", "pw",
             "dynsec", "createClient", "dev-1", "-p", "x"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        assert (dynsec.stat().st_ino, dynsec.read_bytes()) != before and "dev-1" in dynsec.read_text()
        assert dynsec.stat().st_mode & 0o777 == 0o600
        anon = subprocess.run(
            [mosquitto_pub, "-h", "127.0.0.1", "-p", str(port), "-t", "x", "-m", "y"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert anon.returncode != 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_listener_renders_only_when_enabled() -> None:
    values = _values()
    plain = _render_mosquitto_conf(values, tls=False)
    tls = _render_mosquitto_conf(values, tls=True)
    assert "listener 8883" not in plain and "certfile" not in plain
    assert "listener 8883\nprotocol mqtt\ncafile /mosquitto/certs/ca.crt\ncertfile /mosquitto/certs/tls.crt\n" in tls
    assert "max_queued_messages 100000\n" in plain and "allow_anonymous false\n" in plain
    assert "max_queued_bytes 75497472\n" in plain and "memory_limit 1610612736\n" in plain
