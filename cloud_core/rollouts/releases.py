"""Firmware releases: signed manifests, artifacts on a file store, and who may download them.

A release is created from a manifest signed offline (``iotctl release sign``) or, when the API holds
the release private key, signed here; its artifact is uploaded next and accepted only when its size
and SHA-256 are exactly the manifest's. Artifacts live in a directory: the state dir in embedded
mode, a volume shared by the API replicas in production (docs/rollouts.md, "Where artifacts live").

Devices download with a request signed by their own key (``Authorization: Device <jws>``), checked
against their registered public key, their status and the release's device types.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from iot_protocol import (
    FirmwareTarget,
    Manifest,
    ProtocolError,
    open_manifest,
    public_key_from_b64,
    public_key_raw,
    seal_manifest,
)
from iot_protocol.firmware import open_download_request, parse_version, peek_download_request

from .. import crud
from ..core.security import load_or_create_signing_key
from ..models import utcnow
from . import history
from .errors import ReleaseKeyMissing, RolloutConflict, RolloutInvalid, RolloutNotFound
from .models import Release
from .settings import RolloutSettings

__all__ = ["ArtifactStore", "DownloadRefused", "ReleaseService", "ReleaseSpec", "load_release_keys"]

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"\A[0-9A-Za-z._-]{1,128}\Z")


class DownloadRefused(Exception):
    """A download request that is not allowed; ``status`` is the HTTP status (401 or 403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ArtifactStore:
    """Artifacts as files under ``root`` (written to a temporary name, fsynced, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key) or key.startswith("."):
            raise ValueError(f"bad artifact key {key!r}")
        return self.root / key

    def temp_path(self, key: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".{key}.{os.getpid()}.{time.monotonic_ns()}.part"

    def commit(self, temp: Path, key: str) -> None:
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, self.path(key))

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()


def load_release_keys(settings: RolloutSettings, state_dir: Path) -> tuple[Ed25519PrivateKey | None, bytes]:
    """(private key or None, public key): the configured public key (signing offline), or the key
    file's pair (created once, 0600, in the state dir by default)."""
    if settings.release_public_key:
        try:
            return None, public_key_from_b64(settings.release_public_key)
        except (ValueError, ProtocolError):
            raise ValueError("release_public_key must be 32 bytes of unpadded base64url") from None
    path = settings.release_signing_key_path or state_dir / "release-signing.pem"
    key = load_or_create_signing_key(path)
    return key, public_key_raw(key)


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """What the API signs when it holds the release key."""

    version: str
    size: int
    sha256: str
    device_types: tuple[str, ...]
    min_version: str | None = None
    notes: str = ""


class ReleaseService:
    """Args:
    store: where artifacts live.
    signing_key: the release private key, or None when manifests are signed offline.
    public_key: the release public key (raw 32 bytes) manifests must verify with.
    public_api_url: the API base URL devices download from.
    max_artifact_bytes: largest upload accepted.
    download_max_age_s: how old a device's signed download request may be.
    """

    def __init__(
        self,
        *,
        store: ArtifactStore,
        signing_key: Ed25519PrivateKey | None,
        public_key: bytes,
        public_api_url: str,
        max_artifact_bytes: int,
        download_max_age_s: float,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.public_key = public_key
        self.public_api_url = public_api_url.rstrip("/")
        self.max_artifact_bytes = max_artifact_bytes
        self.download_max_age_ms = int(download_max_age_s * 1000)

    @property
    def public_key_b64(self) -> str:
        from iot_protocol.jws import b64url_encode

        return b64url_encode(self.public_key).decode("ascii")

    # -- create, upload, read ---------------------------------------------------------------------

    def sign(self, spec: ReleaseSpec) -> str:
        """The signed manifest for ``spec`` (the API's release key). Raises ReleaseKeyMissing, RolloutInvalid."""
        if self.signing_key is None:
            raise ReleaseKeyMissing(
                "this API holds no release private key: sign the manifest offline with "
                "'iotctl release sign' and upload it with --manifest"
            )
        try:
            parse_version(spec.version)
            if spec.min_version is not None:
                parse_version(spec.min_version)
        except ProtocolError as exc:
            raise RolloutInvalid(str(exc)) from None
        manifest = Manifest(
            version=spec.version,
            size=spec.size,
            sha256=spec.sha256.lower(),
            device_types=spec.device_types,
            min_version=spec.min_version,
            created_at=time.time_ns() // 1_000_000,
            notes=spec.notes,
        )
        token = seal_manifest(manifest, self.signing_key).decode("ascii")
        self._verify(token)  # the same checks as an uploaded manifest (size, hash form, versions)
        return token

    def _verify(self, token: str) -> Manifest:
        try:
            return open_manifest(token, release_public_key=self.public_key)
        except ProtocolError as exc:
            raise RolloutInvalid(f"manifest refused ({exc.reason}): {exc}") from None

    def create(self, session: Session, *, manifest: str, actor: str | None) -> Release:
        """Register the release the signed ``manifest`` describes; its artifact comes next.

        Raises:
            RolloutInvalid: the manifest does not verify with the release key, or is malformed.
            RolloutConflict: a release with this version exists.
        """
        m = self._verify(manifest)
        if session.get(Release, m.version) is not None:
            raise RolloutConflict(f"release {m.version} exists: give the new build a new version")
        release = Release(
            version=m.version,
            size=m.size,
            sha256=m.sha256,
            device_types=list(m.device_types),
            min_version=m.min_version,
            notes=m.notes,
            manifest=manifest,
            created_by=actor,
        )
        session.add(release)
        history.record(session, kind="release_created", actor=actor, version=m.version, size=m.size)
        session.commit()
        return release

    def get(self, session: Session, version: str) -> Release:
        release = session.get(Release, version)
        if release is None:
            raise RolloutNotFound(f"no release {version!r}: see 'iotctl release list'")
        return release

    def list(self, session: Session) -> Sequence[Release]:
        return session.exec(select(Release).order_by(col(Release.created_at).desc())).all()

    def accept_artifact(self, session: Session, *, version: str, temp: Path, actor: str | None) -> Release:
        """Move an uploaded file into place if its size and SHA-256 are the manifest's, else delete it.

        Raises:
            RolloutNotFound: no such release. RolloutInvalid: size or hash differs (named, with both values).
        """
        try:
            release = self.get(session, version)
            size = temp.stat().st_size
            if size != release.size:
                raise RolloutInvalid(
                    f"artifact is {size} bytes but the manifest of {version} says {release.size}: "
                    "upload the file the manifest was made from"
                )
            digest = _sha256_file(temp)
            if digest != release.sha256:
                raise RolloutInvalid(
                    f"artifact SHA-256 {digest[:16]}... is not the manifest's {release.sha256[:16]}...: "
                    "upload the file the manifest was made from"
                )
            key = f"release-{version}.bin"
            self.store.commit(temp, key)
        finally:
            temp.unlink(missing_ok=True)
        release.artifact_key = key
        release.status = "ready"
        release.uploaded_at = utcnow()
        session.add(release)
        history.record(session, kind="artifact_uploaded", actor=actor, version=version, size=size)
        session.commit()
        return release

    def target(self, release: Release, *, max_bytes_per_s: int | None = None) -> FirmwareTarget:
        """The ``firmware`` setting that makes a device run ``release``."""
        return FirmwareTarget(
            version=release.version,
            manifest=release.manifest,
            url=f"{self.public_api_url}/v1/releases/{release.version}/artifact",
            max_bytes_per_s=max_bytes_per_s,
        )

    # -- downloads --------------------------------------------------------------------------------

    def authorize_device(self, session: Session, *, token: str, version: str) -> str:
        """The device id behind a signed download request for release ``version``.

        Raises:
            DownloadRefused: 401 unknown device or bad signature/expired; 403 inactive device, a
                request for another release, or a release for other device types.
        """
        try:
            claimed = peek_download_request(token)
        except ProtocolError:
            raise DownloadRefused("malformed device download request", 401) from None
        device = crud.get_device(session, device_id=claimed)
        if device is None or not device.public_key:
            raise DownloadRefused(f"unknown device {claimed[:64]!r}", 401)
        try:
            _, wanted = open_download_request(
                token,
                public_key=public_key_from_b64(device.public_key),
                now_ms=time.time_ns() // 1_000_000,
                max_age_ms=self.download_max_age_ms,
            )
        except ProtocolError as exc:
            raise DownloadRefused(f"download request refused ({exc.reason}): {exc}", 401) from None
        if device.status != "active":
            raise DownloadRefused(f"device {device.id!r} is {device.status}", 403)
        if wanted != version:
            raise DownloadRefused(f"the request is for release {wanted!r}, not {version!r}", 403)
        release = self.get(session, version)
        if device.device_type not in release.device_types:
            raise DownloadRefused(
                f"release {version} is for {', '.join(release.device_types)}, not {device.device_type!r}", 403
            )
        return device.id


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
