"""Sign-in and credentials: password login, access + refresh tokens (refresh tokens rotate on every
use and are stored as SHA-256; reusing a spent one revokes its whole family), and API keys (shown
once, stored as SHA-256, scoped to a role no higher than their owner's and optionally to devices).

Every presented secret is looked up by its hash, never compared as text, so lookups leak nothing
by timing; passwords are verified even for unknown usernames (a dummy hash) so the time taken does
not tell whether a user exists.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from ..core.security import hash_token
from . import audit
from .access import Principal, principal_for
from .errors import AuthInvalid, Forbidden, LoginRefused, NotAuthenticated, NotVisible
from .models import ApiKey, RefreshToken, User
from .passwords import hash_password, needs_rehash, verify_password
from .permissions import ROLE_PERMISSIONS, ROLES
from .tokens import TokenSigner

__all__ = [
    "KEY_PREFIX",
    "IssuedKey",
    "SignIn",
    "authenticate_key",
    "authenticate_token",
    "create_api_key",
    "list_api_keys",
    "login",
    "logout",
    "refresh",
    "revoke_api_key",
]

KEY_PREFIX = "edu_"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True, slots=True)
class SignIn:
    """What a login or refresh hands out: a short-lived access token and a refresh token."""

    access_token: str
    expires_at: int
    refresh_token: str
    refresh_expires_at: datetime
    user: User


def _principal(session: Session, user: User, role: str | None = None, **kw: object) -> Principal:
    assert user.id is not None
    return principal_for(
        session,
        user_id=user.id,
        username=user.username,
        role=role or user.role,
        # A key reaches what its owner reaches (an admin: every device); its role bounds what it may do.
        fleet_access="write" if role and role != "admin" and user.role == "admin" else user.fleet_access,
        is_teacher=user.is_teacher,
        org_id=user.org_id,
        **kw,  # type: ignore[arg-type]
    )


def _new_refresh(session: Session, user_id: int, family: str, ttl_s: float) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    expires = _now() + timedelta(seconds=ttl_s)
    session.add(RefreshToken(token_hash=hash_token(token), user_id=user_id, family=family, expires_at=expires))
    return token, expires


def login(session: Session, signer: TokenSigner, *, username: str, password: str, refresh_ttl_s: float) -> SignIn:
    """Check the password and open a session. Raises LoginRefused (never saying which part was wrong)."""
    user = session.exec(select(User).where(User.username == username)).first()
    if not verify_password(password, user.password_hash if user is not None else None):
        raise LoginRefused("wrong username or password")
    assert user is not None and user.id is not None
    if not user.is_active:
        raise LoginRefused("wrong username or password")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        session.add(user)
    access, exp = signer.issue(user_id=user.id, username=user.username, role=user.role)
    token, refresh_exp = _new_refresh(session, user.id, secrets.token_hex(16), refresh_ttl_s)
    session.commit()
    return SignIn(access, exp, token, refresh_exp, user)


def refresh(session: Session, signer: TokenSigner, *, refresh_token: str, refresh_ttl_s: float) -> SignIn:
    """Spend a refresh token for a new pair. Raises NotAuthenticated: unknown, expired, revoked,
    already used (then the whole family is revoked), or the user is disabled."""
    row = session.get(RefreshToken, hash_token(refresh_token))
    if row is None:
        raise NotAuthenticated("refresh token not recognised: log in again", reason="unknown")
    now = _now()
    if row.revoked_at is not None:
        raise NotAuthenticated("refresh token revoked: log in again", reason="revoked")
    if row.used_at is not None:
        for other in session.exec(select(RefreshToken).where(RefreshToken.family == row.family)).all():
            if other.revoked_at is None:
                other.revoked_at = now
                session.add(other)
        session.commit()
        raise NotAuthenticated("refresh token already used (the session is now closed): log in again", reason="reused")
    if _aware(row.expires_at) <= now:
        raise NotAuthenticated("refresh token expired: log in again", reason="expired")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("user disabled", reason="disabled")
    assert user.id is not None
    row.used_at = now
    session.add(row)
    access, exp = signer.issue(user_id=user.id, username=user.username, role=user.role)
    token, refresh_exp = _new_refresh(session, user.id, row.family, refresh_ttl_s)
    session.commit()
    return SignIn(access, exp, token, refresh_exp, user)


def logout(session: Session, *, refresh_token: str) -> None:
    """Revoke the refresh token's family (idempotent; an unknown token is ignored)."""
    row = session.get(RefreshToken, hash_token(refresh_token))
    if row is None:
        return
    now = _now()
    for other in session.exec(select(RefreshToken).where(RefreshToken.family == row.family)).all():
        if other.revoked_at is None:
            other.revoked_at = now
            session.add(other)
    session.commit()


def revoke_user_sessions(session: Session, *, user_id: int) -> None:
    """Revoke every refresh token of the user (disable, password reset). Caller commits."""
    now = _now()
    for row in session.exec(
        select(RefreshToken).where(RefreshToken.user_id == user_id, col(RefreshToken.revoked_at).is_(None))
    ).all():
        row.revoked_at = now
        session.add(row)


def authenticate_token(session: Session, signer: TokenSigner, token: str) -> Principal:
    """The principal behind an access token. Raises NotAuthenticated (bad token, disabled user)."""
    claims = signer.verify(token)
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("user disabled or removed", reason="disabled")
    return _principal(session, user)


def authenticate_key(session: Session, key: str) -> Principal:
    """The principal behind an API key. Raises NotAuthenticated (unknown, revoked, expired, disabled)."""
    row = session.exec(select(ApiKey).where(ApiKey.token_hash == hash_token(key))).first()
    if row is None:
        raise NotAuthenticated("invalid API key", reason="unknown")
    if row.revoked_at is not None:
        raise NotAuthenticated("API key revoked", reason="revoked")
    now = _now()
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise NotAuthenticated("API key expired", reason="expired")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("the API key's user is disabled", reason="disabled")
    if row.last_used_at is None or now - _aware(row.last_used_at) > timedelta(minutes=1):
        row.last_used_at = now
        session.add(row)
        session.commit()
    # A key never exceeds its owner's current role: the owner may have been demoted since.
    role = row.role if ROLE_PERMISSIONS[row.role] <= ROLE_PERMISSIONS[user.role] else user.role
    return _principal(session, user, role, key_id=row.id, key_devices=row.device_ids)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    row: ApiKey


def create_api_key(
    session: Session,
    *,
    actor: Principal,
    owner: User,
    name: str,
    role: str,
    device_ids: Sequence[str] | None = None,
    expires_in_s: float | None = None,
) -> IssuedKey:
    """A new API key for ``owner`` (shown once). Caller commits.

    Raises:
        AuthInvalid: unknown role.
        Forbidden: the role is above the owner's (or the actor's), or a device is not the owner's to give.
    """
    if role not in ROLES:
        raise AuthInvalid(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not ROLE_PERMISSIONS[role] <= ROLE_PERMISSIONS[owner.role] or not ROLE_PERMISSIONS[role] <= actor.permissions:
        raise Forbidden(f"a key may not have more than its owner's role ({owner.role!r})")
    assert owner.id is not None
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        token_hash=hash_token(secret),
        prefix=secret[:12],
        user_id=owner.id,
        name=name,
        role=role,
        device_ids=sorted(set(device_ids)) if device_ids is not None else None,
        expires_at=_now() + timedelta(seconds=expires_in_s) if expires_in_s else None,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="key.create",
        target_type="api_key",
        target_id=row.id or 0,
        after=audit.snapshot(row, fields=["id", "prefix", "user_id", "name", "role", "device_ids", "expires_at"]),
    )
    return IssuedKey(secret, row)


def list_api_keys(session: Session, *, user_id: int | None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(col(ApiKey.id))
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return session.exec(query).all()


def revoke_api_key(session: Session, *, actor: Principal, key_id: int) -> ApiKey:
    """Revoke a key of the actor's own (admins: anyone's). Caller commits. Raises NotVisible."""
    row = session.get(ApiKey, key_id)
    if row is None or (row.user_id != actor.user_id and not actor.is_admin):
        raise NotVisible(f"no API key {key_id}")
    if row.revoked_at is None:
        before = audit.snapshot(row, fields=["id", "prefix", "user_id", "name", "role", "revoked_at"])
        row.revoked_at = _now()
        session.add(row)
        audit.record(
            session,
            actor=actor,
            action="key.revoke",
            target_type="api_key",
            target_id=key_id,
            before=before,
            after=audit.snapshot(row, fields=["id", "prefix", "user_id", "name", "role", "revoked_at"]),
        )
    return row
