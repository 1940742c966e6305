"""Backups and restore as docs/deployment.md ("Backups and restore") tells an operator, exercised once
against real servers: PostgreSQL (``pg_dump -Fc`` / ``pg_restore``), InfluxDB (``influxd backup
-portable`` / ``influxd restore -portable``) and the broker's state (``dynamic-security.json`` and
``mosquitto.db``). Each is backed up, destroyed, restored, and counted: the counts are equal, device
accounts log in again and retained messages are back."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from broker_bridge.testing import register_devices
from cloud_core.auth import users
from cloud_core.broker.dynsec import DynsecAdmin
from cloud_core.core.db import make_engine
from cloud_core.models import BatchLedger, Device, User
from cloud_core.tsdb import open_tsdb
from cloud_core.tsdb.base import Point, StoreError
from iot_testing import InfluxServer, MosquittoServer, PostgresServer, unique_name, wait_for
from iot_testing.servers import _pg_bindir

pytestmark = pytest.mark.integration


def _device_login(broker: MosquittoServer, device_id: str, password: str) -> bool:
    """Whether the broker accepts a device's CONNECT (its client id must be its device id)."""
    result: list[object] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(device_id, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        wait_for(lambda: result, f"CONNACK for {device_id}")
    finally:
        c.disconnect()
        c.loop_stop()
    return not getattr(result[0], "is_failure", True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}"


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return {
                model.__tablename__: int(s.exec(select(func.count()).select_from(model)).one())  # type: ignore[attr-defined]
                for model in (Device, BatchLedger, User)
            }
    finally:
        engine.dispose()


def test_postgresql_backup_destroy_restore(tmp_path: Path) -> None:
    with PostgresServer() as pg:
        name = unique_name("edu")
        url = pg.create_database(name)
        engine = make_engine(url)
        register_devices(engine, [f"dev-{i}" for i in range(25)])
        with Session(engine) as s:
            for i in range(25):
                for seq in range(1, 9):
                    s.add(BatchLedger(device_id=f"dev-{i}", seq=seq, batch_id=f"b{i}-{seq}", payload_sha256="0" * 64,
                                      readings=10))  # fmt: skip
            s.commit()
            users.create_user(
                s, actor="backup-test", username="teacher", password="a-teacher-passphrase", is_teacher=True
            )
            s.commit()
        engine.dispose()
        before = _counts(url)
        assert before == {"devices": 25, "batch_ledger": 200, "users": 1}
        dump = tmp_path / "edu.dump"
        bindir = _pg_bindir()
        # the documented commands: pg_dump -Fc "$DB_URL" -f edu.dump ... pg_restore --no-owner -d "$DB_URL" edu.dump
        _run([str(bindir / "pg_dump"), "-Fc", url, "-f", str(dump)])
        pg.drop_database(name)  # destroyed
        url = pg.create_database(name)
        _run([str(bindir / "pg_restore"), "--no-owner", "-d", url, str(dump)])
        assert _counts(url) == before


def test_influxdb_backup_destroy_restore(tmp_path: Path) -> None:
    with InfluxServer() as influx:
        db = unique_name("iot")
        store = open_tsdb(influx.url_for(db))
        store.init_schema()
        t0 = int(time.time() * 1000) - 3_600_000
        store.write(
            [
                Point(
                    f"dev-{d}", "environment", "lab", t0 + i * 1000, {"temperature": 20.0 + i / 100, "humidity": 40.0}
                )
                for d in range(10)
                for i in range(300)
            ]
        )
        wait_for(lambda: store.count() == 3000, "3000 points stored")
        backup = tmp_path / "influx-backup"
        host = f"{influx.host}:{influx.rpc_port}"
        # the documented commands: influxd backup -portable -db iot -host HOST:8088 DIR ... influxd restore
        _run(["influxd", "backup", "-portable", "-db", db, "-host", host, str(backup)])
        influx.query(f'DROP DATABASE "{db}"')  # destroyed
        assert [db] not in influx.query("SHOW DATABASES")["results"][0]["series"][0].get("values", [])
        _run(["influxd", "restore", "-portable", "-db", db, "-host", host, str(backup)])

        def restored() -> bool:
            try:
                return store.count() == 3000
            except StoreError:  # "shard is disabled" while influxd loads the restored shards
                return False

        wait_for(restored, "3000 points after the restore", timeout=60)
        store.close()


def test_broker_state_backup_destroy_restore(tmp_path: Path) -> None:
    """dynamic-security.json (every device account) and mosquitto.db (retained status and configs)."""
    with MosquittoServer(dynsec=True) as broker:
        admin = DynsecAdmin(broker.host, broker.port, username=broker.admin_username, password=broker.admin_password)
        for i in range(5):
            admin.provision_device(f"dev-{i}", f"pw-{i}", prefix="edu")
        admin.ensure_service_account("edu-cloud", "svc", prefix="edu")
        admin.close()
        assert _device_login(broker, "dev-0", "pw-0")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retainer")
        c.username_pw_set("edu-cloud", "svc")
        c.connect(broker.host, broker.port)
        c.loop_start()
        c.publish("edu/devices/dev-0/config/desired", b"signed-config-v7", qos=1, retain=True).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        broker.stop()  # mosquitto.db is written on a clean stop (or every autosave_interval)
        backup = tmp_path / "broker-backup"
        backup.mkdir()
        for name in ("dynamic-security.json", "mosquitto.db"):
            shutil.copy2(broker.data_dir / name, backup / name)
        for name in ("dynamic-security.json", "mosquitto.db"):
            (broker.data_dir / name).unlink()  # destroyed
        broker.start()  # a fresh file with only the admin
        assert not _device_login(broker, "dev-0", "pw-0")
        broker.stop()
        for name in ("dynamic-security.json", "mosquitto.db"):
            shutil.copy2(backup / name, broker.data_dir / name)
        broker.start()
        for i in range(5):
            assert _device_login(broker, f"dev-{i}", f"pw-{i}")
        got: list[bytes] = []
        r = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reader")
        r.username_pw_set("edu-cloud", "svc")
        r.on_message = lambda _c, _u, m: got.append(m.payload)
        r.on_connect = lambda cl, *_: cl.subscribe("edu/devices/+/config/desired", qos=1)
        r.connect(broker.host, broker.port)
        r.loop_start()
        try:
            wait_for(lambda: got == [b"signed-config-v7"], "the retained config after the restore")
        finally:
            r.disconnect()
            r.loop_stop()
