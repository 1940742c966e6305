"""The ledger remembers what each batch's device was told: ``batch_ledger.reason`` (a final rejection,
NULL when stored) and ``rejections`` (its rejected readings as JSON ``[[index, reason], ...]``), so a
byte-identical resend is receipted exactly as the first time (docs/protocol.md, "Receipts").

Bridges of the release that added the columns created them themselves at start
(``broker_bridge.ledger.ensure_ledger_schema``), so each column is added only when missing.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = (("reason", sa.String(length=64)), ("rejections", sa.String()))


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("batch_ledger")}
    with op.batch_alter_table("batch_ledger", schema=None) as batch_op:
        for name, kind in _COLUMNS:
            if name not in have:
                batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_ledger", schema=None) as batch_op:
        for name, _ in reversed(_COLUMNS):
            batch_op.drop_column(name)
