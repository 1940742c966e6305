"""Desired configuration: validate, merge over the previous version, sign with the cloud's key,
store (versioned, monotonic per device) and publish retained (QoS 1) on the device's
``config/desired`` topic, so a device that was away receives only the newest on reconnect."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlmodel import Session, select

from iot_protocol import ConfigDocument, Topics, ValidationError, parse_settings, seal_config

from .. import crud
from ..broker.admin import BrokerAdminError
from ..broker.client import Publisher
from ..models import Device
from .errors import Conflict, InvalidInput, NotFound, Unavailable

__all__ = ["ConfigService", "ConfigView", "merge_settings"]

log = logging.getLogger(__name__)


def merge_settings(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base``: dict values merge key by key; ``None`` removes a key."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


class ConfigView(BaseModel):
    """Desired vs reported configuration of one device."""

    device_id: str
    desired_version: int
    desired: dict[str, Any]
    desired_at: datetime | None
    reported_version: int
    reported_status: str | None
    reported_error: str | None
    in_sync: bool


@dataclass
class ConfigService:
    """Args:
    topic_prefix: the deployment's topic prefix.
    signing_key: the cloud's config-signing key (its public half is given to devices at enrollment).
    publisher: publishes the signed document retained with QoS 1.
    """

    topic_prefix: str
    signing_key: Ed25519PrivateKey
    publisher: Publisher

    def _device(self, session: Session, device_id: str) -> Device:
        device = crud.get_device(session, device_id=device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}", device_id=device_id)
        return device

    def set_desired(
        self,
        session: Session,
        *,
        device_id: str,
        changes: dict[str, Any],
        created_by: str | None = None,
        replace: bool = False,
    ) -> ConfigView:
        """Store and publish version ``previous + 1`` of ``device_id``'s desired config: ``changes``
        merged over the previous version, or (``replace``) exactly ``changes`` (a rollback).

        Raises:
            NotFound: no such device.
            Conflict: the device is deactivated.
            InvalidInput: a setting is unknown or out of range (nothing is stored).
            Unavailable: the broker did not acknowledge the retained message (the version is stored;
                setting the config again publishes a newer one).
        """
        # Lock the device row: concurrent sets on one device take versions one after the other.
        device = session.exec(select(Device).where(Device.id == device_id).with_for_update()).first()
        if device is None:
            raise NotFound(f"no device {device_id!r}", device_id=device_id)
        if device.status == "inactive":
            raise Conflict(f"device {device_id!r} is deactivated", device_id=device_id)
        if not changes and not replace:
            raise InvalidInput("no settings given: pass at least one key=value")
        previous = crud.latest_config(session, device_id=device_id)
        merged = dict(changes) if replace else merge_settings(dict(previous.settings) if previous else {}, changes)
        try:
            settings = parse_settings(merged).to_dict()
        except ValidationError as exc:
            raise InvalidInput(str(exc), device_id=device_id) from None
        version = max(previous.version if previous else 0, device.desired_config_version) + 1
        doc = ConfigDocument(device_id=device_id, version=version, issued_at=_now_ms(), settings=settings)
        token = seal_config(doc, self.signing_key)
        row = crud.create_config(
            session,
            device_id=device_id,
            version=version,
            settings=settings,
            token=token.decode("ascii"),
            created_by=created_by,
        )
        device.desired_config_version = version
        session.add(device)
        # Commit before publishing: a published version must always exist in the database, or a
        # later set could reuse its number and the device would refuse it as not newer.
        session.commit()
        try:
            self.publisher.publish(Topics(self.topic_prefix).config_desired(device_id), token, retain=True)
        except BrokerAdminError as exc:
            raise Unavailable(
                f"config version {version} stored but not published: {exc}; set it again to retry",
                device_id=device_id,
            ) from None
        log.info("desired config published", extra={"device_id": device_id, "config_version": version})
        return _view(device, row.settings, row.created_at)

    def republish(self, session: Session, *, device_id: str) -> int:
        """Publish the stored latest version again (after a publish failed); returns its version.

        Raises:
            NotFound: no desired config for the device. Unavailable: the broker did not acknowledge.
        """
        latest = crud.latest_config(session, device_id=device_id)
        if latest is None:
            raise NotFound(f"no desired config for {device_id!r}", device_id=device_id)
        try:
            self.publisher.publish(
                Topics(self.topic_prefix).config_desired(device_id), latest.token.encode("ascii"), retain=True
            )
        except BrokerAdminError as exc:
            raise Unavailable(f"config version {latest.version} not published: {exc}", device_id=device_id) from None
        return latest.version

    def show(self, session: Session, *, device_id: str) -> ConfigView:
        device = self._device(session, device_id)
        latest = crud.latest_config(session, device_id=device_id)
        return _view(device, dict(latest.settings) if latest else {}, latest.created_at if latest else None)


def _view(device: Device, desired: dict[str, Any], desired_at: datetime | None) -> ConfigView:
    return ConfigView(
        device_id=device.id,
        desired_version=device.desired_config_version,
        desired=desired,
        desired_at=desired_at,
        reported_version=device.reported_config_version,
        reported_status=device.reported_config_status,
        reported_error=device.reported_config_error,
        in_sync=device.reported_config_version == device.desired_config_version
        and device.reported_config_status in (None, "applied"),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
