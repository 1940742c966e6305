"""Ed25519 key pairs: generate, save with mode 0600, load, and encode public keys for the wire."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .jws import b64url_decode, b64url_encode

__all__ = [
    "generate_private_key",
    "load_private_key",
    "private_key_from_seed",
    "public_key_b64",
    "public_key_from_b64",
    "public_key_raw",
    "save_private_key",
    "write_private_file",
]


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """Deterministic key from a 32-byte seed (test vectors and reproducible simulations only)."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The public key as the registry and the enrollment API carry it: unpadded base64url of 32 bytes."""
    return b64url_encode(public_key_raw(key)).decode("ascii")


def public_key_from_b64(text: str) -> bytes:
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return raw


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), created with mode 0600 so
    it is never readable by others, not even for a moment. For keys, passwords and tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(path, pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key
