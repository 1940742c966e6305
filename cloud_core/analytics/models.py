"""The ``anomalies`` table: one row per anomalous episode of one device's field (open while the
episode lasts, closed with its end, peak score and values)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from ..models import utcnow

__all__ = ["Anomaly", "AnomalyPublic"]


class AnomalyPublic(SQLModel):
    id: int | None = None
    device_id: str = Field(max_length=64, index=True)
    field: str = Field(max_length=64, description="Reading field, e.g. 'temperature'.")
    sensor_type: str = Field(default="", max_length=64)
    detector: str = Field(max_length=32, description="robust_z | stuck | forest")
    status: str = Field(default="open", max_length=8, index=True, description="open | closed")
    # BIGINT: milliseconds since the epoch overflow PostgreSQL's 32-bit INTEGER (every insert failed)
    start_ms: int = Field(
        index=True, sa_type=BigInteger, description="First anomalous reading (ms since the epoch, UTC)."
    )
    end_ms: int = Field(sa_type=BigInteger, description="Last anomalous reading so far (ms).")
    peak_ms: int = Field(sa_type=BigInteger)
    peak_score: float = Field(description="Highest score in the episode; >= 1 is over the threshold.")
    count: int = Field(default=1, description="Anomalous readings in the episode.")
    values: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Anomaly(AnomalyPublic, table=True):
    __tablename__ = "anomalies"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)

    def to_public(self) -> dict[str, Any]:
        return AnomalyPublic.model_validate(self).model_dump()
