"""Sign-in and credentials through the real API (uvicorn, real Mosquitto with dynamic security, SQLite):
logins, refresh rotation and reuse detection, every kind of bad JWT, disabled users, signing-key
rotation, brute-force limits that end on their own, timing of unknown users, browser cookies with
CSRF, API keys (scoped, revoked), Argon2 and the rehash of old scrypt hashes."""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from sqlmodel import Session, select

from cloud_core.auth.credentials import login
from cloud_core.auth.errors import LoginRefused
from cloud_core.auth.models import SigningKey, User
from cloud_core.auth.tokens import TokenSigner
from cloud_core.core.config import CloudSettings
from cloud_core.core.db import make_engine
from cloud_core.core.security import hash_password as scrypt_hash
from cloud_core.testing import RunningApi, running_api
from iot_testing import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture
def api(
    mosquitto_dynsec: Any, topic_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RunningApi]:
    window = getattr(request, "param", 3)
    settings = CloudSettings(
        state_dir=tmp_path / "state",
        mqtt_url=mosquitto_dynsec.url,
        mqtt_username=f"svc-{topic_prefix}",
        mqtt_admin_username=mosquitto_dynsec.admin_username,
        mqtt_admin_password=mosquitto_dynsec.admin_password,
        topic_prefix=topic_prefix,
        cache_url=f"memory://{topic_prefix}",
        login_window_s=window,
        login_max_per_user_address=3,
        login_max_per_user=6,
        login_max_per_address=8,
    )
    with running_api(settings) as running:
        yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join((_b64(orjson.dumps(header)), _b64(orjson.dumps(claims)), _b64(signature)))


def _current_key(api: RunningApi) -> SigningKey:
    engine = make_engine(api.settings.db_url)
    try:
        with Session(engine) as session:
            return session.exec(select(SigningKey).where(SigningKey.retired_at == None)).one()  # noqa: E711
    finally:
        engine.dispose()


def test_login_refresh_rotates_and_a_reused_refresh_token_closes_the_session(api: RunningApi) -> None:
    api.add_user("ann", PASSWORD)
    r = api.request("POST", "/v1/auth/login", json={"username": "ann", "password": PASSWORD})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["token_type"] == "bearer" and first["user"]["username"] == "ann"
    assert "password_hash" not in r.text
    me = api.request("GET", "/v1/auth/me", token=first["access_token"]).json()
    assert (me["user"]["username"], me["role"], me["via"]) == ("ann", "user", "token")

    second = api.request("POST", "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert api.request("GET", "/v1/auth/me", token=second["access_token"]).status_code == 200
    # The spent token again: refused, and the whole session (its successor too) is closed.
    reused = api.request("POST", "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]
    after = api.request("POST", "/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401 and "revoked" in after.json()["detail"]

    third = api.request("POST", "/v1/auth/login", json={"username": "ann", "password": PASSWORD}).json()
    assert api.request("POST", "/v1/auth/logout", json={"refresh_token": third["refresh_token"]}).status_code == 204
    revoked = api.request("POST", "/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    unknown = api.request("POST", "/v1/auth/refresh", json={"refresh_token": "nope"})
    assert unknown.status_code == 401 and "not recognised" in unknown.json()["detail"]


def test_bad_access_tokens_are_refused_each_with_its_reason(api: RunningApi) -> None:
    api.add_user("bob", PASSWORD)
    good = api.login("bob", PASSWORD)
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    key = _current_key(api)
    private = serialization.load_pem_private_key(key.private_pem.encode(), password=None)
    now = int(time.time())

    expired = jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, private, algorithm="EdDSA",  # type: ignore[arg-type]
                         headers={"kid": key.kid})  # fmt: skip
    head, _body, sig = good.split(".")
    tampered = f"{head}.{_b64(orjson.dumps({**claims, 'role': 'admin', 'sub': '1'}))}.{sig}"
    bad_signature = f"{head}.{good.split('.')[1]}.{_b64(b'x' * 64)}"
    wrong_kid = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "0000000000000000"})  # type: ignore[arg-type]
    alg_none = _forge({"alg": "none", "typ": "JWT", "kid": key.kid}, {**claims, "sub": "1"})
    # HS256 with the public key as the HMAC secret (the classic key-confusion attack), PEM and raw.
    public_pem = key.public_pem.encode()
    raw_x = base64.urlsafe_b64decode(api.request("GET", "/v1/auth/jwks").json()["keys"][0]["x"] + "==")
    hs_pem = _forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, {**claims, "sub": "1"})
    import hashlib
    import hmac

    def hs256(secret: bytes) -> str:
        h = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}))
        p = _b64(orjson.dumps({**claims, "sub": "1", "role": "admin"}))
        return f"{h}.{p}.{_b64(hmac.new(secret, f'{h}.{p}'.encode(), hashlib.sha256).digest())}"

    no_kid = jwt.encode(claims, private, algorithm="EdDSA")  # type: ignore[arg-type]
    cases = {
        "expired": (expired, "expired"),
        "tampered payload": (tampered, "signature does not verify"),
        "tampered signature": (bad_signature, "signature does not verify"),
        "unknown kid": (wrong_kid, "unknown key"),
        "alg none": (alg_none, "'none' is not accepted"),
        "HS256 forged": (hs_pem, "'HS256' is not accepted"),
        "HS256 with the PEM public key": (hs256(public_pem), "'HS256' is not accepted"),
        "HS256 with the raw public key": (hs256(raw_x), "'HS256' is not accepted"),
        "no kid": (no_kid, "no key id"),
        "garbage": ("a.b.c", "malformed"),
    }
    assert api.request("GET", "/v1/auth/me", token=good).status_code == 200
    for name, (token, reason) in cases.items():
        r = api.request("GET", "/v1/admin/users", token=token)
        assert r.status_code == 401, (name, r.text)
        assert reason in r.json()["detail"], (name, r.json())
        assert r.headers["www-authenticate"] == "Bearer"
    assert header["alg"] == "EdDSA" and header["kid"] == key.kid


def test_a_disabled_users_tokens_keys_and_sessions_are_refused_at_once(api: RunningApi) -> None:
    uid = api.add_user("cat", PASSWORD)
    pair = api.request("POST", "/v1/auth/login", json={"username": "cat", "password": PASSWORD}).json()
    key = api.request("POST", "/v1/keys", token=pair["access_token"], json={"name": "ci", "role": "readonly"}).json()
    assert api.request("GET", "/v1/devices", token=key["key"]).status_code == 200
    assert api.admin("PATCH", f"/v1/users/{uid}", json={"is_active": False}).status_code == 200
    for token in (pair["access_token"], key["key"]):
        r = api.request("GET", "/v1/devices", token=token)
        assert r.status_code == 401 and "disabled" in r.json()["detail"], r.text
    assert api.request("POST", "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    assert api.request("POST", "/v1/auth/login", json={"username": "cat", "password": PASSWORD}).status_code == 401
    # An admin cannot disable themselves (and lock everyone out).
    me = api.admin("GET", "/v1/auth/me").json()["user"]["id"]
    assert api.admin("PATCH", f"/v1/users/{me}", json={"is_active": False}).status_code == 409


def test_signing_key_rotation_keeps_old_tokens_valid_and_publishes_both_keys(api: RunningApi) -> None:
    api.add_user("dan", PASSWORD)
    old = api.login("dan", PASSWORD)
    old_kid = jwt.get_unverified_header(old)["kid"]
    r = api.admin("POST", "/v1/auth/signing-keys/rotate")
    assert r.status_code == 200
    new = api.login("dan", PASSWORD)
    assert jwt.get_unverified_header(new)["kid"] == r.json()["kid"] != old_kid
    kids = {k["kid"] for k in api.request("GET", "/v1/auth/jwks").json()["keys"]}
    assert {old_kid, r.json()["kid"]} <= kids
    for token in (old, new):
        assert api.request("GET", "/v1/auth/me", token=token).status_code == 200
    # Another service verifies with the JWKS alone, never the private key.
    jwk = next(k for k in api.request("GET", "/v1/auth/jwks").json()["keys"] if k["kid"] == r.json()["kid"])
    public = jwt.PyJWK(jwk).key
    assert jwt.decode(new, public, algorithms=["EdDSA"], issuer="edu-platform")["name"] == "dan"


def test_brute_force_is_limited_per_user_and_address_and_the_limit_ends(api: RunningApi) -> None:
    api.add_user("eve", PASSWORD)
    statuses = [
        api.request("POST", "/v1/auth/login", json={"username": "eve", "password": f"wrong {i}"}).status_code
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    limited = api.request("POST", "/v1/auth/login", json={"username": "eve", "password": PASSWORD})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) == 3
    # The window ends on its own: the real user gets in again (never locked out for good).
    wait_for(
        lambda: (
            api.request("POST", "/v1/auth/login", json={"username": "eve", "password": PASSWORD}).status_code == 200
        ),
        "the login limit to end",
        timeout=15,
        interval=0.5,
    )


@pytest.mark.parametrize("api", [300], indirect=True)
def test_one_address_trying_many_usernames_is_limited(api: RunningApi) -> None:
    codes = [
        api.request("POST", "/v1/auth/login", json={"username": f"nobody{i}", "password": "x"}).status_code
        for i in range(10)
    ]
    assert codes[:8] == [401] * 8 and set(codes[8:]) == {429}


def test_an_unknown_username_takes_as_long_as_a_wrong_password(tmp_path: Path) -> None:
    """Timing must not tell whether a user exists: an unknown user still costs one Argon2 check."""
    from cloud_core.core.db import create_all

    engine = make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    create_all(engine)
    signer = TokenSigner(engine, ttl_s=60)
    with Session(engine) as session:
        from cloud_core.auth.users import create_user

        create_user(session, actor="test", username="fay", password=PASSWORD)
        session.commit()

        def timed(username: str) -> float:
            t0 = time.perf_counter()
            with pytest.raises(LoginRefused):
                login(session, signer, username=username, password="wrong password", refresh_ttl_s=60)
            return time.perf_counter() - t0

        known = statistics.median(timed("fay") for _ in range(5))
        unknown = statistics.median(timed("nobody") for _ in range(5))
    engine.dispose()
    assert 1 / 3 < unknown / known < 3, (known, unknown)


def test_browser_cookies_work_and_changes_need_the_csrf_header(api: RunningApi) -> None:
    import httpx

    api.add_user("gus", PASSWORD)
    with httpx.Client(base_url=api.url, timeout=30) as browser:
        r = browser.post("/v1/auth/login", json={"username": "gus", "password": PASSWORD})
        assert r.status_code == 200
        cookies = {c.name: c for c in browser.cookies.jar}
        assert {"edu_access", "edu_refresh", "edu_csrf"} <= set(cookies)
        assert "httponly" in r.headers.get_list("set-cookie")[0].lower()
        assert browser.get("/v1/auth/me").json()["user"]["username"] == "gus"
        denied = browser.post("/v1/keys", json={"name": "x", "role": "readonly"})
        assert denied.status_code == 403 and "X-CSRF-Token" in denied.json()["detail"]
        wrong = browser.post("/v1/keys", json={"name": "x", "role": "readonly"}, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        ok = browser.post(
            "/v1/keys", json={"name": "x", "role": "readonly"}, headers={"X-CSRF-Token": cookies["edu_csrf"].value}
        )
        assert ok.status_code == 201, ok.text
        assert browser.post("/v1/auth/refresh").status_code == 200  # the refresh cookie alone
        assert browser.post("/v1/auth/logout").status_code == 204
        assert browser.post("/v1/auth/refresh").status_code == 401


def test_api_keys_are_scoped_shown_once_and_revocable(api: RunningApi) -> None:
    api.add_user("hal", PASSWORD)
    token = api.login("hal", PASSWORD)
    too_high = api.request("POST", "/v1/keys", token=token, json={"role": "admin"})
    assert too_high.status_code == 403
    made = api.request("POST", "/v1/keys", token=token, json={"name": "ci", "role": "readonly"})
    assert made.status_code == 201
    key, info = made.json()["key"], made.json()["info"]
    assert key.startswith("edu_") and info["prefix"] == key[:12]
    listed = api.request("GET", "/v1/keys", token=token).json()
    assert [k["id"] for k in listed] == [info["id"]] and key not in orjson.dumps(listed).decode()
    me = api.request("GET", "/v1/auth/me", token=key).json()
    assert (me["role"], me["via"]) == ("readonly", "key")
    denied = api.request("POST", "/v1/devices/register", token=key, json={"id": "dev-hal"})
    assert denied.status_code == 403
    other = api.request("DELETE", f"/v1/keys/{info['id']}", token=api.key_for("ivy", role="user"))
    assert other.status_code == 404  # not theirs to revoke, not even to see
    assert api.request("DELETE", f"/v1/keys/{info['id']}", token=token).status_code == 200
    assert api.request("GET", "/v1/auth/me", token=key).status_code == 401


def test_a_key_limited_to_some_devices_registers_no_new_one_whoever_owns_it(api: RunningApi) -> None:
    """A key limited to some devices acts on those only: no new device through it, for a student's key
    too (the class path skipped the check: a student's key for one device registered more)."""
    class_id = api.admin("POST", "/v1/classes", json={"name": "keys"}).json()["id"]
    r = api.admin("POST", f"/v1/classes/{class_id}/members", json={"username": "kit", "password": PASSWORD})
    assert r.status_code == 201, r.text
    api.add_user("ops", PASSWORD, fleet_access="write")
    for who, device_id in (("kit", "dev-kit"), ("ops", "dev-ops")):
        token = api.login(who, PASSWORD)
        assert api.request("POST", "/v1/devices/register", token=token, json={"id": device_id}).status_code == 201
        made = api.request("POST", "/v1/keys", token=token, json={"role": "user", "device_ids": [device_id]})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        r = api.request("POST", "/v1/devices/register", token=key, json={"id": f"{device_id}-2"})
        assert r.status_code == 403 and "limited to some devices" in r.json()["detail"], (who, r.text)
        assert api.request("GET", f"/v1/devices/{device_id}-2", token=token).status_code == 404
        assert api.request("GET", f"/v1/devices/{device_id}", token=key).status_code == 200


def test_passwords_are_argon2_and_old_scrypt_hashes_are_upgraded_at_login(api: RunningApi) -> None:
    api.add_user("jo", PASSWORD)
    engine = make_engine(api.settings.db_url)
    try:
        with Session(engine) as session:
            user = session.exec(select(User).where(User.username == "jo")).one()
            assert user.password_hash.startswith("$argon2id$")
            user.password_hash = scrypt_hash("an old password")
            session.add(user)
            session.commit()
        old = api.request("POST", "/v1/auth/login", json={"username": "jo", "password": "an old password"})
        assert old.status_code == 200
        with Session(engine) as session:
            assert session.exec(select(User).where(User.username == "jo")).one().password_hash.startswith("$argon2id$")
    finally:
        engine.dispose()
    short = api.admin("POST", "/v1/users", json={"username": "kim", "password": "short"})
    assert short.status_code == 422 and "10-256 characters" in short.json()["detail"]
