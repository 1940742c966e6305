"""Alembic environment: runs on the connection :mod:`cloud_core.core.migrate` hands over in
``config.attributes["connection"]`` (never opens its own), with batch mode so SQLite can alter tables."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from cloud_core.core.db import register_models

register_models()
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
