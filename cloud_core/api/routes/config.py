"""Desired-config routes: set (merge, sign, publish retained) and show desired vs reported."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ...services.config import ConfigView
from ..deps import ContextDep, Operator, SessionDep, Viewer

router = APIRouter(prefix="/v1", tags=["config"])


class ConfigChange(BaseModel):
    settings: dict[str, Any] = Field(
        description="Settings to change, merged over the current desired config; null removes a key."
    )


@router.put("/devices/{device_id}/config", response_model=ConfigView)
def set_config(
    device_id: str, body: ConfigChange, session: SessionDep, ctx: ContextDep, user: Operator
) -> ConfigView:
    view = ctx.configs.set_desired(
        session, device_id=device_id, changes=body.settings, created_by=user.username
    )
    ctx.metrics.config_versions.inc()
    return view


@router.get("/devices/{device_id}/config", response_model=ConfigView)
def get_config(device_id: str, session: SessionDep, ctx: ContextDep, _user: Viewer) -> ConfigView:
    return ctx.configs.show(session, device_id=device_id)
