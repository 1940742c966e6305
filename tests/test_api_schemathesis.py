"""Schemathesis against the live OpenAPI schema of the real API (uvicorn, real Mosquitto, SQLite),
signed in as each kind of principal (admin, teacher, student, readonly, a device-scoped key) and as
nobody: generated requests for every operation must never get a 500, and every answer must match
the schema (status code documented, content type, body).

Bounded for CI: ``SCHEMATHESIS_EXAMPLES`` examples per operation and principal (default 6;
``SOAK_SCALE`` multiplies it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud_core.testing import RunningApi, api_settings, running_api
from iot_testing import soak_scale

pytestmark = pytest.mark.integration

PASSWORD = "schemathesis pw 1"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(
    mosquitto_dynsec: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningApi, dict[str, str | None]]]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    prefix = "st_" + os.urandom(5).hex()
    settings_ = api_settings(
        mosquitto_dynsec,
        prefix,
        tmp / "state",
        login_max_per_user_address=1_000_000,
        login_max_per_user=1_000_000,
        login_max_per_address=1_000_000,
    )
    with running_api(settings_) as api:
        api.add_user(f"teacher-{prefix}", PASSWORD, is_teacher=True)
        teacher = api.login(f"teacher-{prefix}", PASSWORD)
        class_id = api.request("POST", "/v1/classes", token=teacher, json={"name": "S"}).json()["id"]
        api.request("POST", f"/v1/classes/{class_id}/members", token=teacher,
                    json={"username": f"student-{prefix}", "password": PASSWORD})  # fmt: skip
        student = api.login(f"student-{prefix}", PASSWORD)
        api.request("POST", "/v1/devices/register", token=student, json={"id": f"dev-{prefix}"})
        api.add_user(f"ro-{prefix}", PASSWORD, role="readonly", fleet_access="read")
        tokens: dict[str, str | None] = {
            "anonymous": None,
            "admin": api.admin_token,
            "teacher": teacher,
            "student": student,
            "readonly": api.login(f"ro-{prefix}", PASSWORD),
            "devkey": api.key_for(f"student-{prefix}", role="device", devices=[f"dev-{prefix}"]),
        }
        yield api, tokens


@pytest.mark.parametrize("who", ["anonymous", "admin", "teacher", "student", "readonly", "devkey"])
def test_no_server_error_and_every_answer_matches_the_schema(
    live: tuple[RunningApi, dict[str, str | None]], who: str
) -> None:
    api, tokens = live
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    examples = max(1, int(int(os.environ.get("SCHEMATHESIS_EXAMPLES", "6")) * soak_scale()))
    headers = {"Authorization": f"Bearer {tokens[who]}"} if tokens[who] else {}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            if who == "admin" and case.method == "PATCH" and case.path_parameters.get("user_id") == 1:
                case.path_parameters["user_id"] = 999_999  # do not demote or disable the bootstrap admin
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc).strip()[:600]}")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
