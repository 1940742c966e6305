"""``iotctl up`` on a fresh state directory, then on the same one again, and on one whose metadata
database predates migrations (tables, no revision, an old-style admin token): every start migrates what
it finds, the old admin token keeps working (the simulated fleet enrolls with it), and readings flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from cloud_core.core import migrate
from cloud_core.core.db import make_engine
from cloud_core.core.security import hash_password, hash_token
from iot_testing import wait_for
from iotctl.platform import Platform, PlatformSettings

pytestmark = pytest.mark.integration


def _run_once(state: Path) -> int:
    settings = PlatformSettings(
        state_dir=state, devices=1, sampling_interval_s=0.3, mqtt_port=0, api_port=0, bridge_metrics_port=0,
        drain_timeout_s=10,
    )  # fmt: skip
    with Platform(settings) as platform:
        wait_for(lambda: platform.stats().readings_stored > 0, "readings stored", timeout=60)
        return platform.stats().readings_stored


def _legacy_state_dir(state: Path) -> str:
    """A state dir as the code before migrations left it: revision 0001's tables, no alembic_version,
    an admin with a role from then and its API token in admin.token."""
    state.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{state / 'meta.db'}")
    with engine.connect() as conn:
        command.upgrade(migrate._config(conn), migrate.FIRST_REVISION)
        conn.commit()
    token = "legacy-admin-token-0123456789"
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text("INSERT INTO users (id, username, password_hash, role, is_active, created_at) "
                 "VALUES (1, 'admin', :h, 'admin', 1, CURRENT_TIMESTAMP)"),
            {"h": hash_password("whatever it was")},
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO api_tokens (token_hash, user_id, name, created_at) "
                 "VALUES (:h, 1, 'bootstrap', CURRENT_TIMESTAMP)"),
            {"h": hash_token(token)},
        )  # fmt: skip
    engine.dispose()
    (state / "admin.token").write_text(token + "\n")
    return token


def test_up_on_a_fresh_state_dir_then_again_on_the_same(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _run_once(state) > 0
    assert migrate.schema_state(make_engine(f"sqlite:///{state / 'meta.db'}")).at_head
    assert _run_once(state) > 0


def test_up_on_a_state_dir_from_before_migrations(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = _legacy_state_dir(state)
    assert _run_once(state) > 0
    engine = make_engine(f"sqlite:///{state / 'meta.db'}")
    try:
        assert migrate.schema_state(engine).at_head
        with engine.connect() as conn:
            key = conn.execute(text("SELECT role FROM api_keys WHERE token_hash = :h"), {"h": hash_token(token)})
            assert key.scalar_one() == "admin"
    finally:
        engine.dispose()
    assert (state / "admin.token").read_text().strip() == token
