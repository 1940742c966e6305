"""Getting simulated devices known to the cloud: the real enrollment flow through the API, or
direct rows in the metadata database (embedded or anonymous brokers, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iot_protocol import public_key_b64, public_key_from_b64

from .errors import FleetError
from .fleet import Credentials
from .scenario import DevicePlan

__all__ = ["enroll_via_api", "register_in_db"]


def register_in_db(db_url: str, devices: Iterable[DevicePlan], keys: dict[str, Ed25519PrivateKey]) -> int:
    """Upsert one ``active`` Device row per simulated device with its public key. Returns the count."""
    from cloud_core.core.db import create_all, make_engine, session_scope
    from cloud_core.models import Device

    try:
        engine = make_engine(db_url)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    try:
        create_all(engine)
        n = 0
        with session_scope(engine) as session:
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
    timeout_s: float = 30.0,
) -> dict[str, Credentials]:
    """Register each device (``POST /v1/devices/register``, bearer admin token), then enroll it
    (``POST /v1/enroll`` with the one-time token and the public key), as a real device would.

    Returns the broker credentials per device. Raises FleetError naming the device and the API's answer.
    """
    import httpx

    base = api_url.rstrip("/")
    out: dict[str, Credentials] = {}
    with httpx.Client(base_url=base, timeout=timeout_s) as http:
        for d in devices:
            body: dict[str, Any] = {
                "id": d.device_id,
                "device_type": d.group.type,
                "location": d.group.location,
            }
            try:
                r = http.post(
                    "/v1/devices/register", json=body, headers={"Authorization": f"Bearer {admin_token}"}
                )
                if r.status_code == 409:  # already registered: rotate for a fresh token
                    r = http.post(
                        f"/v1/devices/{d.device_id}/rotate",
                        headers={"Authorization": f"Bearer {admin_token}"},
                    )
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
                release_public_key=public_key_from_b64(release_key) if release_key else None,
            )
    return out


def _check(response: Any, device_id: str, step: str) -> None:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise FleetError(f"{step} of {device_id} failed: HTTP {response.status_code}: {str(detail)[:200]}")
