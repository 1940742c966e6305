"""The real platform for rollout tests: the API (uvicorn on a free port, with the rollout engine),
the bridge, a real Mosquitto, and simulated fleets enrolled through the API. Timing is short by
settings (engine tick, wave waits, liveness thresholds), never by patching."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from broker_bridge import Bridge, BridgeSettings
from cloud_core.api import create_app
from cloud_core.core.config import CloudSettings
from cloud_core.rollouts import RolloutSettings
from firmware_sim.fleet import Credentials, Fleet, FleetReport, FleetSettings, device_key
from firmware_sim.registration import enroll_via_api
from firmware_sim.scenario import FleetPlan, parse_scenario
from iot_testing import free_port, wait_for

__all__ = ["Env", "FleetRun", "platform", "serve_api"]


def serve_api(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"test-api-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the API to start", timeout=60)
    assert server.started, "the API did not start"
    return server, thread


@dataclass
class FleetRun:
    """A fleet running in a thread until :meth:`stop`."""

    fleet: Fleet
    thread: threading.Thread
    report: list[FleetReport] = field(default_factory=list)

    def stop(self, timeout: float = 60) -> FleetReport | None:
        self.fleet.stop()
        self.thread.join(timeout)
        return self.report[0] if self.report else None


@dataclass
class Env:
    url: str
    token: str
    settings: CloudSettings
    rollout_settings: RolloutSettings
    broker_url: str
    prefix: str
    tmp: Path
    app: Any = None
    fleets: list[FleetRun] = field(default_factory=list)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return self.ok("GET", f"/v1/rollouts/{rollout_id}")  # type: ignore[no-any-return]

    def devices_of(self, rollout_id: int) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.ok("GET", f"/v1/rollouts/{rollout_id}/devices")}

    def wait_rollout(
        self, rollout_id: int, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 120
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.rollout(rollout_id)
            return predicate(last)

        try:
            wait_for(check, what, timeout=timeout, interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; rollout: {last}") from None
        return last

    def release(self, version: str, artifact: bytes, device_types: list[str], **extra: Any) -> dict[str, Any]:
        signed = self.ok(
            "POST",
            "/v1/releases/sign",
            json={
                "version": version,
                "size": len(artifact),
                "sha256": hashlib.sha256(artifact).hexdigest(),
                "device_types": device_types,
                **extra,
            },
        )["manifest"]
        self.ok("POST", "/v1/releases", json={"manifest": signed})
        return self.ok(  # type: ignore[no-any-return]
            "PUT",
            f"/v1/releases/{version}/artifact",
            content=artifact,
            headers={"Content-Type": "application/octet-stream"},
        )

    def fleet(self, scenario: dict[str, Any], **fleet_settings: Any) -> tuple[FleetPlan, dict[str, Credentials]]:
        """Enroll a scenario's devices through the API; returns the plan and their credentials."""
        scenario = {**scenario, "simulation": {"speed": 1.0, "duration": "2h", **scenario.get("simulation", {})}}
        plan = parse_scenario(scenario).plan()
        keys = {d.device_id: device_key(plan.scenario.simulation.seed, d.device_id) for d in plan.devices}
        creds = enroll_via_api(self.url, self.token, plan.devices, keys)
        return plan, creds

    def start_fleet(self, plan: FleetPlan, creds: dict[str, Credentials], **fleet_settings: Any) -> FleetRun:
        seed = plan.scenario.simulation.seed
        keys = {d.device_id: device_key(seed, d.device_id) for d in plan.devices}
        settings = FleetSettings(
            mqtt_url=self.broker_url,
            topic_prefix=self.prefix,
            heartbeat_interval_s=fleet_settings.pop("heartbeat_interval_s", 1.0),
            receipt_timeout_s=fleet_settings.pop("receipt_timeout_s", 5.0),
            drain_timeout_s=fleet_settings.pop("drain_timeout_s", 5.0),
            reconnect_delay_s=fleet_settings.pop("reconnect_delay_s", 0.3),
            **fleet_settings,
        )
        fleet = Fleet(plan, settings, credentials=creds, keys=keys)
        run = FleetRun(fleet, threading.Thread(target=lambda: run.report.append(fleet.run()), daemon=True))
        run.thread.start()
        self.fleets.append(run)
        wait_for(lambda: fleet.connected == len(plan.devices), "every simulated device connected", timeout=60)
        return run

    def wait_online(self, ids: list[str], timeout: float = 60) -> None:
        def online() -> bool:
            rows = {d["id"]: d for d in self.ok("GET", "/v1/devices")}
            return all(rows[i]["state"] == "online" for i in ids)

        wait_for(online, f"{len(ids)} devices online", timeout=timeout, interval=0.3)


@contextlib.contextmanager
def platform(
    *,
    broker_url: str,
    prefix: str,
    tmp: Path,
    db_url: str | None = None,
    rollout: dict[str, Any] | None = None,
    cloud: dict[str, Any] | None = None,
    bridge: bool = True,
) -> Iterator[Env]:
    """The API (with the engine) + the bridge on ``broker_url``; sqlite in ``tmp`` unless ``db_url``."""
    state = tmp / "state"
    port = free_port()
    settings = CloudSettings(
        state_dir=state,
        db_url=db_url or f"sqlite:///{tmp / 'meta.db'}",
        tsdb_url=f"sqlite:///{tmp / 'readings.db'}",
        mqtt_url=broker_url,
        mqtt_username=f"svc-{prefix}",
        topic_prefix=prefix,
        api_port=port,
        **{"events_flush_interval_s": 0.1, "stale_after_s": 6.0, "offline_after_s": 12.0, **(cloud or {})},
    )
    rs = RolloutSettings(
        public_api_url=f"http://127.0.0.1:{port}",
        **{
            "tick_s": 0.25,
            "lease_ttl_s": 3.0,
            "default_wave_wait_s": 1.0,
            "default_apply_timeout_s": 60.0,
            **(rollout or {}),
        },
    )
    app = create_app(settings, rollouts=rs)
    server, thread = serve_api(app, port)
    stack = contextlib.ExitStack()
    try:
        if bridge:
            b = stack.enter_context(
                Bridge(
                    BridgeSettings(
                        mqtt_url=broker_url,
                        db_url=settings.db_url,
                        tsdb_url=settings.tsdb_url,
                        topic_prefix=prefix,
                        metrics_port=None,
                        client_id=f"bridge-{prefix}",
                        sys_topics=False,
                        effects_interval_s=0.1,
                    )
                )
            )
            b.wait_ready()
        token = (state / "admin.token").read_text().strip()
        env = Env(f"http://127.0.0.1:{port}", token, settings, rs, broker_url, prefix, tmp, app)
        try:
            yield env
        finally:
            for run in env.fleets:
                run.stop()
    finally:
        stack.close()
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``wait_for`` with a longer default (the shared machine is slow)."""
    return wait_for(predicate, what, timeout=timeout, interval=0.2)


def now() -> float:
    return time.monotonic()
