"""Ed25519 key pairs: generate, save with mode 0600, load, and encode public keys for the wire."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import ValidationError
from .jws import b64url_decode, b64url_encode

if TYPE_CHECKING:  # imported where used: the agent signs with PyNaCl and never loads cryptography (~7 MB)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "LightEd25519Key",
    "SigningKey",
    "check_public_key",
    "generate_private_key",
    "load_private_key",
    "load_signing_key",
    "private_key_from_seed",
    "public_key_b64",
    "public_key_from_b64",
    "public_key_raw",
    "save_private_key",
    "write_private_file",
]


class SigningKey(Protocol):
    """What signing needs of a private key: cryptography's ``Ed25519PrivateKey`` or a LightEd25519Key."""

    def sign(self, data: bytes) -> bytes: ...

    def private_bytes_raw(self) -> bytes: ...


# An Ed25519 private key in PKCS#8 (RFC 8410) is this fixed 16-byte DER prefix and the 32-byte seed.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = b"-----BEGIN PRIVATE KEY-----\n", b"-----END PRIVATE KEY-----\n"


class LightEd25519Key:
    """An Ed25519 private key that signs with PyNaCl (libsodium): the agent's key, without loading
    ``cryptography`` (about 7 MB of RSS). Ed25519 signatures are deterministic, so it signs exactly
    as ``Ed25519PrivateKey`` does with the same seed."""

    __slots__ = ("_pk", "_seed", "_sign", "_sk")

    def __init__(self, seed: bytes) -> None:
        from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

        if len(seed) != 32:
            raise ValueError("an Ed25519 private key is a 32-byte seed")
        self._seed = seed
        self._pk, self._sk = crypto_sign_seed_keypair(seed)
        self._sign = crypto_sign

    def sign(self, data: bytes) -> bytes:
        return bytes(self._sign(data, self._sk)[:64])

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def public_bytes_raw(self) -> bytes:
        return bytes(self._pk)

    def public_key(self) -> Ed25519PublicKey:
        """cryptography's public key object, for callers written against ``Ed25519PrivateKey``
        (imports cryptography: the agent itself never calls it)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(bytes(self._pk))

    def __repr__(self) -> str:  # never the seed
        return f"LightEd25519Key(public={b64url_encode(self._pk).decode()})"


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """Deterministic key from a 32-byte seed (test vectors and reproducible simulations only)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_raw(key: SigningKey) -> bytes:
    if isinstance(key, LightEd25519Key):
        return key.public_bytes_raw()
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key()  # type: ignore[attr-defined]
    raw: bytes = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def public_key_b64(key: SigningKey) -> str:
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


def _pem(seed: bytes) -> bytes:
    """PKCS#8 PEM of an Ed25519 seed: byte for byte what ``cryptography`` writes."""
    return _PEM_BEGIN + base64.b64encode(_PKCS8_ED25519 + seed) + b"\n" + _PEM_END


def save_private_key(key: SigningKey, path: Path) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600."""
    write_private_file(path, _pem(key.private_bytes_raw()))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def load_signing_key(path: Path) -> SigningKey:
    """The key in ``path`` for signing: a LightEd25519Key when PyNaCl is installed and the file is
    the PKCS#8 PEM that :func:`save_private_key` writes (what enrollment stores), otherwise
    :func:`load_private_key`'s (which also reads any other PEM form, and says what is wrong)."""
    data = path.read_bytes()
    lines = data.strip().split(b"\n")
    if len(lines) == 3 and lines[0] + b"\n" == _PEM_BEGIN and lines[2] + b"\n" == _PEM_END:
        try:
            der = base64.b64decode(lines[1].strip(), validate=True)
        except ValueError:
            der = b""
        if len(der) == 48 and der.startswith(_PKCS8_ED25519):
            try:
                return LightEd25519Key(der[16:])
            except ImportError:
                pass
    return load_private_key(path)


# ---- public key checks (enrollment) -----------------------------------------------------------------
# Ed25519 (RFC 8032 5.1.3) point decoding in plain integers: enrollment is rare, so clarity over speed.
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the main subgroup
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int]
_IDENTITY: _Point = (0, 1)


def _add(a: _Point, b: _Point) -> _Point:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, -1, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P  # a = -1: y1y2 - a*x1x2
    return x3, y3


def _mul(k: int, point: _Point) -> _Point:
    out, q = _IDENTITY, point
    while k:
        if k & 1:
            out = _add(out, q)
        q = _add(q, q)
        k >>= 1
    return out


def _decode_point(raw: bytes) -> _Point | str:
    """The point of a 32-byte encoding, or the code of what is wrong with it."""
    n = int.from_bytes(raw, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return "key_non_canonical"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    if v * x * x % _P != u:
        return "key_not_on_curve"
    if x == 0 and sign:
        return "key_non_canonical"  # "-0": a second encoding of the same point
    if x & 1 != sign:
        x = _P - x
    return x, y


_KEY_PROBLEMS = {
    "key_length": "must be 32 bytes",
    "key_all_zero": "is all zeros",
    "key_non_canonical": "is a non-canonical encoding (y >= p, or x = 0 with the sign bit set)",
    "key_not_on_curve": "is not a point on the Ed25519 curve",
    "key_small_order": "is a small-order point (any signature could verify for some message)",
    "key_mixed_order": "has a small-order component (not in the prime-order subgroup)",
}


def check_public_key(raw: bytes) -> None:
    """Refuse an Ed25519 public key a device must not enroll with: wrong length, all zeros,
    non-canonical, not on the curve, small order, or not in the prime-order subgroup (the checks of
    libsodium's ``crypto_core_ed25519_is_valid_point``).

    Raises:
        ValidationError: ``reason`` names the problem (``key_all_zero``, ``key_small_order``, ...).
    """
    if len(raw) != 32:
        code = "key_length"
    elif not any(raw):
        code = "key_all_zero"
    else:
        point = _decode_point(raw)
        if isinstance(point, str):
            code = point
        elif _mul(8, point) == _IDENTITY:
            code = "key_small_order"
        elif _mul(_L, point) != _IDENTITY:
            code = "key_mixed_order"
        else:
            return
    raise ValidationError(f"the public key {_KEY_PROBLEMS[code]}", reason=code)
