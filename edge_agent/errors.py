"""Errors of the edge agent, one rooted tree:

    AgentError                   root; ``retryable`` says whether trying again can help
    ├── SettingsError            the agent's TOML file is missing or a value is bad (names the field)
    ├── IdentityError            the identity directory is missing, incomplete or unreadable
    │   └── EnrollmentError      the enrollment API refused (used/expired token) or was unreachable
    ├── BufferError              the SQLite buffer cannot be opened or written
    ├── SensorSetupError         a sensor cannot be constructed (bad options, missing hardware library)
    └── OtaError                 a firmware update cannot go on; ``reason`` is a stable code
        ├── DownloadError        the artifact could not be fetched (retryable: network, HTTP 5xx)
        └── VerifyError          the manifest or the artifact is not what it must be (signature,
                                 size, SHA-256, device type, below the minimum version): never installed

A failing sensor *read* is not an error here: it is :class:`edge_agent.sensors.base.SensorError`,
turned into a quality flag on the reading.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BufferError",
    "DownloadError",
    "EnrollmentError",
    "IdentityError",
    "OtaError",
    "SensorSetupError",
    "SettingsError",
    "VerifyError",
]


class AgentError(Exception):
    retryable = False


class SettingsError(AgentError):
    """A bad agent setting. ``field`` is the dotted path of the offending setting (or '' for the file)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class IdentityError(AgentError):
    pass


class EnrollmentError(IdentityError):
    """``status`` is the HTTP status (None when the API was unreachable)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = status is None or status >= 500


class BufferError(AgentError):
    pass


class SensorSetupError(AgentError):
    pass


class OtaError(AgentError):
    """A firmware update failed. ``reason``: a stable code (``bad_signature``, ``size_mismatch``,
    ``hash_mismatch``, ``wrong_device_type``, ``below_minimum``, ``download``, ``cancelled``, ...)."""

    def __init__(self, message: str, *, reason: str = "ota") -> None:
        super().__init__(message)
        self.reason = reason


class DownloadError(OtaError):
    retryable = True


class VerifyError(OtaError):
    pass
