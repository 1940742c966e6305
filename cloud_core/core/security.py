"""Secrets of the cloud: enrollment and API tokens (only their SHA-256 is stored), password hashing
(scrypt), MQTT passwords, and the cloud's Ed25519 config-signing key (created once, mode 0600)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iot_protocol import generate_private_key, load_private_key, public_key_b64, save_private_key
from iot_protocol.keys import write_private_file

__all__ = [
    "generate_mqtt_password",
    "generate_token",
    "hash_password",
    "hash_token",
    "load_or_create_secret",
    "load_or_create_signing_key",
    "signing_public_key_b64",
    "verify_password",
    "write_secret_file",
]

# scrypt cost: n=2**14, r=8, p=1 is about 16 MiB and ~50 ms here; the stored hash records them.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def generate_token(nbytes: int = 32) -> str:
    """A fresh random token (URL-safe text) for enrollment or API bearer use."""
    return secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    """The hex SHA-256 under which a token is stored. Tokens are 256-bit random, so no salt is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_mqtt_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt_hex$hash_hex`` for ``password`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (from :func:`hash_password`); constant-time compare."""
    try:
        scheme, n, r, p, salt_hex, hash_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, bytes.fromhex(hash_hex))


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, created with mode 0600."""
    write_private_file(path, text.encode("utf-8"))


def load_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``; generated and written (0600) the first time."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    secret = generate_mqtt_password()
    write_secret_file(path, secret + "\n")
    return secret


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The cloud's config-signing key at ``path``; created once (PKCS#8 PEM, mode 0600)."""
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    save_private_key(key, path)
    return key


def signing_public_key_b64(key: Ed25519PrivateKey) -> str:
    """The public half as devices receive it at enrollment: unpadded base64url of 32 bytes."""
    return public_key_b64(key)
