"""Why an alert fired, for the people who get it: which fields drove the episode and by how much, the
normal range the reading left, and links to the readings around it.

An explanation is a JSON object built at the episode's peak reading and stored beside the episode
(``anomaly_explanations``):

- ``kind``: ``field`` (one field's streaming detector) or ``device`` (the multivariate model);
- ``summary``: one sentence;
- ``fields``: one entry per field, largest share first: ``field``, ``value``, ``contribution``
  (share of the score, 0..1), ``normal_low``/``normal_high`` (the range the reading left) and, for
  device models, ``expected`` (the value the model expected given the other fields);
- per kind: ``z`` (robust z-score against the rolling median), ``sigma`` (the rolling robust
  scale), ``novelty_margin`` (how far the value lay beyond the long-run envelope, in sigmas),
  ``step_z`` (a jump's step), ``stuck_run``; or ``score`` and ``model_version`` for devices.

Links (:func:`links`) are derived from the stored episode when it is shown, not stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import numpy as np

from .detectors import PointScore
from .multivariate import MultivariateModel

__all__ = ["CONTEXT_MS", "device_explanation", "field_explanation", "links"]

CONTEXT_MS = 3_600_000
"""The readings around an episode that its links show: this long before its start and after its end."""


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def field_explanation(field: str, value: float, point: PointScore, k: float) -> dict[str, Any]:
    """The explanation of a per-field episode at its peak reading (``point`` as the detector scored it;
    ``k``: the detector's z threshold)."""
    sigma = point.sigma
    median = value - point.z * sigma
    low, high = median - k * sigma, median + k * sigma
    detector = point.detector
    if detector == "stuck":
        why = f"{field} repeated {value:g} for {point.stuck_run} readings in a row, improbable for this series"
    elif detector == "jump":
        why = f"{field} jumped to {value:g} in one step (step z {point.step_z:+.1f})"
    else:
        why = f"{field} {value:g} left its normal range {low:.4g} to {high:.4g} (z {point.z:+.1f}"
        why += f", {point.margin:.1f} sigma beyond anything in its long-run history)" if point.margin > 0 else ")"
    return {
        "kind": "field",
        "detector": detector,
        "summary": why,
        "z": _r(point.z),
        "sigma": _r(sigma),
        "novelty_margin": _r(point.margin),
        "step_z": _r(point.step_z),
        "stuck_run": point.stuck_run,
        "score": _r(point.score),
        "fields": [
            {"field": field, "value": _r(value), "contribution": 1.0, "normal_low": _r(low), "normal_high": _r(high)}
        ],
    }


def device_explanation(model: MultivariateModel, x: np.ndarray, score: float) -> dict[str, Any]:
    """The explanation of a device episode at its peak reading ``x`` (fields in the model's order)."""
    parts = model.explain(x)
    top = [p for p in parts if p.contribution >= 0.1][:3] or parts[:1]
    said = "; ".join(
        f"{p.field} {p.value:.4g} (expected {p.expected:.4g} given the other fields, normal "
        f"{p.normal_low:.4g} to {p.normal_high:.4g}) {100 * p.contribution:.0f}%"
        for p in top
    )
    return {
        "kind": "device",
        "detector": model.meta.method,
        "summary": f"the fields broke their usual relation (score {score:.1f}): {said}",
        "score": _r(score),
        "model_version": model.meta.version,
        "fields": [
            {
                "field": p.field,
                "value": _r(p.value),
                "contribution": _r(p.contribution),
                "expected": _r(p.expected),
                "normal_low": _r(p.normal_low),
                "normal_high": _r(p.normal_high),
            }
            for p in parts
        ],
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def links(anomaly_id: int | None, device_id: str, field: str, start_ms: int, end_ms: int) -> dict[str, str]:
    """Where to see the readings around an episode: the API, the CLI, and the device's summary."""
    lo, hi = start_ms - CONTEXT_MS, end_ms + CONTEXT_MS
    fields = "" if field in ("", "*") else f" --field {field}"
    out = {
        "cli": f"iotctl query --device {device_id}{fields} --start {_iso(lo)} --end {_iso(hi)} --resolution raw",
        "summary": "/v1/analytics/summary?" + urlencode({"device_id": device_id, "hours": 24}),
    }
    if anomaly_id is not None:
        out["readings"] = f"/v1/analytics/anomalies/{anomaly_id}/readings"
    return out
