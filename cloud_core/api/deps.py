"""Typed dependencies of the API's routes: the app context, a database session per request, the
user behind the bearer token, and role checks (``admin`` > ``operator`` > ``viewer``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from .. import crud
from ..core.security import hash_token
from ..models import User
from .app import AppContext

__all__ = ["ROLES", "ContextDep", "CurrentUser", "SessionDep", "require_role"]

# Each role may do what the roles after it may do.
ROLES = ("admin", "operator", "viewer")


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with Session(ctx.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False)


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    user = crud.get_user_by_token(session, token_hash=hash_token(credentials.credentials))
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API token", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(role: str) -> Callable[[User], User]:
    """A dependency admitting users whose role is ``role`` or above."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    allowed = ROLES[: ROLES.index(role) + 1]

    def check(user: CurrentUser) -> User:
        if user.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"role {user.role!r} may not do this: needs {role}"
            )
        return user

    return check


Operator = Annotated[User, Depends(require_role("operator"))]
Viewer = Annotated[User, Depends(require_role("viewer"))]
