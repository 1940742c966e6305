"""Desired-config routes: set (merge, sign, publish retained) and show desired vs reported."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ... import crud
from ...auth import audit
from ...auth.access import Principal
from ...services.config import ConfigView
from ..deps import ContextDep, P, SessionDep, require

router = APIRouter(prefix="/v1", tags=["config"])


def _latest(session: SessionDep, device_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    row = crud.latest_config(session, device_id=device_id)
    return {"changes": changes, "version": row.version if row else 0, "settings": row.settings if row else {}}


class ConfigChange(BaseModel):
    settings: dict[str, Any] = Field(
        description="Settings to change, merged over the current desired config; null removes a key."
    )


@router.put("/devices/{device_id}/config", response_model=ConfigView)
def set_config(
    device_id: str,
    body: ConfigChange,
    session: SessionDep,
    ctx: ContextDep,
    p: Annotated[Principal, Depends(require(P.WRITE_DEVICES, device="device_id"))],
) -> ConfigView:
    before = ctx.configs.show(session, device_id=device_id)
    audit.stage(
        session,
        actor=p,
        action="config.set",
        target_type="device",
        target_id=device_id,
        before={"version": before.desired_version, "settings": before.desired},
        after=lambda: _latest(session, device_id, body.settings),
    )
    view = ctx.configs.set_desired(session, device_id=device_id, changes=body.settings, created_by=p.actor)
    ctx.metrics.config_versions.inc()
    return view


@router.get("/devices/{device_id}/config", response_model=ConfigView)
def get_config(
    device_id: str,
    session: SessionDep,
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(require(P.READ_DEVICES, device="device_id"))],
) -> ConfigView:
    return ctx.configs.show(session, device_id=device_id)
