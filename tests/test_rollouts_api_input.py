"""The rollout and release routes bound what reaches the database, on SQLite and PostgreSQL: an id
outside 1..2^31-1, a status or state no rollout has, a version that is not one, a bandwidth cap
beyond an INTEGER are each refused with a 422 naming the parameter (never a 500: schemathesis found
``GET /v1/rollouts/{id}/devices`` with a 23-digit id); a device id with a NUL byte is no device (404);
a release as large as the manifest allows (2 GiB) is stored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_env import Env, platform

from cloud_core.api.deps import MAX_ID
from iot_protocol import generate_private_key, public_key_b64
from iot_protocol.firmware import MAX_ARTIFACT_BYTES

pytestmark = pytest.mark.integration

ROLLOUT_ROUTES = [
    ("GET", "/v1/rollouts/{}"),
    ("GET", "/v1/rollouts/{}/devices"),
    ("GET", "/v1/rollouts/{}/events"),
    ("POST", "/v1/rollouts/{}/pause"),
    ("POST", "/v1/rollouts/{}/resume"),
    ("POST", "/v1/rollouts/{}/abort"),
]
BAD_IDS = [0, -1, MAX_ID + 1, 2**63, 94093948162689315373056]


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, mosquitto: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    # no engine: a rollout stays as it was created (its device pending), so the filters have a known answer
    with platform(
        broker_url=mosquitto.url,
        prefix=topic_prefix,
        tmp=tmp_path,
        db_url=db_url,
        rollout={"engine": False},
        bridge=False,
    ) as e:
        yield e


def _refused(r: httpx.Response, name: str) -> None:
    assert r.status_code == 422, r.text
    assert name in r.text, r.text


def test_rollout_ids_out_of_range_are_refused_and_in_range_unknown_ones_are_not_found(env: Env) -> None:
    for method, path in ROLLOUT_ROUTES:
        for bad in BAD_IDS:
            _refused(env.request(method, path.format(bad)), "rollout_id")
        r = env.request(method, path.format(MAX_ID))
        assert r.status_code == 404 and f"no rollout #{MAX_ID}" in r.text, (method, path, r.text)


def test_a_device_id_that_cannot_be_one_is_no_device(env: Env) -> None:
    """Tags and history (and every device route): a NUL byte is not asked of the database."""
    for path in ("/v1/devices/x%00", "/v1/devices/x%00/tags", "/v1/devices/x%00/history"):
        r = env.request("GET", path)
        assert r.status_code == 404 and "no device" in r.text, (path, r.text)
    r = env.request("PUT", "/v1/devices/x%00/tags", json={"tags": ["pilot"]})
    assert r.status_code == 404 and "no device" in r.text, r.text


def test_filters_versions_and_bandwidth_are_bounded(env: Env) -> None:
    key = generate_private_key()
    reg = env.ok("POST", "/v1/devices/register", json={"id": f"bounds-{env.prefix}"})
    enrolled = httpx.post(
        env.url + "/v1/enroll", json={"token": reg["enrollment_token"], "public_key": public_key_b64(key)}, timeout=30
    )
    assert enrolled.status_code == 200, enrolled.text
    target = {"devices": [f"bounds-{env.prefix}"]}
    too_fast = env.request(
        "POST",
        "/v1/rollouts",
        json={"settings": {"sampling_interval_s": 9}, "target": target, "max_bytes_per_s": 2**31},
    )
    _refused(too_fast, "max_bytes_per_s")
    made = env.ok(
        "POST",
        "/v1/rollouts",
        json={"settings": {"sampling_interval_s": 9}, "target": target, "max_bytes_per_s": MAX_ID},
    )
    rollout_id = made["id"]

    _refused(env.request("GET", "/v1/rollouts", params={"status": "runing"}), "status")
    assert [v["id"] for v in env.ok("GET", "/v1/rollouts", params={"status": "running"})] == [rollout_id]
    _refused(env.request("GET", f"/v1/rollouts/{rollout_id}/devices", params={"state": "x\x00"}), "state")
    assert len(env.ok("GET", f"/v1/rollouts/{rollout_id}/devices", params={"state": "pending"})) == 1
    for limit in (0, 10**30):  # clamped to 1..1000
        assert len(env.ok("GET", "/v1/rollouts", params={"limit": limit})) == 1

    for version in ("x%00", "1.2.3.4.5", "9" * 40, "latest"):
        for method, path in (("GET", "/v1/releases/{}"), ("GET", "/v1/releases/{}/artifact")):
            _refused(env.request(method, path.format(version)), "version")
        _refused(env.request("PUT", f"/v1/releases/{version}/artifact", content=b"x"), "version")
    assert env.request("GET", "/v1/releases/7.7.7").status_code == 404

    # The largest artifact a manifest may claim (2 GiB) fits the releases table (BIGINT: 2^31 does not
    # fit PostgreSQL's INTEGER); one byte more is refused where it is asked for.
    spec = {"version": "2.0.0", "sha256": hashlib.sha256(b"").hexdigest(), "device_types": ["environment"]}
    _refused(env.request("POST", "/v1/releases/sign", json={**spec, "size": MAX_ARTIFACT_BYTES + 1}), "size")
    manifest = env.ok("POST", "/v1/releases/sign", json={**spec, "size": MAX_ARTIFACT_BYTES})["manifest"]
    release = env.ok("POST", "/v1/releases", json={"manifest": manifest})
    assert (release["version"], release["size"]) == ("2.0.0", MAX_ARTIFACT_BYTES)
    assert env.ok("GET", "/v1/releases/2.0.0")["size"] == MAX_ARTIFACT_BYTES
