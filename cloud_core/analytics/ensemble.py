"""Per-series scoring that combines the cold-start streaming detector with the model-based one.

Until a forest is attached (no history yet) only :class:`~.detectors.StreamingDetector` speaks.
With a forest, a reading is anomalous when the streaming detector says so, or when the forest's
score passes its threshold *and* the value is novel (outside the long-run envelope): the forest
alone fires on the rare-but-seen values a forest always finds, so it must agree with novelty.
Forest scoring is batched (one sklearn call per batch, for the candidate readings only: novel and
at least ``FOREST_MIN_STREAM_SCORE`` of the streaming threshold), the per-reading work is O(1).
Last, the record gate (:mod:`.rarity`) lets an alert through only when its deviation is a record for
the series (``DetectorConfig.record_window``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .detectors import DetectorConfig, PointScore, StreamingDetector
from .features import FeatureState
from .forest import ForestModel
from .rarity import gate_for, gate_points

__all__ = ["FOREST_MIN_STREAM_SCORE", "SeriesScorer"]

FOREST_MIN_STREAM_SCORE = 0.9
"""With the forest agreeing, a novel value needs only this fraction of the streaming threshold."""


class SeriesScorer:
    """Scores one series (device, field) reading by reading, or in batches."""

    __slots__ = ("_features", "_gate", "_stream", "forest")

    def __init__(
        self,
        cfg: DetectorConfig | None = None,
        forest: ForestModel | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        """``bounds``: the field's physical range (``iot_protocol.FIELD_RANGES``), if known."""
        cfg = cfg or DetectorConfig()
        self._stream = StreamingDetector(cfg, bounds)
        self._gate = gate_for(cfg)
        self.forest = forest
        self._features = FeatureState(forest.meta.feature_window if forest else 12)

    def attach(self, forest: ForestModel) -> None:
        """Use ``forest`` from now on (after a (re)training)."""
        self.forest = forest

    def score_batch(self, ts_ms: Sequence[int], values: Sequence[float]) -> list[PointScore]:
        """Score readings in time order; each score uses only that reading and earlier ones."""
        stream = [self._stream.update(v, t) for t, v in zip(ts_ms, values, strict=True)]
        if self.forest is None:
            for t, v in zip(ts_ms, values, strict=True):
                self._features.update(t, v)
            return list(gate_points(self._gate, stream))
        feats = [self._features.update(t, v) for t, v in zip(ts_ms, values, strict=True)]
        # The forest can only change a novel reading that the streaming detector nearly flagged:
        # score just those (sklearn costs ~0.1 ms per call and tree, whatever the rows).
        idx = [i for i, p in enumerate(stream) if not p.anomalous and p.novel and p.score >= FOREST_MIN_STREAM_SCORE]
        if idx:
            forest = self.forest.score(np.array([feats[i] for i in idx])).tolist()
            for i, f in zip(idx, forest, strict=True):
                if f >= 1.0:
                    p = stream[i]
                    stream[i] = replace(p, score=max(p.score, f), anomalous=True, detector="forest")
        return list(gate_points(self._gate, stream))

    def update(self, ts_ms: int, value: float) -> PointScore:
        return self.score_batch([ts_ms], [value])[0]
