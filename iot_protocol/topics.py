"""MQTT topic names of the contract: building them, and parsing a received topic back.

Every topic is ``{prefix}/devices/{device_id}/{kind}``; ``kind`` is one of :class:`Kind`.
Device ids are 1-64 characters of ``A-Z a-z 0-9 _ -``, so they can never hold MQTT
wildcards (``+``, ``#``) or a level separator.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from .errors import TopicError

__all__ = ["DEVICE_ID_RE", "Kind", "Topics", "validate_device_id"]

DEVICE_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
_PREFIX_RE = re.compile(r"\A[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\Z")


class Kind(enum.StrEnum):
    """What a topic carries, and who publishes it."""

    TELEMETRY = "telemetry"  # device -> cloud, QoS 1, JWS-signed batch
    RECEIPTS = "receipts"  # cloud -> device, QoS 1: which batches are durably stored
    STATUS = "status"  # device -> cloud, retained, QoS 1; last will says offline
    HEALTH = "health"  # device -> cloud, QoS 1 heartbeat
    CONFIG_DESIRED = "config/desired"  # cloud -> device, retained, QoS 1, JWS-signed by the cloud
    CONFIG_REPORTED = "config/reported"  # device -> cloud, QoS 1
    ALERTS = "alerts"  # cloud -> anyone allowed, QoS 1: anomaly episodes for the device


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged, or raise :class:`TopicError` naming what is wrong."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise TopicError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_' or '-'", reason="bad_device_id"
        )
    return device_id


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (default ``edu``)."""

    prefix: str = "edu"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise TopicError(f"invalid topic prefix {self.prefix!r}", reason="bad_prefix")

    def for_device(self, device_id: str, kind: Kind) -> str:
        return f"{self.prefix}/devices/{validate_device_id(device_id)}/{kind.value}"

    def telemetry(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.TELEMETRY)

    def receipts(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.RECEIPTS)

    def status(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.STATUS)

    def health(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.HEALTH)

    def config_desired(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.CONFIG_DESIRED)

    def config_reported(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.CONFIG_REPORTED)

    def alerts(self, device_id: str) -> str:
        return self.for_device(device_id, Kind.ALERTS)

    def all_devices(self, kind: Kind) -> str:
        """Subscription filter for ``kind`` from every device."""
        return f"{self.prefix}/devices/+/{kind.value}"

    def shared(self, group: str, kind: Kind) -> str:
        """MQTT 5 shared-subscription filter: replicas in ``group`` split the messages."""
        return f"$share/{group}/{self.all_devices(kind)}"

    def registry_events(self) -> str:
        """Cloud-internal: registry changes (deactivate, rotate) that services must act on at once.
        Payload ``{"v":1,"device_id":...,"event":"deactivated"|"rotated"|"activated"}``; only the
        cloud's service account may publish or subscribe here."""
        return f"{self.prefix}/cloud/registry"

    def parse(self, topic: str) -> tuple[str, Kind]:
        """Split a received topic into (device_id, kind), or raise :class:`TopicError`."""
        return _parse(self.prefix, topic)


# A fleet's topics repeat with every message: parsed ones are kept (by prefix and topic, at most
# 64k of them; a topic that raises is not kept).
@functools.lru_cache(maxsize=65_536)
def _parse(prefix: str, topic: str) -> tuple[str, Kind]:
    head = f"{prefix}/devices/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under {head!r}")
    device_id, sep, rest = topic[len(head) :].partition("/")
    if not sep:
        raise TopicError(f"topic {topic!r} names no message kind")
    validate_device_id(device_id)
    try:
        kind = Kind(rest)
    except ValueError:
        raise TopicError(f"topic {topic!r}: unknown message kind {rest!r}") from None
    return device_id, kind
