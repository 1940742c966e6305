"""Errors raised by the analytics package.

AnalyticsError                 root: anything analytics raises on purpose
├── DatasetError               labelled data missing or malformed (path and reason attached)
├── ModelError                 a persisted model cannot be loaded or does not fit the request
└── AnomalyNotFound            no stored anomaly episode has the id asked for
"""

from __future__ import annotations

__all__ = ["AnalyticsError", "AnomalyNotFound", "DatasetError", "ModelError"]


class AnalyticsError(Exception):
    """Root of the analytics error tree. ``retryable`` says whether trying again can help."""

    retryable: bool = False


class DatasetError(AnalyticsError):
    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ModelError(AnalyticsError):
    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class AnomalyNotFound(AnalyticsError):
    def __init__(self, anomaly_id: int) -> None:
        super().__init__(f"no anomaly with id {anomaly_id}: see 'iotctl anomalies list'")
        self.anomaly_id = anomaly_id
