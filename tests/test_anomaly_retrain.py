"""Scheduled retraining against the embedded time-series store (real writes): `iotctl anomalies
train` saves version 1, then 2; a running worker swaps version 2 into its live series."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from sqlmodel import SQLModel
from typer.testing import CliRunner

from cloud_core.analytics.forest import ModelStore
from cloud_core.analytics.models import Anomaly
from cloud_core.analytics.multivariate import MultivariateStore
from cloud_core.analytics.settings import AnalyticsSettings
from cloud_core.analytics.worker import AnalyticsWorker
from cloud_core.cache import open_cache
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from cloud_core.tsdb.base import Point
from iotctl.main import app

STEP = 300_000


def _write_history(url: str, now_ms: int, n: int = 600) -> None:
    rng = np.random.default_rng(5)
    store = open_tsdb(url)
    store.init_schema()
    points = [
        Point("dev-1", "bme280", "lab", now_ms - (n - i) * STEP,
              {"temperature": float(21 + rng.normal(0, 0.2)), "quality_score": 1.0})
        for i in range(n)
    ]  # fmt: skip
    store.write(points)
    store.close()


def test_train_command_saves_version_1_then_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/readings.db"
    _write_history(url, int(time.time() * 1000))
    runner = CliRunner()
    args = ["anomalies", "train", "--tsdb", url, "--models-dir", str(tmp_path / "models"), "--hours", "168"]
    for version in (1, 2):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        out = json.loads(r.output.strip().splitlines()[-1])
        assert out["versions"] == {"dev-1.temperature": version}  # quality_score is not modelled
    meta = ModelStore(tmp_path / "models").load("dev-1.temperature").meta
    assert (meta.version, meta.train_points) == (2, 600)
    # an empty window trains nothing
    r = runner.invoke(app, [*args[:-1], "0.001"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["trained"] == 0
    bad = runner.invoke(app, ["anomalies", "train", "--tsdb", "nosuch://x", "--models-dir", str(tmp_path)])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_worker_retrains_on_its_timer_and_swaps_version_2_in(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/readings.db"
    now = int(time.time() * 1000)
    _write_history(url, now)
    models = ModelStore(tmp_path / "models")
    engine = make_engine(f"sqlite:///{tmp_path}/meta.db")
    SQLModel.metadata.create_all(engine, tables=[Anomaly.__table__])  # type: ignore[attr-defined]
    cache = open_cache(f"memory://{tmp_path.name}")
    settings = AnalyticsSettings(
        consumer="w1", block_ms=20, models_dir=tmp_path / "models", tsdb_url=url, retrain_every_s=0.3
    )
    worker = AnalyticsWorker(settings, cache, engine)
    assert worker.retrain_once().trained[0].version == 1  # the model a fresh worker starts with
    worker.ensure_group()
    cache.stream_add(settings.stream, {"device_id": "dev-1", "sensor_type": "bme280", "ts": str(now),
                                       "values": orjson.dumps({"temperature": 21.0}).decode()})  # fmt: skip
    assert worker.poll(block_ms=0) == 1
    assert worker.model_version("dev-1", "temperature") == 1  # a live series, scored with version 1
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        t = now
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            worker.model_version("dev-1", "temperature") == 2 and len(models.versions("dev-1.temperature")) >= 2
        ):
            t += STEP
            cache.stream_add(settings.stream, {"device_id": "dev-1", "sensor_type": "bme280", "ts": str(t),
                                               "values": orjson.dumps({"temperature": 21.0}).decode()})  # fmt: skip
            time.sleep(0.05)
        assert models.versions("dev-1.temperature")[:2] == [1, 2]
        assert worker.model_version("dev-1", "temperature") >= 2
    finally:
        stop.set()
        thread.join(10)
    cache.close()


def test_device_model_learnt_online_is_retrained_swapped_and_reloaded(tmp_path: Path) -> None:
    """A device with two related fields: the worker fits its model on the warm-up readings (version 1,
    saved), a retraining from stored history saves version 2, the worker swaps it in, and a new
    worker (a restart) scores the device with version 2 from its first reading."""
    url = f"sqlite:///{tmp_path}/readings.db"
    now = int(time.time() * 1000)
    rng = np.random.default_rng(7)
    temps = 20 + 3 * np.sin(np.arange(600) / 40) + rng.normal(0, 0.1, 600)
    hums = 80 - 2 * temps + rng.normal(0, 0.3, 600)  # humidity falls as the temperature rises
    store = open_tsdb(url)
    store.init_schema()
    store.write([Point("dev-2", "bme280", "lab", now - (600 - i) * STEP,
                       {"temperature": float(t), "humidity": float(h), "quality_score": 1.0})
                 for i, (t, h) in enumerate(zip(temps, hums, strict=True))])  # fmt: skip
    store.close()
    engine = make_engine(f"sqlite:///{tmp_path}/meta.db")
    cache = open_cache(f"memory://{tmp_path.name}")
    settings = AnalyticsSettings(consumer="w1", block_ms=0, models_dir=tmp_path / "models", tsdb_url=url,
                                 retrain_every_s=0, multivariate_warmup=50)  # fmt: skip
    worker = AnalyticsWorker(settings, cache, engine)
    worker.ensure_group()

    def send(i: int, t: float, h: float) -> None:
        cache.stream_add(settings.stream, {"device_id": "dev-2", "sensor_type": "bme280", "ts": str(now + i * STEP),
                                           "values": orjson.dumps({"temperature": t, "humidity": h,
                                                                   "quality_score": 1.0}).decode()})  # fmt: skip

    for i in range(49):
        send(i, float(temps[i]), float(hums[i]))
    worker.poll(block_ms=0)
    assert worker.model_version("dev-2", "*") == 0  # still warming up
    send(49, float(temps[49]), float(hums[49]))
    worker.poll(block_ms=0)
    assert worker.model_version("dev-2", "*") == 1
    mv = MultivariateStore(tmp_path / "models")
    assert mv.versions("dev-2:mv") == [1]
    assert mv.load_model("dev-2:mv").fields == ("humidity", "temperature")  # not quality_score

    report = worker.retrain_once()
    assert [(m.key, m.version, m.train_points) for m in report.device_models] == [("dev-2:mv", 2, 600)]
    send(50, float(temps[50]), float(hums[50]))
    worker.poll(block_ms=0)  # the next poll swaps the new version in
    assert worker.model_version("dev-2", "*") == 2

    restarted = AnalyticsWorker(AnalyticsSettings(consumer="w2", block_ms=0, models_dir=tmp_path / "models",
                                                  group="g2"), cache, engine)  # fmt: skip
    restarted.ensure_group()
    assert restarted.poll(block_ms=0) > 0
    assert restarted.model_version("dev-2", "*") == 2 and restarted.last_scored_ms("dev-2") == now + 50 * STEP
    cache.close()
