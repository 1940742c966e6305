"""Anomaly episodes as people see them, and their verdicts: one episode with its explanation,
links and label (:func:`anomaly_detail`), labelling it a true or a false alarm
(:func:`label_anomaly`), and the precision those labels give per device type
(:func:`feedback_precision`, ``iotctl anomalies evaluate --from-feedback``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from ..models import Device, utcnow
from .errors import AnomalyNotFound
from .explain import links
from .models import Anomaly, AnomalyExplanation, AnomalyFeedback

__all__ = ["PrecisionRow", "anomaly_detail", "feedback_precision", "label_anomaly"]


def anomaly_detail(session: Session, *, anomaly_id: int) -> dict[str, Any]:
    """The episode, its explanation (``{}`` when it has none), links to its readings and its label.

    Raises:
        AnomalyNotFound: no episode has this id.
    """
    row = session.get(Anomaly, anomaly_id)
    if row is None:
        raise AnomalyNotFound(anomaly_id)
    expl = session.get(AnomalyExplanation, anomaly_id)
    fb = session.get(AnomalyFeedback, anomaly_id)
    verdict = None
    if fb is not None:
        verdict = {"true_alarm": fb.true_alarm, "note": fb.note, "source": fb.source}
        verdict["labelled_at"] = fb.labelled_at.isoformat()
    return {
        **row.to_public(),
        "explanation": dict(expl.explanation) if expl is not None else {},
        "links": links(row.id, row.device_id, row.field, row.start_ms, row.end_ms),
        "feedback": verdict,
    }


def label_anomaly(
    session: Session, *, anomaly_id: int, true_alarm: bool, note: str = "", source: str = ""
) -> AnomalyFeedback:
    """Store a verdict on an episode (replacing an earlier one) and commit.

    Raises:
        AnomalyNotFound: no episode has this id.
    """
    if session.get(Anomaly, anomaly_id) is None:
        raise AnomalyNotFound(anomaly_id)
    fb = session.get(AnomalyFeedback, anomaly_id)
    if fb is None:
        fb = AnomalyFeedback(anomaly_id=anomaly_id, true_alarm=true_alarm)
    fb.true_alarm, fb.note, fb.source, fb.labelled_at = true_alarm, note[:500], source[:16], utcnow()
    session.add(fb)
    session.commit()
    session.refresh(fb)
    return fb


@dataclass(frozen=True, slots=True)
class PrecisionRow:
    """Labelled episodes of one device type (the registry's ``device_type``; the reading's
    ``sensor_type`` for a device not registered) and the precision they give."""

    device_type: str
    episodes: int  # every stored episode of this type
    labelled: int
    true_alarms: int
    false_alarms: int

    @property
    def precision(self) -> float | None:
        return self.true_alarms / self.labelled if self.labelled else None


def feedback_precision(
    session: Session, *, since_ms: int | None = None, device_ids: set[str] | None = None
) -> list[PrecisionRow]:
    """Precision of the alerts people labelled, per device type (sorted), episodes starting at or
    after ``since_ms`` (all when None), of the devices ``device_ids`` (every device when None)."""
    stmt = select(Anomaly, AnomalyFeedback, Device).join(
        AnomalyFeedback, col(AnomalyFeedback.anomaly_id) == col(Anomaly.id), isouter=True
    ).join(Device, col(Device.id) == col(Anomaly.device_id), isouter=True)
    if since_ms is not None:
        stmt = stmt.where(col(Anomaly.start_ms) >= since_ms)
    if device_ids is not None:
        stmt = stmt.where(col(Anomaly.device_id).in_(device_ids))
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for anomaly, fb, device in session.exec(stmt):
        kind = device.device_type if device is not None else (anomaly.sensor_type or "unknown")
        a = acc[kind]
        a[0] += 1
        if fb is not None:
            a[1] += 1
            a[2 if fb.true_alarm else 3] += 1
    return [PrecisionRow(k, *v) for k, v in sorted(acc.items())]
