"""The analytics worker: reads accepted readings from the cache stream in a consumer group (so
several workers share the load), scores each device's fields with :class:`~.ensemble.SeriesScorer`
and each device's fields together with its multivariate model (:mod:`.multivariate`), groups
anomalies into episodes, and for each episode stores an ``anomalies`` row and its explanation
(:mod:`.explain`), publishes it on the device's alerts topic, counts it in Prometheus and optionally
POSTs it to a webhook.

Device models learn online: a device's fields are those of its first reading with at least two
numeric fields (``quality_score`` aside); its first ``multivariate_warmup`` readings that carry all
of them are its normal operation; the model is fitted on them, saved as version 1 and scores every
later reading that carries its fields. Scheduled retraining fits new versions from stored
history, which are swapped in like the forests.

Stream entries are either one reading (``device_id``, ``sensor_type``, ``ts`` in ms, ``values`` a
JSON object) or the bridge's batch form (``device_id`` and ``readings``, a JSON list of
``{"ts", "sensor_type", "values"}``). Entries are acked after their episodes are stored. A
reading not newer than the last one scored for its series (a redelivery) is skipped.

Crash recovery: entries another consumer of the group took and left unacked for ``claim_idle_s``
(it died) are claimed and processed by this one. Retraining: every ``retrain_every_s`` a side
thread fits new model versions from the time-series store (:mod:`.retrain`); the worker thread
then swaps newer versions into its live series.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
from prometheus_client import Counter
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from iot_protocol import FIELD_RANGES, Alert, encode
from iot_protocol.topics import Topics

from ..cache import Cache, CacheError, StreamEntry
from .detectors import DetectorConfig, PointScore
from .ensemble import SeriesScorer
from .episodes import Episode, EpisodeTracker
from .errors import ModelError
from .explain import device_explanation, field_explanation
from .forest import ModelStore
from .models import DEVICE_FIELD, TABLES, Anomaly, AnomalyExplanation
from .multivariate import (
    DeviceScorer,
    MultivariateConfig,
    MultivariateModel,
    MultivariateStore,
    device_model_key,
    fit_model,
)
from .retrain import SKIP_FIELDS, RetrainReport, model_key, retrain
from .settings import AnalyticsSettings
from .summary import invalidate_summary

__all__ = ["AnalyticsWorker", "Publish", "parse_entry"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
"""Publishes a payload on an MQTT topic (QoS 1), injected by whoever runs the worker."""

EPISODES = Counter("edu_anomaly_episodes_total", "Anomalous episodes opened", ["detector"])
SCORED = Counter("edu_anomaly_readings_scored_total", "Readings scored by the analytics worker")
WEBHOOK_FAILURES = Counter("edu_anomaly_webhook_failures_total", "Webhook POSTs that failed")

Reading = tuple[str, str, int, dict[str, Any]]  # device_id, sensor_type, ts_ms, values


def parse_entry(fields: dict[str, str]) -> list[Reading]:
    """Readings in one stream entry (either form); malformed entries give []."""
    try:
        device = fields["device_id"]
        if "readings" in fields:
            return [
                (device, str(r.get("sensor_type", "")), int(r["ts"]), dict(r["values"]))
                for r in orjson.loads(fields["readings"])
            ]
        return [
            (device, fields.get("sensor_type", ""), int(fields["ts"]), dict(orjson.loads(fields["values"])))
        ]
    except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
        log.warning("skipping malformed analytics stream entry", extra={"fields": list(fields)})
        return []


class _Series:
    __slots__ = ("last_ts", "row_id", "scorer", "sensor_type", "tracker")

    def __init__(self, scorer: SeriesScorer, tracker: EpisodeTracker, sensor_type: str) -> None:
        self.scorer = scorer
        self.tracker = tracker
        self.sensor_type = sensor_type
        self.last_ts = -1
        self.row_id: int | None = None


class _Warmup:
    """A device's warm-up readings, compactly (8 bytes a value): the fields of its first reading
    with at least ``min_fields`` of them, and the readings that carry all of those."""

    __slots__ = ("fields", "n", "values")

    def __init__(self) -> None:
        self.fields: tuple[str, ...] | None = None
        self.values = array("d")
        self.n = 0

    def add(self, row: dict[str, float], min_fields: int) -> None:
        if self.fields is None:
            if len(row) < min_fields:
                return
            self.fields = tuple(sorted(row))
        if all(f in row for f in self.fields):
            self.values.extend(row[f] for f in self.fields)
            self.n += 1

    def matrix(self) -> np.ndarray:
        assert self.fields is not None
        return np.frombuffer(self.values, np.float64).reshape(self.n, len(self.fields)).copy()

    def forget_oldest_half(self) -> None:
        assert self.fields is not None
        keep = self.n - self.n // 2
        del self.values[: (self.n - keep) * len(self.fields)]
        self.n = keep


class _Device:
    """One device's multivariate state: its warm-up readings until a model exists, then the scorer."""

    __slots__ = ("last_ts", "row_id", "scorer", "sensor_type", "tracker", "warmup")

    def __init__(self, scorer: DeviceScorer | None, tracker: EpisodeTracker, sensor_type: str) -> None:
        self.scorer = scorer
        self.tracker = tracker
        self.sensor_type = sensor_type
        self.warmup = _Warmup()
        self.last_ts = -1
        self.row_id: int | None = None

    @property
    def version(self) -> int:
        return self.scorer.model.meta.version if self.scorer is not None else 0


class AnalyticsWorker:
    """One worker of the consumer group. Not thread-safe: run it in one thread (``run``)."""

    def __init__(
        self,
        settings: AnalyticsSettings,
        cache: Cache,
        engine: Engine,
        *,
        publish: Publish | None = None,
        topics: Topics | None = None,
    ) -> None:
        self._s = settings
        self._cache = cache
        self._engine = engine
        self._publish = publish
        self._topics = topics or Topics()
        self._cfg = DetectorConfig(window=settings.window, history=settings.history, k=settings.k)
        self._models = ModelStore(settings.models_dir) if settings.models_dir else None
        self._mv_cfg = MultivariateConfig(warmup=settings.multivariate_warmup) if settings.multivariate else None
        self._mv_store = MultivariateStore(settings.models_dir) if settings.models_dir else None
        self._series: dict[tuple[str, str], _Series] = {}
        self._devices: dict[str, _Device] = {}
        self._recovered = False
        self._models_changed = threading.Event()  # set by a retraining, cleared by refresh_models
        self._last_claim = 0.0

    # ---- scoring ---------------------------------------------------------------------------------
    def _get(self, device: str, field: str, sensor_type: str) -> _Series:
        key = (device, field)
        series = self._series.get(key)
        if series is None:
            forest = None
            if self._models is not None:
                try:
                    forest = self._models.load(model_key(device, field))
                except ModelError:
                    forest = None
            series = _Series(
                SeriesScorer(self._cfg, forest, FIELD_RANGES.get(field)),
                EpisodeTracker(f"{device}/{field}", int(self._s.cooldown_s * 1000)),
                sensor_type,
            )
            self._series[key] = series
        return series

    def handle(self, entries: Iterable[StreamEntry]) -> list[Episode]:
        """Score the readings in ``entries``; store, publish and count episodes. Returns those opened."""
        grouped: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        sensor: dict[tuple[str, str], str] = {}
        devices: set[str] = set()
        rows: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for _id, fields in entries:
            for device, sensor_type, ts, values in parse_entry(fields):
                devices.add(device)
                row: dict[str, float] = {}
                for field, raw in values.items():
                    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                        continue
                    key = (device, field)
                    ts_list, v_list = grouped.setdefault(key, ([], []))
                    ts_list.append(ts)
                    v_list.append(float(raw))
                    sensor.setdefault(key, sensor_type)
                    if field not in SKIP_FIELDS:
                        row[field] = float(raw)
                if self._mv_cfg is not None and row:
                    rows.setdefault(device, []).append((ts, row))
                    sensor.setdefault((device, DEVICE_FIELD), sensor_type)
        opened: list[Episode] = []
        touched: dict[tuple[str, str], list[Episode]] = {}
        for key, (ts_list, v_list) in grouped.items():
            series = self._get(key[0], key[1], sensor[key])
            order = sorted(range(len(ts_list)), key=ts_list.__getitem__)
            ts_new = [ts_list[i] for i in order if ts_list[i] > series.last_ts]
            v_new = [v_list[i] for i in order if ts_list[i] > series.last_ts]
            # drop duplicates inside the batch too (same ts twice)
            keep = [i for i in range(len(ts_new)) if i == 0 or ts_new[i] != ts_new[i - 1]]
            ts_new, v_new = [ts_new[i] for i in keep], [v_new[i] for i in keep]
            if not ts_new:
                continue
            series.last_ts = ts_new[-1]
            SCORED.inc(len(ts_new))
            for t, v, p in zip(ts_new, v_new, series.scorer.score_batch(ts_new, v_new), strict=True):
                op, closed = series.tracker.update(t, v, p.anomalous, p.score, p.detector)
                if closed is not None:
                    touched.setdefault(key, []).append(closed)
                if op is not None:
                    opened.append(op)
                    touched.setdefault(key, []).append(op)
                ep = series.tracker.open_episode
                if p.anomalous and ep is not None and ep.peak_ms == t:
                    ep.detail = (v, p)  # the new peak: what explains it
            if series.tracker.open_episode is not None:
                eps = touched.setdefault(key, [])
                if not any(e is series.tracker.open_episode for e in eps):
                    eps.append(series.tracker.open_episode)
        for device, device_rows in rows.items():
            self._score_device(device, device_rows, sensor[(device, DEVICE_FIELD)], opened, touched)
        for key, eps in touched.items():
            unique: list[Episode] = []
            for ep in eps:  # an episode can open and close within one batch: emit it once
                if not any(ep is u for u in unique):
                    unique.append(ep)
            for ep in unique:
                self._emit(key, ep, is_new=any(ep is o for o in opened))
        for device in devices:
            invalidate_summary(self._cache, device)
        return opened

    def _get_device(self, device: str, sensor_type: str) -> _Device:
        state = self._devices.get(device)
        if state is None:
            scorer = None
            if self._mv_store is not None:
                try:
                    scorer = DeviceScorer(self._mv_store.load_model(device_model_key(device)))
                except ModelError:
                    scorer = None
            tracker = EpisodeTracker(f"{device}/{DEVICE_FIELD}", int(self._s.cooldown_s * 1000))
            state = _Device(scorer, tracker, sensor_type)
            self._devices[device] = state
        return state

    def _fit_device(self, device: str, state: _Device) -> None:
        """Fit the device's first model on its warm-up readings (and save it as the next version)."""
        assert self._mv_cfg is not None and state.warmup.fields is not None
        fields, x = state.warmup.fields, state.warmup.matrix()
        key = device_model_key(device)
        version = self._mv_store.next_version(key) if self._mv_store is not None else 1
        try:
            model = fit_model(key, fields, x, self._mv_cfg, version=version)
        except ModelError as exc:
            # unusable readings (not finite, too few): keep learning, bounded
            log.info("no device model yet: %s", exc, extra={"device_id": device})
            state.warmup.forget_oldest_half()
            return
        if self._mv_store is not None:
            try:
                self._mv_store.save_model(model)
            except (OSError, ModelError) as exc:
                log.warning("saving device model failed: %s", exc, extra={"device_id": device})
        state.scorer, state.warmup = DeviceScorer(model), _Warmup()
        log.info("device model fitted", extra={"device_id": device, "fields": list(fields), "version": version})

    def _score_device(
        self,
        device: str,
        rows: list[tuple[int, dict[str, float]]],
        sensor_type: str,
        opened: list[Episode],
        touched: dict[tuple[str, str], list[Episode]],
    ) -> None:
        assert self._mv_cfg is not None
        state = self._get_device(device, sensor_type)
        rows = sorted((r for r in rows if r[0] > state.last_ts), key=lambda r: r[0])
        rows = [r for i, r in enumerate(rows) if i == 0 or r[0] != rows[i - 1][0]]
        if not rows:
            return
        state.last_ts = rows[-1][0]
        key = (device, DEVICE_FIELD)
        if state.scorer is None:  # warm-up: the first readings are the device's normal operation
            for i, (_, r) in enumerate(rows):
                state.warmup.add(r, self._mv_cfg.min_fields)
                if state.warmup.n >= self._mv_cfg.warmup:
                    self._fit_device(device, state)
                    if state.scorer is not None:
                        rows = rows[i + 1 :]
                        break
            else:
                return
        if not rows or state.scorer is None:
            return
        model = state.scorer.model
        ready = [(t, r) for t, r in rows if all(f in r for f in model.fields)]  # a reading missing a field: skip
        if not ready:
            return
        x = np.array([[r[f] for f in model.fields] for _, r in ready], np.float64)
        for (t, _), xi, score in zip(ready, x, state.scorer.score(x), strict=True):
            anomalous = score >= 1.0
            op, closed = state.tracker.update(t, score, anomalous, score, model.meta.method)
            if closed is not None:
                touched.setdefault(key, []).append(closed)
            if op is not None:
                opened.append(op)
                touched.setdefault(key, []).append(op)
            ep = state.tracker.open_episode
            if anomalous and ep is not None and ep.peak_ms == t:
                ep.detail = (model, xi, score)
        ep = state.tracker.open_episode
        if ep is not None and not any(e is ep for e in touched.get(key, [])):
            touched.setdefault(key, []).append(ep)

    # ---- side effects ----------------------------------------------------------------------------
    def _explanation(self, field: str, ep: Episode) -> dict[str, Any] | None:
        detail = ep.detail
        if detail is None:
            return None
        if field == DEVICE_FIELD:
            model, x, score = detail
            assert isinstance(model, MultivariateModel)
            return device_explanation(model, x, score)
        value, point = detail
        assert isinstance(point, PointScore)
        return field_explanation(field, value, point, self._cfg.k)

    def _emit(self, key: tuple[str, str], ep: Episode, *, is_new: bool) -> None:
        device, field = key
        series: _Series | _Device = self._devices[device] if field == DEVICE_FIELD else self._series[key]
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(Anomaly, series.row_id) if (series.row_id is not None and not is_new) else None
            if row is None:
                row = Anomaly(
                    device_id=device,
                    field=field,
                    sensor_type=series.sensor_type,
                    detector=ep.detector,
                    start_ms=ep.start_ms,
                    end_ms=ep.end_ms,
                    peak_ms=ep.peak_ms,
                    peak_score=ep.peak_score,
                    count=ep.count,
                    values=list(ep.values),
                )
            row.detector, row.end_ms, row.peak_ms = ep.detector, ep.end_ms, ep.peak_ms
            row.peak_score, row.count, row.values = ep.peak_score, ep.count, list(ep.values)
            row.status = "closed" if ep.closed else "open"
            session.add(row)
            session.flush()
            explanation = self._explanation(field, ep)
            if explanation is not None and row.id is not None:
                session.merge(AnomalyExplanation(anomaly_id=row.id, explanation=explanation))
            session.commit()
            series.row_id = None if ep.closed else row.id
            payload = row.to_public()
        state_changed = is_new or ep.closed
        if not state_changed:
            return
        if is_new:
            EPISODES.labels(ep.detector).inc()
        states = (["open"] if is_new else []) + (["closed"] if ep.closed else [])
        for state in states:  # subscribers always see "open" before "closed"
            body = encode(
                Alert(
                    id=payload["id"], device_id=device, field=field, sensor_type=payload["sensor_type"],
                    detector=payload["detector"], state=state, start_ms=payload["start_ms"],
                    end_ms=payload["end_ms"], peak_ms=payload["peak_ms"], peak_score=payload["peak_score"],
                    count=payload["count"], values=tuple(payload["values"]),
                )
            )  # fmt: skip
            if self._publish is not None:
                try:
                    self._publish(self._topics.alerts(device), body)
                except Exception as exc:  # the alert is stored; publishing is best effort
                    log.warning("publishing alert failed: %s", exc, extra={"device_id": device})
            if state == "open" and self._s.webhook_url:
                self._post_webhook(body, device)

    def _post_webhook(self, body: bytes, device: str) -> None:
        import httpx

        try:
            r = httpx.post(
                self._s.webhook_url or "",
                content=body,
                timeout=self._s.webhook_timeout_s,
                headers={"content-type": "application/json"},
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            WEBHOOK_FAILURES.inc()
            log.warning("alert webhook failed: %s", exc, extra={"device_id": device})

    # ---- models ----------------------------------------------------------------------------------
    def retrain_once(self) -> RetrainReport:
        """Train new model versions from the time-series store (any thread). Raises ModelError when
        the worker has no ``tsdb_url`` or ``models_dir``, StoreError when the store cannot be read."""
        s = self._s
        if self._models is None or not s.tsdb_url:
            raise ModelError("retraining needs both tsdb_url and models_dir")
        from ..tsdb import open_tsdb

        store = open_tsdb(s.tsdb_url)
        try:
            report = retrain(
                store, self._models, hours=s.retrain_hours, time_budget_s=s.retrain_budget_s,
                device_models=self._mv_cfg,
            )  # fmt: skip
        finally:
            store.close()
        if report.trained or report.device_models:
            self._models_changed.set()
        return report

    def refresh_models(self) -> int:
        """Attach newer model versions to live series (worker thread). Returns how many were swapped."""
        self._models_changed.clear()
        if self._models is None:
            return 0
        swapped = 0
        for (device, field), series in self._series.items():
            key = model_key(device, field)
            versions = self._models.versions(key)
            current = series.scorer.forest.meta.version if series.scorer.forest is not None else 0
            if not versions or versions[-1] <= current:
                continue
            try:
                series.scorer.attach(self._models.load(key, versions[-1]))
            except ModelError as exc:
                log.warning("model swap failed: %s", exc, extra={"key": key})
                continue
            swapped += 1
        if self._mv_store is not None:
            for device, state in self._devices.items():
                if state.scorer is None:
                    continue
                versions = self._mv_store.versions(device_model_key(device))
                if not versions or versions[-1] <= state.version:
                    continue
                try:
                    state.scorer = DeviceScorer(self._mv_store.load_model(device_model_key(device), versions[-1]))
                except ModelError as exc:
                    log.warning("device model swap failed: %s", exc, extra={"device_id": device})
                    continue
                swapped += 1
        if swapped:
            log.info("swapped in retrained models", extra={"count": swapped})
        return swapped

    def last_scored_ms(self, device: str, field: str = DEVICE_FIELD) -> int:
        """Time of the newest reading of a series scored so far (``*``: the device's; -1: none yet)."""
        state = self._devices.get(device) if field == DEVICE_FIELD else self._series.get((device, field))
        return state.last_ts if state is not None else -1

    def model_version(self, device: str, field: str) -> int:
        """Version of the model scoring a live series (``field`` ``*``: the device model; 0: none yet)."""
        if field == DEVICE_FIELD:
            state = self._devices.get(device)
            return state.version if state is not None else 0
        series = self._series.get((device, field))
        forest = series.scorer.forest if series is not None else None
        return forest.meta.version if forest is not None else 0

    def _retrain_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self._s.retrain_every_s):
            try:
                report = self.retrain_once()
                log.info(
                    "retraining done",
                    extra={"trained": len(report.trained), "deferred": len(report.deferred), "s": report.seconds},
                )
            except Exception as exc:  # a failed run must not kill the schedule; the next one retries
                log.warning("retraining failed: %s", exc)

    # ---- the loop --------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group and the analytics tables, when missing (idempotent)."""
        self._cache.ensure_group(self._s.stream, self._s.group, start="0")
        SQLModel.metadata.create_all(self._engine, tables=TABLES)

    def poll(self, block_ms: int | None = None) -> int:
        """Read (own pending entries first, after a restart; then entries a dead consumer left
        behind; then new ones), handle and ack one batch. Returns entries."""
        s = self._s
        if self._models_changed.is_set():
            self.refresh_models()
        entries: list[StreamEntry] = []
        if s.claim_idle_s > 0 and time.monotonic() - self._last_claim >= min(s.claim_idle_s, 5.0):
            self._last_claim = time.monotonic()
            entries = self._cache.stream_claim(
                s.stream, s.group, s.consumer, int(s.claim_idle_s * 1000), count=s.batch
            )
            if entries:
                log.info("claimed entries of a dead consumer", extra={"count": len(entries)})
                self._last_claim = 0.0  # there may be more: look again next poll
        if not entries and not self._recovered:
            entries = self._cache.stream_read_group(
                s.stream, s.group, s.consumer, count=s.batch, pending=True
            )
            if not entries:
                self._recovered = True
        if not entries:
            entries = self._cache.stream_read_group(
                s.stream,
                s.group,
                s.consumer,
                count=s.batch,
                block_ms=s.block_ms if block_ms is None else block_ms,
            )
        if entries:
            self.handle(entries)
            self._cache.stream_ack(s.stream, s.group, [i for i, _ in entries])
        return len(entries)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; cache outages are logged and retried. Retrains on a side thread
        every ``retrain_every_s`` when a time-series store and a models dir are configured."""
        self.ensure_group()
        s = self._s
        if s.retrain_every_s > 0 and s.tsdb_url and self._models is not None:
            threading.Thread(target=self._retrain_loop, args=(stop,), name="analytics-retrain", daemon=True).start()
        while not stop.is_set():
            try:
                self.poll()
            except CacheError as exc:
                log.warning("analytics stream read failed: %s", exc)
                stop.wait(1.0)
        self.flush()

    def flush(self) -> list[Episode]:
        """Close every open episode (at shutdown)."""
        closed = []
        trackers = [(key, s.tracker) for key, s in self._series.items()]
        trackers += [((device, DEVICE_FIELD), d.tracker) for device, d in self._devices.items()]
        for key, tracker in trackers:
            ep = tracker.flush()
            if ep is not None:
                self._emit(key, ep, is_new=False)
                closed.append(ep)
        return closed
