"""People's read-only broker accounts, kept in step with the permission model.

Roles at the broker (Mosquitto dynamic security, or the embedded amqtt broker's equivalent):

- ``edu-<prefix>-user-<user id>``: the topics of the user's own devices and of devices granted to them
  (one by one or a whole class); every device for admins and users with fleet access;
- ``edu-<prefix>-class-<class id>``: the topics of the devices the class's students share with it, held by
  every member;
- ``edu-<prefix>-class-<class id>-teachers``: the topics of every device of the class, held by its teachers.

A user's broker account (``user:<username>``, created when they ask for MQTT credentials) holds
their user role and the roles of their classes, and may subscribe and receive only (never publish).
Device ids cannot contain ``:``, so these names never collide with a device's account.
"""

from __future__ import annotations

import logging
import secrets

from sqlmodel import Session, select

from ..broker.admin import BrokerAdmin, reader_topics
from ..models import Device
from .models import ClassMember, DevicePermission, GroupPermission, User

__all__ = ["BrokerSync", "class_role", "mqtt_username_for", "user_role"]

log = logging.getLogger(__name__)


def mqtt_username_for(username: str) -> str:
    return f"user:{username}"


def user_role(prefix: str, user_id: int) -> str:
    return f"edu-{prefix}-user-{user_id}"


def class_role(prefix: str, class_id: int, *, teachers: bool = False) -> str:
    base = f"edu-{prefix}-class-{class_id}"
    return f"{base}-teachers" if teachers else base


class BrokerSync:
    """Applies the database's view of people's reach to the broker. Each method is idempotent."""

    def __init__(self, broker: BrokerAdmin, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix

    def _user_devices(self, session: Session, user: User) -> list[str] | None:
        if user.role == "admin" or user.fleet_access is not None:
            return None
        ids = set(session.exec(select(Device.id).where(Device.owner_id == user.id)).all())
        ids |= set(session.exec(select(DevicePermission.device_id).where(DevicePermission.user_id == user.id)).all())
        groups = session.exec(select(GroupPermission.class_id).where(GroupPermission.user_id == user.id)).all()
        for class_id in groups:
            ids |= set(session.exec(select(Device.id).where(Device.class_id == class_id)).all())
        return sorted(ids)

    def sync_user(self, session: Session, user: User, *, password: str | None = None) -> None:
        """Set the user's role and, when they have a broker account (or ``password`` creates one),
        the account's roles."""
        assert user.id is not None
        if user.mqtt_username is None and password is None:
            return
        p = self.prefix
        self.broker.set_reader_role(user_role(p, user.id), reader_topics(self._user_devices(session, user), p))
        roles = [user_role(p, user.id)]
        for m in session.exec(select(ClassMember).where(ClassMember.user_id == user.id)).all():
            self.sync_class(session, m.class_id)  # the account may only hold roles that exist
            roles.append(class_role(p, m.class_id))
            if m.class_role == "teacher":
                roles.append(class_role(p, m.class_id, teachers=True))
        username = user.mqtt_username or mqtt_username_for(user.username)
        if not user.is_active:
            self.broker.disable_reader_account(username)
            return
        self.broker.set_reader_account(username, password, roles)

    def sync_class(self, session: Session, class_id: int) -> None:
        devices = session.exec(select(Device).where(Device.class_id == class_id)).all()
        p = self.prefix
        shared = [d.id for d in devices if d.shared_with_class]
        self.broker.set_reader_role(class_role(p, class_id), reader_topics(shared, p))
        self.broker.set_reader_role(class_role(p, class_id, teachers=True), reader_topics([d.id for d in devices], p))

    def sync_device(self, session: Session, device: Device) -> None:
        """After a device was registered, moved, shared or unshared: its owner's and its class's roles."""
        if device.class_id is not None:
            self.sync_class(session, device.class_id)
        if device.owner_id is not None:
            owner = session.get(User, device.owner_id)
            if owner is not None:
                self.sync_user(session, owner)

    def issue_credentials(self, session: Session, user: User) -> tuple[str, str]:
        """(username, a new password) for the user's broker account; shown once. Caller commits."""
        password = secrets.token_urlsafe(24)
        if user.mqtt_username is None:
            user.mqtt_username = mqtt_username_for(user.username)
            session.add(user)
            session.flush()
        self.sync_user(session, user, password=password)
        return user.mqtt_username, password
