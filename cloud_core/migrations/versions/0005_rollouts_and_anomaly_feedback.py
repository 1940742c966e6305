"""Rollouts and firmware releases (issue 17) and anomaly explanations and feedback (issue 19):
``rollouts``, ``rollout_devices``, ``rollout_events``, ``rollout_locks``, ``releases``,
``firmware_events``, ``engine_leases``, ``device_tags``, ``anomaly_explanations`` and
``anomaly_feedback``, with their indexes. ``releases.size`` is BIGINT: a manifest may claim 2 GiB
(2^31 bytes), one more than PostgreSQL's INTEGER holds.

Services of the releases that added these models created the tables themselves at start
(``cloud_core.core.migrate._create_unmigrated``, logged as "tables without a migration were created
directly"), so each table and each index is created only when missing, and a ``releases.size``
created as INTEGER then becomes BIGINT; tables found are kept with their rows.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem
from sqlmodel.sql.sqltypes import AutoString as _String
from sqlmodel.sql.sqltypes import UTCDateTime as _Time

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _rollouts() -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _String(length=128), nullable=False),
        sa.Column("kind", _String(length=16), nullable=False),
        sa.Column("status", _String(length=16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("release_version", _String(length=32), nullable=True),
        sa.Column("max_bytes_per_s", sa.Integer(), nullable=True),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("canary_percent", sa.Float(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("wave_wait_s", sa.Float(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("offline_policy", _String(length=16), nullable=False),
        sa.Column("device_deadline_s", sa.Float(), nullable=False),
        sa.Column("seed", _String(length=64), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", _Time(), nullable=True),
        sa.Column("created_at", _Time(), nullable=False),
        sa.Column("updated_at", _Time(), nullable=False),
        sa.Column("finished_at", _Time(), nullable=True),
        sa.Column("created_by", _String(length=128), nullable=True),
        sa.Column("abort_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    ]


def _rollout_devices() -> list[SchemaItem]:
    return [
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", _String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("state", _String(length=16), nullable=False),
        sa.Column("online_at_start", sa.Boolean(), nullable=False),
        sa.Column("previous_settings", sa.JSON(), nullable=True),
        sa.Column("previous_config_version", sa.Integer(), nullable=True),
        sa.Column("previous_firmware", _String(length=32), nullable=True),
        sa.Column("target_config_version", sa.Integer(), nullable=True),
        sa.Column("rollback_config_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", _Time(), nullable=True),
        sa.Column("state_at", _Time(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    ]


def _rollout_events() -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("device_id", _String(length=64), nullable=True),
        sa.Column("at", _Time(), nullable=False),
        sa.Column("kind", _String(length=32), nullable=False),
        sa.Column("actor", _String(length=128), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    ]


def _rollout_locks() -> list[SchemaItem]:
    return [
        sa.Column("device_id", _String(length=64), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    ]


def _releases() -> list[SchemaItem]:
    return [
        sa.Column("version", _String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", _String(length=64), nullable=False),
        sa.Column("device_types", sa.JSON(), nullable=False),
        sa.Column("min_version", _String(length=32), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("status", _String(length=24), nullable=False),
        sa.Column("artifact_key", _String(length=256), nullable=True),
        sa.Column("created_at", _Time(), nullable=False),
        sa.Column("created_by", _String(length=128), nullable=True),
        sa.Column("uploaded_at", _Time(), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    ]


def _firmware_events() -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", _String(length=64), nullable=False),
        sa.Column("version", _String(length=32), nullable=False),
        sa.Column("state", _String(length=16), nullable=False),
        sa.Column("running", _String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("at", _Time(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    ]


def _engine_leases() -> list[SchemaItem]:
    return [
        sa.Column("name", _String(length=64), nullable=False),
        sa.Column("holder", _String(length=128), nullable=False),
        sa.Column("expires_at", _Time(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("acquired_at", _Time(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    ]


def _device_tags() -> list[SchemaItem]:
    return [
        sa.Column("device_id", _String(length=64), nullable=False),
        sa.Column("tag", _String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("device_id", "tag"),
    ]


def _anomaly_explanations() -> list[SchemaItem]:
    return [
        sa.Column("anomaly_id", sa.Integer(), nullable=False),
        sa.Column("explanation", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["anomaly_id"], ["anomalies.id"]),
        sa.PrimaryKeyConstraint("anomaly_id"),
    ]


def _anomaly_feedback() -> list[SchemaItem]:
    return [
        sa.Column("anomaly_id", sa.Integer(), nullable=False),
        sa.Column("true_alarm", sa.Boolean(), nullable=False),
        sa.Column("note", _String(length=500), nullable=False),
        sa.Column("source", _String(length=16), nullable=False),
        sa.Column("labelled_at", _Time(), nullable=False),
        sa.ForeignKeyConstraint(["anomaly_id"], ["anomalies.id"]),
        sa.PrimaryKeyConstraint("anomaly_id"),
    ]


# Parents before the tables that point at them; each table with its (non-unique) indexes by column.
_TABLES: list[tuple[str, Callable[[], list[SchemaItem]], tuple[str, ...]]] = [
    ("rollouts", _rollouts, ("status",)),
    ("rollout_devices", _rollout_devices, ("device_id", "state")),
    ("rollout_events", _rollout_events, ("at", "device_id", "rollout_id")),
    ("rollout_locks", _rollout_locks, ("rollout_id",)),
    ("releases", _releases, ()),
    ("firmware_events", _firmware_events, ("at", "device_id")),
    ("engine_leases", _engine_leases, ()),
    ("device_tags", _device_tags, ("tag",)),
    ("anomaly_explanations", _anomaly_explanations, ()),
    ("anomaly_feedback", _anomaly_feedback, ()),
]


# Columns the first services created as INTEGER (before the model said BIGINT).
_BIGINT = {"releases": ("size",)}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = set(inspector.get_table_names())
    for table, columns, indexed in _TABLES:
        if table not in have:
            op.create_table(table, *columns())
            indexes: set[str | None] = set()
        else:
            indexes = {ix["name"] for ix in inspector.get_indexes(table)}
            types = {c["name"]: c["type"] for c in inspector.get_columns(table)}
            narrow = [c for c in _BIGINT.get(table, ()) if not isinstance(types[c], sa.BigInteger)]
            if narrow:
                with op.batch_alter_table(table, schema=None) as batch_op:
                    for column in narrow:
                        batch_op.alter_column(
                            column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
                        )
        missing = [column for column in indexed if f"ix_{table}_{column}" not in indexes]
        if missing:
            with op.batch_alter_table(table, schema=None) as batch_op:
                for column in missing:
                    batch_op.create_index(f"ix_{table}_{column}", [column], unique=False)


def downgrade() -> None:
    for table, _, _ in reversed(_TABLES):
        op.drop_table(table)  # its indexes go with it
