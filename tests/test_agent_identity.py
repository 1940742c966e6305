"""Device side of identity, end to end with the real cloud API (uvicorn) and Mosquitto with dynamic
security: `iotctl agent enroll` stores a 0600 key and credentials, a used token is refused in one
line, and the enrolled agent connects with its own credentials and applies a config set via the API."""

from __future__ import annotations

import functools
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import iot_testing
from cloud_core.api import create_app
from cloud_core.core.config import CloudSettings
from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.identity import load_identity

pytestmark = pytest.mark.integration
wait_for = functools.partial(iot_testing.wait_for, timeout=15)
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30, **kw
        )


@pytest.fixture
def api(mosquitto_dynsec: Any, tmp_path: Path, topic_prefix: str) -> Iterator[Api]:
    settings = CloudSettings(
        state_dir=tmp_path / "state",
        db_url=f"sqlite:///{tmp_path / 'meta.db'}",
        mqtt_url=mosquitto_dynsec.url,
        mqtt_username=f"svc-{topic_prefix}",
        mqtt_admin_username=mosquitto_dynsec.admin_username,
        mqtt_admin_password=mosquitto_dynsec.admin_password,
        topic_prefix=topic_prefix,
        events_flush_interval_s=0.1,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None, ws="none", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the API to start")
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Api(f"http://127.0.0.1:{port}", (settings.state_dir / "admin.token").read_text().strip())
    finally:
        server.should_exit = True
        thread.join(15)


def test_enroll_run_and_apply_config_through_the_api(api: Api, tmp_path: Path, topic_prefix: str) -> None:
    device = f"pi-{topic_prefix}"
    r = api.call("POST", "/v1/devices/register", json={"id": device, "device_type": "pi", "location": "lab"})
    assert r.status_code == 201, r.text
    token = r.json()["enrollment_token"]
    ident_dir = tmp_path / "identity"

    out = subprocess.run(
        [IOTCTL, "agent", "enroll", "--api", api.url, "--token", token, "--dir", str(ident_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert device in out.stdout
    for name in ("device_key.pem", "credentials.json"):
        assert stat.S_IMODE((ident_dir / name).stat().st_mode) == 0o600
    ident = load_identity(ident_dir)
    assert ident.device_id == ident.client_id == device and ident.mqtt_password
    assert ident.mqtt_password not in out.stdout + out.stderr and "PRIVATE KEY" not in out.stdout + out.stderr

    again = subprocess.run(
        [IOTCTL, "agent", "enroll", "--api", api.url, "--token", token, "--dir", str(tmp_path / "other")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: enrollment refused") and "HTTP 4" in lines[0]

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'identity_dir = "{ident_dir}"\nbuffer_path = "buffer.db"\nsampling_interval_s = 5\n'
        'transmission_interval_s = 0.2\n[[sensors]]\ntype = "simulated"\n'
    )
    agent = Agent(load_settings(cfg), ident)
    agent.start()
    try:
        assert agent.wait_connected(15), "the enrolled agent could not connect/subscribe with its credentials"
        r = api.call("PUT", f"/v1/devices/{device}/config", json={"settings": {"sampling_interval_s": 0.5}})
        assert r.status_code == 200, r.text
        wait_for(lambda: agent.pipeline.runtime.sampling_interval_s == 0.5, "config applied")
        view = wait_for(
            lambda: (
                (v := api.call("GET", f"/v1/devices/{device}/config").json()).get("reported_version")
                == agent.pipeline.runtime.config_version
                and v
            ),
            "reported",
        )
        assert view
    finally:
        agent.stop()
