"""JWS compact serialization with EdDSA/Ed25519 (RFC 7515, RFC 8037): sign and verify exact bytes.

A token is ``b64url(header) "." b64url(payload) "." b64url(signature)`` with no padding; the
signature covers the ASCII bytes ``b64url(header) "." b64url(payload)``. The header is
``{"alg":"EdDSA","kid":...,"typ":...}``; ``kid`` names the signer (a device id, or ``cloud``).
A receiver also accepts ``"alg":"Ed25519"``, the fully-specified name RFC 9864 gives the same
algorithm (EdDSA with Ed25519); we sign with ``EdDSA``, which every JOSE library knows.
Verification uses PyNaCl when it is installed (about 40 us) and ``cryptography`` otherwise.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ._json import count_members, has_duplicates
from .errors import DecodeError, SignatureError

if TYPE_CHECKING:  # cryptography (about 7 MB of RSS) is imported only where it is used: not by the agent
    from .keys import SigningKey

__all__ = [
    "ACCEPTED_ALGS",
    "MAX_TOKEN_BYTES",
    "Jws",
    "b64url_decode",
    "b64url_encode",
    "decode",
    "hold_gil_while_verifying",
    "sign",
    "verify",
    "verify_token",
]

ALG = "EdDSA"
ACCEPTED_ALGS = frozenset({"EdDSA", "Ed25519"})  # RFC 8037's name, and RFC 9864's fully-specified one
MAX_TOKEN_BYTES = 256 * 1024

try:  # PyNaCl verifies about 1.6x faster than cryptography; the bridge installs it.
    from nacl.bindings import crypto_sign_open as _nacl_open  # what VerifyKey.verify calls, without the object
    from nacl.exceptions import BadSignatureError as _NaclBadSignature
except ImportError:  # pragma: no cover - exercised on the light edge install
    _nacl_open = None  # type: ignore[assignment]

try:  # SIMD base64 (pybase64): an 11 KB payload in ~2.5 us instead of ~45; the bridge installs it.
    from pybase64 import b64decode as _simd_b64decode
except ImportError:  # pragma: no cover - exercised on the light edge install
    _simd_b64decode = None  # type: ignore[assignment]


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64url_decode_strict(raw: bytes) -> bytes:
    """The reference decoder: it raises the error naming what is wrong."""
    if len(raw) % 4 == 1:
        raise DecodeError("bad base64url length", reason="bad_envelope")
    try:
        out = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("not base64url", reason="bad_envelope") from None
    if b64url_encode(out) != raw:  # reject non-canonical trailing bits: one token, one meaning
        raise DecodeError("non-canonical base64url", reason="bad_envelope")
    return out


# The fast path of b64url_decode. Input of only base64url letters (so no '=', '+' or '/') and of a length
# that is not 1 mod 4 decodes like the reference; it is canonical exactly when the bits of the last
# letter that the decoder drops are zero (the low 4 bits when len % 4 == 2, the low 2 when == 3), so
# only letters whose value is a multiple of 16 (resp. 4) may end it. Anything else takes the reference
# path, which raises the same error as always.
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_CANONICAL_LAST = (None, None, frozenset(_B64URL[::16]), frozenset(_B64URL[::4]))
_PAD = (b"", b"", b"==", b"=")
_a2b = binascii.a2b_base64


def b64url_decode(data: bytes | str) -> bytes:
    """Decode unpadded base64url strictly: any other alphabet or a bad length is a DecodeError."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    rem = len(raw) % 4
    if rem != 1 and not raw.translate(None, _B64URL):  # nothing left once the alphabet is deleted
        last = _CANONICAL_LAST[rem]
        if last is None or raw[-1] in last:
            try:
                if _simd_b64decode is not None:  # validate: any letter outside the alphabet raises
                    return _simd_b64decode(raw + _PAD[rem], altchars=b"-_", validate=True)
                return _a2b(raw.translate(_URL_TO_STD) + _PAD[rem], strict_mode=True)
            except binascii.Error:
                pass
    return _b64url_decode_strict(raw)


@dataclass(frozen=True, slots=True)
class Jws:
    """A decoded, not yet verified, token."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        kid = self.header.get("kid", "")
        return kid if isinstance(kid, str) else ""

    @property
    def typ(self) -> str:
        typ = self.header.get("typ", "")
        return typ if isinstance(typ, str) else ""


def sign(payload: bytes, key: SigningKey, *, kid: str, typ: str) -> bytes:
    """Return the compact JWS of ``payload`` (exact bytes) signed with ``key``."""
    header = orjson.dumps({"alg": ALG, "kid": kid, "typ": typ})
    signing_input = b64url_encode(header) + b"." + b64url_encode(payload)
    return signing_input + b"." + b64url_encode(key.sign(signing_input))


# A device signs every batch with the same header, so its encoded form repeats: decoded and checked
# headers are kept by their exact bytes (shared dicts: read them, never modify them).
_headers: dict[bytes, dict[str, Any]] = {}
_HEADER_CACHE_MAX = 10_000


def _decode_header(h64: bytes) -> dict[str, Any]:
    raw = b64url_decode(h64)
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DecodeError("JWS header is not JSON", reason="bad_envelope") from None
    if not isinstance(header, dict):
        raise DecodeError("JWS header is not a JSON object", reason="bad_envelope")
    if has_duplicates(raw, count_members(header)):
        raise DecodeError("JWS header repeats a member name", reason="bad_envelope")
    if header.get("alg") not in ACCEPTED_ALGS:
        raise DecodeError(f"JWS alg must be 'EdDSA' or 'Ed25519', got {header.get('alg')!r}", reason="bad_envelope")
    if "crit" in header:  # RFC 7515 4.1.11: we understand no extensions
        raise DecodeError("JWS 'crit' header is not supported", reason="bad_envelope")
    return header


def decode(token: bytes) -> Jws:
    """Parse a compact JWS without verifying it. Raises DecodeError naming what is wrong."""
    if len(token) > MAX_TOKEN_BYTES:
        raise DecodeError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_BYTES}", reason="too_large")
    parts = token.split(b".")
    if len(parts) != 3:
        raise DecodeError("not a compact JWS (expected 3 dot-separated parts)", reason="bad_envelope")
    h64, p64, s64 = parts
    header = _headers.get(h64)
    if header is None:
        header = _decode_header(h64)
        if len(_headers) >= _HEADER_CACHE_MAX:
            _headers.clear()
        _headers[h64] = header
    signature = b64url_decode(s64)
    if len(signature) != 64:
        raise DecodeError("Ed25519 signature must be 64 bytes", reason="bad_envelope")
    return Jws(header, b64url_decode(p64), h64 + b"." + p64, signature)


def verify(jws: Jws, public_key: bytes) -> None:
    """Raise SignatureError unless ``jws`` is signed by the raw 32-byte Ed25519 ``public_key``."""
    if len(public_key) != 32:
        raise SignatureError("public key must be 32 raw bytes", reason="bad_key")
    hold = _verify_holding_gil
    if hold is not None:
        if len(jws.signature) != 64 or hold(jws.signature, jws.signing_input, len(jws.signing_input), public_key):
            raise SignatureError("signature does not verify")
        return
    if _nacl_open is not None:
        try:
            _nacl_open(jws.signature + jws.signing_input, public_key)
        except _NaclBadSignature:
            raise SignatureError("signature does not verify") from None
        except Exception:  # a malformed point: pynacl raises ValueError/CryptoError
            raise SignatureError("signature does not verify") from None
        return
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(jws.signature, jws.signing_input)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify") from None


# libsodium's crypto_sign_verify_detached called through ctypes.PyDLL, which keeps the GIL: see
# hold_gil_while_verifying. None: PyNaCl's crypto_sign_open (cffi releases the GIL around it).
_verify_holding_gil: Callable[[bytes, bytes, int, bytes], int] | None = None


def hold_gil_while_verifying() -> bool:
    """Verify without releasing the GIL, from now on, in this process; True when that is in place.

    cffi releases the GIL around every libsodium call, and in a process with other busy threads (the
    bridge's writer and side effects) each of the ~60 us verifications then ends in a GIL hand-off: a
    wake-up and a context switch per message, and cold caches after it. Keeping the GIL calls the same
    libsodium function that ``crypto_sign_open`` calls (``crypto_sign_verify_detached``: the same
    checks, so the same signatures verify), from the libsodium PyNaCl bundles, without copying the
    message. Only for a process whose threads can wait ~60 us each (the bridge's); not the agent's
    (ctypes costs memory there). False, and nothing changes, without PyNaCl or when its library does
    not export the function.
    """
    global _verify_holding_gil
    if _nacl_open is None:
        return False
    try:
        import ctypes
        import importlib

        path = importlib.import_module("nacl._sodium").__file__  # PyNaCl's cffi module, libsodium inside
        if path is None:
            return False
        fn = ctypes.PyDLL(path).crypto_sign_verify_detached
    except (ImportError, OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p)
    fn.restype = ctypes.c_int
    _verify_holding_gil = fn
    return True


def verify_token(token: bytes, public_key: bytes) -> Jws:
    """Decode and verify in one call; returns the verified token."""
    jws = decode(token)
    verify(jws, public_key)
    return jws
