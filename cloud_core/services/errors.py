"""Errors of the cloud services; each carries the HTTP status the API answers with and a stable ``code``.

ServiceError                 root
├── NotFound                 404  no such device (or user)
├── Conflict                 409  already exists, or not allowed in the device's current state
├── InvalidInput             422  a bad device id, public key or config setting
├── EnrollmentRefused        the enrollment token cannot be used
│   ├── TokenUnknown         401  no such token (mistyped, or from another installation)
│   ├── TokenUsed            409  the token was already used (tokens are one-time)
│   └── TokenExpired         410  the token's time ran out
└── Unavailable              503  the broker (or another dependency) did not answer; retrying can help
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "EnrollmentRefused",
    "InvalidInput",
    "NotFound",
    "ServiceError",
    "TokenExpired",
    "TokenUnknown",
    "TokenUsed",
    "Unavailable",
]


class ServiceError(Exception):
    status_code = 400
    code = "error"
    retryable = False

    def __init__(self, message: str, *, device_id: str | None = None) -> None:
        super().__init__(message)
        self.device_id = device_id


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid"


class EnrollmentRefused(ServiceError):
    status_code = 403
    code = "enrollment_refused"


class TokenUnknown(EnrollmentRefused):
    status_code = 401
    code = "token_unknown"


class TokenUsed(EnrollmentRefused):
    status_code = 409
    code = "token_used"


class TokenExpired(EnrollmentRefused):
    status_code = 410
    code = "token_expired"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"
    retryable = True
