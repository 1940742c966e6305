"""The broker-administration seam: provision, deactivate and rotate device credentials and ACLs.

Implementations: :class:`cloud_core.broker.dynsec.DynsecAdmin` (Mosquitto 2 dynamic security) and
:class:`UnmanagedBroker` (a development broker with anonymous access: it enforces nothing, and
says so in the log on every provisioning call). :func:`cloud_core.broker.factory.open_broker_admin`
picks one from settings.

Besides devices, the seam keeps people's read-only accounts (dashboards, notebooks): a *reader
role* names the devices whose topics its holders may subscribe to and receive (nothing may be
published), and a *reader account* holds some roles (:func:`reader_topics`).

Errors::

    BrokerAdminError          root: the broker did not do what was asked
    ├── BrokerUnavailable     no connection, or no reply in time (retryable)
    └── BrokerCommandFailed   the broker answered with an error (``command``, ``error``)
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

from iot_protocol import Kind, Topics, validate_device_id

__all__ = [
    "DEVICE_PUBLISH",
    "DEVICE_SUBSCRIBE",
    "BrokerAdmin",
    "BrokerAdminError",
    "BrokerCommandFailed",
    "BrokerUnavailable",
    "UnmanagedBroker",
    "device_topics",
    "reader_topics",
]

log = logging.getLogger(__name__)

# What a device may do, exactly: publish its own telemetry/status/health/config reports, and
# subscribe to (and receive) its own receipts, desired config and alerts. Nothing else.
DEVICE_PUBLISH = (Kind.TELEMETRY, Kind.STATUS, Kind.HEALTH, Kind.CONFIG_REPORTED)
DEVICE_SUBSCRIBE = (Kind.RECEIPTS, Kind.CONFIG_DESIRED, Kind.ALERTS)


def device_topics(device_id: str, prefix: str) -> tuple[list[str], list[str]]:
    """(topics ``device_id`` may publish, topics it may subscribe to) under ``prefix``."""
    topics = Topics(prefix)
    return (
        [topics.for_device(device_id, k) for k in DEVICE_PUBLISH],
        [topics.for_device(device_id, k) for k in DEVICE_SUBSCRIBE],
    )


def reader_topics(device_ids: Sequence[str] | None, prefix: str) -> list[str]:
    """The topic filters a reader of ``device_ids`` may subscribe to (None: every device)."""
    if device_ids is None:
        return [f"{prefix}/devices/#"]
    return [f"{prefix}/devices/{validate_device_id(d)}/#" for d in sorted(set(device_ids))]


class BrokerAdminError(Exception):
    """Root of broker administration errors."""

    retryable = False


class BrokerUnavailable(BrokerAdminError):
    retryable = True


class BrokerCommandFailed(BrokerAdminError):
    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"broker refused {command}: {error}")
        self.command = command
        self.error = error


class BrokerAdmin(abc.ABC):
    """What the registry needs from the broker. Every method is idempotent."""

    @abc.abstractmethod
    def ensure_service_account(self, username: str, password: str, *, prefix: str = "edu") -> None:
        """Create (or update) the cloud's account: anything under ``prefix``, incl. ``$share``."""

    @abc.abstractmethod
    def provision_device(self, device_id: str, password: str, prefix: str) -> None:
        """Create (or reset) the device's account with exactly its own topics; enable it."""

    @abc.abstractmethod
    def deactivate_device(self, device_id: str) -> None:
        """Refuse the device from now on and drop its live connection at once."""

    @abc.abstractmethod
    def rotate_device_password(self, device_id: str, password: str) -> None:
        """Replace the device's password (the old one is refused) and drop its live connection."""

    @abc.abstractmethod
    def set_reader_role(self, role: str, topics: Sequence[str]) -> None:
        """Make ``role`` allow subscribing to and receiving exactly ``topics`` (filters); never publishing."""

    @abc.abstractmethod
    def set_reader_account(self, username: str, password: str | None, roles: Sequence[str]) -> None:
        """Create or update a reader account holding exactly ``roles``; ``password`` None keeps the
        current one. Enables it."""

    @abc.abstractmethod
    def disable_reader_account(self, username: str) -> None:
        """Refuse the account from now on and drop its live connection."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the admin connection."""


class UnmanagedBroker(BrokerAdmin):
    """A broker the cloud cannot administer (anonymous access, no dynamic security). Development only:
    devices get credentials the broker does not check, and any client can publish anywhere."""

    def ensure_service_account(self, username: str, password: str, *, prefix: str = "edu") -> None:
        log.warning("broker is unmanaged: the service account is not enforced")

    def provision_device(self, device_id: str, password: str, prefix: str) -> None:
        log.warning(
            "broker is unmanaged: device credentials and ACLs are not enforced",
            extra={"device_id": device_id},
        )

    def deactivate_device(self, device_id: str) -> None:
        log.warning(
            "broker is unmanaged: a deactivated device can still connect", extra={"device_id": device_id}
        )

    def rotate_device_password(self, device_id: str, password: str) -> None:
        log.warning("broker is unmanaged: old credentials still work", extra={"device_id": device_id})

    def set_reader_role(self, role: str, topics: Sequence[str]) -> None:
        log.warning("broker is unmanaged: reader roles are not enforced", extra={"role": role})

    def set_reader_account(self, username: str, password: str | None, roles: Sequence[str]) -> None:
        log.warning("broker is unmanaged: reader accounts are not enforced", extra={"mqtt_username": username})

    def disable_reader_account(self, username: str) -> None:
        log.warning("broker is unmanaged: a disabled reader can still connect", extra={"mqtt_username": username})
