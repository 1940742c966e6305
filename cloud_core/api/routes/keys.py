"""API keys for automation and CI: create (shown once), list, revoke. Anyone signed in manages their
own keys; admins may create keys for others and see and revoke anyone's."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ...auth.credentials import create_api_key, list_api_keys, revoke_api_key
from ...auth.errors import Forbidden
from ...auth.models import ApiKeyPublic
from ...auth.users import get_user
from ..deps import Authenticated, Id, SessionDep

router = APIRouter(prefix="/v1", tags=["keys"])


class KeyCreate(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=64)
    role: str = Field(default="readonly", description="admin, user, device or readonly; at most the owner's.")
    device_ids: list[str] | None = Field(default=None, max_length=1000, description="Only these devices.")
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400)
    username: str | None = Field(default=None, description="Owner (admins only; default: you).")


class KeyCreated(BaseModel):
    key: str = Field(description="The key: shown only now.")
    info: ApiKeyPublic


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, p: Authenticated, session: SessionDep) -> KeyCreated:
    if body.username is not None and body.username != p.username and not p.is_admin:
        raise Forbidden("only an admin may create keys for someone else")
    owner = get_user(session, username=body.username) if body.username else get_user(session, user_id=p.user_id)
    issued = create_api_key(
        session,
        actor=p,
        owner=owner,
        name=body.name,
        role=body.role,
        device_ids=body.device_ids,
        expires_in_s=body.expires_in_s,
    )
    session.commit()
    return KeyCreated(key=issued.key, info=ApiKeyPublic.model_validate(issued.row))


@router.get("/keys", response_model=list[ApiKeyPublic])
def list_keys(p: Authenticated, session: SessionDep, all_users: bool = False) -> list[ApiKeyPublic]:
    """Your keys (admins: ``all_users=true`` for everyone's)."""
    rows = list_api_keys(session, user_id=None if all_users and p.is_admin else p.user_id)
    return [ApiKeyPublic.model_validate(r) for r in rows]


@router.delete("/keys/{key_id}", response_model=ApiKeyPublic)
def revoke_key(key_id: Id, p: Authenticated, session: SessionDep) -> ApiKeyPublic:
    row = revoke_api_key(session, actor=p, key_id=key_id)
    session.commit()
    return ApiKeyPublic.model_validate(row)
