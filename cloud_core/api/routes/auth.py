"""Sign-in routes: log in (password -> access token + refresh token), refresh, log out, who am I,
change my password, my broker (MQTT) credentials, the public keys that verify access tokens, and
rotating the signing key.

Browsers: login and refresh also set HttpOnly cookies (``edu_access``; ``edu_refresh`` only sent to
/v1/auth) and a readable ``edu_csrf`` cookie whose value must come back in the ``X-CSRF-Token``
header of any request that changes something while signed in by cookie. Programs use the JSON body
and ``Authorization: Bearer``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from ...auth import audit
from ...auth.access import Principal, visible_device_ids
from ...auth.credentials import SignIn, login, logout, refresh
from ...auth.errors import LoginRefused, NotAuthenticated
from ...auth.models import UserPublic
from ...auth.passwords import verify_password
from ...auth.tokens import rotate_signing_key
from ...auth.users import get_user, set_password
from ...broker.admin import reader_topics
from ..deps import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    REFRESH_COOKIE,
    Admin,
    Authenticated,
    ContextDep,
    P,
    SessionDep,
    public,
    require,
)

router = APIRouter(prefix="/v1/auth", tags=["auth"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(BaseModel):
    refresh_token: str | None = Field(default=None, max_length=256, description="Omit to use the cookie.")


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: int = Field(description="When the access token expires (epoch seconds).")
    refresh_token: str
    refresh_expires_at: datetime
    user: UserPublic


class Me(BaseModel):
    user: UserPublic
    role: str
    permissions: list[str]
    via: str = Field(description="token (a JWT) or key (an API key)")
    key_devices: list[str] | None
    teacher_of: list[int]
    student_of: list[int]


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class MqttCredentials(BaseModel):
    mqtt_url: str
    mqtt_username: str
    mqtt_password: str
    topic_prefix: str
    topics: list[str] = Field(description="What the account may subscribe to (read only).")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _secure(request: Request, ctx: ContextDep) -> bool:
    if ctx.settings.cookie_secure is not None:
        return ctx.settings.cookie_secure
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _answer(request: Request, response: Response, ctx: ContextDep, s: SignIn) -> TokenPair:
    secure = _secure(request, ctx)
    max_age = int(ctx.settings.refresh_token_ttl_s)
    response.set_cookie(
        ACCESS_COOKIE, s.access_token, max_age=int(ctx.settings.access_token_ttl_s), httponly=True,
        secure=secure, samesite="strict", path="/",
    )  # fmt: skip
    response.set_cookie(
        REFRESH_COOKIE, s.refresh_token, max_age=max_age, httponly=True, secure=secure, samesite="strict",
        path="/v1/auth",
    )  # fmt: skip
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), max_age=max_age, secure=secure, samesite="strict")
    return TokenPair(
        access_token=s.access_token,
        expires_at=s.expires_at,
        refresh_token=s.refresh_token,
        refresh_expires_at=s.refresh_expires_at,
        user=UserPublic.model_validate(s.user),
    )


@router.post(
    "/login",
    response_model=TokenPair,
    dependencies=[Depends(public("the password itself"))],
    responses={429: {"description": "Too many failed logins; see Retry-After."}},
)
def post_login(
    body: LoginRequest, request: Request, response: Response, session: SessionDep, ctx: ContextDep
) -> TokenPair:
    """Password sign-in. Failed attempts are limited per user and per address (429 with Retry-After)."""
    address = _address(request)
    ctx.throttle.check(body.username, address)
    try:
        signed = login(
            session, ctx.signer, username=body.username, password=body.password,
            refresh_ttl_s=ctx.settings.refresh_token_ttl_s,
        )  # fmt: skip
    except LoginRefused:
        ctx.throttle.failed(body.username, address)
        raise
    ctx.throttle.succeeded(body.username, address)
    return _answer(request, response, ctx, signed)


@router.post("/refresh", response_model=TokenPair, dependencies=[Depends(public("the refresh token itself"))])
def post_refresh(
    request: Request, response: Response, session: SessionDep, ctx: ContextDep, body: RefreshRequest | None = None
) -> TokenPair:
    """Spend a refresh token (body or cookie) for a new access token and a new refresh token."""
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise NotAuthenticated("no refresh token: send it in the body or the cookie", reason="missing")
    signed = refresh(session, ctx.signer, refresh_token=token, refresh_ttl_s=ctx.settings.refresh_token_ttl_s)
    return _answer(request, response, ctx, signed)


@router.post("/logout", status_code=204, dependencies=[Depends(public("the refresh token itself"))])
def post_logout(
    request: Request, response: Response, session: SessionDep, body: RefreshRequest | None = None
) -> Response:
    """Revoke the refresh token's session (body or cookie) and clear the cookies."""
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if token:
        logout(session, refresh_token=token)
    answer = Response(status_code=204)
    for name, path in ((ACCESS_COOKIE, "/"), (REFRESH_COOKIE, "/v1/auth"), (CSRF_COOKIE, "/")):
        answer.delete_cookie(name, path=path)
    return answer


@router.get("/me", response_model=Me)
def get_me(p: Authenticated, session: SessionDep) -> Me:
    """Who is signed in, with what role, permissions and classes."""
    user = get_user(session, user_id=p.user_id)
    return Me(
        user=UserPublic.model_validate(user),
        role=p.role,
        permissions=sorted(x.value for x in p.permissions),
        via="token" if p.key_id is None else "key",
        key_devices=sorted(p.key_devices) if p.key_devices is not None else None,
        teacher_of=sorted(p.teacher_of),
        student_of=sorted(p.student_of),
    )


@router.post("/password", status_code=204)
def post_password(body: PasswordChange, p: Authenticated, session: SessionDep) -> Response:
    """Change your own password (the current one is needed); your other sessions are closed."""
    user = get_user(session, user_id=p.user_id)
    if not verify_password(body.current_password, user.password_hash):
        raise LoginRefused("the current password is wrong")
    set_password(session, actor=p, user=user, password=body.new_password)
    session.commit()
    return Response(status_code=204)


@router.post("/mqtt-credentials", response_model=MqttCredentials)
def post_mqtt_credentials(
    p: Annotated[Principal, Depends(require(P.READ_DATA))], session: SessionDep, ctx: ContextDep
) -> MqttCredentials:
    """Your read-only broker account for dashboards and notebooks (a new password each call: shown
    once). It may subscribe only to the topics of the devices you may read."""
    user = get_user(session, user_id=p.user_id)
    username, password = ctx.broker_sync.issue_credentials(session, user)
    audit.record(session, actor=p, action="user.mqtt_credentials", target_type="user", target_id=user.username)
    session.commit()
    visible = visible_device_ids(session, p)
    return MqttCredentials(
        mqtt_url=ctx.settings.public_mqtt_url,
        mqtt_username=username,
        mqtt_password=password,
        topic_prefix=ctx.settings.topic_prefix,
        topics=reader_topics(sorted(visible) if visible is not None else None, ctx.settings.topic_prefix),
    )


@router.get("/jwks", dependencies=[Depends(public("public keys"))])
def get_jwks(ctx: ContextDep) -> dict[str, Any]:
    """The Ed25519 public keys (JWK Set) that verify access tokens, by ``kid``."""
    return ctx.signer.jwks()


@router.post("/signing-keys/rotate")
def post_rotate(p: Admin, session: SessionDep, ctx: ContextDep) -> dict[str, Any]:
    """Start signing with a new key; the old one verifies until its tokens expire."""
    key = rotate_signing_key(session)
    audit.record(session, actor=p, action="auth.rotate_signing_key", target_type="signing_key", target_id=key.kid)
    session.commit()
    ctx.signer.reload()
    return {"kid": key.kid}
