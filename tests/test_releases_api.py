"""Releases through the real API: manifests signed offline or by the API's release key, artifacts
accepted only when they are what the manifest says, resumable downloads signed by the device, and
the CLI (`iotctl release`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_env import Env, platform

from iot_protocol import Manifest, generate_private_key, public_key_b64, save_private_key, seal_manifest
from iot_protocol.firmware import seal_download_request

pytestmark = pytest.mark.integration

BLOB = os.urandom(300_000)


@pytest.fixture
def env(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Env]:
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path, bridge=False) as e:
        yield e


def _device(env: Env, device_id: str, device_type: str = "outdoor") -> Any:
    key = generate_private_key()
    r = env.ok("POST", "/v1/devices/register", json={"id": device_id, "device_type": device_type})
    enrolled = httpx.post(
        env.url + "/v1/enroll", json={"token": r["enrollment_token"], "public_key": public_key_b64(key)}, timeout=30
    ).json()
    assert enrolled["release_public_key"] and enrolled["release_public_key"] != enrolled["cloud_public_key"]
    return key


def _auth(device_id: str, version: str, key: Any, *, at_ms: int | None = None) -> dict[str, str]:
    now = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    return {"Authorization": "Device " + seal_download_request(device_id, version, key, now_ms=now)}


def test_artifacts_are_kept_only_when_they_match_the_signed_manifest(env: Env) -> None:
    good = env.release("1.2.0", BLOB, ["outdoor"], min_version="1.0")
    assert (good["status"], good["size"], good["sha256"]) == ("ready", len(BLOB), hashlib.sha256(BLOB).hexdigest())
    # a manifest for 1.3.0, then the wrong bytes: too short, then right size but other content
    signed = env.ok(
        "POST",
        "/v1/releases/sign",
        json={
            "version": "1.3.0",
            "size": len(BLOB),
            "sha256": hashlib.sha256(BLOB).hexdigest(),
            "device_types": ["outdoor"],
        },
    )["manifest"]
    env.ok("POST", "/v1/releases", json={"manifest": signed})
    short = env.request("PUT", "/v1/releases/1.3.0/artifact", content=BLOB[:-1])
    assert (
        short.status_code == 422
        and f"is {len(BLOB) - 1} bytes but the manifest of 1.3.0 says {len(BLOB)}" in short.text
    )
    other = bytearray(BLOB)
    other[1000] ^= 0xFF
    wrong = env.request("PUT", "/v1/releases/1.3.0/artifact", content=bytes(other))
    assert wrong.status_code == 422 and "is not the manifest's" in wrong.json()["detail"]
    assert env.ok("GET", "/v1/releases/1.3.0")["status"] == "awaiting_artifact"
    artifacts = env.settings.state_dir / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == ["release-1.2.0.bin"]  # nothing else kept
    # a manifest signed by another key (e.g. the config key, or an attacker's) is refused
    rogue = seal_manifest(
        Manifest("9.9.9", len(BLOB), hashlib.sha256(BLOB).hexdigest(), ("outdoor",)), generate_private_key()
    ).decode()
    r = env.request("POST", "/v1/releases", json={"manifest": rogue})
    assert r.status_code == 422 and r.json()["detail"].startswith("manifest refused (bad_signature)")
    # one version, one release
    assert env.request("POST", "/v1/releases", json={"manifest": signed}).status_code == 409
    # a viewer may list releases but not create them
    assert [x["version"] for x in env.ok("GET", "/v1/releases")] == ["1.3.0", "1.2.0"]


def test_devices_download_with_signed_requests_and_resume_by_range(env: Env) -> None:
    env.release("1.2.0", BLOB, ["outdoor"])
    key = _device(env, "dl-1")
    url = env.url + "/v1/releases/1.2.0/artifact"
    whole = httpx.get(url, headers=_auth("dl-1", "1.2.0", key), timeout=30)
    assert whole.status_code == 200 and whole.content == BLOB
    assert (
        whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    )
    part = httpx.get(url, headers={**_auth("dl-1", "1.2.0", key), "Range": "bytes=100000-"}, timeout=30)
    assert part.status_code == 206 and part.content == BLOB[100_000:]
    assert part.headers["content-range"] == f"bytes 100000-{len(BLOB) - 1}/{len(BLOB)}"
    mid = httpx.get(url, headers={**_auth("dl-1", "1.2.0", key), "Range": "bytes=10-19"}, timeout=30)
    assert (mid.status_code, mid.content) == (206, BLOB[10:20])
    beyond = httpx.get(url, headers={**_auth("dl-1", "1.2.0", key), "Range": f"bytes={len(BLOB)}-"}, timeout=30)
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(BLOB)}"
    # refused: no credentials, a stranger's key, an old request, a request for another release,
    # and a device of another type
    as_user = httpx.get(url, headers={"Authorization": f"Bearer {env.token}"}, timeout=30)
    assert (as_user.status_code, as_user.content) == (200, BLOB)  # a user may fetch it too
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers=_auth("dl-1", "1.2.0", generate_private_key()), timeout=30).status_code == 401
    old = httpx.get(url, headers=_auth("dl-1", "1.2.0", key, at_ms=time.time_ns() // 1_000_000 - 3_600_000), timeout=30)
    assert old.status_code == 401 and "expired" in old.text
    assert httpx.get(url, headers=_auth("dl-1", "1.1.0", key), timeout=30).status_code == 403
    indoor = _device(env, "dl-2", device_type="indoor")
    refused = httpx.get(url, headers=_auth("dl-2", "1.2.0", indoor), timeout=30)
    assert refused.status_code == 403 and "not 'indoor'" in refused.text
    metrics = httpx.get(env.url + "/metrics").text
    assert 'edu_release_downloads_total{outcome="partial"} 2.0' in metrics
    assert 'edu_release_downloads_total{outcome="refused"}' in metrics


def test_rollout_of_a_release_to_another_device_type_is_refused(env: Env) -> None:
    env.release("1.2.0", BLOB, ["outdoor"])
    _device(env, "t-1", device_type="indoor")
    r = env.request("POST", "/v1/rollouts", json={"release": "1.2.0", "target": {"devices": ["t-1"]}})
    assert r.status_code == 422
    assert r.json()["detail"] == "device 't-1' is of type 'indoor', but release 1.2.0 is for outdoor: narrow the target"


def _cli(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "iotctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "IOTCTL_API": env.url, "IOTCTL_TOKEN": env.token, "EDU_STATE_DIR": str(env.tmp / "cli")},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_signs_offline_uploads_and_lists(env: Env, tmp_path: Path) -> None:
    artifact = tmp_path / "build.tar.gz"
    artifact.write_bytes(BLOB)
    # the API's own release key signs here (embedded mode); an offline key is refused by this API
    key = env.settings.state_dir / "release-signing.pem"
    out = tmp_path / "m.jws"
    _cli(
        env,
        "release",
        "sign",
        str(artifact),
        "--version",
        "2.0.0",
        "--device-type",
        "outdoor",
        "--key",
        str(key),
        "--out",
        str(out),
    )
    up = _cli(env, "release", "upload", str(artifact), "--manifest", str(out))
    assert "release 2.0.0 ready" in up.stdout
    other = tmp_path / "other.pem"
    save_private_key(generate_private_key(), other)
    _cli(
        env,
        "release",
        "sign",
        str(artifact),
        "--version",
        "2.0.1",
        "--device-type",
        "outdoor",
        "--key",
        str(other),
        "--out",
        str(out),
    )
    bad = _cli(env, "release", "upload", str(artifact), "--manifest", str(out), check=False)
    assert (
        bad.returncode == 1
        and bad.stderr.startswith("error: manifest refused (bad_signature)")
        and "Traceback" not in bad.stderr
    )
    # the API signs when asked (it holds the key)
    _cli(
        env,
        "release",
        "upload",
        str(artifact),
        "--version",
        "2.1.0",
        "--device-type",
        "outdoor",
        "--min-version",
        "2.0",
    )
    listed = _cli(env, "release", "list").stdout
    assert "2.1.0" in listed and "min 2.0" in listed and "2.0.1" not in listed
    missing = _cli(
        env, "release", "sign", str(tmp_path / "nope"), "--version", "1.0", "--device-type", "x", check=False
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
