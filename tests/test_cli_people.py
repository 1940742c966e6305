"""The people commands of ``iotctl`` as real subprocesses against the real API: login with profiles (the
access token refreshed when it expires), whoami, users, classes, keys, audit, devices share, and
``query --api`` reading only what the signed-in person may read; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cloud_core.testing import RunningApi, api_settings, running_api
from cloud_core.tsdb import Point, open_tsdb

pytestmark = pytest.mark.integration

PASSWORD = "cli password 123"


@pytest.fixture
def api(mosquitto_dynsec: Any, topic_prefix: str, tmp_path: Path) -> Iterator[RunningApi]:
    settings = api_settings(
        mosquitto_dynsec,
        topic_prefix,
        tmp_path / "state",
        access_token_ttl_s=2,
    )
    with running_api(settings) as running:
        yield running


def iotctl(
    tmp_path: Path, *args: str, stdin: str | None = None, profile: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "IOTCTL_CONFIG": str(tmp_path / "profiles.json"),
        "EDU_STATE_DIR": str(tmp_path / "nowhere"),
        **env,
    }
    if profile:
        environ["IOTCTL_PROFILE"] = profile
    return subprocess.run(
        [sys.executable, "-m", "iotctl", *args], input=stdin, capture_output=True, text=True, env=environ, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_teacher_and_a_student_through_the_cli(api: RunningApi, tmp_path: Path, topic_prefix: str) -> None:
    admin = {"IOTCTL_TOKEN": api.admin_token, "IOTCTL_API": api.url}
    # The admin adds a teacher (password from stdin) and reads the user list.
    out = ok(iotctl(tmp_path, "users", "add", "tess", "--teacher", "--password-stdin", stdin=PASSWORD + "\n", **admin))
    assert "added tess" in out
    assert "tess" in ok(iotctl(tmp_path, "users", "list", **admin))
    # The teacher logs in (profile "school"); every later command uses the profile.
    out = ok(iotctl(tmp_path, "login", "--api", api.url, "-u", "tess", "--password-stdin", "--profile", "school",
                    stdin=PASSWORD + "\n"))  # fmt: skip
    assert "logged in" in out and "tess" in out
    assert (tmp_path / "profiles.json").stat().st_mode & 0o777 == 0o600
    assert "tess" in ok(iotctl(tmp_path, "whoami"))
    out = ok(iotctl(tmp_path, "classes", "create", "7B", "--quota", "max_devices_per_student=1"))
    class_id = out.split()[2]
    out = ok(iotctl(tmp_path, "classes", "add-student", class_id, "stu"))
    student_password = out.strip().splitlines()[-1].split()[-1]
    # The student logs in to a second profile and registers a device; the class is hers by default.
    ok(iotctl(tmp_path, "login", "--api", api.url, "-u", "stu", "--password-stdin", "--profile", "stu",
              stdin=student_password + "\n"))  # fmt: skip
    device = f"stu-dev-{topic_prefix}"
    ok(iotctl(tmp_path, "devices", "register", device))
    over = iotctl(tmp_path, "devices", "register", f"{device}-2")
    assert "quota" in one_line_error(over) or "devices" in one_line_error(over)
    ok(iotctl(tmp_path, "devices", "share", device))
    assert device in ok(iotctl(tmp_path, "devices", "list"))
    # The access token expires (2 s here): the CLI refreshes it with the refresh token by itself.
    time.sleep(2.5)
    assert "stu" in ok(iotctl(tmp_path, "whoami"))
    # Readings through the API: only what she may read, in table, CSV and JSON.
    store = open_tsdb(api.settings.tsdb_url)
    now = int(time.time() * 1000)
    store.write([
        Point(device, "env", "lab", now - 1000, {"temperature": 21.5}),
        Point("someone-else", "env", "lab", now - 1000, {"temperature": 99.0}),
    ])  # fmt: skip
    store.close()
    csv_out = ok(iotctl(tmp_path, "query", "--api", "profile", "--since", "1h", "--format", "csv"))
    assert device in csv_out and "someone-else" not in csv_out and "21.5" in csv_out
    rows = orjson.loads(ok(iotctl(tmp_path, "query", "--api", api.url, "--since", "1h", "--format", "json")))
    assert [r["device_id"] for r in rows] == [device]
    assert device in ok(iotctl(tmp_path, "query", "--api", "profile", "-d", device, "--since", "1h"))
    denied = iotctl(tmp_path, "query", "--api", "profile", "-d", "someone-else", "--since", "1h")
    assert "no device" in one_line_error(denied)
    # Keys: create (shown once), list, revoke; the key works as a token, then does not.
    out = ok(iotctl(tmp_path, "keys", "create", "--name", "notebook", "--role", "readonly"))
    key = out.strip().splitlines()[-1]
    key_id = out.split()[1]
    assert "notebook" in ok(iotctl(tmp_path, "keys", "list"))
    assert "stu" in ok(iotctl(tmp_path, "whoami", "--token", key, "--api", api.url))
    ok(iotctl(tmp_path, "keys", "revoke", key_id))
    assert "revoked" in one_line_error(iotctl(tmp_path, "whoami", "--token", key, "--api", api.url))
    # The teacher sees the class and its usage; the student may not read the quota view.
    assert device in ok(iotctl(tmp_path, "classes", "show", class_id, profile="school"))
    assert "devices" in ok(iotctl(tmp_path, "classes", "quota", class_id, profile="school"))
    assert "HTTP 403" in one_line_error(iotctl(tmp_path, "classes", "quota", class_id))
    # The admin reads the audit log; students may not.
    audit = ok(iotctl(tmp_path, "audit", "--since", "1h", "--limit", "200", **admin))
    for action in ("user.create", "class.create", "device.register", "device.share", "key.revoke"):
        assert action in audit
    assert "HTTP 403" in one_line_error(iotctl(tmp_path, "audit"))
    # Disabling the student ends her session at once.
    ok(iotctl(tmp_path, "users", "disable", "stu", **admin))
    assert "HTTP 401" in one_line_error(iotctl(tmp_path, "whoami"))
    assert "logged out" in ok(iotctl(tmp_path, "logout", profile="school"))


def test_cli_people_errors_are_one_line(api: RunningApi, tmp_path: Path) -> None:
    wrong = iotctl(tmp_path, "login", "--api", api.url, "-u", "nobody", "--password-stdin", stdin="x\n")
    assert "wrong username or password" in one_line_error(wrong)
    assert "no profile 'ghost'" in one_line_error(iotctl(tmp_path, "whoami", profile="ghost"))
    assert "bad --expires" in one_line_error(iotctl(tmp_path, "keys", "create", "--expires", "soon"))
    bad_quota = iotctl(tmp_path, "classes", "create", "x", "--quota", "max_devices", IOTCTL_TOKEN=api.admin_token,
                       IOTCTL_API=api.url)  # fmt: skip
    assert "bad --quota" in one_line_error(bad_quota)
    assert "not logged in" in one_line_error(iotctl(tmp_path, "logout"))
