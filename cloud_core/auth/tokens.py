"""Access tokens: short-lived JWTs signed with Ed25519 (``alg: EdDSA``, PyJWT) and named by ``kid``,
so any service can verify them with the public keys (``GET /v1/auth/jwks``) and never holds the
private one. The signing keys live in the metadata database (``auth_signing_keys``) so every API
replica signs with the same key; :func:`rotate_signing_key` starts a new one, and retired keys keep
verifying until the tokens they signed have expired.

Verification accepts exactly ``EdDSA`` and a ``kid`` that names a known key: ``alg: none``, HS256
(with the public key as an HMAC secret or anything else), a tampered payload or signature, an
unknown ``kid`` and an expired token are each refused with their own reason.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .errors import NotAuthenticated
from .models import SigningKey

__all__ = ["AccessClaims", "TokenSigner", "rotate_signing_key"]

ALGORITHM = "EdDSA"
ISSUER = "edu-platform"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: the user (id, name), the role it was issued for, when it
    expires, and its key id."""

    user_id: int
    username: str
    role: str
    expires_at: int
    kid: str


def _new_key() -> SigningKey:
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return SigningKey(kid=secrets.token_hex(8), private_pem=private_pem, public_pem=public_pem)


def rotate_signing_key(session: Session) -> SigningKey:
    """Retire the current signing key (it still verifies) and start a new one. Caller commits."""
    now = datetime.now(UTC)
    for row in session.exec(select(SigningKey).where(col(SigningKey.retired_at).is_(None))).all():
        row.retired_at = now
        session.add(row)
    key = _new_key()
    session.add(key)
    session.flush()
    return key


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenSigner:
    """Signs and verifies access tokens with the keys in the database (cached, re-read when a
    token names a kid it does not know yet, at most once a second).

    Args:
        engine: the metadata database.
        ttl_s: lifetime of an access token.
    """

    def __init__(self, engine: Engine, *, ttl_s: float) -> None:
        self._engine = engine
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._public: dict[str, tuple[Ed25519PublicKey, datetime | None]] = {}
        self._current: tuple[str, Ed25519PrivateKey] | None = None
        self._loaded_at = float("-inf")

    def _load(self) -> None:
        with Session(self._engine, expire_on_commit=False) as session:
            rows = session.exec(select(SigningKey).order_by(col(SigningKey.created_at))).all()
            if not any(r.retired_at is None for r in rows):
                key = _new_key()
                session.add(key)
                session.commit()
                rows = [*rows, key]
        public: dict[str, tuple[Ed25519PublicKey, datetime | None]] = {}
        current = None
        for row in rows:
            pub = serialization.load_pem_public_key(row.public_pem.encode())
            assert isinstance(pub, Ed25519PublicKey)
            retired = (
                row.retired_at.replace(tzinfo=UTC)
                if row.retired_at and row.retired_at.tzinfo is None
                else row.retired_at
            )
            public[row.kid] = (pub, retired)
            if row.retired_at is None:
                private = serialization.load_pem_private_key(row.private_pem.encode(), password=None)
                assert isinstance(private, Ed25519PrivateKey)
                current = (row.kid, private)
        with self._lock:
            self._public = public
            self._current = current
            self._loaded_at = time.monotonic()

    def reload(self) -> None:
        """Read the keys again (after a rotation in this process)."""
        self._load()

    def issue(self, *, user_id: int, username: str, role: str) -> tuple[str, int]:
        """A signed access token for the user and its expiry (epoch seconds)."""
        if self._current is None:
            self._load()
        assert self._current is not None
        kid, key = self._current
        now = int(time.time())
        exp = now + int(self.ttl_s)
        claims = {
            "iss": ISSUER,
            "sub": str(user_id),
            "name": username,
            "role": role,
            "iat": now,
            "exp": exp,
            "jti": secrets.token_hex(8),
            "typ": "access",
        }
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
        return token, exp

    def _public_key(self, kid: str) -> Ed25519PublicKey | None:
        entry = self._public.get(kid)
        if entry is None and time.monotonic() - self._loaded_at > 1.0:
            self._load()  # another replica may have rotated
            entry = self._public.get(kid)
        if entry is None:
            return None
        pub, retired = entry
        if retired is not None and datetime.now(UTC) > retired + timedelta(seconds=self.ttl_s + 60):
            return None  # every token it signed has expired
        return pub

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid access token. Raises NotAuthenticated naming what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise NotAuthenticated("malformed access token", reason="malformed") from None
        if header.get("alg") != ALGORITHM:
            raise NotAuthenticated(
                f"access token algorithm {header.get('alg')!r} is not accepted (only {ALGORITHM})", reason="bad_alg"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise NotAuthenticated("access token has no key id (kid)", reason="unknown_kid")
        if not self._public and time.monotonic() - self._loaded_at > 1.0:
            self._load()
        key = self._public_key(kid)
        if key is None:
            raise NotAuthenticated(f"access token signed with an unknown key {kid!r}", reason="unknown_kid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("access token expired: refresh it or log in again", reason="expired") from None
        except jwt.InvalidSignatureError:
            raise NotAuthenticated("access token signature does not verify", reason="bad_signature") from None
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated(f"invalid access token: {exc}", reason="invalid") from None
        if claims.get("typ") != "access" or not str(claims.get("sub", "")).isdigit():
            raise NotAuthenticated("not an access token", reason="invalid")
        return AccessClaims(
            int(claims["sub"]), str(claims.get("name", "")), str(claims.get("role", "")), int(claims["exp"]), kid
        )

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify tokens now, as a JSON Web Key Set (RFC 8037 OKP keys)."""
        if not self._public:
            self._load()
        keys = []
        for kid in list(self._public):
            pub = self._public_key(kid)
            if pub is None:
                continue
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys.append({"kty": "OKP", "crv": "Ed25519", "alg": ALGORITHM, "use": "sig", "kid": kid, "x": _b64url(raw)})
        return {"keys": keys}
