"""Getting simulated devices known to the cloud: the real enrollment flow through the API, or
direct rows in the metadata database (embedded or anonymous brokers, tests, benchmarks).

A simulated device never takes over an id that is already registered unless asked to
(``take_over=True``): the registry may hold another student's fleet, ``iotctl up``'s own devices or a
real Raspberry Pi under that id, and rotating its key would cut it off. Fleets get their own ids
instead (``iotctl sim run --fleet``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iot_protocol import public_key_b64, public_key_from_b64

from .errors import DeviceIdTaken, FleetError
from .fleet import Credentials
from .scenario import DevicePlan

__all__ = ["enroll_via_api", "register_in_db"]


def taken_message(taken: list[str]) -> str:
    shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
    return (
        f"device id{'s' if len(taken) > 1 else ''} {shown} already registered (another fleet or a real device "
        "uses them): give this fleet other ids with --fleet NAME, or pass --take-over to rotate them and take "
        "them over (whatever runs as them now is cut off)"
    )


def register_in_db(
    db_url: str, devices: Iterable[DevicePlan], keys: dict[str, Ed25519PrivateKey], *, take_over: bool = False
) -> int:
    """Insert one ``active`` Device row per simulated device with its public key. Returns the count.

    Raises:
        DeviceIdTaken: an id is registered with another key and ``take_over`` is false (nothing written).
    """
    devices = list(devices)
    from cloud_core.core.db import create_all, make_engine, session_scope
    from cloud_core.core.migrate import SchemaError
    from cloud_core.models import Device

    try:
        engine = make_engine(db_url)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    try:
        try:
            create_all(engine)
        except SchemaError as exc:  # migrated by a newer release: one line, not a traceback
            raise FleetError(str(exc)) from None
        n = 0
        with session_scope(engine) as session:
            if not take_over:
                taken = [
                    d.device_id
                    for d in devices
                    if (row := session.get(Device, d.device_id)) is not None
                    and row.public_key != public_key_b64(keys[d.device_id])
                ]
                if taken:
                    raise DeviceIdTaken(taken_message(taken), device_ids=tuple(taken))
            for d in devices:
                pk = public_key_b64(keys[d.device_id])
                row = session.get(Device, d.device_id)
                if row is None:
                    row = Device(id=d.device_id)
                row.status = "active"
                row.public_key = pk
                row.key_version = max(row.key_version, 1)
                row.device_type = d.group.type
                row.location = d.group.location
                row.firmware = "edu-agent-sim"
                session.add(row)
                n += 1
        return n
    finally:
        engine.dispose()


def enroll_via_api(
    api_url: str,
    admin_token: str,
    devices: Iterable[DevicePlan],
    keys: dict[str, Ed25519PrivateKey],
    *,
    take_over: bool = False,
    timeout_s: float = 30.0,
    ca_file: str | Path | None = None,
) -> dict[str, Credentials]:
    """Register each device (``POST /v1/devices/register``, bearer admin token), then enroll it
    (``POST /v1/enroll`` with the one-time token and the public key), as a real device would.
    ``ca_file`` verifies an ``https://`` API (default: the system's trusted CAs).

    With ``take_over``, a device already registered is rotated for a fresh token (its current holder is
    cut off); without, any such id stops the registration before a device is written.

    Returns the broker credentials per device.

    Raises:
        DeviceIdTaken: an id is already registered and ``take_over`` is false.
        FleetError: the API refused or is unreachable (naming the device and the API's answer).
    """
    import httpx

    base = api_url.rstrip("/")
    devices = list(devices)
    out: dict[str, Credentials] = {}
    auth = {"Authorization": f"Bearer {admin_token}"}
    verify: Any = True
    if ca_file is not None:
        from iot_protocol.tls import client_context

        verify = client_context(ca_file)
    with httpx.Client(base_url=base, timeout=timeout_s, verify=verify) as http:
        if not take_over:
            try:
                listed = http.get("/v1/devices", headers=auth)
            except httpx.HTTPError as exc:
                raise FleetError(f"API {base} unreachable: {exc}") from None
            _check(listed, "the fleet", "list the registry before registering")
            known = {str(d.get("id")) for d in listed.json()}
            taken = [d.device_id for d in devices if d.device_id in known]
            if taken:
                raise DeviceIdTaken(taken_message(taken), device_ids=tuple(taken))
        for d in devices:
            body: dict[str, Any] = {
                "id": d.device_id,
                "device_type": d.group.type,
                "location": d.group.location,
            }
            try:
                r = http.post("/v1/devices/register", json=body, headers=auth)
                if r.status_code == 409:
                    if not take_over:  # registered meanwhile by someone else
                        raise DeviceIdTaken(taken_message([d.device_id]), device_ids=(d.device_id,))
                    r = http.post(f"/v1/devices/{d.device_id}/rotate", headers=auth)
                _check(r, d.device_id, "register")
                token = r.json()["enrollment_token"]
                e = http.post(
                    "/v1/enroll", json={"token": token, "public_key": public_key_b64(keys[d.device_id])}
                )
                _check(e, d.device_id, "enroll")
                info = e.json()
            except httpx.HTTPError as exc:
                raise FleetError(f"API {base} unreachable while enrolling {d.device_id}: {exc}") from None
            cloud_key = info.get("cloud_public_key")
            release_key = info.get("release_public_key")
            out[d.device_id] = Credentials(
                username=info.get("mqtt_username"),
                password=info.get("mqtt_password"),
                client_id=info.get("client_id") or d.device_id,
                cloud_public_key=public_key_from_b64(cloud_key) if cloud_key else None,
                mqtt_url=info.get("mqtt_url"),
                release_public_key=public_key_from_b64(release_key) if release_key else None,
                mqtt_ca_pem=info.get("mqtt_ca_pem") or None,
            )
    return out


def _check(response: Any, device_id: str, step: str) -> None:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise FleetError(f"{step} of {device_id} failed: HTTP {response.status_code}: {str(detail)[:200]}")
