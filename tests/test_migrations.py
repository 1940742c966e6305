"""Schema migrations on real PostgreSQL and SQLite: a database holding devices, configs, ledger rows,
dead letters, anomalies, users, API tokens and grants at the first revision is carried to head without
loss (roles and tokens mapped onto the seed's), down and up again; a database from before migrations
is adopted; a schema newer than the code is refused by every entry point; models and migrations agree;
the audit log is append-only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Integer, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel

from broker_bridge import Bridge, BridgeSettings, ConfigError
from cloud_core.auth.credentials import authenticate_key
from cloud_core.core import migrate
from cloud_core.core.db import create_all, make_engine, register_models
from cloud_core.core.security import hash_password, hash_token

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TOKENS = {"ada": "token-of-ada-0123456789", "otto": "token-of-otto-0123456789", "vic": "token-of-vic-0123456789"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


def _at(engine: Engine, revision: str) -> None:
    with engine.connect() as conn:
        command.upgrade(migrate._config(conn), revision)
        conn.commit()


def _fill_first_revision(engine: Engine) -> None:
    """Rows as the code before migrations wrote them (revision 0001's tables)."""
    rows: list[tuple[str, dict[str, object]]] = []
    for i, (name, role) in enumerate((("ada", "admin"), ("otto", "operator"), ("vic", "viewer")), start=1):
        rows.append(
            (
                "INSERT INTO users (id, username, password_hash, role, is_active, created_at) "
                "VALUES (:id, :u, :h, :r, :a, :t)",
                {"id": i, "u": name, "h": hash_password("old scrypt password"), "r": role, "a": True, "t": NOW},
            )
        )
        rows.append(
            (
                "INSERT INTO api_tokens (token_hash, user_id, name, created_at) VALUES (:h, :u, 'cli', :t)",
                {"h": hash_token(TOKENS[name]), "u": i, "t": NOW},
            )
        )
    for d in ("dev-a", "dev-b"):
        rows.append(
            (
                "INSERT INTO devices (id, device_type, location, status, public_key, key_version, created_at, "
                "desired_config_version, reported_config_version, health) VALUES "
                "(:id, 'environment', 'lab', 'active', 'pk', 2, :t, 3, 3, :health)",
                {"id": d, "t": NOW, "health": '{"battery": 90}'},
            )
        )
        for v in (1, 2, 3):
            rows.append(
                (
                    "INSERT INTO device_configs (device_id, version, settings, token, created_at) "
                    "VALUES (:d, :v, :s, 'jws', :t)",
                    {"d": d, "v": v, "s": f'{{"sampling_interval_s": {v}}}', "t": NOW},
                )
            )
        for seq in range(1, 6):
            rows.append(
                (
                    "INSERT INTO batch_ledger (device_id, seq, batch_id, payload_sha256, readings, "
                    "rejected_readings, stored_at, key_id) VALUES (:d, :s, :b, 'h', 50, 0, :t, 'k1')",
                    {"d": d, "s": seq, "b": f"b{seq}", "t": NOW},
                )
            )
    rows += [
        (
            "INSERT INTO enrollment_tokens (token_hash, device_id, created_at, expires_at) "
            "VALUES ('e1', 'dev-a', :t, :t)",
            {"t": NOW},
        ),
        ("INSERT INTO device_permissions (user_id, device_id, permission) VALUES (3, 'dev-a', 'admin')", {}),
        (
            "INSERT INTO rejected_messages (device_id, topic, reason, received_at, payload_sha256) "
            "VALUES ('dev-a', 't', 'bad_signature', :t, 'h')",
            {"t": NOW},
        ),
        (
            "INSERT INTO anomalies (device_id, field, sensor_type, detector, status, start_ms, end_ms, peak_ms, "
            "peak_score, count, \"values\", created_at) VALUES ('dev-a', 'temperature', 'env', 'robust_z', 'closed', "
            "1, 2, 2, 3.5, 2, '[1.0, 2.0]', :t)",
            {"t": NOW},
        ),
    ]
    with engine.begin() as conn:
        for sql, params in rows:
            conn.execute(text(sql), params)


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in (
                "devices",
                "device_configs",
                "batch_ledger",
                "enrollment_tokens",
                "rejected_messages",
                "anomalies",
                "users",
                "device_permissions",
            )
        }


def test_first_revision_to_head_keeps_every_row_and_maps_roles_and_tokens(engine: Engine) -> None:
    _at(engine, migrate.FIRST_REVISION)
    _fill_first_revision(engine)
    before = _counts(engine)
    assert before["batch_ledger"] == 10 and before["device_configs"] == 6

    state = migrate.upgrade(engine)
    assert state.at_head and state.current == migrate.head_revision() != migrate.FIRST_REVISION
    assert _counts(engine) == before
    with engine.connect() as conn:
        users = conn.execute(text("SELECT username, role, fleet_access, org_id FROM users ORDER BY id")).all()
        assert [tuple(u[:3]) for u in users] == [
            ("ada", "admin", None),
            ("otto", "user", "write"),
            ("vic", "readonly", "read"),
        ]
        assert all(u[3] is not None for u in users)
        assert conn.execute(text("SELECT permission FROM device_permissions")).scalar_one() == "write"
        ledger = conn.execute(text("SELECT sum(readings), min(key_id) FROM batch_ledger")).one()
        assert (int(ledger[0]), ledger[1]) == (500, "k1")
        cfg = conn.execute(text("SELECT settings FROM device_configs WHERE device_id='dev-b' AND version=3"))
        value = cfg.scalar_one()
        assert (value if isinstance(value, dict) else json.loads(value)) == {"sampling_interval_s": 3}
        dev = conn.execute(
            text("SELECT owner_id, class_id, shared_with_class, key_version FROM devices WHERE id='dev-a'")
        )
        assert tuple(dev.one()) == (None, None, False, 2)
    # The same secrets still sign in, now as API keys with the new roles and reach.
    with Session(engine) as session:
        for name, role, fleet in (("ada", "admin", None), ("otto", "user", "write"), ("vic", "readonly", "read")):
            p = authenticate_key(session, TOKENS[name])
            assert (p.username, p.role, p.fleet_access) == (name, role, fleet)

    # Epoch milliseconds fit the anomaly times now (PostgreSQL's INTEGER is 32-bit: revision 0003).
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO anomalies (device_id, field, sensor_type, detector, status, start_ms, end_ms, peak_ms, "
                "peak_score, count, \"values\", created_at) VALUES ('dev-b', 'temperature', 'env', 'stuck', 'open', "
                ":ms, :ms, :ms, 1.5, 1, '[]', :t)"
            ),
            {"ms": 1_767_225_600_000, "t": NOW},
        )
        conn.execute(text("DELETE FROM anomalies WHERE device_id = 'dev-b'"))

    # Down to the first revision and up again: still nothing lost, tokens back as they were.
    migrate.downgrade(engine, migrate.FIRST_REVISION)
    assert _counts(engine) == before
    with engine.connect() as conn:
        roles = conn.execute(text("SELECT role FROM users ORDER BY id")).scalars().all()
        assert roles == ["admin", "operator", "viewer"]
        assert conn.execute(text("SELECT count(*) FROM api_tokens")).scalar_one() == 3
    migrate.upgrade(engine)
    assert _counts(engine) == before


def test_a_database_from_before_migrations_is_adopted_and_carried_forward(engine: Engine) -> None:
    _at(engine, migrate.FIRST_REVISION)
    _fill_first_revision(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    assert migrate.schema_state(engine).legacy
    before = _counts(engine)
    create_all(engine)  # what every service runs at start
    state = migrate.schema_state(engine)
    assert state.at_head and not state.legacy
    assert _counts(engine) == before


def test_a_schema_newer_than_the_code_is_refused_everywhere(engine: Engine, tmp_path: Path) -> None:
    create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(migrate.SchemaTooNew, match="f00d"):
        create_all(engine)
    with pytest.raises(migrate.SchemaTooNew):
        migrate.upgrade(engine)
    # The bridge refuses at start with its config error (one line), instead of running against it.
    url = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    settings = BridgeSettings(
        mqtt_url="mqtt://127.0.0.1:9", db_url=url, tsdb_url=f"sqlite:///{tmp_path / 'r.db'}", metrics_port=None
    )
    with pytest.raises(ConfigError, match="f00d"):
        Bridge(settings).start()
    # The CLI: one line, non-zero, for db current/upgrade and the API.
    for args in (["db", "current"], ["db", "upgrade"], ["api"]):
        env = {"EDU_DB_URL": url, "IOTCTL_DB": url, "PATH": "/usr/bin:/bin", "EDU_STATE_DIR": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-m", "iotctl", *args], capture_output=True, text=True, env=env, timeout=120
        )
        if args == ["db", "current"]:
            assert out.returncode == 0 and "UNKNOWN" in out.stdout, out
            continue
        assert out.returncode != 0 and "Traceback" not in out.stderr, out
        last = out.stderr.strip().splitlines()[-1]  # before it: JSON log lines only
        assert last.startswith("error: ") and "f00d" in last, out.stderr


def _iotctl_db(engine: Engine, tmp_path: Path, *args: str) -> str:
    """``iotctl db ARGS`` as an operator runs it; its one line of output."""
    url = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    env = {"IOTCTL_DB": url, "PATH": "/usr/bin:/bin", "EDU_STATE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "iotctl", "db", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out
    return out.stdout.strip()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


ROLLOUT_TABLES = {
    "anomaly_explanations",
    "anomaly_feedback",
    "device_tags",
    "engine_leases",
    "firmware_events",
    "releases",
    "rollout_devices",
    "rollout_events",
    "rollout_locks",
    "rollouts",
}


def test_revision_0005_keeps_the_tables_services_created_directly_and_the_cli_walks_it(
    engine: Engine, tmp_path: Path
) -> None:
    """Services before revision 0005 created the rollout and anomaly-feedback tables themselves
    (no revision had them): the upgrade keeps those tables and their rows, adds what is missing
    (here one table and one index), widens ``releases.size`` to BIGINT (a 2 GiB release overflowed
    PostgreSQL's INTEGER), and ``iotctl db downgrade`` / ``upgrade`` take them away and back."""
    _at(engine, "0004")
    register_models()
    with engine.begin() as conn:
        SQLModel.metadata.create_all(conn)  # what migrate._create_unmigrated did at 0004
        conn.execute(text("DROP TABLE anomaly_feedback"))
        conn.execute(text("DROP INDEX ix_rollouts_status"))
        with Operations.context(MigrationContext.configure(conn)) as op, op.batch_alter_table("releases") as batch:
            batch.alter_column("size", existing_type=BigInteger(), type_=Integer(), existing_nullable=False)
        conn.execute(
            text(
                "INSERT INTO devices (id, device_type, location, status, key_version, created_at, "
                "desired_config_version, reported_config_version, shared_with_class) "
                "VALUES ('dev-a', 'environment', 'lab', 'active', 0, :t, 0, 0, :f)"
            ),
            {"t": NOW, "f": False},
        )
        conn.execute(text("INSERT INTO device_tags (device_id, tag) VALUES ('dev-a', 'pilot')"))
        conn.execute(
            text(
                "INSERT INTO releases (version, size, sha256, device_types, notes, manifest, status, created_at) "
                "VALUES ('1.2.0', 3, 'h', '[]', '', 'jws', 'ready', :t)"
            ),
            {"t": NOW},
        )
    assert "schema revision 0004 (newest is" in _iotctl_db(engine, tmp_path, "current")

    assert _iotctl_db(engine, tmp_path, "upgrade").endswith(f"schema revision {migrate.head_revision()} (newest)")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT device_id, tag FROM device_tags")).one() == ("dev-a", "pilot")
        assert conn.execute(text("SELECT version FROM releases")).scalar_one() == "1.2.0"
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("rollouts")}
        assert "ix_rollouts_status" in indexes
        conn.execute(text("UPDATE releases SET size = :s"), {"s": 2**31})  # iot_protocol's MAX_ARTIFACT_BYTES
        assert conn.execute(text("SELECT size FROM releases")).scalar_one() == 2**31
        conn.rollback()
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == []

    head = migrate.head_revision()
    assert _iotctl_db(engine, tmp_path, "downgrade", "0004").endswith(f"schema revision 0004 (newest is {head})")
    assert not _tables(engine) & ROLLOUT_TABLES
    assert "devices" in _tables(engine)
    assert "schema revision 0005 (" in _iotctl_db(engine, tmp_path, "upgrade", "0005")
    assert _tables(engine) >= ROLLOUT_TABLES


def test_models_and_migrations_agree(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A model changed without a migration (or the other way round) fails here: write the revision.

    The revisions alone are compared with the models: ``migrate.upgrade`` also creates the tables
    no revision has yet (so a service keeps running), which hid exactly that drift from this test."""
    _at(engine, "head")
    register_models()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == [], "models and migrations differ (write the revision):\n" + "\n".join(map(str, diff))
    # What a service runs at start finds nothing left to create outside the migrations.
    with caplog.at_level("WARNING", logger="cloud_core.core.migrate"):
        create_all(engine)
    assert "without a migration" not in caplog.text


def test_the_audit_log_is_append_only(engine: Engine) -> None:
    create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_log (at, actor, action, target_type, target_id) "
                "VALUES (:t, 'ada', 'device.register', 'device', 'dev-a')"
            ),
            {"t": NOW},
        )
    for sql in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT actor FROM audit_log")).scalars().all() == ["ada"]
