"""Which devices a rollout targets: selectors by device id, device type, tag, or group, each
resolved by a pluggable resolver. A device matches a target when any selector matches it; only
``active`` (enrolled, not deactivated) devices are targeted.

Group (class) targeting has no resolver until one is registered with :func:`register_resolver`
(``register_resolver("groups", fn)``, e.g. by the users-and-classes module); until then a target
naming groups is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from iot_protocol import ProtocolError, validate_device_id

from ..models import Device, DeviceTag
from .errors import RolloutInvalid

__all__ = ["KINDS", "Resolver", "Target", "parse_target", "register_resolver", "resolve"]

KINDS = ("devices", "types", "tags", "groups")
_SINGULAR = {"device": "devices", "type": "types", "tag": "tags", "group": "groups", "class": "groups"}

Resolver = Callable[[Session, Sequence[str]], Iterable[str]]
"""(session, names) -> ids of the devices those names select (any status; inactive ones are dropped)."""


@dataclass(frozen=True, slots=True)
class Target:
    devices: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in KINDS if getattr(self, k)}

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in KINDS)

    def describe(self) -> str:
        """The selectors as ``--target`` spells them: ``type:rpi tag:pilot,lab``."""
        return " ".join(f"{k[:-1]}:{','.join(getattr(self, k))}" for k in KINDS if getattr(self, k))


def _names(kind: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RolloutInvalid(f"target.{kind} must be a list of names")
    out = tuple(dict.fromkeys(v.strip() for v in value))
    for name in out:
        if not 0 < len(name) <= 64:
            raise RolloutInvalid(f"target.{kind}: {name[:70]!r} must be 1-64 characters")
    return out


def parse_target(value: Mapping[str, Any] | Sequence[str]) -> Target:
    """A target from the API's object (``{"devices": [...], "types": [...], "tags": [...],
    "groups": [...]}``) or the CLI's selectors (``["device:a,b", "type:environment", "tag:pilot"]``).

    Raises:
        RolloutInvalid: an unknown selector kind, a bad name, or an empty target.
    """
    found: dict[str, tuple[str, ...]] = {}
    if isinstance(value, Mapping):
        for key, names in value.items():
            kind = _SINGULAR.get(key, key)
            if kind not in KINDS:
                raise RolloutInvalid(f"unknown target kind {key!r}: use devices, types, tags or groups")
            found[kind] = found.get(kind, ()) + _names(kind, names)
    else:
        for selector in value:
            key, sep, names = selector.partition(":")
            kind = _SINGULAR.get(key.strip(), key.strip())
            if not sep or kind not in KINDS:
                raise RolloutInvalid(
                    f"bad target {selector!r}: use device:ID[,ID...], type:TYPE, tag:TAG or group:NAME"
                )
            found[kind] = found.get(kind, ()) + _names(kind, names)
    target = Target(**found)
    for device_id in target.devices:
        try:
            validate_device_id(device_id)
        except ProtocolError as exc:
            raise RolloutInvalid(f"target.devices: {exc}") from None
    if not target:
        raise RolloutInvalid("the target selects nothing: give devices, types, tags or groups")
    return target


def _by_id(session: Session, names: Sequence[str]) -> list[str]:
    rows = session.exec(select(Device.id).where(col(Device.id).in_(names))).all()
    missing = sorted(set(names) - set(rows))
    if missing:
        raise RolloutInvalid(
            f"target.devices: no device {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return list(rows)


def _by_type(session: Session, names: Sequence[str]) -> list[str]:
    return list(session.exec(select(Device.id).where(col(Device.device_type).in_(names))).all())


def _by_tag(session: Session, names: Sequence[str]) -> list[str]:
    return list(session.exec(select(DeviceTag.device_id).where(col(DeviceTag.tag).in_(names))).all())


_RESOLVERS: dict[str, Resolver] = {"devices": _by_id, "types": _by_type, "tags": _by_tag}


def register_resolver(kind: str, resolver: Resolver) -> None:
    """Resolve selectors of ``kind`` (``groups``, or a new kind) with ``resolver`` from now on."""
    if kind not in KINDS:
        raise ValueError(f"unknown target kind {kind!r}: one of {', '.join(KINDS)}")
    _RESOLVERS[kind] = resolver


def resolve(session: Session, target: Target) -> list[str]:
    """The ids of the active devices ``target`` selects, sorted.

    Raises:
        RolloutInvalid: a named device does not exist, a selector kind has no resolver, or nothing
            active is selected.
    """
    ids: set[str] = set()
    for kind in KINDS:
        names = getattr(target, kind)
        if not names:
            continue
        resolver = _RESOLVERS.get(kind)
        if resolver is None:
            raise RolloutInvalid(
                f"targeting by {kind} is not available yet (no resolver registered): target devices by id, type or tag"
            )
        ids.update(resolver(session, names))
    if not ids:
        raise RolloutInvalid(f"the target {target.describe()} matches no device")
    active = session.exec(select(Device.id).where(col(Device.id).in_(ids), Device.status == "active")).all()
    if not active:
        raise RolloutInvalid(f"the target {target.describe()} matches no active (enrolled) device")
    return sorted(active)
