"""The analytics tables: ``anomalies`` (one row per anomalous episode of one device's field, or of
the device as a whole: field ``*``; open while the episode lasts, closed with its end, peak score
and values), ``anomaly_explanations`` (why it fired, :mod:`.explain`) and ``anomaly_feedback``
(a person's verdict: a true or a false alarm).

The explanation and the feedback are tables of their own, keyed by the episode, so that adding them
(revision 0005) added no column to ``anomalies``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from ..models import utcnow

__all__ = ["DEVICE_FIELD", "TABLES", "Anomaly", "AnomalyExplanation", "AnomalyFeedback", "AnomalyPublic"]

DEVICE_FIELD = "*"
"""The ``field`` of an episode of the multivariate model: the device's fields together."""


class AnomalyPublic(SQLModel):
    id: int | None = None
    device_id: str = Field(max_length=64, index=True)
    field: str = Field(
        max_length=64, description="Reading field, e.g. 'temperature'; '*' for the device's fields together."
    )
    sensor_type: str = Field(default="", max_length=64)
    detector: str = Field(max_length=32, description="robust_z | jump | stuck | forest | pca (device model)")
    status: str = Field(default="open", max_length=8, index=True, description="open | closed")
    # BIGINT: epoch milliseconds do not fit PostgreSQL's 32-bit INTEGER (migration 0003).
    start_ms: int = Field(
        index=True, sa_type=BigInteger, description="First anomalous reading (ms since the epoch, UTC)."
    )
    end_ms: int = Field(sa_type=BigInteger, description="Last anomalous reading so far (ms).")
    peak_ms: int = Field(sa_type=BigInteger)
    peak_score: float = Field(description="Highest score in the episode; >= 1 is over the threshold.")
    count: int = Field(default=1, description="Anomalous readings in the episode.")
    values: list[float] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False),
        description="The first values of the episode (for a device episode: its scores).",
    )


class Anomaly(AnomalyPublic, table=True):
    __tablename__ = "anomalies"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)

    def to_public(self) -> dict[str, Any]:
        return AnomalyPublic.model_validate(self).model_dump()


class AnomalyExplanation(SQLModel, table=True):
    """Why an episode fired, at its peak reading (see :mod:`.explain` for the object's keys)."""

    __tablename__ = "anomaly_explanations"

    anomaly_id: int = Field(foreign_key="anomalies.id", primary_key=True)
    explanation: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AnomalyFeedback(SQLModel, table=True):
    """A person's verdict on an episode; labelling again replaces it."""

    __tablename__ = "anomaly_feedback"

    anomaly_id: int = Field(foreign_key="anomalies.id", primary_key=True)
    true_alarm: bool = Field(description="True: a real problem; False: a false alarm.")
    note: str = Field(default="", max_length=500)
    source: str = Field(default="", max_length=16, description="Where the label came from: api | cli.")
    labelled_at: datetime = Field(default_factory=utcnow)


TABLES = [Anomaly.__table__, AnomalyExplanation.__table__, AnomalyFeedback.__table__]  # type: ignore[attr-defined]
"""The analytics tables, for ``SQLModel.metadata.create_all(engine, tables=TABLES)``."""
