"""TLS end to end with the platform's own PKI, against real Mosquitto and the real API (``iotctl api``
over HTTPS in a subprocess): a device enrolls over HTTPS, pins the broker's CA from the enrollment
response and sends telemetry over mqtts that the bridge (itself on mqtts) stores and receipts; the
simulator does the same. Then each way TLS goes wrong (expired certificate, wrong CA, name mismatch)
gives one clear line in the agent, the bridge and the simulator, and mTLS refuses a device without
a client certificate."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker_bridge import Bridge, BridgeSettings
from cloud_core.broker.mosquitto_process import BrokerTls
from cloud_core.pki import CertificateAuthority, Issued
from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.errors import EnrollmentError
from edge_agent.identity import enroll, load_identity, write_identity
from firmware_sim.fleet import Fleet, FleetSettings
from firmware_sim.registration import enroll_via_api
from firmware_sim.scenario import parse_scenario
from iot_protocol import generate_private_key, public_key_b64
from iot_protocol.tls import client_context
from iot_testing import MosquittoServer, free_port, wait_for

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


@dataclass
class Pki:
    ca: CertificateAuthority
    good: Issued  # valid for IP 127.0.0.1 only: "localhost" is a name mismatch
    expired: Issued
    other_ca: CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(root / "ca")
    good = ca.issue("broker", ip_addresses=["127.0.0.1"])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = ca.issue("old-broker", ip_addresses=["127.0.0.1"], not_before=past, not_after=past + dt.timedelta(days=1))
    return Pki(ca, good, expired, CertificateAuthority.init(root / "other", common_name="someone else's CA"))


def _tls(cert: Issued, *, require_certificate: bool = False) -> BrokerTls:
    return BrokerTls(
        port=0,
        ca_file=cert.ca_path,
        cert_file=cert.cert_path,
        key_file=cert.key_path,
        require_certificate=require_certificate,
    )


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[MosquittoServer]:
    with MosquittoServer(dynsec=True, tls=_tls(pki.good)) as b:
        yield b


@pytest.fixture(scope="module")
def expired_broker(pki: Pki) -> Iterator[MosquittoServer]:
    with MosquittoServer(tls=_tls(pki.expired)) as b:
        yield b


# ---- the PKI itself ------------------------------------------------------------------------------


def test_pki_cli_init_issue_rotate(tmp_path: Path) -> None:
    d = tmp_path / "pki"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([IOTCTL, "pki", *args, "--dir", str(d)], capture_output=True, text=True, timeout=60)

    before = run("issue", "mqtt")
    assert before.returncode != 0 and before.stderr.count("\n") == 1 and "iotctl pki init" in before.stderr
    assert run("init").returncode == 0
    again = run("init")
    assert again.returncode != 0 and "--force" in again.stderr and again.stderr.count("\n") == 1
    out = run("issue", "mqtt", "--dns", "mqtt.school.example", "--ip", "10.1.2.3")
    assert out.returncode == 0, out.stderr
    assert "DNS:mqtt.school.example, IP:10.1.2.3" in out.stdout
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (d / "issued/mqtt/tls.key").stat().st_mode & 0o777 == 0o600
    key_before = (d / "issued/mqtt/tls.key").read_bytes()
    rotated = run("rotate", "mqtt")
    assert rotated.returncode == 0 and "DNS:mqtt.school.example, IP:10.1.2.3" in rotated.stdout
    assert (d / "issued/mqtt/tls.key").read_bytes() != key_before
    assert run("issue", "dev-1", "--client").returncode == 0
    listing = run("list").stdout
    assert "server  mqtt" in listing and "client  dev-1" in listing
    missing = run("rotate", "nope")
    assert missing.returncode != 0 and "issued: dev-1, mqtt" in missing.stderr
    bad = run("issue", "x", "--ip", "not-an-ip")
    assert bad.returncode != 0 and "'not-an-ip' is not an IP address" in bad.stderr


# ---- the whole path over TLS ---------------------------------------------------------------------


@dataclass
class Api:
    url: str
    state: Path
    token: str


@pytest.fixture
def https_api(tmp_path: Path, broker: MosquittoServer, pki: Pki) -> Iterator[Api]:
    """``iotctl api`` over HTTPS (certificate for 127.0.0.1 from the same CA), telling devices the
    broker's TLS URL and its CA."""
    state = tmp_path / "cloud"
    port = free_port()
    env = {
        **os.environ,
        "EDU_STATE_DIR": str(state),
        "EDU_MQTT_URL": broker.url,
        "EDU_PUBLIC_MQTT_URL": broker.tls_url(),
        "EDU_MQTT_CA_FILE": str(pki.ca.ca_path),
        "EDU_MQTT_ADMIN_USERNAME": broker.admin_username,
        "EDU_MQTT_ADMIN_PASSWORD": broker.admin_password,
        "EDU_API_PORT": str(port),
        "EDU_API_TLS_CERT_FILE": str(pki.good.cert_path),
        "EDU_API_TLS_KEY_FILE": str(pki.good.key_path),
    }
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen([IOTCTL, "api", "--no-events"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    verify = client_context(pki.ca.ca_path)

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        try:
            return httpx.get(f"{url}/ready", verify=verify, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "the API over HTTPS", timeout=60)
        yield Api(url, state, (state / "admin.token").read_text().strip())
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _register(api: Api, pki: Pki, device_id: str) -> str:
    r = httpx.post(
        f"{api.url}/v1/devices/register",
        json={"id": device_id},
        headers={"Authorization": f"Bearer {api.token}"},
        verify=client_context(pki.ca.ca_path),
    )
    assert r.status_code == 201 or r.status_code == 200, r.text
    return str(r.json()["enrollment_token"])


def _agent_config(tmp: Path, **over: Any) -> Path:
    fields = {
        "sampling_interval_s": 0.1,
        "transmission_interval_s": 0.1,
        "batch_max_readings": 5,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        **over,
    }
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
    path = tmp / "agent.toml"
    path.write_text(f'identity_dir = "identity"\nbuffer_path = "buffer.db"\n{body}[[sensors]]\ntype = "simulated"\n')
    return path


def test_device_enrolls_over_https_pins_the_ca_and_its_telemetry_is_stored_over_mqtts(
    tmp_path: Path, https_api: Api, broker: MosquittoServer, pki: Pki
) -> None:
    # the plain HTTP port is not what devices use: the API speaks only HTTPS
    with pytest.raises(httpx.HTTPError):
        httpx.get(https_api.url.replace("https://", "http://") + "/health", timeout=5)
    token = _register(https_api, pki, "tls-dev-1")
    enrolled = subprocess.run(
        [IOTCTL, "agent", "enroll", "--api", https_api.url, "--token", token, "--dir", str(tmp_path / "identity"),
         "--ca", str(pki.ca.ca_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert "broker CA pinned" in enrolled.stdout
    ident = load_identity(tmp_path / "identity")
    assert ident.mqtt_url == broker.tls_url()
    assert ident.ca_file is not None and ident.ca_file.read_bytes() == pki.ca.ca_path.read_bytes()

    bridge_settings = BridgeSettings(
        mqtt_url=broker.tls_url(),
        tls_ca_file=str(pki.ca.ca_path),
        mqtt_username="edu-cloud",
        mqtt_password=(https_api.state / "mqtt-service.secret").read_text().strip(),
        db_url=f"sqlite:///{https_api.state / 'meta.db'}",
        tsdb_url=f"sqlite:///{tmp_path / 'readings.db'}",
        metrics_port=None,
        client_id="bridge-tls",
    )
    with Bridge(bridge_settings) as bridge:
        bridge.wait_ready(30)
        agent = Agent(load_settings(_agent_config(tmp_path)), ident)
        agent.start()
        try:
            assert agent.wait_connected(30)
            wait_for(lambda: agent.pipeline.buffer.counters["stored"] >= 10, "readings receipted over TLS", timeout=60)
        finally:
            agent.stop()
        assert bridge.metrics.readings_stored._value.get() >= 10

        # the simulator enrolls through the same HTTPS API and connects with the CA it was given
        scenario = parse_scenario(
            {
                "simulation": {"name": "tls", "duration": "2s", "speed": 1.0},
                "devices": [{"count": 2, "id_prefix": "tls-sim", "sampling_interval": "0.2s",
                             "transmission_interval": "0.2s"}],
            },
            source="test",
        )  # fmt: skip
        plan = scenario.plan()
        keys = {d.device_id: generate_private_key() for d in plan.devices}
        creds = enroll_via_api(https_api.url, https_api.token, plan.devices, keys, ca_file=pki.ca.ca_path)
        fleet = Fleet(
            plan,
            FleetSettings(mqtt_url=broker.tls_url(), tls_ca_file=pki.ca.ca_path, drain_timeout_s=30),
            credentials=creds,
            keys=keys,
        )
        report = fleet.run()
        assert report.produced > 0 and report.stored == report.produced, report


def test_enrollment_over_https_with_the_wrong_ca_is_one_clear_line(tmp_path: Path, https_api: Api, pki: Pki) -> None:
    with pytest.raises(EnrollmentError) as err:
        enroll(https_api.url, "whatever", tmp_path / "identity", ca_file=pki.other_ca.ca_path)
    msg = str(err.value)
    assert "\n" not in msg and "not signed by the trusted CA" in msg, msg


# ---- each failure, in each client ----------------------------------------------------------------

CASES = {
    # case: (which broker, URL host, CA the client trusts, what the line must say)
    "expired": ("expired", "127.0.0.1", "ca", "certificate has expired"),
    "wrong-ca": ("good", "127.0.0.1", "other", "not signed by the trusted CA"),
    "name-mismatch": ("good", "localhost", "ca", "not valid for the name 'localhost'"),
}


def _case(name: str, pki: Pki, broker: MosquittoServer, expired_broker: MosquittoServer) -> tuple[str, Path, str]:
    which, host, trust, expect = CASES[name]
    b = expired_broker if which == "expired" else broker
    ca = pki.ca.ca_path if trust == "ca" else pki.other_ca.ca_path
    return b.tls_url(host), ca, expect


def _one_line(text: str, expect: str) -> None:
    assert expect in text, text
    assert "\n" not in text and text.startswith("TLS to "), text


@pytest.mark.parametrize("case", sorted(CASES))
def test_agent_says_why_tls_failed(
    case: str, tmp_path: Path, pki: Pki, broker: MosquittoServer, expired_broker: MosquittoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    url, ca, expect = _case(case, pki, broker, expired_broker)
    ident = write_identity(
        tmp_path / "identity",
        generate_private_key(),
        {"device_id": "tls-bad", "mqtt_url": url, "topic_prefix": "tlsbad", "cloud_public_key": public_key_b64(
            generate_private_key()), "mqtt_ca_pem": ca.read_text()},
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="edge_agent")
    agent = Agent(load_settings(_agent_config(tmp_path)), ident)
    agent.start()
    try:
        rec = wait_for(lambda: [r for r in caplog.records if r.getMessage().startswith("TLS to")], f"the {case} error")[
            0
        ]
    finally:
        agent.stop()
    _one_line(rec.getMessage(), expect)
    assert rec.levelno == logging.ERROR and not agent.wait_connected(0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bridge_says_why_tls_failed(
    case: str, tmp_path: Path, pki: Pki, broker: MosquittoServer, expired_broker: MosquittoServer
) -> None:
    url, ca, expect = _case(case, pki, broker, expired_broker)
    settings = BridgeSettings(
        mqtt_url=url,
        tls_ca_file=str(ca),
        db_url=f"sqlite:///{tmp_path / 'meta.db'}",
        tsdb_url=f"sqlite:///{tmp_path / 'readings.db'}",
        metrics_port=None,
    )
    with Bridge(settings) as bridge:
        why = wait_for(lambda: (bridge.mqtt.last_error or "").startswith("TLS to") and bridge.mqtt.last_error, case)
        _one_line(why, expect)
        assert bridge.ready() == (False, why)  # /ready says it too
        with pytest.raises(TimeoutError, match="TLS to"):
            bridge.wait_ready(0.1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_simulator_says_why_tls_failed(
    case: str, pki: Pki, broker: MosquittoServer, expired_broker: MosquittoServer
) -> None:
    url, ca, expect = _case(case, pki, broker, expired_broker)
    scenario = parse_scenario(
        {"simulation": {"name": "tls", "duration": "1s"}, "devices": [{"count": 1, "id_prefix": "tls-bad"}]},
        source="test",
    )
    fleet = Fleet(scenario.plan(), FleetSettings(mqtt_url=url, tls_ca_file=ca))
    next(iter(fleet.devices.values())).connect()  # the fleet's own connect path
    assert fleet.last_error is not None
    _one_line(fleet.last_error, expect)
    fleet._sel.close()


# ---- mTLS ------------------------------------------------------------------------------------------


def test_mtls_broker_takes_a_device_with_a_client_certificate_and_refuses_one_without(tmp_path: Path, pki: Pki) -> None:
    client_cert = pki.ca.issue("mtls-dev", kind="client")
    with MosquittoServer(tls=_tls(pki.good, require_certificate=True)) as b:

        def make_agent(sub: str, **over: Any) -> Agent:
            d = tmp_path / sub
            d.mkdir()
            ident = write_identity(
                d / "identity",
                generate_private_key(),
                {"device_id": f"mtls-{sub}", "mqtt_url": b.tls_url(), "topic_prefix": "mtls",
                 "cloud_public_key": public_key_b64(generate_private_key()), "mqtt_ca_pem": pki.ca.ca_path.read_text()},
            )  # fmt: skip
            a = Agent(load_settings(_agent_config(d, **over)), ident)
            a.start()
            return a

        with_cert = make_agent(
            "with", tls_client_cert=str(client_cert.cert_path), tls_client_key=str(client_cert.key_path)
        )
        try:
            assert with_cert.wait_connected(30)
        finally:
            with_cert.stop()
        without = make_agent("without")
        try:
            wait_for(lambda: "peer did not return a certificate" in b.log_path.read_text(), "the broker's refusal")
            assert not without.wait_connected(0)
        finally:
            without.stop()


def test_agent_settings_need_both_client_cert_and_key(tmp_path: Path) -> None:
    from edge_agent.errors import SettingsError

    with pytest.raises(SettingsError, match="tls_client_cert and tls_client_key go together"):
        load_settings(_agent_config(tmp_path, tls_client_cert="c.pem"))


# ---- iotctl up beyond loopback ---------------------------------------------------------------------


def test_up_beyond_loopback_serves_devices_over_tls_only(tmp_path: Path) -> None:
    """Bound to every interface, the platform serves the API over HTTPS and devices over mqtts with its
    own CA: the simulated devices enroll over HTTPS, pin that CA and their readings are stored; the
    broker's plain listener stays on loopback. On loopback nothing changes (plain, no CA made)."""
    from iotctl.platform import Platform, PlatformSettings

    settings = PlatformSettings(
        state_dir=tmp_path / "state", devices=2, sampling_interval_s=0.3, mqtt_port=0, api_port=0,
        bridge_metrics_port=0, drain_timeout_s=30, broker_kind="mosquitto", bind_host="0.0.0.0",
        advertised_host="127.0.0.1", mqtts_port=0,
    )  # fmt: skip
    with Platform(settings) as platform:
        assert platform.api_url.startswith("https://") and platform.tls is not None
        assert platform.cloud.public_mqtt_url == platform.tls.public_mqtt_url
        assert platform.tls.public_mqtt_url.startswith("mqtts://127.0.0.1:")
        ca = platform.tls.files.ca_file
        assert ca == settings.state_dir.resolve() / "pki" / "ca.crt"
        assert httpx.get(f"{platform.api_url}/health", verify=client_context(ca)).status_code == 200
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the API port
            httpx.get(platform.api_url.replace("https", "http") + "/health", timeout=5)
        conf = (settings.state_dir / "mosquitto" / "mosquitto.conf").read_text()
        assert f"listener {platform.tls.broker.port} 0.0.0.0\n" in conf and "tls_version tlsv1.2\n" in conf
        assert re.search(r"^listener \d+ 127\.0\.0\.1$", conf, re.M)  # the plain one: loopback only
        wait_for(lambda: platform.stats().readings_stored >= 10, "readings stored from devices on TLS", timeout=60)
        assert platform.fleet.settings.mqtt_url.startswith("mqtts://")
    plain = PlatformSettings(
        state_dir=tmp_path / "plain", devices=0, mqtt_port=0, api_port=0, bridge_metrics_port=0,
        broker_kind="mosquitto",
    )  # fmt: skip
    with Platform(plain) as platform:
        assert platform.api_url.startswith("http://") and platform.tls is None
        assert not (plain.state_dir / "pki").exists()
