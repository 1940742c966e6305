"""Firmware over the air in the agent: act on the ``firmware`` setting of the signed desired config.

For a release the device does not run: verify the manifest's signature with the **release key**
(from enrollment; distinct from the config key), check it is for this device type and not below
the device's minimum version, download the artifact (resumable, bounded retries, bandwidth cap),
check its size and SHA-256, and only then install it into the inactive A/B slot, switch the
``current`` symlink and restart (exit code 75; systemd starts the boot step again). The new
release confirms itself only after a health check passes after the restart (connected, and a
batch receipted by the cloud) within ``ota_confirm_timeout_s``; otherwise it switches back and
restarts, and the old release reports why. A crash loop is caught by the boot step
(:mod:`edge_agent.ota_boot`). Progress goes to the cloud in config reports (``firmware``).

A version the device has in its other slot is switched to without a download (a rollback); a
version that failed on this device is not tried again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iot_protocol.errors import ProtocolError
from iot_protocol.firmware import (
    FirmwareStatus,
    FirmwareTarget,
    check_installable,
    compare_versions,
    firmware_version,
    open_manifest,
    seal_download_request,
)
from iot_protocol.messages import ConfigReport

from . import FIRMWARE_VERSION
from .errors import OtaError, VerifyError
from .ota_boot import Layout
from .ota_fetch import fetch

if TYPE_CHECKING:
    from iot_protocol.keys import SigningKey

    from .config import AgentSettings

__all__ = ["RELEASE_KEY_FILE", "Ota", "disabled_report", "install_artifact"]

log = logging.getLogger("edge_agent.ota")

RELEASE_KEY_FILE = "release_public_key"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def running_version() -> str:
    return firmware_version(FIRMWARE_VERSION) or "0"


def disabled_report(target: FirmwareTarget, config_version: int) -> ConfigReport:
    """What an agent without ``ota_dir`` answers to a firmware target."""
    running = running_version()
    if compare_versions(target.version, running) == 0:
        status = FirmwareStatus(target.version, "confirmed", running)
    else:
        status = FirmwareStatus(target.version, "failed", running, "OTA is not enabled on this device (set ota_dir)")
    return ConfigReport(config_version, "applied", _now_ms(), firmware=status)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def install_artifact(layout: Layout, slot: str, artifact: Path, version: str) -> None:
    """Unpack a verified artifact into ``slot`` (replacing it), refusing unsafe members (absolute
    paths, ``..``, links, devices) and an archive that is not an agent release of ``version``."""
    import tarfile

    target = layout.slot_dir(slot)
    staging = target.with_name(f".{slot}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise VerifyError(
                        f"artifact member {member.name!r} is not a file or directory", reason="bad_artifact"
                    )
            tar.extractall(staging, filter="data")
        if not (staging / "edge_agent" / "__init__.py").is_file():
            raise VerifyError("artifact holds no edge_agent package", reason="bad_artifact")
        stamped = (staging / "VERSION").read_text(encoding="utf-8").strip() if (staging / "VERSION").is_file() else None
        if stamped != version:
            raise VerifyError(f"artifact says version {stamped!r}, the manifest {version!r}", reason="bad_artifact")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise VerifyError(f"artifact is not a valid release archive: {exc}", reason="bad_artifact") from None
    except VerifyError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


class Ota:
    """One agent's OTA worker (a thread), fed by :meth:`request` on every applied config.

    Args:
        settings: the agent's settings (``ota_*`` fields, ``device_type``).
        device_id, key: sign the download requests.
        identity_dir: holds the release public key (``release_public_key``, from enrollment).
        publish: sends a config report to the cloud (when connected).
        ready: ``ready(timeout)`` is True once connected and subscribed.
        seqs: (the last batch seq sealed, the last seq the cloud receipted as stored): the health check
            passes when a batch sealed by this run is stored.
        restart: asks the agent to stop and exit with :data:`edge_agent.ota_boot.RESTART_EXIT_CODE`.
    """

    def __init__(
        self,
        *,
        settings: AgentSettings,
        device_id: str,
        key: SigningKey,
        identity_dir: Path,
        publish: Callable[[ConfigReport], None],
        ready: Callable[[float], bool],
        seqs: Callable[[], tuple[int, int]],
        restart: Callable[[], None],
    ) -> None:
        assert settings.ota_dir is not None
        self.settings = settings
        self.layout = Layout(settings.ota_dir)
        self.device_id = device_id
        self.key = key
        self.release_key = self._load_release_key(Path(identity_dir))
        self._publish = publish
        self._ready = ready
        self._seqs = seqs
        self._restart = restart
        self.running = running_version()
        self._lock = threading.Condition()
        self._pending: tuple[FirmwareTarget | None, int] | None = None
        self._busy: str | None = None  # the version being fetched
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.health_result: str | None = None  # "confirmed" or the failure reason (tests read it)
        self._health_abandoned = False  # switched back on the cloud's word: the health check stops

    @staticmethod
    def _load_release_key(identity_dir: Path) -> bytes | None:
        from iot_protocol.keys import public_key_from_b64

        try:
            return public_key_from_b64((identity_dir / RELEASE_KEY_FILE).read_text().strip())
        except (OSError, ValueError, ProtocolError):
            return None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, desired: FirmwareTarget | None, config_version: int) -> None:
        """Resume where the last run stopped: confirm (or reject) a trial release, report a rollback
        the boot step or the last run did, and pick the desired firmware up again."""
        state = self.layout.read_state()
        phase = state.get("phase")
        if phase == "trial" and state.get("version") == self.running:
            self._spawn(self._health_check, "ota-health", state)
        elif phase == "rolled_back" and not state.get("reported", True):
            self._spawn(self._report_rollback, "ota-report", state)
        self._spawn(self._worker, "ota", None)
        just_rolled_back = phase == "rolled_back" and desired is not None and desired.version == state.get("version")
        if desired is not None and phase != "trial" and not just_rolled_back:  # that one is reported above
            self.request(desired, config_version)

    def _spawn(self, target: Callable[..., None], name: str, arg: Any) -> None:
        t = threading.Thread(
            target=target, args=(() if arg is None else (arg,)), name=f"edge-agent-{name}", daemon=True
        )
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._cancel.set()
        with self._lock:
            self._lock.notify_all()
        for t in self._threads:
            t.join(5)

    def request(self, target: FirmwareTarget | None, config_version: int) -> None:
        """The desired firmware (from an applied config); the newest request replaces any queued one
        and cancels a download of another version."""
        if target is None:
            return
        with self._lock:
            self._pending = (target, config_version)
            if self._busy is not None and self._busy != target.version:
                self._cancel.set()
            self._lock.notify_all()

    # -- reporting --------------------------------------------------------------------------------

    def _report(self, config_version: int, version: str, state: str, error: str | None = None) -> None:
        status = FirmwareStatus(version, state, self.running, error[:500] if error else None)
        log.info("firmware update", extra={"version": version, "state": state, "error": error})
        while not self._stop.is_set():
            if self._ready(1.0):
                try:
                    self._publish(ConfigReport(config_version, "applied", _now_ms(), firmware=status))
                    return
                except Exception:
                    log.exception("firmware report not published; retrying")
            self._stop.wait(1.0)

    def _report_rollback(self, state: dict[str, Any]) -> None:
        self._report(
            int(state.get("config_version", 0)),
            str(state.get("version")),
            "rolled_back",
            str(state.get("reason") or "switched back"),
        )
        if not self._stop.is_set():
            latest = self.layout.read_state()
            latest["reported"] = True
            self.layout.write_state(latest)

    # -- the health check after a switch ----------------------------------------------------------

    def _health_check(self, state: dict[str, Any]) -> None:
        deadline = float(state.get("deadline", time.time() + self.settings.ota_confirm_timeout_s))
        # Receipts for batches of the previous run may arrive now (a persistent session): only a batch
        # this run sealed, stored by the cloud, proves the new release works end to end.
        sealed_at_boot = self._seqs()[0]
        missing = "not connected to the broker"
        while not self._stop.is_set() and time.time() < deadline:
            if self._ready(min(1.0, max(0.01, deadline - time.time()))):
                missing = "no batch receipted by the cloud"
                if self._seqs()[1] > sealed_at_boot and not self._health_abandoned:
                    self._confirm(state)
                    return
            self._stop.wait(0.2)
        if self._stop.is_set() or self._health_abandoned:
            return
        reason = f"health check failed: {missing} within {float(state.get('confirm_timeout_s', 0)):g}s of the switch"
        self.health_result = reason
        log.error("new firmware failed its health check; switching back", extra={"reason": reason})
        latest = self.layout.read_state()
        self.layout.switch(str(latest["from_slot"]))
        latest.update(phase="rolled_back", reason=reason, reported=False, rolled_back_at=time.time())
        latest.setdefault("failed_versions", []).append(latest.get("version"))
        self.layout.write_state(latest)
        self._restart()

    def _confirm(self, state: dict[str, Any]) -> None:
        latest = self.layout.read_state()
        floor = latest.get("floor")
        new_floor = latest.get("min_version")
        if new_floor and (floor is None or compare_versions(new_floor, floor) > 0):
            latest["floor"] = new_floor
        latest.update(phase="confirmed", confirmed_at=time.time())
        self.layout.write_state(latest)
        self.health_result = "confirmed"
        self._report(int(state.get("config_version", 0)), self.running, "confirmed")

    # -- requests ---------------------------------------------------------------------------------

    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while self._pending is None and not self._stop.is_set():
                    self._lock.wait()
                if self._stop.is_set():
                    return
                assert self._pending is not None
                (target, config_version), self._pending = self._pending, None
                assert target is not None
                self._busy = target.version
                self._cancel.clear()
            try:
                self._handle(target, config_version)
            except OtaError as exc:
                if exc.reason == "cancelled":
                    log.info("firmware download cancelled", extra={"version": target.version})
                else:
                    self._report(config_version, target.version, "failed", f"{exc.reason}: {exc}")
            except Exception as exc:  # a bug must not kill the worker
                log.exception("firmware update failed")
                self._report(config_version, target.version, "failed", f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._busy = None

    def _handle(self, target: FirmwareTarget, config_version: int) -> None:
        state = self.layout.read_state()
        if state.get("phase") == "trial" and target.version == state.get("from_version"):
            # the cloud wants the previous release back before this one confirmed (a rollout aborted)
            self._health_abandoned = True
            reason = f"the cloud asked for {target.version} before {self.running} was confirmed"
            self.layout.switch(str(state["from_slot"]))
            state.update(phase="rolled_back", reason=reason, reported=False, rolled_back_at=time.time())
            state.setdefault("failed_versions", []).append(state.get("version"))
            self.layout.write_state(state)
            self._restart()
            return
        if compare_versions(target.version, self.running) == 0:
            self._report(config_version, target.version, "confirmed")
            return
        if target.version in (state.get("failed_versions") or []):
            raise OtaError(
                f"release {target.version} failed on this device before; it is not tried again", reason="failed_before"
            )
        floor = state.get("floor")
        other = self.layout.other()
        slots = state.get("slots") or {}
        if (
            self.layout.slot_version(other) == target.version
            and (slots.get(other) or {}).get("version") == target.version
        ):
            if floor is not None and compare_versions(target.version, floor) < 0:
                raise VerifyError(
                    f"release {target.version} is a downgrade below the minimum version {floor}", reason="below_minimum"
                )
            self._switch(state, other, target.version, config_version, min_version=None)
            return
        if target.manifest is None or target.url is None:
            raise OtaError(
                f"release {target.version} is not installed here and the config gives no manifest and url",
                reason="not_installed",
            )
        manifest = self._verify_manifest(target, floor)
        self._report(config_version, target.version, "downloading")
        dest = self.layout.download_dir / f"{target.version}.part"
        s = self.settings
        fetch(
            target.url,
            dest,
            size=manifest.size,
            authorization=lambda: (
                "Device " + seal_download_request(self.device_id, target.version, self.key, now_ms=_now_ms())
            ),
            max_bytes_per_s=target.max_bytes_per_s or s.ota_max_bytes_per_s,
            retries=s.ota_download_retries,
            retry_delay_s=s.ota_retry_delay_s,
            timeout_s=s.ota_http_timeout_s,
            cancel=self._cancel,
        )
        size = dest.stat().st_size
        if size != manifest.size:
            dest.unlink(missing_ok=True)
            raise VerifyError(f"artifact is {size} bytes, the manifest says {manifest.size}", reason="size_mismatch")
        digest = _sha256(dest)
        if digest != manifest.sha256:
            dest.unlink(missing_ok=True)
            raise VerifyError(
                f"artifact SHA-256 {digest[:16]}... is not the manifest's {manifest.sha256[:16]}...",
                reason="hash_mismatch",
            )
        install_artifact(self.layout, other, dest, target.version)
        dest.unlink(missing_ok=True)
        state = self.layout.read_state()
        state.setdefault("slots", {})[other] = {"version": target.version, "sha256": digest}
        self.layout.write_state(state)
        self._report(config_version, target.version, "installed")
        self._switch(state, other, target.version, config_version, min_version=manifest.min_version)

    def _verify_manifest(self, target: FirmwareTarget, floor: str | None) -> Any:
        if self.release_key is None:
            raise VerifyError("no release public key in the identity directory: enroll again", reason="no_release_key")
        assert target.manifest is not None
        try:
            manifest = open_manifest(target.manifest, release_public_key=self.release_key)
        except ProtocolError as exc:
            raise VerifyError(f"manifest refused: {exc}", reason=exc.reason) from None
        if manifest.version != target.version:
            raise VerifyError(
                f"manifest is for {manifest.version}, the config asks for {target.version}", reason="version_mismatch"
            )
        try:
            check_installable(manifest, device_type=self.settings.device_type, running=self.running, floor=floor)
        except ProtocolError as exc:
            raise VerifyError(str(exc), reason=exc.reason) from None
        return manifest

    def _switch(
        self, state: dict[str, Any], slot: str, version: str, config_version: int, *, min_version: str | None
    ) -> None:
        if self._cancel.is_set():
            raise OtaError("switch cancelled: the desired firmware changed", reason="cancelled")
        s = self.settings
        state.update(
            phase="trial",
            version=version,
            from_version=self.running,
            from_slot=self.layout.current(),
            to_slot=slot,
            boots=0,
            max_boots=s.ota_max_boots,
            confirm_timeout_s=s.ota_confirm_timeout_s,
            deadline=time.time() + s.ota_confirm_timeout_s,
            config_version=config_version,
            min_version=min_version,
            reported=True,
        )
        self.layout.write_state(state)
        self.layout.switch(slot)
        log.warning("switched to new firmware; restarting", extra={"version": version, "slot": slot})
        with contextlib.suppress(Exception):
            self._restart()
