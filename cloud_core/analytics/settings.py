"""Settings of the analytics worker (``EDU_ANALYTICS_*`` environment variables), built at the
entry point and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AnalyticsSettings"]


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDU_ANALYTICS_", extra="ignore")

    stream: str = Field(
        "edu:readings", description="Cache stream of accepted readings (written by the bridge)."
    )
    group: str = Field("analytics", description="Consumer group: workers in one group share the load.")
    consumer: str = Field("worker-1", description="This worker's name in the group (unique per worker).")
    batch: int = Field(500, description="Stream entries read per call.")
    block_ms: int = Field(1000, description="How long one read waits for new entries.")
    cooldown_s: float = Field(3600.0, description="An episode closes after this long without anomalies.")
    k: float = Field(4.0, description="Robust z-score threshold of the streaming detector.")
    window: int = Field(288, description="Readings in the rolling median/IQR window.")
    history: int = Field(4032, description="Readings in the long-run novelty envelope.")
    models_dir: Path | None = Field(
        None, description="Where versioned forest models live (None: streaming only)."
    )
    tsdb_url: str | None = Field(
        None, description="Time-series store the scheduled retraining reads (None: no retraining)."
    )
    retrain_every_s: float = Field(
        6 * 3600.0, description="Retrain every series' forest this often (0: never); needs tsdb_url and models_dir."
    )
    retrain_hours: float = Field(168.0, description="Hours of history each retraining reads.")
    retrain_budget_s: float = Field(600.0, description="No new series is trained after this long in one run.")
    claim_idle_s: float = Field(
        60.0, description="Reclaim entries another consumer of the group has left unacked this long (0: never)."
    )
    webhook_url: str | None = Field(None, description="POST each opened episode here as JSON (optional).")
    webhook_timeout_s: float = Field(2.0, description="Timeout of one webhook POST.")
    summary_ttl_s: float = Field(60.0, description="TTL of cached /v1/analytics/summary answers.")
    multivariate: bool = Field(
        True,
        description="Also score each device's fields together with a device model (PCA T-squared and Q; "
        "docs/anomaly.md): it learns the device's normal operation from its first readings.",
    )
    multivariate_warmup: int = Field(
        400, ge=20, description="Complete readings a device sends before its model is fitted on them."
    )
