"""The same contract over HTTP (``POST /v1/data/ingest``) and the enrollment checks, through the real
API (uvicorn on a free port), the real bridge, Mosquitto, PostgreSQL and InfluxDB: exact counts,
the receipt as the response only after the durable write, dedup across MQTT and HTTP, the bridge's
rate limit, dead letters and metrics; weak, shared and deactivated-device enrollments refused, each
with its own reason."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.api import create_app
from cloud_core.core.config import CloudSettings
from cloud_core.core.db import make_engine
from cloud_core.models import BatchLedger, Device, RejectedMessage
from cloud_core.tsdb import open_tsdb
from cloud_core.tsdb.base import TimeSeriesStore
from iot_protocol import Batch, Reading, Topics, decode_receipt, generate_private_key, jws, public_key_b64
from iot_protocol.jws import b64url_encode

pytestmark = pytest.mark.integration

LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}
NOW = int(time.time() * 1000)


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 30, what="the API to start")
    assert server.started, "the API did not start"
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@dataclass
class Stack:
    url: str
    broker: Any
    settings: CloudSettings
    bridge_settings: BridgeSettings
    topics: Topics
    engine: Engine
    store: TimeSeriesStore
    keys: dict[str, Ed25519PrivateKey]
    admin_token: str

    def post(self, body: bytes) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/data/ingest", content=body, headers={"Content-Type": "application/jose"}, timeout=30
        )

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture
def stack(mosquitto_factory: Any, pg_url: str, influx_url: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    broker = mosquitto_factory(**LIMITS)
    engine = make_engine(pg_url)
    keys = register_devices(engine, ["dev0", "dev1", "off"], location="lab")
    with Session(engine) as s:
        off = s.get(Device, "off")
        assert off is not None
        off.status = "inactive"
        s.add(off)
        s.commit()
    settings = CloudSettings(
        state_dir=tmp_path / "state",
        db_url=pg_url,
        tsdb_url=influx_url,
        mqtt_url=broker.url,
        topic_prefix=topic_prefix,
        ingest_receipt_timeout_s=5.0,
    )
    bridge_settings = BridgeSettings(
        mqtt_url=broker.url,
        db_url=pg_url,
        tsdb_url=influx_url,
        cache_url="memory://",
        topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}",
        batch_max_delay_s=0.02,
        effects_interval_s=0.1,
        retry_initial_s=0.1,
        retry_max_s=0.5,
        metrics_port=0,
    )
    server, thread, port = serve(create_app(settings, consume_events=False))
    store = open_tsdb(influx_url)
    try:
        token = (settings.state_dir / "admin.token").read_text().strip()
        yield Stack(
            f"http://127.0.0.1:{port}",
            broker,
            settings,
            bridge_settings,
            Topics(topic_prefix),
            engine,
            store,
            keys,
            token,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        store.close()
        engine.dispose()


def dead_letters(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return dict(s.exec(select(RejectedMessage.reason, func.count()).group_by(RejectedMessage.reason)).all())


def ledger_seqs(engine: Engine, device_id: str) -> set[int]:
    with Session(engine) as s:
        return set(s.exec(select(BatchLedger.seq).where(BatchLedger.device_id == device_id)).all())


def signed_raw(payload: bytes, key: Ed25519PrivateKey, kid: str) -> bytes:
    return jws.sign(payload, key, kid=kid, typ="edu.batch.v1")


# ---- HTTP ingest -----------------------------------------------------------------------------------


def test_http_ingest_is_the_mqtt_contract_with_the_receipt_as_the_response(stack: Stack) -> None:
    """Exact counts: a batch posted is stored and its receipt is the response (sent after the
    durable write: the points and the ledger row are there when it arrives); posting it again is a
    duplicate (stored once, answered alike); a batch first sent over MQTT and then posted is a
    duplicate too; a partly valid batch names its rejected readings; a finally rejected one is 422."""
    k = stack.keys["dev0"]
    b1, b2 = make_batch("dev0", 1, 5, ts0=NOW - 600_000), make_batch("dev0", 2, 5, ts0=NOW - 600_000)
    t1, t2 = sealed(b1, k), sealed(b2, k)
    partial = Batch(
        "dev0",
        "p",
        3,
        NOW,
        (Reading(NOW - 100, "bme280", {"temperature": 20.0}), Reading(NOW - 99, "bme280", {"humidity": 150.0})),
    )
    with Bridge(stack.bridge_settings) as bridge:
        bridge.wait_ready()
        r = stack.post(t1)
        assert r.status_code == 200, r.text
        assert decode_receipt(r.content).stored == (1,)
        assert stack.store.count(device_id="dev0") == 5  # durable before the answer
        assert ledger_seqs(stack.engine, "dev0") == {1}
        again = stack.post(t1)
        assert (again.status_code, again.content) == (200, r.content)
        rc = ReceiptCollector(stack.broker.host, stack.broker.port, stack.topics)
        with Publisher(stack.broker.host, stack.broker.port) as pub:
            pub.publish(stack.topics.telemetry("dev0"), t2)
            pub.wait_acked()
        wait_for(lambda: ("dev0", 2) in rc.stored(), 20, what="the MQTT receipt")
        rc.close()
        redelivered = stack.post(t2)
        assert redelivered.status_code == 200 and decode_receipt(redelivered.content).stored == (2,)
        part = stack.post(sealed(partial, k))
        assert part.status_code == 200
        receipt = decode_receipt(part.content)
        assert receipt.stored == (3,)
        assert [(x.index, x.reason) for x in receipt.rejected_readings(3)] == [(1, "out_of_range")]
        bad = stack.post(signed_raw(b'{"v":1,"seq":4,"device_id":"dev0"}', k, "dev0"))
        assert bad.status_code == 422
        assert [(x.seq, x.reason) for x in decode_receipt(bad.content).rejected] == [(4, "bad_schema")]
        not_json = signed_raw(b"{{", k, "dev0")
        unread = stack.post(not_json)
        assert unread.status_code == 422
        assert [(u.sha256, u.reason) for u in decode_receipt(unread.content).unread] == [
            (hashlib.sha256(not_json).hexdigest(), "bad_json")
        ]
        m = bridge.metrics
        assert m.messages_received._value.get() == 7
        assert m.duplicates._value.get() == 2
        assert m.readings_stored._value.get() == 11
        assert m.rejected.labels("out_of_range")._value.get() == 1
        assert m.rejected.labels("bad_schema")._value.get() == 1
        assert m.rejected.labels("bad_json")._value.get() == 1
    assert stack.store.count(device_id="dev0") == 11
    assert ledger_seqs(stack.engine, "dev0") == {1, 2, 3, 4}
    wait_for(
        lambda: dead_letters(stack.engine) == {"out_of_range": 1, "bad_schema": 1, "bad_json": 1},
        10,
        what="the bridge's dead letters",
    )
    metrics = httpx.get(stack.url + "/metrics", timeout=10).text
    assert 'edu_ingest_requests_total{outcome="stored"} 4.0' in metrics
    assert 'edu_ingest_requests_total{outcome="bad_schema"} 1.0' in metrics


def test_http_ingest_refuses_what_it_cannot_verify_without_forwarding_it(stack: Stack) -> None:
    """Unverifiable requests are answered at once with their reason and dead-lettered by the API;
    none reaches the bridge (so a forged request cannot spend a device's rate limit)."""
    k0, k1 = stack.keys["dev0"], stack.keys["dev1"]
    good = make_batch("dev0", 1, 1, ts0=NOW - 1000)
    cases = [
        (sealed(good, k1), 401, "bad_signature"),
        (sealed(make_batch("ghost", 1, 1, ts0=NOW - 1000), k0), 404, "unknown_device"),
        (sealed(make_batch("off", 1, 1, ts0=NOW - 1000), stack.keys["off"]), 403, "inactive_device"),
        (b"not a jws", 400, "bad_envelope"),
        (signed_raw(b"{}", k0, "dev 0"), 400, "bad_envelope"),
        (b"A" * (300 * 1024), 413, "too_large"),
    ]
    with Bridge(stack.bridge_settings) as bridge:
        bridge.wait_ready()
        for body, status, reason in cases:
            r = stack.post(body)
            assert (r.status_code, r.json()["code"]) == (status, reason), r.text
        time.sleep(0.3)
        assert bridge.metrics.messages_received._value.get() == 0
    assert dead_letters(stack.engine) == {
        "bad_signature": 1,
        "unknown_device": 1,
        "inactive_device": 1,
        "bad_envelope": 2,
        "too_large": 1,
    }
    with Session(stack.engine) as s:
        topics = dict(s.exec(select(RejectedMessage.reason, RejectedMessage.topic)).all())
    assert topics["bad_signature"] == stack.topics.telemetry("dev0")


def test_http_ingest_shares_the_rate_limit_and_says_when_to_retry(stack: Stack) -> None:
    settings = stack.bridge_settings.model_copy(update={"rate_limit_msgs_per_s": 1.0, "rate_limit_burst": 2})
    k = stack.keys["dev1"]
    tokens = [sealed(make_batch("dev1", s, 2, ts0=NOW - 600_000), k) for s in (1, 2, 3)]
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        assert [stack.post(t).status_code for t in tokens[:2]] == [200, 200]
        limited = stack.post(tokens[2])
        assert limited.status_code == 429, limited.text
        retry = decode_receipt(limited.content).retry
        assert [(x.seq, x.reason) for x in retry] == [(3, "rate_limited")] and 0 < retry[0].after_ms <= 1_000
        assert int(limited.headers["Retry-After"]) >= 1
        time.sleep(int(limited.headers["Retry-After"]))
        assert stack.post(tokens[2]).status_code == 200
        assert bridge.metrics.rejected.labels("rate_limited")._value.get() == 1
    assert stack.store.count(device_id="dev1") == 6


def test_http_ingest_without_a_bridge_answers_503_and_the_resend_is_stored(
    stack: Stack, mosquitto_factory: Any
) -> None:
    k = stack.keys["dev1"]
    token = sealed(make_batch("dev1", 1, 3, ts0=NOW - 600_000), k)
    t0 = time.monotonic()
    r = stack.post(token)
    assert r.status_code == 503 and r.json()["code"] == "unavailable" and r.headers["Retry-After"] == "5"
    assert time.monotonic() - t0 < 15
    with Bridge(stack.bridge_settings) as bridge:
        bridge.wait_ready()
        assert stack.post(token).status_code == 200
    assert stack.store.count(device_id="dev1") == 3


# ---- enrollment ------------------------------------------------------------------------------------


def _point_bytes(hex_: str) -> str:
    return b64url_encode(bytes.fromhex(hex_)).decode()


WEAK_KEYS = {
    "key_all_zero": _point_bytes("00" * 32),
    "key_small_order": _point_bytes("01" + "00" * 31),  # the identity point
    "key_non_canonical": _point_bytes("ed" + "ff" * 30 + "7f"),  # y = p
    "key_not_on_curve": _point_bytes("02" + "00" * 31),
}


def _mixed_order_key() -> str:
    from iot_protocol import keys as k
    from iot_protocol import public_key_raw

    point = k._add(
        k._decode_point(public_key_raw(generate_private_key())),  # type: ignore[arg-type]
        k._decode_point(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")),  # type: ignore[arg-type]
    )
    x, y = point
    return b64url_encode((y | ((x & 1) << 255)).to_bytes(32, "little")).decode()


def test_enrollment_refuses_weak_and_shared_keys_each_with_its_reason(stack: Stack) -> None:
    r = stack.api("POST", "/v1/devices/register", json={"id": "weak"})
    assert r.status_code == 201, r.text
    token = r.json()["enrollment_token"]
    for code, key in {**WEAK_KEYS, "key_mixed_order": _mixed_order_key()}.items():
        refused = httpx.post(stack.url + "/v1/enroll", json={"token": token, "public_key": key}, timeout=30)
        assert (refused.status_code, refused.json()["code"]) == (422, code), refused.text
    taken = public_key_b64(stack.keys["dev0"])
    shared = httpx.post(stack.url + "/v1/enroll", json={"token": token, "public_key": taken}, timeout=30)
    assert (shared.status_code, shared.json()["code"]) == (409, "key_in_use")
    assert "another device" in shared.json()["detail"]
    good = public_key_b64(generate_private_key())
    ok = httpx.post(stack.url + "/v1/enroll", json={"token": token, "public_key": good}, timeout=30)
    assert ok.status_code == 200, ok.text  # every refusal left the token usable


def test_enrolling_a_deactivated_pending_device_says_it_is_deactivated(stack: Stack) -> None:
    r = stack.api("POST", "/v1/devices/register", json={"id": "gone"})
    token = r.json()["enrollment_token"]
    assert stack.api("POST", "/v1/devices/gone/deactivate").status_code == 200
    refused = httpx.post(
        stack.url + "/v1/enroll",
        json={"token": token, "public_key": public_key_b64(generate_private_key())},
        timeout=30,
    )
    assert (refused.status_code, refused.json()["code"]) == (409, "device_deactivated")
    assert "deactivated" in refused.json()["detail"] and "already used" not in refused.json()["detail"]
    fresh = stack.api("POST", "/v1/devices/gone/rotate").json()["enrollment_token"]
    again = httpx.post(
        stack.url + "/v1/enroll",
        json={"token": fresh, "public_key": public_key_b64(generate_private_key())},
        timeout=30,
    )
    assert again.status_code == 200, again.text
