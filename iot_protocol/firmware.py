"""Firmware over the air, on the wire: the signed release manifest, the firmware target a desired
config carries, a device's download request, the OTA progress it reports, and version order. No I/O.

A release is an artifact plus a manifest signed by the **release key** (Ed25519; JWS typ
``edu.release.v1``, kid ``release``), which is distinct from the cloud's config-signing key: a
stolen config key can change a device's settings but cannot make it install code. Devices receive
the release public key at enrollment (docs/protocol.md §10).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from . import jws
from .errors import DecodeError, SignatureError, ValidationError
from .messages import VERSION

__all__ = [
    "OTA_STATES",
    "RELEASE_KID",
    "TYP_DOWNLOAD",
    "TYP_RELEASE",
    "FirmwareStatus",
    "FirmwareTarget",
    "Manifest",
    "check_installable",
    "compare_versions",
    "decode_manifest",
    "firmware_version",
    "open_download_request",
    "open_manifest",
    "parse_firmware_target",
    "parse_version",
    "peek_download_request",
    "seal_download_request",
    "seal_manifest",
]

TYP_RELEASE = "edu.release.v1"
TYP_DOWNLOAD = "edu.download.v1"
RELEASE_KID = "release"
MAX_ARTIFACT_BYTES = 1 << 31  # 2 GiB: more than any Pi agent needs; bounds what a manifest may claim
MAX_VERSION_LENGTH = 32
# What a device reports about an update, in the order it normally goes through them.
OTA_STATES = ("downloading", "installed", "confirmed", "failed", "rolled_back")

_VERSION_RE = re.compile(r"\A\d{1,9}(\.\d{1,9}){0,3}\Z")
_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")


# ---- versions ------------------------------------------------------------------------------------


def parse_version(text: object) -> tuple[int, ...]:
    """``"1.2.10"`` -> ``(1, 2, 10)``: one to four dot-separated integers. Raises ValidationError."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise ValidationError(
            f"bad firmware version {str(text)[:40]!r}: use 1-4 dot-separated numbers, e.g. 1.2.0",
            reason="bad_version",
        )
    return tuple(int(p) for p in text.split("."))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, the same as or newer than ``b`` (1.2 == 1.2.0)."""
    pa, pb = parse_version(a), parse_version(b)
    n = max(len(pa), len(pb))
    pa, pb = pa + (0,) * (n - len(pa)), pb + (0,) * (n - len(pb))
    return (pa > pb) - (pa < pb)


def firmware_version(reported: str | None) -> str | None:
    """The version in a health message's ``firmware`` (``"edu-agent/0.1.0"`` -> ``"0.1.0"``), or None
    when it holds none."""
    if not reported:
        return None
    tail = reported.rsplit("/", 1)[-1]
    return tail if _VERSION_RE.match(tail) else None


# ---- the release manifest ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a release is: its version, the artifact's exact size and SHA-256, the device types it is
    built for, and ``min_version``: the oldest version a device may run once this release is
    confirmed on it (anti-rollback floor; a device refuses any release older than its floor)."""

    version: str
    size: int
    sha256: str
    device_types: tuple[str, ...]
    min_version: str | None = None
    created_at: int = 0
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "device_types": list(self.device_types),
            "min_version": self.min_version,
            "created_at": self.created_at,
            "notes": self.notes,
        }


def _version_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    try:
        parse_version(value)
    except ValidationError as exc:
        raise DecodeError(f"manifest.{key}: {exc}", reason="bad_manifest") from None
    return str(value)


def _manifest_from(obj: Any) -> Manifest:
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise DecodeError("manifest must be a JSON object with v = 1", reason="bad_manifest")
    version = _version_field(obj, "version")
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ARTIFACT_BYTES:
        raise DecodeError(f"manifest.size must be an integer 1..{MAX_ARTIFACT_BYTES}", reason="bad_manifest")
    sha = obj.get("sha256")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise DecodeError("manifest.sha256 must be 64 lower-case hex digits", reason="bad_manifest")
    types = obj.get("device_types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in types):
        raise DecodeError("manifest.device_types must be a non-empty list of names", reason="bad_manifest")
    min_version = obj.get("min_version")
    if min_version is not None:
        _version_field(obj, "min_version")
        if compare_versions(min_version, version) > 0:
            raise DecodeError(
                f"manifest.min_version {min_version} is newer than its version {version}", reason="bad_manifest"
            )
    created_at = obj.get("created_at", 0)
    notes = obj.get("notes", "")
    if not isinstance(created_at, int) or isinstance(created_at, bool) or created_at < 0:
        raise DecodeError("manifest.created_at must be an integer >= 0", reason="bad_manifest")
    if not isinstance(notes, str) or len(notes) > 1000:
        raise DecodeError("manifest.notes must be a string of at most 1000 characters", reason="bad_manifest")
    return Manifest(version, size, sha, tuple(types), min_version, created_at, notes)


def decode_manifest(data: bytes) -> Manifest:
    """A manifest's JSON payload (unverified). Raises DecodeError naming the bad field."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("manifest is not valid UTF-8 JSON", reason="bad_manifest") from None
    return _manifest_from(obj)


def seal_manifest(manifest: Manifest, key: Any) -> bytes:
    """The signed manifest: a compact JWS by the release key (``kid`` ``release``)."""
    return jws.sign(orjson.dumps(manifest.to_json()), key, kid=RELEASE_KID, typ=TYP_RELEASE)


def open_manifest(token: bytes | str, *, release_public_key: bytes) -> Manifest:
    """Verify a signed manifest with the release public key and decode it.

    Raises:
        DecodeError: not a JWS, wrong typ, or a malformed manifest.
        SignatureError: the signature does not verify with ``release_public_key``.
    """
    raw = token.encode("ascii") if isinstance(token, str) else token
    token_ = jws.decode(raw)
    if token_.typ != TYP_RELEASE:
        raise DecodeError(f"JWS typ must be {TYP_RELEASE!r}, got {token_.typ!r}", reason="bad_manifest")
    jws.verify(token_, release_public_key)
    return decode_manifest(token_.payload)


def check_installable(manifest: Manifest, *, device_type: str | None, running: str | None, floor: str | None) -> None:
    """Whether a device of ``device_type`` running version ``running`` with anti-rollback ``floor``
    may install ``manifest``'s release.

    Raises:
        ValidationError: reason ``wrong_device_type`` (built for other devices) or ``below_minimum``
            (older than the device's floor, i.e. a downgrade to a version it must no longer run).
    """
    if device_type is not None and device_type not in manifest.device_types:
        raise ValidationError(
            f"release {manifest.version} is for device types {', '.join(manifest.device_types)}, not {device_type!r}",
            reason="wrong_device_type",
        )
    if floor is not None and compare_versions(manifest.version, floor) < 0:
        raise ValidationError(
            f"release {manifest.version} is a downgrade below the minimum version {floor}",
            reason="below_minimum",
        )
    del running  # the same or an older version is allowed above the floor (a rollback is a release)


# ---- the firmware target in a desired config -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareTarget:
    """The ``firmware`` setting of a desired config: run ``version``. ``manifest`` (the signed
    manifest) and ``url`` (where to download the artifact) are needed unless the device has that
    version installed already (its other A/B slot: a rollback needs no download). ``max_bytes_per_s``
    caps the download's bandwidth (None: the device's own default)."""

    version: str
    manifest: str | None = None
    url: str | None = None
    max_bytes_per_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if self.url is not None:
            out["url"] = self.url
        if self.max_bytes_per_s is not None:
            out["max_bytes_per_s"] = self.max_bytes_per_s
        return out


def parse_firmware_target(value: Any) -> FirmwareTarget:
    """Validate a desired config's ``firmware`` object. Raises ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError(f"must be an object with version, manifest, url, got {type(value).__name__}")
    unknown = set(value) - {"version", "manifest", "url", "max_bytes_per_s"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: version, manifest, url, max_bytes_per_s)")
    version = value.get("version")
    try:
        parse_version(version)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    manifest, url, rate = value.get("manifest"), value.get("url"), value.get("max_bytes_per_s")
    if manifest is not None and (not isinstance(manifest, str) or len(manifest) > 16_384):
        raise ValueError("manifest must be the signed manifest (a JWS string)")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ValueError("url must be an http:// or https:// URL")
    if (manifest is None) != (url is None):
        raise ValueError("give both manifest and url, or neither (a version the device has installed)")
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1024):
        raise ValueError("max_bytes_per_s must be an integer >= 1024")
    return FirmwareTarget(str(version), manifest, url, rate)


# ---- OTA progress, reported inside config reports ------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareStatus:
    """A device's update progress: ``state`` is one of :data:`OTA_STATES`; ``version`` the release it
    is about; ``running`` the version it runs now; ``error`` why it failed or rolled back."""

    version: str
    state: str
    running: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "running": self.running, "error": self.error}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FirmwareStatus:
        """Raises DecodeError for a malformed ``firmware`` object of a config report."""
        if not isinstance(obj, Mapping):
            raise DecodeError("config report firmware must be an object", reason="bad_schema")
        version, state, running, error = obj.get("version"), obj.get("state"), obj.get("running"), obj.get("error")
        if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_LENGTH:
            raise DecodeError("config report firmware.version must be a short string", reason="bad_schema")
        if state not in OTA_STATES:
            raise DecodeError(
                f"config report firmware.state must be one of {', '.join(OTA_STATES)}", reason="bad_schema"
            )
        if running is not None and (not isinstance(running, str) or len(running) > MAX_VERSION_LENGTH):
            raise DecodeError("config report firmware.running must be a short string or null", reason="bad_schema")
        if error is not None and not isinstance(error, str):
            raise DecodeError("config report firmware.error must be a string or null", reason="bad_schema")
        return cls(version, state, running, error[:500] if error else None)


# ---- a device's download request -----------------------------------------------------------------


def seal_download_request(device_id: str, version: str, key: Any, *, now_ms: int) -> str:
    """The ``Authorization: Device <token>`` a device sends to download release ``version``: a JWS
    signed by its own key over ``{"v":1,"device_id","version","iat"}``."""
    payload = orjson.dumps({"v": VERSION, "device_id": device_id, "version": version, "iat": now_ms})
    return jws.sign(payload, key, kid=device_id, typ=TYP_DOWNLOAD).decode("ascii")


def peek_download_request(token: str) -> str:
    """The device id a download request claims (unverified: pick the key to verify it with)."""
    kid = jws.decode(token.encode("ascii", "replace")).kid
    if not kid:
        raise DecodeError("download request names no device", reason="bad_envelope")
    return kid


def open_download_request(token: str, *, public_key: bytes, now_ms: int, max_age_ms: int) -> tuple[str, str]:
    """Verify a download request with the device's registered key: (device id, version).

    Raises:
        DecodeError: malformed. SignatureError: bad signature, or issued more than ``max_age_ms``
        from ``now_ms`` (either way).
    """
    token_ = jws.decode(token.encode("ascii", "replace"))
    if token_.typ != TYP_DOWNLOAD:
        raise DecodeError(f"JWS typ must be {TYP_DOWNLOAD!r}", reason="bad_envelope")
    jws.verify(token_, public_key)
    try:
        obj = orjson.loads(token_.payload)
    except orjson.JSONDecodeError:
        raise DecodeError("download request payload is not JSON", reason="bad_json") from None
    device_id, version, iat = obj.get("device_id"), obj.get("version"), obj.get("iat")
    if not isinstance(device_id, str) or device_id != token_.kid or not isinstance(version, str):
        raise SignatureError("download request names another device", reason="device_mismatch")
    if not isinstance(iat, int) or abs(now_ms - iat) > max_age_ms:
        raise SignatureError("download request is expired or from the future", reason="expired")
    return device_id, version
