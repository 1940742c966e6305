"""The initial schema: the metadata tables exactly as ``SQLModel.metadata.create_all`` made them
before migrations existed (devices, enrollment tokens, configs, users, API tokens, device
permissions, dead letters, the batch ledger, anomalies). Databases created then are stamped with
this revision (:func:`cloud_core.core.migrate.ensure_schema`).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "anomalies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("field", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("sensor_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("detector", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("start_ms", sa.Integer(), nullable=False),
        sa.Column("end_ms", sa.Integer(), nullable=False),
        sa.Column("peak_ms", sa.Integer(), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_anomalies_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_anomalies_start_ms"), ["start_ms"], unique=False)
        batch_op.create_index(batch_op.f("ix_anomalies_status"), ["status"], unique=False)

    op.create_table(
        "batch_ledger",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("payload_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("rejected_readings", sa.Integer(), nullable=False),
        sa.Column("stored_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.PrimaryKeyConstraint("device_id", "seq"),
    )
    op.create_table(
        "devices",
        sa.Column("device_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("location", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("public_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("mqtt_username", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("firmware", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("enrolled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_seen", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("presence", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("presence_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_health_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("health", sa.JSON(), nullable=True),
        sa.Column("desired_config_version", sa.Integer(), nullable=False),
        sa.Column("reported_config_version", sa.Integer(), nullable=False),
        sa.Column("reported_config_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("reported_config_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_last_seen"), ["last_seen"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_status"), ["status"], unique=False)

    op.create_table(
        "rejected_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("topic", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("reading_index", sa.Integer(), nullable=True),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("payload_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rejected_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rejected_messages_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rejected_messages_reason"), ["reason"], unique=False)
        batch_op.create_index(batch_op.f("ix_rejected_messages_received_at"), ["received_at"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_username"), ["username"], unique=True)

    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "device_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "version"),
    )
    with op.batch_alter_table("device_configs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_configs_device_id"), ["device_id"], unique=False)

    op.create_table(
        "device_permissions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("user_id", "device_id"),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_enrollment_tokens_device_id"), ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_tokens_device_id"))

    op.drop_table("enrollment_tokens")
    op.drop_table("device_permissions")
    with op.batch_alter_table("device_configs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_configs_device_id"))

    op.drop_table("device_configs")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))

    op.drop_table("api_tokens")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_username"))

    op.drop_table("users")
    with op.batch_alter_table("rejected_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rejected_messages_received_at"))
        batch_op.drop_index(batch_op.f("ix_rejected_messages_reason"))
        batch_op.drop_index(batch_op.f("ix_rejected_messages_device_id"))

    op.drop_table("rejected_messages")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_status"))
        batch_op.drop_index(batch_op.f("ix_devices_last_seen"))

    op.drop_table("devices")
    op.drop_table("batch_ledger")
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomalies_status"))
        batch_op.drop_index(batch_op.f("ix_anomalies_start_ms"))
        batch_op.drop_index(batch_op.f("ix_anomalies_device_id"))

    op.drop_table("anomalies")
