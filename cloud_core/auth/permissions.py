"""The one permission model: the seed's five permissions, the roles as sets of them, access levels
of grants, and how the roles from before users had scopes map onto it.

A person may do an action on a device when their **role** holds the permission the action needs
and their **scope** reaches the device at a level that includes it:

- ``admin``: every device, every permission;
- everyone else: their own devices (write), the devices of classes they teach (write), devices
  granted to them (read or write, one by one or a whole class at once), devices their class's
  students share with the class (read), and every device when ``fleet_access`` is set.

A ``read`` level allows ``read_devices`` and ``read_data``; ``write`` allows all four device
permissions. ``admin_panel`` (users, keys of others, quotas, audit, signing keys) is the admin's alone.
"""

from __future__ import annotations

import enum

__all__ = [
    "CLASS_ROLES",
    "LEGACY_ROLES",
    "LEVELS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "Permission",
    "higher",
    "level_allows",
    "role_allows",
]


class Permission(enum.StrEnum):
    READ_DEVICES = "read_devices"
    WRITE_DEVICES = "write_devices"
    READ_DATA = "read_data"
    WRITE_DATA = "write_data"
    ADMIN_PANEL = "admin_panel"


P = Permission
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(P),
    "user": frozenset({P.READ_DEVICES, P.WRITE_DEVICES, P.READ_DATA, P.WRITE_DATA}),
    "device": frozenset({P.READ_DEVICES, P.WRITE_DATA}),
    "readonly": frozenset({P.READ_DEVICES, P.READ_DATA}),
}
ROLES: tuple[str, ...] = tuple(ROLE_PERMISSIONS)
CLASS_ROLES = ("teacher", "student")

#: What a grant level on a device allows.
LEVELS: dict[str, frozenset[Permission]] = {
    "read": frozenset({P.READ_DEVICES, P.READ_DATA}),
    "write": frozenset({P.READ_DEVICES, P.WRITE_DEVICES, P.READ_DATA, P.WRITE_DATA}),
}

#: The roles from before (admin > operator > viewer, each over every device) -> (role, fleet_access).
LEGACY_ROLES: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", None),
    "operator": ("user", "write"),
    "viewer": ("readonly", "read"),
}


def role_allows(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def level_allows(level: str | None, permission: Permission) -> bool:
    return level is not None and permission in LEVELS[level]


def higher(a: str | None, b: str | None) -> str | None:
    """The higher of two access levels (None < read < write)."""
    order = {None: 0, "read": 1, "write": 2}
    return a if order[a] >= order[b] else b
