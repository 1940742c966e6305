"""Anomaly times as BIGINT: epoch milliseconds (about 1.7e12) do not fit PostgreSQL's 32-bit INTEGER,
so the first anomaly an analytics worker recorded against PostgreSQL failed with "integer out of
range" (SQLite's INTEGER is 64-bit already; the change is a no-op in effect there).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ("start_ms", "end_ms", "peak_ms")


def upgrade() -> None:
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.alter_column(name, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.alter_column(name, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
