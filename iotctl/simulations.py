"""The console's simulator (:class:`cloud_core.console.Simulator`) as ``iotctl up`` runs it: scenarios
from firmware_sim's catalogue, each run on new devices of the person who started it, in this process.

A run registers and enrolls its devices through the platform's own API with a short-lived API key of
that person (so ownership, class, quotas and the audit log are exactly those of ``iotctl devices
register``), revokes the key, then runs the real agent pipeline for each device (firmware_sim's
Fleet) with the ground truth kept in memory for the console's scoring. Device ids are the run's own
(``<user>-<hex>-<group>-000``): a run never takes over anyone's devices.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloud_core.console import GroundTruth, RunAccess, RunStatus, ScenarioInfo, SimulatorRefused

log = logging.getLogger(__name__)

__all__ = ["PlatformSimulator"]

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "firmware_sim" / "scenarios"


def _description(path: Path) -> str:
    """The scenario file's opening comment, up to its first blank comment line or command."""
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text or text.startswith(("iotctl ", "head ")):
            if lines:
                break
            continue
        lines.append(text)
    return " ".join(lines).rstrip(":")


@dataclass
class _Run:
    status: RunStatus
    fleet: Any = None
    labels: Any = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)


class PlatformSimulator:
    """Args:
    api_url: the platform's API (loopback), for registration and enrollment.
    mqtt_url: where simulated devices connect (None: the URL enrollment names).
    topic_prefix: the platform's topic prefix.
    ca_file: the embedded CA when the API speaks TLS.
    scenarios_dir: the catalogue (default: firmware_sim/scenarios).
    max_devices: scenarios with more devices are left out of the catalogue.
    max_active_per_owner: runs one person may have going at once.
    """

    def __init__(
        self,
        *,
        api_url: str,
        mqtt_url: str | None,
        topic_prefix: str,
        ca_file: Path | None = None,
        scenarios_dir: Path = SCENARIOS_DIR,
        max_devices: int = 50,
        max_active_per_owner: int = 2,
    ) -> None:
        self.api_url = api_url
        self.mqtt_url = mqtt_url
        self.topic_prefix = topic_prefix
        self.ca_file = ca_file
        self.scenarios_dir = scenarios_dir
        self.max_devices = max_devices
        self.max_active_per_owner = max_active_per_owner
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}
        self._ids = 0
        self._catalogue: list[tuple[ScenarioInfo, Path]] | None = None

    # ---- the catalogue -----------------------------------------------------------------------------
    def _load_catalogue(self) -> list[tuple[ScenarioInfo, Path]]:
        from firmware_sim.scenario import load_scenario

        out = []
        for path in sorted(self.scenarios_dir.glob("*.toml")):
            try:
                sc = load_scenario(path)
            except Exception as exc:  # a broken file is left out, not the whole catalogue
                log.warning("scenario %s left out of the catalogue: %s", path.name, exc)
                continue
            devices = sum(g.count for g in sc.devices)
            if devices > self.max_devices:
                continue
            info = ScenarioInfo(
                name=path.stem, title=sc.simulation.name, description=_description(path), devices=devices,
                duration_s=sc.simulation.duration, speed=sc.simulation.speed,
                events=len(sc.events) + len(sc.random_events),
            )  # fmt: skip
            out.append((info, path))
        return out

    def catalogue(self) -> Sequence[ScenarioInfo]:
        if self._catalogue is None:
            self._catalogue = self._load_catalogue()
        return [info for info, _ in self._catalogue]

    # ---- runs --------------------------------------------------------------------------------------
    def runs(self) -> Sequence[RunStatus]:
        with self._lock:
            return [self._snapshot(r) for r in self._runs.values()]

    def _snapshot(self, run: _Run) -> RunStatus:
        status = run.status
        if run.fleet is not None and status.status == "running":
            sim_now, done, _ = run.fleet.progress()
            status = replace(status, progress=min(1.0, max(0.0, done)), sim_now_ms=sim_now)
        if run.labels is not None:
            status = replace(
                status,
                labels=tuple(
                    GroundTruth(lab.device_id, lab.start_ms, lab.end_ms, lab.kind, lab.category, lab.field)
                    for lab in list(run.labels.labels)
                ),
            )
        return status

    def start(self, *, scenario: str, owner_id: int, owner: str, access: RunAccess) -> RunStatus:
        from firmware_sim.fleet import device_key
        from firmware_sim.scenario import load_scenario, parse_scenario
        from iotctl.commands.sim import _fleet_ids

        found = next(
            (path for info, path in (self._catalogue or self._load_catalogue()) if info.name == scenario), None
        )
        if found is None:
            raise SimulatorRefused(f"no scenario {scenario!r} in the catalogue")
        with self._lock:
            active = [r for r in self._runs.values() if r.status.owner_id == owner_id
                      and r.status.status in ("starting", "running")]  # fmt: skip
            if len(active) >= self.max_active_per_owner:
                raise SimulatorRefused(
                    f"you have {len(active)} runs going already (at most {self.max_active_per_owner}): stop one first"
                )
            self._ids += 1
            run_id = self._ids
        stem = re.sub(r"[^A-Za-z0-9_-]", "", owner)[:16] or "sim"
        fleet_name = f"{stem}-{secrets.token_hex(2)}"
        try:
            data = load_scenario(found).model_dump(mode="json", exclude_unset=True)
            _fleet_ids(data, fleet_name, from_devices=False)
            data.setdefault("simulation", {})["topic_prefix"] = self.topic_prefix
            sc = parse_scenario(data, source=str(found))
            plan = sc.plan()
        except Exception as exc:
            raise SimulatorRefused(f"scenario {scenario}: {exc}") from None
        keys = {d.device_id: device_key(sc.simulation.seed, d.device_id) for d in plan.devices}
        status = RunStatus(
            id=run_id, scenario=scenario, owner_id=owner_id, owner=owner, fleet=fleet_name,
            device_ids=tuple(d.device_id for d in plan.devices), status="starting", error=None, progress=0.0,
            sim_start_ms=plan.start_ms, sim_end_ms=plan.end_ms, sim_now_ms=plan.start_ms,
            started_at_ms=int(time.time() * 1000),
        )  # fmt: skip
        run = _Run(status)
        with self._lock:
            self._runs[run_id] = run
        run.thread = threading.Thread(
            target=self._run, args=(run, plan, keys, access), name=f"console-sim-{run_id}", daemon=True
        )
        run.thread.start()
        return status

    def _set(self, run: _Run, **changes: Any) -> None:
        with self._lock:
            run.status = replace(run.status, **changes)

    def _run(self, run: _Run, plan: Any, keys: dict[str, Any], access: RunAccess) -> None:
        import httpx

        from firmware_sim.fleet import Fleet, FleetSettings
        from firmware_sim.labels import LabelWriter
        from firmware_sim.registration import enroll_via_api

        try:
            try:
                credentials = enroll_via_api(self.api_url, access.api_key, plan.devices, keys, ca_file=self.ca_file)
            finally:
                with contextlib.suppress(httpx.HTTPError):  # the key expires by itself anyway
                    httpx.delete(
                        f"{self.api_url}/v1/keys/{access.key_id}",
                        headers={"Authorization": f"Bearer {access.api_key}"},
                        timeout=10,
                        verify=str(self.ca_file) if self.ca_file else True,
                    )
            enrolled = next((c.mqtt_url for c in credentials.values() if c.mqtt_url), None)
            settings = FleetSettings(
                mqtt_url=self.mqtt_url or enrolled or "mqtt://127.0.0.1:1883",
                tls_ca_file=self.ca_file,
                topic_prefix=self.topic_prefix,
            )
            run.labels = LabelWriter(None)
            run.fleet = Fleet(plan, settings, labels=run.labels, credentials=credentials, keys=keys)
            if run.stop.is_set():
                self._set(run, status="stopped")
                return
            self._set(run, status="running")
            run.fleet.run()
            sim_now, done, _ = run.fleet.progress()
            self._set(run, status="stopped" if run.stop.is_set() else "finished",
                      progress=min(1.0, done), sim_now_ms=sim_now)  # fmt: skip
        except Exception as exc:  # shown on the run's page, in one line
            log.exception("console simulation %s failed", run.status.id)
            self._set(run, status="failed", error=f"{type(exc).__name__}: {exc}"[:500])

    def stop(self, run_id: int) -> RunStatus | None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return None
        run.stop.set()
        if run.fleet is not None:
            run.fleet.stop()
        with self._lock:
            return self._snapshot(run)

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop every run and wait for their devices to drain."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop.set()
            if run.fleet is not None:
                run.fleet.stop()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=timeout_s)
