"""A device's books over REST: its loss ledger (``GET /v1/devices/{id}/ledger``: produced = stored +
rejected + buffered + dropped + quarantined + in flight, with the missing seq ranges) and its recent
dead letters with their reasons (``GET /v1/devices/{id}/dead-letters``). Both need ``read_data`` on
the device; the books are computed by :mod:`cloud_core.services.ledger`, as ``iotctl devices ledger``
computes them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ...auth.access import Principal
from ...services.deadletters import DeadLetterPublic, recent_dead_letters
from ...services.ledger import DeviceLedger, compute_ledger
from ..deps import P, SessionDep, require

router = APIRouter(prefix="/v1", tags=["devices"])

DataReader = Annotated[Principal, Depends(require(P.READ_DATA, device="device_id"))]


class LedgerPublic(BaseModel):
    """A device's books as of its last health message (docs/bridge.md, the loss ledger)."""

    device_id: str
    verdict: str = Field(description="no-health, balanced, in-flight, lost or excess.")
    balanced: bool
    has_health: bool
    produced: int
    stored: int
    rejected: int
    buffered: int
    dropped: int
    quarantined: int
    in_flight: int
    awaiting_receipt: int
    excess: int
    lost: int
    stored_batches: int
    stored_after: int
    last_seq: int
    missing: list[tuple[int, int]] = Field(description="Inclusive seq ranges up to last_seq with no stored batch.")
    health_at: int | None
    health_received_at: datetime | None

    @classmethod
    def of(cls, books: DeviceLedger) -> LedgerPublic:
        return cls(
            device_id=books.device_id, verdict=books.verdict, balanced=books.balanced, has_health=books.has_health,
            produced=books.produced, stored=books.stored, rejected=books.rejected, buffered=books.buffered,
            dropped=books.dropped, quarantined=books.quarantined, in_flight=books.in_flight,
            awaiting_receipt=books.awaiting_receipt, excess=books.excess, lost=books.lost,
            stored_batches=books.stored_batches, stored_after=books.stored_after, last_seq=books.last_seq,
            missing=[(a, b) for a, b in books.missing], health_at=books.health_at,
            health_received_at=books.health_received_at,
        )  # fmt: skip


@router.get("/devices/{device_id}/ledger", response_model=LedgerPublic)
def device_ledger(device_id: str, session: SessionDep, _p: DataReader) -> LedgerPublic:
    """The device's loss ledger: every reading it produced accounted for, and the missing seq ranges."""
    return LedgerPublic.of(compute_ledger(session, device_id))


@router.get("/devices/{device_id}/dead-letters", response_model=list[DeadLetterPublic])
def device_dead_letters(
    device_id: str, session: SessionDep, _p: DataReader, limit: Annotated[int, Query(gt=0, le=1000)] = 50
) -> list[DeadLetterPublic]:
    """The device's most recent rejections (whole messages or single readings), newest first, with reasons."""
    return recent_dead_letters(session, device_id=device_id, limit=limit)
