"""Builds the broker-administration seam from settings (kept apart from :mod:`.admin`, which the
implementations import, so no module imports back the one that imports it)."""

from __future__ import annotations

from ..core.config import CloudSettings
from .admin import BrokerAdmin, UnmanagedBroker

__all__ = ["open_broker_admin"]


def open_broker_admin(settings: CloudSettings) -> BrokerAdmin:
    """`DynsecAdmin` when a dynamic-security admin user is configured, else `UnmanagedBroker`."""
    if settings.mqtt_admin_username is None:
        return UnmanagedBroker()
    from .dynsec import DynsecAdmin

    host, port = settings.mqtt_host_port
    password = settings.mqtt_admin_password.get_secret_value() if settings.mqtt_admin_password else ""
    return DynsecAdmin(
        host,
        port,
        username=settings.mqtt_admin_username,
        password=password,
        timeout_s=settings.mqtt_timeout_s,
        tls=settings.mqtt_tls_context(),
    )
