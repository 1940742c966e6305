"""Password hashing: Argon2id (argon2-cffi, its RFC 9106 low-memory profile), verified in constant
time. Hashes from before (scrypt, :func:`cloud_core.core.security.hash_password`) still verify and
are replaced by an Argon2id hash at the next successful login (:func:`needs_rehash`)."""

from __future__ import annotations

import contextlib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..core.security import verify_password as _verify_scrypt
from .errors import AuthInvalid

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "check_password_policy",
    "configure",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
_hasher = PasswordHasher()  # Argon2id, t=3, m=64 MiB, p=4 (RFC 9106's low-memory profile)
# A hash verified when the username is unknown, so an unknown user costs the same time as a known one.
_DUMMY = _hasher.hash("edu-platform: not a password")


def configure(*, time_cost: int, memory_kib: int) -> None:
    """Set the Argon2id cost for new hashes (process-wide; from CloudSettings at start). Hashes made
    with other parameters still verify and are rehashed at the next login."""
    global _hasher, _DUMMY
    if (time_cost, memory_kib) == (_hasher.time_cost, _hasher.memory_cost):
        return
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
    _DUMMY = _hasher.hash("edu-platform: not a password")


def check_password_policy(password: str) -> None:
    """Raise AuthInvalid unless ``password`` is 10-256 characters."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AuthInvalid(
            f"password must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters, got {len(password)}"
        )


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored`` (Argon2id or legacy scrypt). With ``stored`` None
    (no such user) a dummy hash is verified, so the answer takes as long as for a real user."""
    if stored is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY, password + "\x00")
        return False
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored)
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True for a legacy scrypt hash or an Argon2 hash with older parameters."""
    return stored.startswith("scrypt$") or _hasher.check_needs_rehash(stored)
