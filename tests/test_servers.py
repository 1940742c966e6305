"""The real-server fixtures give working servers, and stop/start/kill/restart behave as tests rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis

from cloud_core.broker.mosquitto_process import mqtt_connect_probe
from iot_testing.servers import InfluxServer, MosquittoServer, PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.integration

DEADLINE = 10.0


def _client(server: MosquittoServer, client_id: str = "", *, clean: bool = True, **auth: str) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311
    )
    if auth:
        client.username_pw_set(auth["username"], auth.get("password"))
    return client


def _collect(
    server: MosquittoServer, topic: str, *, client_id: str = "", clean: bool = True
) -> tuple[mqtt.Client, list[bytes], threading.Event]:
    """A connected subscriber appending payloads to a list; the event fires once SUBACK arrives."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = _client(server, client_id, clean=clean)
    client.on_connect = lambda c, _u, _f, rc, _p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client.connect(server.host, server.port)
    client.loop_start()
    assert subscribed.wait(DEADLINE), "no SUBACK"
    return client, got, subscribed


def _publish(server: MosquittoServer, topic: str, payloads: list[bytes], *, retain: bool = False) -> None:
    client = _client(server)
    client.connect(server.host, server.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(DEADLINE)
    finally:
        client.disconnect()
        client.loop_stop()


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ------------------------------------------------------------------ mosquitto


def test_mosquitto_publish_subscribe(mosquitto: MosquittoServer, topic_prefix: str) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    topic = f"{topic_prefix}/devices/d1/telemetry"
    sub, got, _ = _collect(mosquitto, topic)
    try:
        _publish(mosquitto, topic, [b"one", b"two", b"three"])
        _until(lambda: len(got) == 3, "3 messages")
        assert got == [b"one", b"two", b"three"]
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_topic_prefix_is_unique_and_valid(topic_prefix: str) -> None:
    from iot_protocol.topics import Topics

    assert Topics(prefix=topic_prefix).prefix == topic_prefix


def test_mosquitto_config_states_the_limits(mosquitto: MosquittoServer) -> None:
    conf = mosquitto.conf_path.read_text()
    for line in (
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        "max_packet_size 1048576",
        "set_tcp_nodelay true",
        "persistence true",
        "allow_anonymous true",
    ):
        assert line in conf.splitlines()


def test_mosquitto_dynsec_refuses_anonymous_and_admits_admin(mosquitto_dynsec: MosquittoServer) -> None:
    srv = mosquitto_dynsec
    assert mqtt_connect_probe(srv.host, srv.port) == 5  # not authorised
    assert mqtt_connect_probe(srv.host, srv.port, username=srv.admin_username, password="wrong") in (4, 5)
    assert (
        mqtt_connect_probe(srv.host, srv.port, username=srv.admin_username, password=srv.admin_password) == 0
    )


def test_mosquitto_dynsec_admin_can_use_control_api(mosquitto_dynsec: MosquittoServer) -> None:
    import json

    srv = mosquitto_dynsec
    replies: list[dict[str, object]] = []
    ready = threading.Event()
    client = _client(srv, username=srv.admin_username, password=srv.admin_password)
    client.on_connect = lambda c, _u, _f, rc, _p: c.subscribe("$CONTROL/dynamic-security/v1/response", 1)
    client.on_subscribe = lambda *_a: ready.set()
    client.on_message = lambda _c, _u, msg: replies.append(json.loads(msg.payload))
    client.connect(srv.host, srv.port)
    client.loop_start()
    try:
        assert ready.wait(DEADLINE)
        cmd = {"commands": [{"command": "listClients"}]}
        client.publish("$CONTROL/dynamic-security/v1", json.dumps(cmd), qos=1).wait_for_publish(DEADLINE)
        _until(lambda: len(replies) == 1, "dynsec reply")
    finally:
        client.disconnect()
        client.loop_stop()
    response = replies[0]["responses"][0]  # type: ignore[index]
    assert response["command"] == "listClients"
    assert srv.admin_username in response["data"]["clients"]


def test_mosquitto_factory_restart_keeps_retained_and_queued(
    mosquitto_factory: Callable[..., MosquittoServer], topic_prefix: str
) -> None:
    broker = mosquitto_factory(max_queued_messages=500)
    assert "max_queued_messages 500" in broker.conf_path.read_text().splitlines()
    port = broker.port
    topic = f"{topic_prefix}/devices/d1/receipts"
    # A persistent session subscribes, goes away, and QoS1 messages queue for it.
    sub, _, _ = _collect(broker, topic, client_id="keeper", clean=False)
    sub.disconnect()
    sub.loop_stop()
    _publish(broker, f"{topic_prefix}/status", [b"online"], retain=True)
    _publish(broker, topic, [b"q1", b"q2"])

    broker.restart()
    assert broker.is_running and broker.port == port

    retained, got_retained, _ = _collect(broker, f"{topic_prefix}/status")
    sub2, got, _ = _collect(broker, topic, client_id="keeper", clean=False)
    try:
        _until(lambda: got_retained == [b"online"], "retained message after restart")
        _until(lambda: got == [b"q1", b"q2"], "queued QoS1 after restart")
    finally:
        for c in (retained, sub2):
            c.disconnect()
            c.loop_stop()


def test_mosquitto_factory_stop_start_kill(mosquitto_factory: Callable[..., MosquittoServer]) -> None:
    broker = mosquitto_factory()
    port = broker.port
    broker.stop()
    assert not broker.is_running
    with pytest.raises(OSError):
        mqtt_connect_probe(broker.host, port, timeout=1.0)
    broker.start()
    assert mqtt_connect_probe(broker.host, port) == 0
    pid = broker.pid
    assert pid is not None
    broker.kill()
    assert not broker.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.start()
    assert broker.port == port and mqtt_connect_probe(broker.host, port) == 0


def test_mosquitto_factory_dynsec_accounts_survive_restart(
    mosquitto_factory: Callable[..., MosquittoServer],
) -> None:
    broker = mosquitto_factory(dynsec=True)
    password = broker.admin_password
    broker.restart()
    assert mqtt_connect_probe(broker.host, broker.port) == 5
    assert mqtt_connect_probe(broker.host, broker.port, username="admin", password=password) == 0


def test_broker_start_failure_reports_log_tail() -> None:
    from iot_testing.servers import ServerStartError

    broker = MosquittoServer(bogus_option_that_mosquitto_rejects=1)
    try:
        with pytest.raises(ServerStartError, match="Unknown configuration variable"):
            broker.start()
        assert not broker.is_running
    finally:
        broker.close()


# ------------------------------------------------------------------ postgres


def test_pg_url_is_a_fresh_database(pg_url: str, postgres: PostgresServer) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/test_")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE t (id int primary key, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]


def test_pg_url_databases_are_separate(pg_url: str, postgres: PostgresServer) -> None:
    other = postgres.create_database()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_here (id int)")
        with psycopg.connect(other, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass('only_here') IS NULL").fetchone()
            assert found == (True,)
    finally:
        postgres.drop_database(other.rsplit("/", 1)[1])


def test_postgres_restart_and_kill_keep_data() -> None:
    with PostgresServer() as pg:
        url = pg.create_database("keep")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (42)")
        pg.restart()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        pg.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]


# ------------------------------------------------------------------ redis


def test_redis_url_answers_ping_and_is_flushed(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.dbsize() == 0
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()


def test_redis_url_is_flushed_between_tests(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("k", "left over")
    finally:
        client.close()


def test_redis_appendonly_survives_kill() -> None:
    with RedisServer(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "durable")
            server.kill()
            server.start()
            assert client.get("k") == b"durable"
        finally:
            client.close()


# ------------------------------------------------------------------ influxdb


def _count(server: InfluxServer, db: str) -> int:
    doc = server.query('SELECT count("temperature") FROM "sensor_readings"', db)
    series = doc["results"][0].get("series")
    return 0 if not series else int(series[0]["values"][0][1])


def test_influx_url_write_and_query(influx_url: str, influxdb: InfluxServer) -> None:
    assert influxdb.http_url == f"http://127.0.0.1:{influxdb.port}"
    prefix = f"influxdb://127.0.0.1:{influxdb.port}/"
    assert influx_url.startswith(prefix)
    db = influx_url[len(prefix) :]
    influxdb.write(
        db,
        "sensor_readings,device_id=d1,sensor_type=bme280 temperature=21.5 1700000000000\n"
        "sensor_readings,device_id=d1,sensor_type=bme280 temperature=22.5 1700000001000",
    )
    doc = influxdb.query('SELECT mean("temperature") FROM "sensor_readings"', db)
    assert doc["results"][0]["series"][0]["values"][0][1] == 22.0
    assert _count(influxdb, db) == 2


def test_influx_factory_data_survives_restart_and_kill(influx_factory: Callable[[], InfluxServer]) -> None:
    server = influx_factory()
    server.create_database("keep")
    server.write("keep", "sensor_readings,device_id=d1 temperature=1 1700000000000")
    server.restart()
    assert _count(server, "keep") == 1
    server.write("keep", "sensor_readings,device_id=d1 temperature=2 1700000001000")
    server.kill()
    assert not server.is_running
    server.start()
    assert _count(server, "keep") == 2  # the WAL is replayed


def test_children_die_when_owner_sigterms() -> None:
    server = MosquittoServer()
    try:
        server.start()
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        _until(lambda: not server.is_running, "broker exit")
    finally:
        server.close()


def test_servers_die_with_a_killed_test_process(tmp_path: Path) -> None:
    """SIGKILL of the process owning the servers (no teardown, no atexit) still stops every child."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from iot_testing import MosquittoServer, RedisServer\n"
        "servers = [MosquittoServer(), RedisServer()]\n"
        "for s in servers:\n"
        "    s.start()\n"
        "print(' '.join(str(s.pid) for s in servers), flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        owner.kill()
        owner.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone for our purposes (its parent, the killed owner, cannot reap it).
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    _until(lambda: all(gone(pid) for pid in pids), "orphaned servers to exit")


def test_missing_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from iot_testing import servers

    monkeypatch.setattr(servers.shutil, "which", lambda _name: None)
    monkeypatch.setattr(servers.Path, "is_file", lambda _self: False)
    with pytest.raises(servers.ServerBinaryMissing, match=r"apt-get install -y redis-server"):
        RedisServer()
    with pytest.raises(servers.ServerBinaryMissing, match=r"apt-get install -y influxdb"):
        InfluxServer()


def test_dynsec_admin_password_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    from cloud_core.broker import BrokerStartError, MosquittoProcess

    os.chmod(tmp_path, 0o755)
    first = MosquittoProcess(tmp_path / "broker", port=free_port(), dynsec=True, admin_password="one")
    with first:
        pass
    second = MosquittoProcess(tmp_path / "broker", port=free_port(), dynsec=True, admin_password="two")
    with pytest.raises(BrokerStartError, match="created with another password"):
        second.start()
    assert not second.is_running
    # Without an explicit password the saved one is reused, so a persistent data dir keeps working.
    third = MosquittoProcess(tmp_path / "broker2", port=free_port(), dynsec=True)
    with third:
        password = third.admin_password
    again = MosquittoProcess(tmp_path / "broker2", port=free_port(), dynsec=True)
    with again:
        assert again.admin_password == password
        assert mqtt_connect_probe(again.host, again.port, username="admin", password=password) == 0


@pytest.mark.parametrize(("raw", "expected"), [("", 1.0), ("ci", 1.0), ("CI", 1.0), ("full", 10.0), ("0.5", 0.5)])
def test_soak_scale_reads_numbers_and_words(monkeypatch: pytest.MonkeyPatch, raw: str, expected: float) -> None:
    from iot_testing import soak_scale

    monkeypatch.setenv("SOAK_SCALE", raw)
    assert soak_scale() == expected


@pytest.mark.parametrize("raw", ["-1", "0", "lots", "nan", "inf"])
def test_soak_scale_rejects_nonsense(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    from iot_testing import soak_scale

    monkeypatch.setenv("SOAK_SCALE", raw)
    with pytest.raises(ValueError, match="SOAK_SCALE must be a positive number, 'ci' or 'full'"):
        soak_scale()


def test_every_soak_test_collects_with_soak_scale_ci() -> None:
    """The documented values work wherever soak sizes are read (SOAK_SCALE=ci once crashed collection)."""
    tests = Path(__file__).parent
    users = sorted(str(p) for p in tests.glob("test_*.py") if "soak" in p.read_text())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "soak", "-p", "no:cacheprovider", *users],
        capture_output=True,
        text=True,
        env={**os.environ, "SOAK_SCALE": "ci"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "soak" in done.stdout


def test_find_binary_looks_beyond_a_non_root_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian installs mosquitto in /usr/sbin, which a non-root PATH lacks: tests must still find it
    (test_chart.py once skipped itself there), and a binary that is missing names its package."""
    from iot_testing import ServerBinaryMissing, find_binary

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found = Path(find_binary("mosquitto", "mosquitto"))
    assert found.name == "mosquitto" and os.access(found, os.X_OK)
    with pytest.raises(ServerBinaryMissing, match="apt-get install -y no-such-package"):
        find_binary("no-such-binary-here", "no-such-package")
