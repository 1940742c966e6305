"""Errors of people's access; each carries the HTTP status the API answers with and a stable ``code``.

AuthError                    root
├── NotAuthenticated         401  no credentials, or credentials that are not valid (expired, tampered,
│                                 unknown kid, revoked, a disabled user); ``reason`` says which
├── LoginRefused             401  wrong username or password (never says which)
├── TooManyAttempts          429  too many failed logins for this user or address; ``retry_after_s``
├── Forbidden                403  authenticated, but the role or the grant does not allow this
├── NotVisible               404  no such device / class / user, or not one this person may see
├── QuotaExceeded            409  a class quota would be exceeded (devices per student or class)
├── AuthConflict             409  already exists, or not allowed in the current state
└── AuthInvalid              422  a bad username, password, role or grant
"""

from __future__ import annotations

__all__ = [
    "AuthConflict",
    "AuthError",
    "AuthInvalid",
    "Forbidden",
    "LoginRefused",
    "NotAuthenticated",
    "NotVisible",
    "QuotaExceeded",
    "TooManyAttempts",
]


class AuthError(Exception):
    status_code = 400
    code = "error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NotAuthenticated(AuthError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class LoginRefused(AuthError):
    status_code = 401
    code = "login_refused"


class TooManyAttempts(AuthError):
    status_code = 429
    code = "too_many_attempts"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Forbidden(AuthError):
    status_code = 403
    code = "forbidden"


class NotVisible(AuthError):
    status_code = 404
    code = "not_found"


class QuotaExceeded(AuthError):
    status_code = 409
    code = "quota_exceeded"


class AuthConflict(AuthError):
    status_code = 409
    code = "conflict"


class AuthInvalid(AuthError):
    status_code = 422
    code = "invalid"
