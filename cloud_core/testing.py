"""Test helpers others need: run the real cloud API (uvicorn on a free port, in a thread) and talk to
it as different people. Used by the auth, matrix, schemathesis and classroom tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlmodel import Session, select

from iot_testing import wait_for

from .api import create_app
from .auth.models import ApiKey, User
from .auth.users import create_user
from .core.config import CloudSettings
from .core.db import make_engine
from .core.security import generate_token, hash_token

__all__ = ["RunningApi", "api_settings", "running_api"]


@dataclass
class RunningApi:
    url: str
    settings: CloudSettings
    admin_token: str
    app: Any
    # One client for every request: a new httpx client costs ~100 ms (it builds an SSL context).
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def request(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, self.url + path, headers=headers, **kw)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.request(method, path, token=self.admin_token, **kw)

    def add_user(self, username: str, password: str, *, role: str = "user", **fields: Any) -> int:
        """A user created through the API (as the admin); returns the id."""
        r = self.admin("POST", "/v1/users", json={"username": username, "password": password, "role": role, **fields})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def login(self, username: str, password: str) -> str:
        r = self.request("POST", "/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def key_for(self, username: str, *, role: str, devices: list[str] | None = None) -> str:
        """An API key written straight into the database (for principals the API would not mint)."""
        engine = make_engine(self.settings.db_url)
        try:
            with Session(engine) as session:
                user = session.exec(select(User).where(User.username == username)).first()
                if user is None:
                    user = create_user(session, actor="test", username=username, password=generate_token(), role=role)
                token = generate_token()
                assert user.id is not None
                session.add(ApiKey(token_hash=hash_token(token), user_id=user.id, role=role, device_ids=devices))
                session.commit()
                return token
        finally:
            engine.dispose()


def api_settings(broker: Any, topic_prefix: str, state_dir: Path, **overrides: Any) -> CloudSettings:
    """Settings for an API under test on a dynamic-security Mosquitto (``broker``: the
    ``mosquitto_dynsec`` fixture's server): its own service account and topic prefix, an in-memory
    cache, and password hashing cheap enough for tests that sign many people in (``overrides`` win)."""
    fields: dict[str, Any] = {
        "state_dir": state_dir,
        "mqtt_url": broker.url,
        "mqtt_username": f"svc-{topic_prefix}",
        "mqtt_admin_username": broker.admin_username,
        "mqtt_admin_password": broker.admin_password,
        "topic_prefix": topic_prefix,
        "cache_url": f"memory://{topic_prefix}",
        "password_time_cost": 1,
        "password_memory_kib": 8192,
    }
    return CloudSettings(**{**fields, **overrides})


@contextlib.contextmanager
def running_api(settings: CloudSettings, **app_kw: Any) -> Iterator[RunningApi]:
    """The real API app served by uvicorn on a free port until the block ends."""
    app = create_app(settings, **app_kw)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the API to start", timeout=60)
        assert server.started, "the API did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        token = (settings.state_dir / "admin.token").read_text().strip()
        running = RunningApi(f"http://127.0.0.1:{port}", settings, token, app)
        with running.client:
            yield running
    finally:
        server.should_exit = True
        thread.join(timeout=15)
