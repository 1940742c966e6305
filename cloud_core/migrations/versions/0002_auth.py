"""People on the platform: organisations, classes and members, group grants, API keys (replacing
api_tokens), refresh tokens, JWT signing keys, class usage and the append-only audit log; devices
gain an owner, a class and a share flag; users gain fleet access, the teacher flag, an organisation
and a broker account name.

Data carried forward: the roles from before map onto the seed's (admin -> admin; operator -> user
with write access to every device; viewer -> readonly with read access to every device); every API
token becomes an API key with its user's new role (the same secret keeps working); device
permission ``admin`` becomes ``write``; every user joins the organisation ``default``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]
_PG_TRIGGERS = [
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
]


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("target_type", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("target_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_actor_id"), ["actor_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_target_id"), ["target_id"], unique=False)

    op.create_table(
        "auth_signing_keys",
        sa.Column("kid", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("private_pem", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("public_pem", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("retired_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "organisations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "classes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("max_devices", sa.Integer(), nullable=True),
        sa.Column("max_devices_per_student", sa.Integer(), nullable=True),
        sa.Column("readings_per_s_per_device", sa.Float(), nullable=True),
        sa.Column("readings_per_s", sa.Float(), nullable=True),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organisations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "name"),
    )
    with op.batch_alter_table("classes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_classes_org_id"), ["org_id"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("device_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_token_hash"), ["token_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_api_keys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "class_members",
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("class_role", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("added_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("class_id", "user_id"),
    )
    with op.batch_alter_table("class_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_class_members_user_id"), ["user_id"], unique=False)

    op.create_table(
        "class_usage",
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.PrimaryKeyConstraint("class_id"),
    )
    op.create_table(
        "group_permissions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("user_id", "class_id"),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("family", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refresh_tokens_family"), ["family"], unique=False)
        batch_op.create_index(batch_op.f("ix_refresh_tokens_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("class_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shared_with_class", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f("ix_devices_class_id"), ["class_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_owner_id"), ["owner_id"], unique=False)
        batch_op.create_foreign_key("fk_devices_class_id_classes", "classes", ["class_id"], ["id"])
        batch_op.create_foreign_key("fk_devices_owner_id_users", "users", ["owner_id"], ["id"])

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fleet_access", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
        batch_op.add_column(sa.Column("is_teacher", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("org_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("mqtt_username", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
        batch_op.create_index(batch_op.f("ix_users_org_id"), ["org_id"], unique=False)
        batch_op.create_foreign_key("fk_users_org_id_organisations", "organisations", ["org_id"], ["id"])

    # ---- data --------------------------------------------------------------------------------------
    conn = op.get_bind()
    conn.execute(sa.text("INSERT INTO organisations (name, created_at) VALUES ('default', CURRENT_TIMESTAMP)"))
    org_id = conn.execute(sa.text("SELECT id FROM organisations WHERE name = 'default'")).scalar_one()
    conn.execute(sa.text("UPDATE users SET org_id = :org"), {"org": org_id})
    conn.execute(sa.text("UPDATE users SET role = 'user', fleet_access = 'write' WHERE role = 'operator'"))
    conn.execute(sa.text("UPDATE users SET role = 'readonly', fleet_access = 'read' WHERE role = 'viewer'"))
    conn.execute(
        sa.text(
            "UPDATE users SET role = 'readonly', fleet_access = 'read' "
            "WHERE role NOT IN ('admin', 'user', 'device', 'readonly')"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO api_keys (token_hash, prefix, user_id, name, role, created_at, last_used_at) "
            "SELECT t.token_hash, '', t.user_id, t.name, u.role, t.created_at, t.last_used_at "
            "FROM api_tokens t JOIN users u ON u.id = t.user_id"
        )
    )
    conn.execute(sa.text("UPDATE device_permissions SET permission = 'write' WHERE permission = 'admin'"))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))
    op.drop_table("api_tokens")
    for statement in _PG_TRIGGERS if conn.dialect.name == "postgresql" else _SQLITE_TRIGGERS:
        conn.execute(sa.text(statement))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log"))
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log"))
        conn.execute(sa.text("DROP FUNCTION IF EXISTS audit_log_append_only()"))
    else:
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_log_no_update"))
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.VARCHAR(length=64), nullable=False),
        sa.Column("user_id", sa.INTEGER(), nullable=False),
        sa.Column("name", sa.VARCHAR(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)
    conn.execute(
        sa.text(
            "INSERT INTO api_tokens (token_hash, user_id, name, created_at, last_used_at) "
            "SELECT token_hash, user_id, name, created_at, last_used_at FROM api_keys WHERE revoked_at IS NULL"
        )
    )
    conn.execute(sa.text("UPDATE users SET role = 'operator' WHERE role = 'user' AND fleet_access = 'write'"))
    conn.execute(sa.text("UPDATE users SET role = 'viewer' WHERE role NOT IN ('admin', 'operator')"))

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("fk_users_org_id_organisations", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_users_org_id"))
        batch_op.drop_column("mqtt_username")
        batch_op.drop_column("org_id")
        batch_op.drop_column("is_teacher")
        batch_op.drop_column("fleet_access")

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint("fk_devices_owner_id_users", type_="foreignkey")
        batch_op.drop_constraint("fk_devices_class_id_classes", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_devices_owner_id"))
        batch_op.drop_index(batch_op.f("ix_devices_class_id"))
        batch_op.drop_column("shared_with_class")
        batch_op.drop_column("class_id")
        batch_op.drop_column("owner_id")

    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_family"))

    op.drop_table("refresh_tokens")
    op.drop_table("group_permissions")
    op.drop_table("class_usage")
    with op.batch_alter_table("class_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_class_members_user_id"))

    op.drop_table("class_members")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_user_id"))
        batch_op.drop_index(batch_op.f("ix_api_keys_token_hash"))

    op.drop_table("api_keys")
    with op.batch_alter_table("classes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_classes_org_id"))

    op.drop_table("classes")
    op.drop_table("organisations")
    op.drop_table("auth_signing_keys")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_target_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_actor_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))

    op.drop_table("audit_log")
