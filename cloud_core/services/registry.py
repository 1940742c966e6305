"""The device registry's rules: register (one-time expiring enrollment token), enroll (public key in,
MQTT credentials and the cloud's config key out), deactivate and rotate, each taking effect at the
broker at once and announced on the registry-events topic so caches (the bridge's keys) drop it.

Device states: ``pending`` (registered, never enrolled) -> ``active`` (enrolled) -> ``inactive``
(deactivated). ``rotate`` issues a new enrollment token and changes the broker password so the
old credentials are refused at once; the old public key stays registered until the device
enrolls again with a new one. Enrolling (again) re-activates a device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from iot_protocol import ProtocolError, Topics, check_public_key, public_key_from_b64, validate_device_id

from .. import crud
from ..broker.admin import BrokerAdmin, BrokerAdminError
from ..broker.client import Publisher
from ..core.config import CloudSettings
from ..core.security import generate_mqtt_password, generate_token, hash_token
from ..models import Device, DeviceCreate, DevicePublic, EnrollmentToken, utcnow
from .errors import (
    Conflict,
    DeviceDeactivated,
    InvalidInput,
    KeyInUse,
    NotFound,
    TokenExpired,
    TokenUnknown,
    TokenUsed,
    Unavailable,
    WeakKey,
)

__all__ = ["EnrollRequest", "EnrollResponse", "Registration", "Registry", "as_utc"]

log = logging.getLogger(__name__)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (databases may hand back naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Registration(BaseModel):
    """What registering (or rotating) a device returns: the token is shown once, never stored."""

    device: DevicePublic
    enrollment_token: str
    expires_at: datetime


class EnrollRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256, description="The one-time enrollment token.")
    public_key: str = Field(
        min_length=1, max_length=128, description="The device's Ed25519 public key, unpadded base64url."
    )


class EnrollResponse(BaseModel):
    """Everything a device needs to connect: its broker credentials and the cloud's config key."""

    device_id: str
    mqtt_url: str
    mqtt_username: str
    mqtt_password: str
    client_id: str
    topic_prefix: str
    cloud_public_key: str = Field(description="The cloud's Ed25519 config-signing key, unpadded base64url.")
    key_version: int
    mqtt_ca_pem: str | None = Field(
        default=None,
        description="PEM of the CA that signed the broker's TLS certificate: the device pins it and trusts "
        "only it for mqtts://. None: the broker's certificate is from a CA the device already trusts.",
    )
    release_public_key: str | None = Field(
        default=None,
        description="The Ed25519 key release manifests are signed with (distinct from the config key), "
        "unpadded base64url: the device installs only firmware whose manifest verifies with it.",
    )


@dataclass
class Registry:
    """Registry operations. Each method commits its own transaction on ``session``.

    Args:
        settings: the cloud's settings (token TTL, broker URLs, topic prefix).
        broker: provisions and revokes credentials at the broker.
        publisher: publishes registry events for other services.
        cloud_public_key: the config-signing public key handed to devices (base64url).
    release_public_key: the release-signing public key handed to devices (base64url), if any.
    """

    settings: CloudSettings
    broker: BrokerAdmin
    publisher: Publisher
    cloud_public_key: str
    release_public_key: str | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)

    # -- helpers ---------------------------------------------------------------------------------

    def _device(self, session: Session, device_id: str) -> Device:
        device = crud.get_device(session, device_id=device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}: register it first", device_id=device_id)
        return device

    def _new_token(self, session: Session, device: Device) -> tuple[str, datetime]:
        crud.revoke_enrollment_tokens(session, device_id=device.id)
        token = generate_token()
        expires_at = utcnow() + timedelta(seconds=self.settings.enrollment_token_ttl_s)
        crud.create_enrollment_token(
            session, device_id=device.id, token_hash=hash_token(token), expires_at=expires_at
        )
        return token, expires_at

    def _announce(self, device_id: str, event: str) -> None:
        payload = orjson.dumps({"v": 1, "device_id": device_id, "event": event})
        try:
            self.publisher.publish(self.topics.registry_events(), payload)
        except BrokerAdminError as exc:
            # The broker already enforces the change; caches fall back to their TTL.
            log.error("registry event not published: %s", exc, extra={"device_id": device_id, "event": event})

    # -- operations ------------------------------------------------------------------------------

    def register(
        self, session: Session, *, device_in: DeviceCreate, owner_id: int | None = None, class_id: int | None = None
    ) -> Registration:
        """Create a ``pending`` device (owned by ``owner_id``, in class ``class_id``) and its one-time
        enrollment token.

        Raises:
            InvalidInput: the id is not a valid device id, or is reserved for a service account.
            Conflict: a device with this id exists.
        """
        try:
            validate_device_id(device_in.id)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from None
        reserved = {self.settings.mqtt_username, self.settings.mqtt_admin_username}
        if device_in.id in reserved:
            raise InvalidInput(f"device id {device_in.id!r} is reserved for a broker service account")
        if crud.get_device(session, device_id=device_in.id) is not None:
            raise Conflict(f"device {device_in.id!r} already exists", device_id=device_in.id)
        device = crud.create_device(session, device_in=device_in)
        device.owner_id, device.class_id = owner_id, class_id
        token, expires_at = self._new_token(session, device)
        session.commit()
        log.info("device registered", extra={"device_id": device.id})
        return Registration(
            device=DevicePublic.model_validate(device), enrollment_token=token, expires_at=expires_at
        )

    def enroll(self, session: Session, *, token: str, public_key: str) -> EnrollResponse:
        """Use ``token`` once: register ``public_key`` for its device and provision its broker account.

        Raises:
            TokenUnknown, TokenUsed, TokenExpired: the token cannot be used (each says why).
            DeviceDeactivated: the device was deactivated (which revoked its token).
            InvalidInput: ``public_key`` is not 32 bytes of unpadded base64url.
            WeakKey: ``public_key`` is one no device may use (all zeros, small order, ...).
            KeyInUse: ``public_key`` is registered to another device.
            Unavailable: the broker did not take the credentials (the token stays usable).
        """
        row = session.exec(
            select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token)).with_for_update()
        ).first()
        if row is None:
            raise TokenUnknown("enrollment token not recognised: check it, or register the device again")
        if row.used_at is not None:
            owner = crud.get_device(session, device_id=row.device_id)
            if owner is not None and owner.status == "inactive":
                raise DeviceDeactivated(
                    f"device {row.device_id!r} is deactivated, which revoked its enrollment token: run "
                    f"'iotctl devices rotate {row.device_id}' for a new token to enroll it again",
                    device_id=row.device_id,
                )
            raise TokenUsed(
                "enrollment token already used: run 'iotctl devices rotate <id>' for a new one",
                device_id=row.device_id,
            )
        now = utcnow()
        if as_utc(row.expires_at) <= now:
            raise TokenExpired(
                f"enrollment token expired at {as_utc(row.expires_at).isoformat(timespec='seconds')}: "
                "run 'iotctl devices rotate <id>' for a new one",
                device_id=row.device_id,
            )
        try:
            raw = public_key_from_b64(public_key)
        except (ValueError, ProtocolError):
            raise InvalidInput(
                "public_key must be an Ed25519 public key: 32 bytes, unpadded base64url"
            ) from None
        try:
            check_public_key(raw)
        except ProtocolError as exc:
            raise WeakKey(f"{exc}: generate a new key pair", code=exc.reason, device_id=row.device_id) from None
        other = session.exec(
            select(Device.id).where(Device.public_key == public_key, Device.id != row.device_id)
        ).first()
        if other is not None:
            raise KeyInUse(
                "this public key is already registered to another device: every device needs its own key "
                "pair (generate a new one)",
                device_id=row.device_id,
            )
        device = self._device(session, row.device_id)
        row.used_at = now
        device.public_key = public_key
        device.key_version += 1
        device.status = "active"
        device.enrolled_at = now
        device.mqtt_username = device.id
        password = generate_mqtt_password()
        session.add(row)
        session.add(device)
        session.flush()
        try:
            self.broker.provision_device(device.id, password, self.settings.topic_prefix)
        except BrokerAdminError as exc:
            session.rollback()
            raise Unavailable(
                f"the broker did not take the device's credentials: {exc}", device_id=device.id
            ) from None
        session.commit()
        self._announce(device.id, "activated")
        log.info("device enrolled", extra={"device_id": device.id, "key_version": device.key_version})
        return EnrollResponse(
            device_id=device.id,
            mqtt_url=self.settings.public_mqtt_url,
            mqtt_username=device.id,
            mqtt_password=password,
            client_id=device.id,
            topic_prefix=self.settings.topic_prefix,
            cloud_public_key=self.cloud_public_key,
            key_version=device.key_version,
            mqtt_ca_pem=self.settings.mqtt_ca_file.read_text() if self.settings.mqtt_ca_file else None,
            release_public_key=self.release_public_key,
        )

    def deactivate(self, session: Session, *, device_id: str) -> Device:
        """Refuse the device from now on: broker account disabled (live connection dropped), unused
        tokens revoked, status ``inactive``; announced as ``deactivated``."""
        device = self._device(session, device_id)
        device.status = "inactive"
        crud.revoke_enrollment_tokens(session, device_id=device_id)
        session.add(device)
        session.flush()
        try:
            self.broker.deactivate_device(device_id)
        except BrokerAdminError as exc:
            session.rollback()
            raise Unavailable(f"the broker did not disable the device: {exc}", device_id=device_id) from None
        session.commit()
        self._announce(device_id, "deactivated")
        log.info("device deactivated", extra={"device_id": device_id})
        return device

    def rotate(self, session: Session, *, device_id: str) -> Registration:
        """New enrollment token; the broker password changes at once (old credentials refused, live
        connection dropped). The device re-enrolls with a new key pair; its old key is then refused."""
        device = self._device(session, device_id)
        token, expires_at = self._new_token(session, device)
        if device.status == "active":
            try:
                # Nobody learns this password: the device gets a fresh one when it re-enrolls.
                self.broker.rotate_device_password(device_id, generate_mqtt_password())
            except BrokerAdminError as exc:
                session.rollback()
                raise Unavailable(
                    f"the broker did not change the password: {exc}", device_id=device_id
                ) from None
        session.commit()
        self._announce(device_id, "rotated")
        log.info("device credentials rotated", extra={"device_id": device_id})
        return Registration(
            device=DevicePublic.model_validate(device), enrollment_token=token, expires_at=expires_at
        )
