"""Every access rule the rollout and release routes need, in one place, on the platform's permission
model (cloud_core.auth; docs/users.md).

Rollouts and releases act on the whole fleet: a rollout's target (a type, a tag, every device) may
name devices of any class, and a release is code for every device of a type. So they need the
permission on every device (``fleet``): an admin, or a user with fleet access at that level. Teachers
and students change their own devices' config one device at a time (``iotctl config set``). Tags and a
device's history are per device, like the device routes."""

from __future__ import annotations

from fastapi import Depends

from ..api.deps import P, Requirement, require

__all__ = ["RULES", "rule"]

RULES: dict[str, Requirement] = {
    "rollouts:read": require(P.READ_DEVICES, fleet=True),  # list rollouts, status, devices, events
    "rollouts:write": require(P.WRITE_DEVICES, fleet=True),  # create, pause, resume, abort
    "releases:read": require(P.READ_DEVICES, fleet=True),  # list and show releases
    "releases:write": require(P.WRITE_DEVICES, fleet=True),  # create a release and upload its artifact
    "releases:sign": require(P.ADMIN_PANEL),  # have the API sign a manifest with its release key
    "devices:tag": require(P.WRITE_DEVICES, device="device_id"),  # set a device's tags
    "devices:read": require(P.READ_DEVICES, device="device_id"),  # a device's tags and history
}


def rule(name: str) -> object:
    """``Depends(<the rule>)``, for a route's signature: the dependency returns the Principal."""
    return Depends(RULES[name])
