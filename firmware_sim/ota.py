"""Firmware updates on simulated devices: what the real agent does (edge_agent/ota.py), modelled
per device, with real HTTP downloads against the real API.

A simulated device acts on the ``firmware`` setting of its signed desired config like the agent:
it verifies the manifest with the release key it got at enrollment, checks its device type and
minimum version, downloads the artifact from the API (``edge_agent.ota_fetch``: range requests,
bounded retries, bandwidth cap, a request signed by its own key) on a worker thread, checks size and
SHA-256, then "installs" it: it reboots into the new version (its A/B model remembers the previous
one), confirms only after a health check (connected and a batch receipted within
``ota_confirm_timeout_s``), and switches back by itself after ``ota_max_boots`` boots without
confirming (a crash loop) or a failed health check, reporting why.

What a version *does* comes from the scenario's ``[[firmware]]`` builds:

- ``good``: nothing special;
- ``crash_after_boot``: crashes ``after`` seconds after each boot (0: during startup, before it
  connects, so it never confirms and the boot loop switches back);
- ``stop_sending``: from ``after`` on, no telemetry and no heartbeats (the connection stays up);
- ``drift``: ``field`` drifts by ``magnitude`` (default 5) per simulated minute since ``after``;
- ``out_of_range``: ``field`` reads ``magnitude`` (default 150: outside the contract's range, so
  the bridge dead-letters the readings) from ``after`` on;
- ``reject_config``: reports its desired config as rejected at boot and never confirms.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import OtaError
from edge_agent.ota_fetch import fetch
from iot_protocol import (
    ConfigReport,
    FirmwareStatus,
    FirmwareTarget,
    Health,
    ProtocolError,
    check_installable,
    compare_versions,
    encode,
    open_manifest,
)
from iot_protocol.firmware import seal_download_request

from .scenario import FirmwareBuild

if TYPE_CHECKING:
    from .fleet import Fleet, _Device

__all__ = ["DeviceOta", "SimOta"]

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class DeviceOta:
    """One simulated device's firmware state (its A/B slots, as the agent keeps them in state.json)."""

    running: str
    previous: str | None = None  # the version in the other slot
    floor: str | None = None
    failed_versions: set[str] = field(default_factory=set)
    trial: dict[str, Any] | None = None  # version, from, boots, deadline, config_version, min_version
    booted_at: float = 0.0
    busy: str | None = None  # version being downloaded
    cancel: threading.Event = field(default_factory=threading.Event)
    outbox: list[bytes] = field(default_factory=list)  # reports waiting for a connection
    history: list[tuple[str, str, str | None]] = field(default_factory=list)  # (version, state, error)


class SimOta:
    """The fleet's OTA: per-device state, a small download pool, and the hooks the fleet calls."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        s = fleet.settings
        self.builds: dict[str, FirmwareBuild] = {b.version: b for b in fleet.plan.scenario.firmware}
        self.devices: dict[str, DeviceOta] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._workers = s.ota_download_workers
        self._dir: Path | None = None
        self.downloads = 0

    # -- helpers ----------------------------------------------------------------------------------

    def state(self, dev: _Device) -> DeviceOta:
        st = self.devices.get(dev.id)
        if st is None:
            st = self.devices[dev.id] = DeviceOta(running=dev.plan.group.firmware)
        return st

    def build(self, dev: _Device) -> FirmwareBuild | None:
        return self.builds.get(self.state(dev).running)

    def _since_boot(self, dev: _Device) -> float:
        return (time.monotonic() - self.state(dev).booted_at) * self.fleet.plan.scenario.simulation.speed

    def _misbehaving(self, dev: _Device, behaviour: str) -> bool:
        b = self.build(dev)
        return b is not None and b.behaviour == behaviour and self._since_boot(dev) >= b.after

    def silent(self, dev: _Device) -> bool:
        """True while the running build has stopped sending (no telemetry, no heartbeats)."""
        return self._misbehaving(dev, "stop_sending")

    def health(self, dev: _Device, h: Health) -> Health:
        """The heartbeat with the firmware the device runs."""
        return replace(h, firmware=f"edu-agent/{self.state(dev).running}")

    def _report(self, dev: _Device, config_version: int, version: str, state: str, error: str | None = None) -> None:
        st = self.state(dev)
        st.history.append((version, state, error))
        report = ConfigReport(
            config_version, "applied", _now_ms(), firmware=FirmwareStatus(version, state, st.running, error)
        )
        payload = encode(report)
        if not dev.publish(self.fleet.topics.config_reported(dev.id), payload):
            st.outbox.append(payload)

    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the fleet's loop thread (from a download worker)."""
        self.fleet.calls.put((fn, args))

    # -- fleet hooks ------------------------------------------------------------------------------

    def on_connected(self, dev: _Device) -> None:
        st = self.state(dev)
        outbox, st.outbox = st.outbox, []
        for payload in outbox:
            if not dev.publish(self.fleet.topics.config_reported(dev.id), payload):
                st.outbox.append(payload)

    def attach(self, dev: _Device) -> None:
        """A device of the fleet, booted on its group's firmware."""
        self.state(dev).booted_at = time.monotonic()
        dev.sensor.effect = self._effect(dev)

    def on_boot(self, dev: _Device) -> bool:
        """Called as the device comes up; False when it must not start (crashed during startup).
        Like the agent's boot step, a release that booted ``ota_max_boots`` times without
        confirming is switched back from before it starts again."""
        st = self.state(dev)
        st.booted_at = time.monotonic()
        if st.trial is not None:
            st.trial["boots"] += 1
            if st.trial["boots"] > self.fleet.settings.ota_max_boots:
                self._switch_back(dev, f"crash loop: {st.trial['boots'] - 1} boots without confirmation")
        dev.sensor.effect = self._effect(dev)
        b = self.build(dev)
        if b is not None and b.behaviour == "crash_after_boot":
            if b.after <= 0:
                self.fleet._after_real(self.fleet.settings.ota_reboot_s, self._reboot, dev)
                return False
            self.fleet._after_real(b.after / self.fleet.plan.scenario.simulation.speed, self._crash, dev, st.booted_at)
        if b is not None and b.behaviour == "reject_config" and st.trial is not None:
            version = dev.pipeline.runtime.config_version
            self._queue_raw(
                dev,
                encode(ConfigReport(version, "rejected", _now_ms(), f"firmware {b.version} cannot parse its config")),
            )
        if st.trial is not None:
            st.trial["sealed_at_boot"] = dev.buffer.counters["last_seq"]
            self.fleet._after_real(0.2, self._health_tick, dev, st.booted_at)
        return True

    def _queue_raw(self, dev: _Device, payload: bytes) -> None:
        st = self.state(dev)
        if not dev.publish(self.fleet.topics.config_reported(dev.id), payload):
            st.outbox.append(payload)

    def _crash(self, dev: _Device, booted_at: float) -> None:
        if self.state(dev).booted_at == booted_at and not dev.down:
            log.info("simulated firmware crashed", extra={"device_id": dev.id, "version": self.state(dev).running})
            self._reboot(dev)

    def _reboot(self, dev: _Device) -> None:
        if self.fleet.stopping:
            return
        if not dev.down:
            dev.go_down()
        self.fleet._after_real(self.fleet.settings.ota_reboot_s, dev.come_up)

    def _effect(self, dev: _Device) -> Any:
        b = self.build(dev)
        if b is None or b.behaviour not in ("drift", "out_of_range"):
            return None
        speed = self.fleet.plan.scenario.simulation.speed
        booted = self.state(dev).booted_at

        def effect(_t: int, values: dict[str, float]) -> dict[str, float]:
            if b.field not in values:
                return values
            elapsed = (time.monotonic() - booted) * speed - b.after
            if elapsed < 0:
                return values
            out = dict(values)
            if b.behaviour == "drift":
                out[b.field] = round(out[b.field] + (b.magnitude if b.magnitude is not None else 5.0) * elapsed / 60, 3)
            else:
                out[b.field] = b.magnitude if b.magnitude is not None else 150.0
            return out

        return effect

    def _health_tick(self, dev: _Device, booted_at: float) -> None:
        st = self.state(dev)
        trial = st.trial
        if trial is None or st.booted_at != booted_at or dev.down or self.fleet.stopping:
            return
        b = self.build(dev)
        healthy = dev.connected and dev.pipeline.last_stored_seq > trial["sealed_at_boot"]
        if b is not None and b.behaviour == "reject_config":
            healthy = False
        if healthy:
            st.trial = None
            if trial.get("min_version") and (st.floor is None or compare_versions(trial["min_version"], st.floor) > 0):
                st.floor = trial["min_version"]
            self._report(dev, trial["config_version"], st.running, "confirmed")
            return
        if time.monotonic() > trial["deadline"]:
            missing = "not connected" if not dev.connected else "no batch receipted"
            self._switch_back(
                dev, f"health check failed: {missing} within {self.fleet.settings.ota_confirm_timeout_s:g}s"
            )
            dev.go_down()
            self.fleet._after_real(self.fleet.settings.ota_reboot_s, dev.come_up)
            return
        self.fleet._after_real(0.2, self._health_tick, dev, booted_at)

    def _switch_back(self, dev: _Device, reason: str) -> None:
        st = self.state(dev)
        trial = st.trial
        assert trial is not None
        log.warning("simulated device switched back", extra={"device_id": dev.id, "reason": reason})
        st.failed_versions.add(trial["version"])
        st.running, st.previous = trial["from"], trial["version"]
        st.trial = None
        st.history.append((trial["version"], "rolled_back", reason))
        # reported by the old version once it is connected again (as the agent does after a restart),
        # with what it runs for the config it has now (the agent reports its desired firmware at start)
        status = FirmwareStatus(trial["version"], "rolled_back", st.running, reason)
        st.outbox.append(encode(ConfigReport(trial["config_version"], "applied", _now_ms(), firmware=status)))
        desired = dev.pipeline.desired.firmware if dev.pipeline.desired is not None else None
        if desired is not None and compare_versions(desired.version, st.running) == 0:
            version = dev.pipeline.runtime.config_version
            status = FirmwareStatus(st.running, "confirmed", st.running)
            st.outbox.append(encode(ConfigReport(version, "applied", _now_ms(), firmware=status)))

    def on_config(self, dev: _Device, report: ConfigReport) -> None:
        """After the device applied a desired config: act on its firmware target."""
        if report.status != "applied":
            return
        desired = dev.pipeline.desired
        target = desired.firmware if desired is not None else None
        if target is None:
            return
        st = self.state(dev)
        if st.busy is not None and st.busy != target.version:
            st.cancel.set()
        self._handle(dev, target, report.version)

    def _handle(self, dev: _Device, target: FirmwareTarget, config_version: int) -> None:
        st = self.state(dev)
        if st.trial is not None:
            if compare_versions(target.version, st.trial["from"]) == 0:  # back before it confirmed
                trial_version = st.trial["version"]
                booted_it = st.running == trial_version
                self._switch_back(dev, f"the cloud asked for {target.version} before {trial_version} was confirmed")
                if booted_it:
                    self._reboot(dev)
            return  # otherwise the health check decides first
        if compare_versions(target.version, st.running) == 0:
            self._report(dev, config_version, target.version, "confirmed")
            return
        if target.version in st.failed_versions:
            self._report(
                dev,
                config_version,
                target.version,
                "failed",
                f"failed_before: release {target.version} failed here before",
            )
            return
        if st.previous is not None and compare_versions(target.version, st.previous) == 0:
            if st.floor is not None and compare_versions(target.version, st.floor) < 0:
                self._report(dev, config_version, target.version, "failed", f"below_minimum: below {st.floor}")
                return
            self._install(dev, target.version, config_version, None)
            return
        if target.manifest is None or target.url is None:
            self._report(dev, config_version, target.version, "failed", "not_installed: no manifest and url given")
            return
        key = dev.creds.release_public_key
        if key is None:
            self._report(dev, config_version, target.version, "failed", "no_release_key: enroll through the API")
            return
        try:
            manifest = open_manifest(target.manifest, release_public_key=key)
            if manifest.version != target.version:
                raise ProtocolError(f"manifest is for {manifest.version}", reason="version_mismatch")
            check_installable(manifest, device_type=dev.plan.group.type, running=st.running, floor=st.floor)
        except ProtocolError as exc:
            self._report(dev, config_version, target.version, "failed", f"{exc.reason}: {exc}")
            return
        if st.busy == target.version:
            return  # already downloading it
        st.busy = target.version
        st.cancel = threading.Event()
        self._report(dev, config_version, target.version, "downloading")
        self._download_pool().submit(self._download, dev, target, manifest, config_version, st.cancel)

    def _download_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="sim-ota")
            self._dir = Path(tempfile.mkdtemp(prefix="sim-ota-"))
        return self._pool

    def _download(
        self, dev: _Device, target: FirmwareTarget, manifest: Any, config_version: int, cancel: threading.Event
    ) -> None:
        """Worker thread: fetch and verify; the result goes back to the fleet's loop."""
        assert self._dir is not None and target.url is not None
        dest = self._dir / f"{dev.id}-{target.version}.part"
        s = self.fleet.settings
        error: str | None = None
        try:
            fetch(
                target.url,
                dest,
                size=manifest.size,
                authorization=lambda: (
                    "Device " + seal_download_request(dev.id, target.version, dev.key, now_ms=_now_ms())
                ),
                max_bytes_per_s=target.max_bytes_per_s,
                retries=s.ota_download_retries,
                retry_delay_s=s.ota_retry_delay_s,
                timeout_s=30.0,
                cancel=cancel,
            )
            h = hashlib.sha256()
            with open(dest, "rb") as f:
                while chunk := f.read(1 << 16):
                    h.update(chunk)
            if dest.stat().st_size != manifest.size:
                error = f"size_mismatch: {dest.stat().st_size} bytes, the manifest says {manifest.size}"
            elif h.hexdigest() != manifest.sha256:
                error = "hash_mismatch: the artifact's SHA-256 is not the manifest's"
        except OtaError as exc:
            error = f"{exc.reason}: {exc}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            dest.unlink(missing_ok=True)
        self.downloads += 1
        self._call(self._downloaded, dev, target, manifest, config_version, error)

    def _downloaded(
        self, dev: _Device, target: FirmwareTarget, manifest: Any, config_version: int, error: str | None
    ) -> None:
        st = self.state(dev)
        st.busy = None
        desired = dev.pipeline.desired.firmware if dev.pipeline.desired is not None else None
        if desired is None or desired.version != target.version:  # changed meanwhile (an abort)
            st.history.append((target.version, "cancelled", None))
            return  # never install this one
        if error is not None:
            if error.startswith("cancelled"):
                st.history.append((target.version, "cancelled", None))
                return
            self._report(dev, config_version, target.version, "failed", error)
            return
        self._report(dev, config_version, target.version, "installed")
        self._install(dev, target.version, config_version, manifest.min_version)

    def _install(self, dev: _Device, version: str, config_version: int, min_version: str | None) -> None:
        """Switch to ``version`` (the other slot) and reboot into it, on trial."""
        st = self.state(dev)
        st.trial = {
            "version": version,
            "from": st.running,
            "boots": 0,
            "deadline": time.monotonic() + self.fleet.settings.ota_confirm_timeout_s,
            "config_version": config_version,
            "min_version": min_version,
            "sealed_at_boot": dev.buffer.counters["last_seq"],
        }
        # switch and restart a moment later, as the agent does after its report: the report goes out first
        self.fleet._after_real(0.2, self._switch_and_reboot, dev, version)

    def _switch_and_reboot(self, dev: _Device, version: str) -> None:
        st = self.state(dev)
        if st.trial is None or st.trial["version"] != version:
            return  # switched back meanwhile (the cloud asked for the previous version)
        st.previous, st.running = st.running, version
        self._reboot(dev)

    def close(self) -> None:
        if self._pool is not None:
            for st in self.devices.values():
                st.cancel.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
