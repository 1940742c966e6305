"""Every permission the rollout and release routes need, in one place, and the one dependency that
checks it. Today each permission maps onto the API's roles (admin > operator > viewer); mapping
them onto a finer permission model is a change to :data:`PERMISSIONS` and :func:`require` only."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends

from ..api.deps import require_role
from ..models import User

__all__ = ["PERMISSIONS", "require"]

PERMISSIONS: dict[str, str] = {
    "rollouts:read": "viewer",  # list rollouts, status, devices, history
    "rollouts:write": "operator",  # create, pause, resume, abort
    "releases:read": "viewer",  # list and show releases, download artifacts as a user
    "releases:write": "operator",  # create a release (signed manifest) and upload its artifact
    "releases:sign": "admin",  # have the API sign a manifest with its release key
    "devices:tag": "operator",  # set a device's tags
}


def require(permission: str) -> Callable[..., User]:
    """A FastAPI dependency admitting users who hold ``permission``; use as
    ``user: Annotated[User, Depends(require("rollouts:write"))]``."""
    role = PERMISSIONS[permission]
    return require_role(role)


def permission(permission_name: str) -> object:
    """``Depends(require(permission_name))``, for a route's signature."""
    return Depends(require(permission_name))
