"""Alerts explained and labelled: episodes stored by the real worker are shown with their explanation
and links (`iotctl anomalies show`, `GET /v1/analytics/anomalies/{id}` on the real API), labelled
true or false (`iotctl anomalies label`, `POST .../label`), and the labels give the precision per
device type (`iotctl anomalies evaluate --from-feedback`, `GET /v1/analytics/feedback`)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from sqlmodel import Session, select
from typer.testing import CliRunner

from cloud_core.analytics.models import Anomaly
from cloud_core.analytics.settings import AnalyticsSettings
from cloud_core.analytics.worker import AnalyticsWorker
from cloud_core.cache import open_cache
from cloud_core.core.db import create_all, make_engine, session_scope
from cloud_core.models import Device
from cloud_core.tsdb import open_tsdb
from cloud_core.tsdb.base import Point
from iot_testing import unique_name, wait_for
from iotctl.main import app

T0 = 1_700_000_000_000
STEP = 60_000


def _episodes(db_url: str, tsdb_url: str | None = None) -> dict[str, int]:
    """Two devices, each with one temperature spike, scored by the real worker from a stream:
    ``wx-1`` is registered as a ``weather`` device, ``lab-9`` is not (its sensor type counts).
    Returns device -> episode id."""
    engine = make_engine(db_url)
    create_all(engine)
    with session_scope(engine) as s:
        s.add(Device(id="wx-1", device_type="weather", public_key="k" * 44))
    cache = open_cache(f"memory://{unique_name('fb')}")  # a stream of its own: memory:// is per process
    settings = AnalyticsSettings(consumer="w", block_ms=0, cooldown_s=600)
    worker = AnalyticsWorker(settings, cache, engine)
    worker.ensure_group()
    store = open_tsdb(tsdb_url) if tsdb_url else None
    if store is not None:
        store.init_schema()
    for n, device in enumerate(("wx-1", "lab-9")):
        values = 21 + np.random.default_rng(n).normal(0, 0.2, 600)
        values[500] = 35.0
        points = []
        for i, v in enumerate(values.tolist()):
            cache.stream_add(settings.stream, {"device_id": device, "sensor_type": "bme280", "ts": str(T0 + i * STEP),
                                               "values": orjson.dumps({"temperature": v}).decode()})  # fmt: skip
            points.append(Point(device, "bme280", "lab", T0 + i * STEP, {"temperature": v}))
        if store is not None:
            store.write(points)
    while worker.poll(block_ms=0):
        pass
    worker.flush()
    if store is not None:
        store.close()
    cache.close()
    with Session(engine) as s:
        rows = list(s.exec(select(Anomaly)))
    assert sorted((a.device_id, a.start_ms) for a in rows) == [("lab-9", T0 + 500 * STEP), ("wx-1", T0 + 500 * STEP)]
    return {a.device_id: a.id for a in rows if a.id is not None}


def _iotctl(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (for what it prints on bad input)."""
    return subprocess.run([sys.executable, "-m", "iotctl", *args], capture_output=True, text=True, timeout=120)


def _cli(*args: str) -> str:
    """The command in this process (faster); its output."""
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_cli_shows_explains_labels_and_reports_precision(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/meta.db"
    ids = _episodes(db)
    out = _cli("anomalies", "show", str(ids["wx-1"]), "--db", db)
    assert f"anomaly {ids['wx-1']}: device wx-1, temperature (robust_z), closed" in out
    assert "why: temperature 35 left its normal range" in out and "sigma beyond anything" in out
    query = "iotctl query --device wx-1 --field temperature --start 2023-11-15T05:33:20Z --end 2023-11-15T07:33:20Z"
    assert query in out
    assert f"readings: /v1/analytics/anomalies/{ids['wx-1']}/readings" in out
    assert "label: not labelled yet" in out
    detail = json.loads(_cli("anomalies", "show", str(ids["wx-1"]), "--db", db, "--json"))
    expl = detail["explanation"]
    assert expl["kind"] == "field" and expl["z"] > 40 and expl["novelty_margin"] > 1
    (f,) = expl["fields"]
    assert f["value"] == 35.0 and f["normal_low"] < 21 < f["normal_high"] < 35

    _cli("anomalies", "label", str(ids["wx-1"]), "true", "--db", db, "--note", "heater on")
    r = _iotctl("anomalies", "label", str(ids["lab-9"]), "false", "--db", db)  # as a user runs it
    assert r.returncode == 0 and r.stdout.strip() == f"anomaly {ids['lab-9']} labelled a false alarm"
    assert "label: a true alarm (heater on)" in _cli("anomalies", "show", str(ids["wx-1"]), "--db", db)
    got = json.loads(_cli("anomalies", "evaluate", "--from-feedback", "--db", db).strip().splitlines()[-1])
    assert got["labelled"] == 2 and got["precision"] == 0.5
    assert got["by_device_type"]["weather"] == {"episodes": 1, "labelled": 1, "true_alarms": 1, "false_alarms": 0,
                                                "precision": 1.0}  # fmt: skip
    assert got["by_device_type"]["bme280"]["precision"] == 0.0  # not registered: its sensor type

    # bad input: one line naming what was wrong
    for args, message in (
        (("show", "999"), "error: no anomaly with id 999: see 'iotctl anomalies list'"),
        (("label", str(ids["wx-1"]), "maybe"), "error: the verdict must be true or false, not 'maybe'"),
        (("label", "999", "true"), "error: no anomaly with id 999: see 'iotctl anomalies list'"),
    ):
        bad = _iotctl("anomalies", *args, "--db", db)
        assert bad.returncode != 0 and bad.stderr.strip() == message, bad.stderr


@pytest.mark.integration
def test_api_returns_the_explanation_takes_labels_and_reports_precision(
    mosquitto: Any, tmp_path: Path, topic_prefix: str
) -> None:
    from cloud_core.api import create_app
    from cloud_core.core.config import CloudSettings

    db, tsdb = f"sqlite:///{tmp_path}/meta.db", f"sqlite:///{tmp_path}/readings.db"
    ids = _episodes(db, tsdb)
    settings = CloudSettings(state_dir=tmp_path / "state", db_url=db, tsdb_url=tsdb, mqtt_url=mosquitto.url,
                             topic_prefix=topic_prefix)  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None, ws="none", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the API to start", timeout=30)
    assert server.started
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1/analytics"
    auth = {"authorization": "Bearer " + (settings.state_dir / "admin.token").read_text().strip()}
    try:
        assert httpx.get(f"{base}/anomalies/{ids['wx-1']}").status_code == 401  # as the other analytics routes
        d = httpx.get(f"{base}/anomalies/{ids['wx-1']}", headers=auth).json()
        assert d["explanation"]["kind"] == "field" and d["explanation"]["fields"][0]["field"] == "temperature"
        assert d["feedback"] is None and d["links"]["readings"] == f"/v1/analytics/anomalies/{ids['wx-1']}/readings"
        r = httpx.get(base.removesuffix("/v1/analytics") + d["links"]["readings"], headers=auth).json()
        ts = [x["ts_ms"] for x in r["readings"]]
        assert ts == [T0 + i * STEP for i in range(440, 561)]  # an hour either side of the one-reading episode
        assert r["readings"][60]["values"] == {"temperature": 35.0}

        labelled = httpx.post(f"{base}/anomalies/{ids['wx-1']}/label", json={"true_alarm": False, "note": "test"},
                              headers=auth)  # fmt: skip
        assert labelled.status_code == 200 and labelled.json()["feedback"]["true_alarm"] is False
        assert labelled.json()["feedback"]["source"] == "api"
        again = httpx.post(f"{base}/anomalies/{ids['wx-1']}/label", json={"true_alarm": True}, headers=auth)
        assert again.json()["feedback"]["true_alarm"] is True  # labelling again replaces the label
        prec = {row["device_type"]: row for row in httpx.get(f"{base}/feedback", headers=auth).json()}
        assert (prec["weather"]["labelled"], prec["weather"]["precision"]) == (1, 1.0)
        assert (prec["bme280"]["labelled"], prec["bme280"]["precision"]) == (0, None)

        missing = httpx.get(f"{base}/anomalies/999", headers=auth)
        assert missing.status_code == 404 and "no anomaly with id 999" in missing.json()["detail"]
        bad = httpx.post(f"{base}/anomalies/{ids['wx-1']}/label", json={"true_alarm": "perhaps"}, headers=auth)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("true_alarm:")
    finally:
        server.should_exit = True
        thread.join(15)
