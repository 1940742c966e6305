"""The authorisation matrix, generated from the app's route table: every route x every kind of principal
x own device / a classmate's device / another class's device (or own class / another class), each
asserting the exact status, through the real API (uvicorn, real Mosquitto with dynamic security).
Fleet-wide routes (rollouts, releases) are for those who reach every device: the admin, and users
with fleet access at the level the route needs.

The expected answers come from hand-written tables below (who reaches which device at which level,
which role holds which permission, who is in which class), combined with each route's *declared*
rule read from the app. A route that declares no rule, or has no sample request here, fails the test:
a new route cannot skip it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from cloud_core.analytics.models import Anomaly
from cloud_core.api.deps import Requirement, api_routes, declared_requirement
from cloud_core.core.db import make_engine
from cloud_core.rollouts import RolloutSettings
from cloud_core.testing import RunningApi, api_settings, running_api
from iot_protocol import generate_private_key, public_key_b64

pytestmark = pytest.mark.integration

PASSWORD = "matrix password 1"
WRITE = {"write_devices", "write_data"}
ROLE_PERMS = {
    "admin": {"read_devices", "write_devices", "read_data", "write_data", "admin_panel"},
    "user": {"read_devices", "write_devices", "read_data", "write_data"},
    "device": {"read_devices", "write_data"},
    "readonly": {"read_devices", "read_data"},
}
# principal -> role. "devkey" is an API key of student1 with role device, limited to dev1; "opkey" one
# of the operator's with role user, limited to dev1.
ROLES = {
    "anonymous": None,
    "admin": "admin",
    "teacher": "user",
    "student1": "user",
    "student2": "user",
    "student3": "user",
    "readonly": "readonly",
    "operator": "user",
    "devkey": "device",
    "opkey": "user",
}
# Who reaches which device at which level: dev1 is student1's, dev2 student2's (shared with class A),
# dev3 student3's (class B). The teacher teaches class A; readonly reads every device (an old viewer);
# operator writes every device (a user with fleet access "write", an old operator).
REACH = {
    "admin": {"dev1": "W", "dev2": "W", "dev3": "W"},
    "teacher": {"dev1": "W", "dev2": "W"},
    "student1": {"dev1": "W", "dev2": "R"},
    "student2": {"dev2": "W"},
    "student3": {"dev3": "W"},
    "readonly": {"dev1": "R", "dev2": "R", "dev3": "R"},
    "operator": {"dev1": "W", "dev2": "W", "dev3": "W"},
    "devkey": {"dev1": "W"},
    "opkey": {"dev1": "W"},
}
# Who reaches every device (fleet-wide routes), at which level. Not devkey or opkey: a key limited to
# some devices never acts on the fleet, whatever its owner may do.
FLEET = {"admin": "W", "operator": "W", "readonly": "R"}
# Class membership: A = the teacher's class (students 1 and 2), B = student3's.
MEMBER = {
    "admin": {"A": "admin", "B": "admin"},
    "teacher": {"A": "teacher"},
    "student1": {"A": "student"},
    "student2": {"A": "student"},
    "student3": {"B": "student"},
    "devkey": {"A": "student"},
}
TEACHERS = {"admin", "teacher"}  # may create classes


@dataclass
class World:
    api: RunningApi
    tokens: dict[str, str | None]
    devices: dict[str, str]  # dev1.. -> real id
    classes: dict[str, int]  # A, B -> id
    users: dict[str, int]
    anomalies: dict[str, int]  # dev1.. -> the id of an anomaly episode of that device
    release: str  # a firmware release with its artifact
    rollout: int  # a running rollout (of a device of its own)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, stem: str) -> str:
        return f"{stem}-{next(self.counter)}"

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.api.request(method, path, token=self.tokens[who], **kw)


@pytest.fixture
def world(mosquitto_dynsec: Any, topic_prefix: str, tmp_path: Path) -> Iterator[World]:
    settings = api_settings(
        mosquitto_dynsec,
        topic_prefix,
        tmp_path / "state",
        login_max_per_user_address=10_000,
        login_max_per_user=10_000,
        login_max_per_address=10_000,
    )
    # No rollout engine: the rollouts the samples make stay in the state they were made in.
    with running_api(settings, rollouts=RolloutSettings(engine=False)) as api:
        p = topic_prefix
        users = {"teacher": api.add_user(f"teacher-{p}", PASSWORD, is_teacher=True)}
        users["readonly"] = api.add_user(f"readonly-{p}", PASSWORD, role="readonly", fleet_access="read")
        users["operator"] = api.add_user(f"operator-{p}", PASSWORD, fleet_access="write")
        teacher = api.login(f"teacher-{p}", PASSWORD)
        class_a = api.request("POST", "/v1/classes", token=teacher, json={"name": "A"}).json()["id"]
        class_b = api.admin("POST", "/v1/classes", json={"name": "B"}).json()["id"]
        tokens: dict[str, str | None] = {"anonymous": None, "admin": api.admin_token, "teacher": teacher}
        for name, cls in (("student1", class_a), ("student2", class_a), ("student3", class_b)):
            r = api.admin("POST", f"/v1/classes/{cls}/members", json={"username": f"{name}-{p}", "password": PASSWORD})
            assert r.status_code == 201, r.text
            users[name] = r.json()["user_id"]
            tokens[name] = api.login(f"{name}-{p}", PASSWORD)
        tokens["readonly"] = api.login(f"readonly-{p}", PASSWORD)
        tokens["operator"] = api.login(f"operator-{p}", PASSWORD)
        devices = {}
        for dev, owner in (("dev1", "student1"), ("dev2", "student2"), ("dev3", "student3")):
            devices[dev] = f"{dev}-{p}"
            r = api.request("POST", "/v1/devices/register", token=tokens[owner], json={"id": devices[dev]})
            assert r.status_code == 201, r.text
        shared = api.request(
            "PUT", f"/v1/devices/{devices['dev2']}/share", token=tokens["student2"], json={"shared": True}
        )
        assert shared.status_code == 200
        key = api.request(
            "POST", "/v1/keys", token=tokens["student1"], json={"role": "device", "device_ids": [devices["dev1"]]}
        )
        assert key.status_code == 201, key.text
        tokens["devkey"] = key.json()["key"]
        key = api.request(
            "POST", "/v1/keys", token=tokens["operator"], json={"role": "user", "device_ids": [devices["dev1"]]}
        )
        assert key.status_code == 201, key.text
        tokens["opkey"] = key.json()["key"]
        anomalies = {}
        engine = make_engine(settings.db_url)
        with Session(engine) as session:  # what the analytics worker writes: one episode per device
            for dev, device_id in devices.items():
                row = Anomaly(
                    device_id=device_id, field="temperature", detector="robust_z", start_ms=1_000, end_ms=2_000,
                    peak_ms=1_500, peak_score=2.0, values=[40.0],
                )  # fmt: skip
                session.add(row)
                session.commit()
                assert row.id is not None
                anomalies[dev] = row.id
        engine.dispose()
        w = World(api, tokens, devices, {"A": class_a, "B": class_b}, users, anomalies, release="", rollout=0)
        w.release = _release(w, upload=True)
        w.rollout = _rollout(w)
        yield w


# ---- sample requests: (method, path) -> build(world, principal, target) -> (path, kwargs, success status) ----

Sample = Callable[[World, str, str], tuple[str, dict[str, Any], int]]


def _own_role(w: World, who: str) -> str:
    return ROLES[who] or "readonly"


def _throwaway_user(w: World) -> int:
    r = w.api.admin("POST", "/v1/users", json={"username": w.unique("tmp"), "password": PASSWORD})
    return int(r.json()["id"])


def _login_body(w: World) -> dict[str, str]:
    return {"username": f"student1-{w.api.settings.topic_prefix}", "password": PASSWORD}


def _refresh(w: World) -> str:
    return str(w.api.request("POST", "/v1/auth/login", json=_login_body(w)).json()["refresh_token"])


def _own_key(w: World, who: str) -> int:
    r = w.call(who, "POST", "/v1/keys", json={"role": _own_role(w, who)})
    return int(r.json()["info"]["id"]) if r.status_code == 201 else 999_999


def _member_to_remove(w: World, target: str) -> int:
    r = w.api.admin(
        "POST", f"/v1/classes/{w.classes[target]}/members", json={"username": w.unique("gone"), "password": PASSWORD}
    )
    return int(r.json()["user_id"])


def _granted_user(w: World) -> int:
    uid = _throwaway_user(w)
    w.api.admin("PUT", f"/v1/users/{uid}/grants", json={"permission": "read", "device_id": w.devices["dev3"]})
    return uid


ARTIFACT = b"firmware image of the matrix\n" * 40


def _release(w: World, *, upload: bool = False) -> str:
    """A new release (signed by the API's release key, as the admin); with its artifact if ``upload``."""
    version = f"1.{next(w.counter)}.0"
    spec = {
        "version": version,
        "size": len(ARTIFACT),
        "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
        "device_types": ["environment"],
    }
    r = w.api.admin("POST", "/v1/releases", json={"manifest": _manifest(w, spec)})
    assert r.status_code == 201, r.text
    if upload:
        r = w.api.admin("PUT", f"/v1/releases/{version}/artifact", content=ARTIFACT)
        assert r.status_code == 200, r.text
    return version


def _manifest(w: World, spec: dict[str, Any]) -> str:
    r = w.api.admin("POST", "/v1/releases/sign", json=spec)
    assert r.status_code == 200, r.text
    return str(r.json()["manifest"])


def _new_manifest(w: World) -> str:
    """A signed manifest of a version no release has yet."""
    return _manifest(
        w,
        {
            "version": f"2.{next(w.counter)}.0",
            "size": len(ARTIFACT),
            "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
            "device_types": ["environment"],
        },
    )


def _enrolled_device(w: World) -> str:
    """A device of the admin's, enrolled (rollouts take active devices only), in no other rollout."""
    device_id = w.unique(f"fleet-{w.api.settings.topic_prefix}")
    r = w.api.admin("POST", "/v1/devices/register", json={"id": device_id})
    assert r.status_code == 201, r.text
    body = {"token": r.json()["enrollment_token"], "public_key": public_key_b64(generate_private_key())}
    r = w.api.request("POST", "/v1/enroll", json=body)
    assert r.status_code == 200, r.text
    return device_id


def _rollout_body(w: World) -> dict[str, Any]:
    return {"settings": {"sampling_interval_s": 7}, "target": {"devices": [_enrolled_device(w)]}}


def _rollout(w: World, *, paused: bool = False) -> int:
    """A new running (or paused) config rollout of a device of its own."""
    r = w.api.admin("POST", "/v1/rollouts", json=_rollout_body(w))
    assert r.status_code == 201, r.text
    rollout_id = int(r.json()["id"])
    if paused:
        r = w.api.admin("POST", f"/v1/rollouts/{rollout_id}/pause")
        assert r.status_code == 200, r.text
    return rollout_id


def _fleet_reader(who: str) -> int:
    """What the artifact download (a public route: it checks a bearer token itself) answers ``who``."""
    if ROLES[who] is None:
        return 401
    return 200 if who in FLEET else 403


D = "device"
C = "class"
SAMPLES: dict[tuple[str, str], tuple[str | None, Sample]] = {
    ("GET", "/health"): (None, lambda w, who, t: ("/health", {}, 200)),
    ("GET", "/ready"): (None, lambda w, who, t: ("/ready", {}, 200)),
    ("GET", "/metrics"): (None, lambda w, who, t: ("/metrics", {}, 200)),
    ("POST", "/v1/auth/login"): (None, lambda w, who, t: ("/v1/auth/login", {"json": _login_body(w)}, 200)),
    ("POST", "/v1/auth/refresh"): (
        None,
        lambda w, who, t: ("/v1/auth/refresh", {"json": {"refresh_token": _refresh(w)}}, 200),
    ),
    ("POST", "/v1/auth/logout"): (None, lambda w, who, t: ("/v1/auth/logout", {"json": {}}, 204)),
    ("GET", "/v1/auth/jwks"): (None, lambda w, who, t: ("/v1/auth/jwks", {}, 200)),
    ("POST", "/v1/enroll"): (
        None,
        lambda w, who, t: (
            "/v1/enroll",
            {"json": {"token": "not-a-token", "public_key": public_key_b64(generate_private_key())}},
            401,  # its own check: the token
        ),
    ),
    ("POST", "/v1/data/ingest"): (
        None,
        # no person signs in for it: the device's signature decides, so junk is refused the same for all
        lambda w, who, t: ("/v1/data/ingest", {"content": b"not-a-jws"}, 400),
    ),
    ("GET", "/v1/auth/me"): (None, lambda w, who, t: ("/v1/auth/me", {}, 200)),
    ("POST", "/v1/auth/password"): (
        None,
        lambda w, who, t: (
            "/v1/auth/password",
            {"json": {"current_password": PASSWORD, "new_password": PASSWORD}},
            204 if who not in ("admin",) else 401,  # the bootstrap admin's password is random: not PASSWORD
        ),
    ),
    ("POST", "/v1/auth/mqtt-credentials"): (None, lambda w, who, t: ("/v1/auth/mqtt-credentials", {}, 200)),
    ("POST", "/v1/auth/signing-keys/rotate"): (None, lambda w, who, t: ("/v1/auth/signing-keys/rotate", {}, 200)),
    ("GET", "/v1/admin/users"): (None, lambda w, who, t: ("/v1/admin/users", {}, 200)),
    ("POST", "/v1/users"): (
        None,
        lambda w, who, t: ("/v1/users", {"json": {"username": w.unique("new"), "password": PASSWORD}}, 201),
    ),
    ("GET", "/v1/users/{user_id}"): (None, lambda w, who, t: (f"/v1/users/{w.users['student1']}", {}, 200)),
    ("PATCH", "/v1/users/{user_id}"): (
        None,
        lambda w, who, t: (f"/v1/users/{_throwaway_user(w)}", {"json": {"is_teacher": False}}, 200),
    ),
    ("POST", "/v1/users/{user_id}/password"): (
        None,
        lambda w, who, t: (f"/v1/users/{_throwaway_user(w)}/password", {"json": {"password": PASSWORD}}, 204),
    ),
    ("GET", "/v1/users/{user_id}/grants"): (
        None,
        lambda w, who, t: (f"/v1/users/{w.users['readonly']}/grants", {}, 200),
    ),
    ("PUT", "/v1/users/{user_id}/grants"): (
        None,
        lambda w, who, t: (
            f"/v1/users/{_throwaway_user(w)}/grants",
            {"json": {"permission": "read", "device_id": w.devices["dev3"]}},
            200,
        ),
    ),
    ("DELETE", "/v1/users/{user_id}/grants"): (
        None,
        lambda w, who, t: (f"/v1/users/{_granted_user(w)}/grants", {"params": {"device_id": w.devices["dev3"]}}, 204),
    ),
    ("POST", "/v1/keys"): (None, lambda w, who, t: ("/v1/keys", {"json": {"role": _own_role(w, who)}}, 201)),
    ("GET", "/v1/keys"): (None, lambda w, who, t: ("/v1/keys", {}, 200)),
    ("DELETE", "/v1/keys/{key_id}"): (None, lambda w, who, t: (f"/v1/keys/{_own_key(w, who)}", {}, 200)),
    ("POST", "/v1/admin/orgs"): (None, lambda w, who, t: ("/v1/admin/orgs", {"json": {"name": w.unique("org")}}, 201)),
    ("GET", "/v1/admin/orgs"): (None, lambda w, who, t: ("/v1/admin/orgs", {}, 200)),
    ("POST", "/v1/classes"): (
        None,
        lambda w, who, t: ("/v1/classes", {"json": {"name": w.unique("class")}}, 201 if who in TEACHERS else 403),
    ),
    ("GET", "/v1/classes"): (None, lambda w, who, t: ("/v1/classes", {}, 200)),
    ("GET", "/v1/classes/{class_id}"): (C, lambda w, who, t: (f"/v1/classes/{w.classes[t]}", {}, 200)),
    ("POST", "/v1/classes/{class_id}/members"): (
        C,
        lambda w, who, t: (
            f"/v1/classes/{w.classes[t]}/members",
            {"json": {"username": w.unique("kid"), "password": PASSWORD}},
            201,
        ),
    ),
    ("DELETE", "/v1/classes/{class_id}/members/{user_id}"): (
        C,
        lambda w, who, t: (f"/v1/classes/{w.classes[t]}/members/{_member_to_remove(w, t)}", {}, 204),
    ),
    ("GET", "/v1/classes/{class_id}/quota"): (C, lambda w, who, t: (f"/v1/classes/{w.classes[t]}/quota", {}, 200)),
    ("PUT", "/v1/classes/{class_id}/quota"): (
        C,
        lambda w, who, t: (f"/v1/classes/{w.classes[t]}/quota", {"json": {}}, 200),
    ),
    ("GET", "/v1/audit"): (None, lambda w, who, t: ("/v1/audit", {}, 200)),
    ("POST", "/v1/devices/register"): (
        None,
        lambda w, who, t: (
            "/v1/devices/register",
            {"json": {"id": w.unique(f"new-{w.api.settings.topic_prefix}")}},
            403 if who == "opkey" else 201,  # a key limited to some devices registers none (devkey: its role)
        ),
    ),
    ("GET", "/v1/devices"): (None, lambda w, who, t: ("/v1/devices", {}, 200)),
    ("GET", "/v1/devices/{device_id}"): (D, lambda w, who, t: (f"/v1/devices/{w.devices[t]}", {}, 200)),
    ("PUT", "/v1/devices/{device_id}/share"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/share", {"json": {"shared": t == "dev2"}}, 200),
    ),
    ("PUT", "/v1/devices/{device_id}/config"): (
        D,
        lambda w, who, t: (
            f"/v1/devices/{w.devices[t]}/config",
            {"json": {"settings": {"sampling_interval_s": 5}}},
            200,
        ),
    ),
    ("GET", "/v1/devices/{device_id}/config"): (D, lambda w, who, t: (f"/v1/devices/{w.devices[t]}/config", {}, 200)),
    ("GET", "/v1/devices/{device_id}/readings"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/readings", {}, 200),
    ),
    ("GET", "/v1/readings"): (None, lambda w, who, t: ("/v1/readings", {}, 200)),
    ("GET", "/v1/analytics/summary"): (
        D,
        lambda w, who, t: ("/v1/analytics/summary", {"params": {"device_id": w.devices[t]}}, 200),
    ),
    ("GET", "/v1/analytics/anomalies"): (None, lambda w, who, t: ("/v1/analytics/anomalies", {}, 200)),
    ("GET", "/v1/analytics/anomalies/{anomaly_id}"): (
        D,
        lambda w, who, t: (f"/v1/analytics/anomalies/{w.anomalies[t]}", {}, 200),
    ),
    ("GET", "/v1/analytics/anomalies/{anomaly_id}/readings"): (
        D,
        lambda w, who, t: (f"/v1/analytics/anomalies/{w.anomalies[t]}/readings", {}, 200),
    ),
    ("POST", "/v1/analytics/anomalies/{anomaly_id}/label"): (
        D,
        lambda w, who, t: (f"/v1/analytics/anomalies/{w.anomalies[t]}/label", {"json": {"true_alarm": False}}, 200),
    ),
    ("GET", "/v1/analytics/feedback"): (None, lambda w, who, t: ("/v1/analytics/feedback", {}, 200)),
    # The web console (cloud_core/console): its page and files are public (no data); the rest as the REST API.
    ("GET", "/"): (None, lambda w, who, t: ("/", {"follow_redirects": False}, 307)),
    ("GET", "/console/"): (None, lambda w, who, t: ("/console/", {}, 200)),
    ("GET", "/console/static/{name}"): (None, lambda w, who, t: ("/console/static/main.js", {}, 200)),
    ("POST", "/v1/console/session"): (
        None,
        lambda w, who, t: ("/v1/console/session", {"json": {"token": "edu_nope1234"}}, 401),
    ),
    ("GET", "/v1/console/fleet"): (None, lambda w, who, t: ("/v1/console/fleet", {}, 200)),
    ("GET", "/v1/console/devices/{device_id}/live"): (
        D,
        lambda w, who, t: (f"/v1/console/devices/{w.devices[t]}/live", {"params": {"duration_s": 0}}, 200),
    ),
    ("GET", "/v1/console/scenarios"): (None, lambda w, who, t: ("/v1/console/scenarios", {}, 200)),
    ("GET", "/v1/console/simulations"): (None, lambda w, who, t: ("/v1/console/simulations", {}, 200)),
    # no simulator in this API (only `iotctl up` runs one): the rule is checked first, then 409 / no such run
    ("POST", "/v1/console/simulations"): (
        None,
        lambda w, who, t: ("/v1/console/simulations", {"json": {"scenario": "first_alert"}}, 409),
    ),
    ("GET", "/v1/console/simulations/{run_id}"): (None, lambda w, who, t: ("/v1/console/simulations/1", {}, 404)),
    ("POST", "/v1/console/simulations/{run_id}/stop"): (
        None,
        lambda w, who, t: ("/v1/console/simulations/1/stop", {}, 404),
    ),
    ("GET", "/v1/devices/{device_id}/ledger"): (D, lambda w, who, t: (f"/v1/devices/{w.devices[t]}/ledger", {}, 200)),
    ("GET", "/v1/devices/{device_id}/dead-letters"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/dead-letters", {}, 200),
    ),
    ("POST", "/v1/devices/{device_id}/rotate"): (D, lambda w, who, t: (f"/v1/devices/{w.devices[t]}/rotate", {}, 200)),
    ("PUT", "/v1/devices/{device_id}/tags"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/tags", {"json": {"tags": ["pilot", f"room-{t}"]}}, 200),
    ),
    ("GET", "/v1/devices/{device_id}/tags"): (D, lambda w, who, t: (f"/v1/devices/{w.devices[t]}/tags", {}, 200)),
    ("GET", "/v1/devices/{device_id}/history"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/history", {}, 200),
    ),
    # Rollouts and releases: fleet-wide (FLEET); each write acts on a rollout or release of its own.
    ("GET", "/v1/rollouts"): (None, lambda w, who, t: ("/v1/rollouts", {}, 200)),
    ("POST", "/v1/rollouts"): (None, lambda w, who, t: ("/v1/rollouts", {"json": _rollout_body(w)}, 201)),
    ("GET", "/v1/rollouts/{rollout_id}"): (None, lambda w, who, t: (f"/v1/rollouts/{w.rollout}", {}, 200)),
    ("GET", "/v1/rollouts/{rollout_id}/devices"): (
        None,
        lambda w, who, t: (f"/v1/rollouts/{w.rollout}/devices", {}, 200),
    ),
    ("GET", "/v1/rollouts/{rollout_id}/events"): (
        None,
        lambda w, who, t: (f"/v1/rollouts/{w.rollout}/events", {}, 200),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/pause"): (
        None,
        lambda w, who, t: (f"/v1/rollouts/{_rollout(w)}/pause", {}, 200),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/resume"): (
        None,
        lambda w, who, t: (f"/v1/rollouts/{_rollout(w, paused=True)}/resume", {}, 200),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): (
        None,
        lambda w, who, t: (f"/v1/rollouts/{_rollout(w)}/abort", {"json": {"reason": "matrix"}}, 200),
    ),
    ("GET", "/v1/releases"): (None, lambda w, who, t: ("/v1/releases", {}, 200)),
    ("GET", "/v1/releases/{version}"): (None, lambda w, who, t: (f"/v1/releases/{w.release}", {}, 200)),
    ("POST", "/v1/releases"): (
        None,
        lambda w, who, t: ("/v1/releases", {"json": {"manifest": _new_manifest(w)}}, 201),
    ),
    ("POST", "/v1/releases/sign"): (
        None,
        lambda w, who, t: (
            "/v1/releases/sign",
            {
                "json": {
                    "version": "3.0.0",
                    "size": len(ARTIFACT),
                    "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
                    "device_types": ["environment"],
                }
            },
            200,
        ),
    ),
    ("PUT", "/v1/releases/{version}/artifact"): (
        None,
        lambda w, who, t: (f"/v1/releases/{_release(w)}/artifact", {"content": ARTIFACT}, 200),
    ),
    ("GET", "/v1/releases/{version}/artifact"): (
        None,
        lambda w, who, t: (f"/v1/releases/{w.release}/artifact", {}, _fleet_reader(who)),
    ),
    # Last: a deactivated device refuses new configs.
    ("POST", "/v1/devices/{device_id}/deactivate"): (
        D,
        lambda w, who, t: (f"/v1/devices/{w.devices[t]}/deactivate", {}, 200),
    ),
}


def expected(req: Requirement, who: str, scope: str | None, target: str, success: int) -> int:
    """The status the matrix expects, from the tables above and the route's declared rule."""
    if req.permission is None:
        return success
    role = ROLES[who]
    if role is None:
        return 401
    need = req.permission.value
    if need not in ROLE_PERMS[role]:
        return 403
    if req.fleet:
        level = FLEET.get(who)
        if level is None or (need in WRITE and level == "R"):
            return 403
    if scope == D:
        level = REACH.get(who, {}).get(target)
        if level is None:
            return 404
        if need in WRITE and level == "R":
            return 403
    if scope == C:
        if req.permission.value == "admin_panel":
            return success
        place = MEMBER.get(who, {}).get(target)
        if place is None:
            return 404
        if req.teacher and place == "student":
            return 403
    return success


def test_every_route_declares_its_rule_and_has_a_sample(world: World) -> None:
    routes = {(m, path) for path, methods, _ in api_routes(world.api.app) for m in methods}
    schema = world.api.app.openapi()["paths"]
    in_schema = {(m.upper(), path) for path, ops in schema.items() for m in ops}
    assert routes == in_schema, "every API route is in the OpenAPI schema and the other way round"
    undeclared = sorted(
        f"{m} {p}" for p, ms, r in api_routes(world.api.app) for m in ms if declared_requirement(r) is None
    )
    assert undeclared == [], "declare these routes' access rule with deps.require(...) or deps.public(...)"
    missing = sorted(f"{m} {p}" for m, p in routes - set(SAMPLES))
    assert missing == [], "add these routes to SAMPLES in tests/test_authz_matrix.py"


def test_the_authorisation_matrix(world: World) -> None:
    rules = {(m, path): declared_requirement(r) for path, ms, r in api_routes(world.api.app) for m in ms}
    failures = []
    checked = 0
    for (method, path), (scope, build) in SAMPLES.items():
        req = rules[(method, path)]
        assert req is not None
        if scope == C and req.klass is None:  # an admin route under /classes/{id}: class kind still applies
            pass
        targets = ["dev1", "dev2", "dev3"] if scope == D else ["A", "B"] if scope == C else ["-"]
        for who, target in itertools.product(ROLES, targets):
            url, kw, success = build(world, who, target)
            want = expected(req, who, scope if req.device or req.anomaly or req.klass else None, target, success)
            if req.permission is not None and ROLES[who] is None:
                want = 401
            r = world.call(who, method, url, **kw)
            checked += 1
            if r.status_code != want:
                failures.append(f"{method} {path} as {who} on {target}: {r.status_code} (want {want}) {r.text[:120]}")
    assert not failures, "\n".join(failures)
    assert checked > 250
