"""The API's /ready depends on its database only: a broker restart must not take every API replica out
of its Service (Kubernetes removes unready pods from the endpoints), so devices could not even enroll
while the broker is back in seconds. The broker's state is reported, not required."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloud_core.api import create_app
from cloud_core.core.config import CloudSettings
from iot_testing import MosquittoServer, free_port, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def serve(settings: CloudSettings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, consume_events=False), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, "the API", timeout=30)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_ready_survives_a_broker_restart_and_reports_it(tmp_path: Path) -> None:
    with MosquittoServer() as broker, serve(CloudSettings(state_dir=tmp_path, mqtt_url=broker.url)) as url:
        assert httpx.get(f"{url}/ready").json() == {"status": "ready", "broker": "connected"}
        broker.stop()
        wait_for(lambda: httpx.get(f"{url}/ready").json().get("broker") == "disconnected", "the broker seen gone")
        r = httpx.get(f"{url}/ready")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        broker.start()
        wait_for(lambda: httpx.get(f"{url}/ready").json().get("broker") == "connected", "reconnected", timeout=30)


def test_ready_fails_without_the_database(tmp_path: Path) -> None:
    """The one dependency /ready keeps: the metadata database (PostgreSQL stopped under the API)."""
    from iot_testing import PostgresServer

    with PostgresServer() as pg, MosquittoServer() as broker:
        settings = CloudSettings(state_dir=tmp_path, mqtt_url=broker.url, db_url=pg.create_database())
        with serve(settings) as url:
            assert httpx.get(f"{url}/ready").status_code == 200
            pg.stop()
            r = httpx.get(f"{url}/ready", timeout=30)
            assert r.status_code == 503 and "database" in r.json()["detail"]
