"""Errors of the cloud services; each carries the HTTP status the API answers with and a stable ``code``.

ServiceError                 root
├── NotFound                 404  no such device (or user)
├── Conflict                 409  already exists, or not allowed in the device's current state
│   ├── KeyInUse             409  the public key is already registered to another device
│   └── DeviceDeactivated    409  enrolling a deactivated device (its token was revoked)
├── InvalidInput             422  a bad device id, public key or config setting
│   └── WeakKey              422  a public key no device may use (code: key_all_zero, key_small_order, ...)
├── EnrollmentRefused        the enrollment token cannot be used
│   ├── TokenUnknown         401  no such token (mistyped, or from another installation)
│   ├── TokenUsed            409  the token was already used (tokens are one-time)
│   └── TokenExpired         410  the token's time ran out
└── Unavailable              503  the broker (or another dependency) did not answer; retrying can help
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "DeviceDeactivated",
    "EnrollmentRefused",
    "InvalidInput",
    "KeyInUse",
    "NotFound",
    "ServiceError",
    "TokenExpired",
    "TokenUnknown",
    "TokenUsed",
    "Unavailable",
    "WeakKey",
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


class KeyInUse(Conflict):
    code = "key_in_use"


class DeviceDeactivated(Conflict):
    code = "device_deactivated"


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid"


class WeakKey(InvalidInput):
    """``code`` names the problem: key_all_zero, key_small_order, key_mixed_order, key_non_canonical,
    key_not_on_curve (iot_protocol.check_public_key)."""

    def __init__(self, message: str, *, code: str, device_id: str | None = None) -> None:
        super().__init__(message, device_id=device_id)
        self.code = code


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
