"""Alembic migrations of the metadata database (``env.py``, ``versions/``); run through
:mod:`cloud_core.core.migrate` (``iotctl db upgrade|current|downgrade``), never by ``alembic`` directly."""
