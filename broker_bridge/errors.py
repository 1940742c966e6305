"""Errors of the ingest bridge. Input never raises out of the bridge: bad messages become dead letters.

    BridgeError                   root of the bridge's own errors
    ├── ConfigError               settings that cannot work (bad URL, impossible limits); not retryable
    ├── DirectoryUnavailable      the device registry could not be read; retrying can help
    └── SinkUnavailable           a write (time-series store, metadata DB, cache) failed; retrying can help

Failures of a message itself are the wire contract's :class:`iot_protocol.ProtocolError` family, or a
:class:`Reject` value produced by :mod:`broker_bridge.pipeline`; they carry a stable ``reason`` code.
"""

from __future__ import annotations

__all__ = ["BridgeError", "ConfigError", "DirectoryUnavailable", "SinkUnavailable"]


class BridgeError(Exception):
    """Root of the bridge's errors. ``retryable`` says whether trying again can help."""

    retryable = False


class ConfigError(BridgeError):
    """The settings cannot work; the message names the setting and how to fix it."""


class DirectoryUnavailable(BridgeError):
    """The device directory (metadata DB) could not answer; the message is answered
    ``registry_unavailable`` (a retry)."""

    retryable = True

    def __init__(self, message: str, *, device_id: str | None = None) -> None:
        super().__init__(message)
        self.device_id = device_id


class SinkUnavailable(BridgeError):
    """A sink did not take a write; the bridge retries with backoff."""

    retryable = True
