"""The whole platform in one process, as ``iotctl up`` runs it: broker, cloud API, bridge, analytics
worker and a simulated fleet, each the real component, composed in dependency order.

Embedded defaults: a ``mosquitto`` child process with dynamic security when the binary is on PATH
(else the in-process amqtt broker), SQLite for metadata, the embedded SQLite time-series store and an
in-process cache. Any of them can be replaced by a real server's URL.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloud_core.paths import default_state_dir

log = logging.getLogger(__name__)

__all__ = ["Platform", "PlatformError", "PlatformSettings", "PlatformStats"]


class PlatformError(Exception):
    """The platform could not start; the message says which part and why, in one line."""


@dataclass
class PlatformSettings:
    """What ``iotctl up`` was asked for. ``None`` URLs mean: the embedded default."""

    state_dir: Path = field(default_factory=default_state_dir)
    devices: int = 5
    sampling_interval_s: float = 2.0
    broker_url: str | None = None
    broker_admin_username: str | None = None
    broker_admin_password: str | None = None
    db_url: str | None = None
    tsdb_url: str | None = None
    cache_url: str | None = None
    mqtt_port: int = 1883
    api_port: int = 8080
    bridge_metrics_port: int = 9108
    topic_prefix: str = "edu"
    broker_kind: str = "auto"  # auto | mosquitto | amqtt (embedded broker only)
    drain_timeout_s: float = 5.0  # on stop, how long simulated devices wait for outstanding receipts
    # --- TLS (issue 16): beyond loopback, devices get mqtts:// and https:// from the embedded CA ------
    bind_host: str = "127.0.0.1"  # where the API and the broker's device listener listen
    advertised_host: str | None = None  # the name devices use (default: bind_host, or this host's name)
    mqtts_port: int = 8883  # the broker's TLS listener (a free one if taken)


@dataclass(frozen=True)
class PlatformStats:
    """One snapshot for the live view."""

    devices_registered: int
    devices_connected: int
    devices_online: int
    readings_stored: int
    batches_stored: int
    rejected: dict[str, int]
    duplicates: int
    backlog: int
    anomalies: int


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(wanted: int) -> int:
    """``wanted`` when it is free, else any free port (0 asks for any free port)."""
    if wanted and _port_free(wanted):
        return wanted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Platform:
    """Starts every part on ``__enter__`` (or :meth:`start`) and stops them in reverse on exit."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.s = settings
        self.state_dir = settings.state_dir.expanduser().resolve()
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self.broker_desc = ""
        self.mqtt_url = ""
        self.api_url = ""
        self.db_url = settings.db_url or f"sqlite:///{self.state_dir / 'meta.db'}"
        self.tsdb_url = settings.tsdb_url or f"sqlite:///{self.state_dir / 'readings.db'}"
        self.cache_url = settings.cache_url or "memory://edu-platform"
        self.bridge: Any = None
        self.fleet: Any = None
        self.engine: Any = None
        self._fleet_thread: threading.Thread | None = None
        self.fleet_error: str | None = None
        self.mqtt_protocol = "5"
        self.tls: Any = None  # cloud_core.pki.UpTls when binding beyond loopback
        self.public_mqtt_url = ""

    # ---- parts, in start order -------------------------------------------------------------------
    def _start_broker(self) -> tuple[str | None, str | None, Any]:
        """Returns (admin user, admin password, BrokerAdmin or None)."""
        s = self.s
        if s.broker_url is not None:
            self.mqtt_url = s.broker_url
            self.broker_desc = f"external {s.broker_url}"
            return s.broker_admin_username, s.broker_admin_password, None
        port = _pick_port(s.mqtt_port)
        kind = s.broker_kind
        if kind == "auto":
            kind = "mosquitto" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "amqtt"
        self.tls = self._tls()
        if self.tls is not None and kind == "amqtt":
            raise PlatformError(
                f"binding to {s.bind_host} needs TLS, which the embedded amqtt broker does not serve here: "
                "install mosquitto (apt-get install mosquitto) or bind to 127.0.0.1"
            )
        if kind == "mosquitto":
            from cloud_core.broker.mosquitto_process import MosquittoProcess

            proc = MosquittoProcess(
                self.state_dir / "mosquitto", port=port, dynsec=True, tls=self.tls.broker if self.tls else None
            )
            self._stack.enter_context(proc)
            self.mqtt_url = proc.url
            self.broker_desc = f"mosquitto (pid {proc.pid}) {proc.url}"
            if self.tls is not None:
                self.broker_desc += f", devices {self.tls.public_mqtt_url} (TLS)"
            return proc.admin_username, proc.admin_password, None
        from cloud_core.broker.amqtt_broker import AmqttAdmin, AmqttBroker

        broker = AmqttBroker(self.state_dir / "amqtt", port=port)
        self._stack.enter_context(broker)
        self.mqtt_url = broker.url
        self.mqtt_protocol = "3.1.1"
        self.broker_desc = f"amqtt (in-process, MQTT 3.1.1) {broker.url}"
        return None, None, AmqttAdmin(broker)

    def _tls(self) -> Any:
        """TLS for devices when binding beyond loopback (cloud_core.pki.up_tls), else None."""
        from cloud_core.pki import up_tls

        s = self.s
        advertised = s.advertised_host or (s.bind_host if s.bind_host not in ("0.0.0.0", "::") else socket.getfqdn())
        return up_tls(
            self.state_dir, bind_host=s.bind_host, advertised_host=advertised, mqtts_port=_pick_port(s.mqtts_port)
        )

    def _start_api(self, admin_user: str | None, admin_password: str | None, broker_admin: Any) -> None:
        import uvicorn
        from pydantic import SecretStr

        from cloud_core.analytics.settings import AnalyticsSettings
        from cloud_core.api.app import create_app
        from cloud_core.core.config import CloudSettings

        port = _pick_port(self.s.api_port)
        self.cloud = CloudSettings(
            state_dir=self.state_dir,
            db_url=self.db_url,
            tsdb_url=self.tsdb_url,
            cache_url=self.cache_url,
            mqtt_url=self.mqtt_url,
            public_mqtt_url=self.tls.public_mqtt_url if self.tls else self.mqtt_url,
            mqtt_ca_file=self.tls.files.ca_file if self.tls else None,
            mqtt_admin_username=admin_user,
            mqtt_admin_password=SecretStr(admin_password) if admin_password else None,
            mqtt_protocol=self.mqtt_protocol,
            topic_prefix=self.s.topic_prefix,
            api_port=port,
        )
        app = create_app(self.cloud, broker_admin=broker_admin, analytics=AnalyticsSettings())
        tls_kwargs = self.tls.uvicorn if self.tls else {}
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=self.s.bind_host, port=port, log_level="warning", lifespan="on", **tls_kwargs
            )
        )
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        self.api_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        verify: Any = True
        if self.tls is not None:
            from iot_protocol.tls import client_context

            verify = client_context(self.tls.files.ca_file)

        def stop_api() -> None:
            server.should_exit = True
            thread.join(timeout=10)

        self._stack.callback(stop_api)
        deadline = time.monotonic() + 30
        last = "no answer"
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise PlatformError(f"the API stopped during start-up (see the log above); state dir {self.state_dir}")
            try:
                r = httpx.get(f"{self.api_url}/ready", timeout=2, verify=verify)
                if r.status_code == 200:
                    # Where the running platform is, for `iotctl devices|config|sim` without flags.
                    for name, url in (("api.url", self.api_url), ("mqtt.url", self.mqtt_url)):
                        url_file = self.state_dir / name
                        url_file.write_text(url + "\n")
                        self._stack.callback(url_file.unlink, missing_ok=True)
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise PlatformError(f"the API at {self.api_url} was not ready after 30 s: {last}")

    def _start_bridge(self) -> None:
        from pydantic import SecretStr

        from broker_bridge import Bridge, BridgeSettings

        settings = BridgeSettings(
            mqtt_url=self.mqtt_url,
            mqtt_username=self.cloud.mqtt_username,
            mqtt_password=SecretStr(self.cloud.service_password()),
            mqtt_protocol=self.mqtt_protocol,
            topic_prefix=self.s.topic_prefix,
            db_url=self.db_url,
            tsdb_url=self.tsdb_url,
            cache_url=self.cache_url,
            metrics_port=_pick_port(self.s.bridge_metrics_port),
            client_id="bridge-up",
        )
        self.bridge = self._stack.enter_context(Bridge(settings))
        self.bridge.wait_ready(timeout=30)

    def _start_fleet(self) -> None:
        if self.s.devices <= 0:
            return
        from firmware_sim.fleet import Fleet, FleetSettings, device_key
        from firmware_sim.registration import enroll_via_api
        from firmware_sim.scenario import parse_scenario

        interval = f"{self.s.sampling_interval_s}s"
        scenario = parse_scenario(
            {
                "simulation": {"name": "iotctl up", "duration": "3650d", "speed": 1.0},
                "devices": [
                    {
                        "count": self.s.devices,
                        "id_prefix": "sim",
                        "sampling_interval": interval,
                        "transmission_interval": interval,
                    }
                ],
            },
            source="iotctl up",
        )
        plan = scenario.plan()
        keys = {d.device_id: device_key(scenario.simulation.seed, d.device_id) for d in plan.devices}
        token = self.cloud.admin_token_path.read_text().strip()
        ca = self.tls.files.ca_file if self.tls else None
        credentials = enroll_via_api(self.api_url, token, plan.devices, keys, ca_file=ca)
        settings = FleetSettings(
            # with TLS the simulated devices use the TLS listener, as real ones on the network do
            mqtt_url=f"mqtts://127.0.0.1:{self.tls.broker.port}" if self.tls else self.mqtt_url,
            tls_ca_file=ca,
            topic_prefix=self.s.topic_prefix,
            buffer_dir=self.state_dir / "sim-buffers",
            drain_timeout_s=self.s.drain_timeout_s,
            heartbeat_interval_s=30.0,
            receipt_timeout_s=10.0,
        )
        self.fleet = Fleet(plan, settings, credentials=credentials, keys=keys)

        def run() -> None:
            try:
                self.fleet.run()
            except Exception as exc:  # surfaced in the live view and the exit message
                log.exception("simulated fleet stopped")
                self.fleet_error = f"{type(exc).__name__}: {exc}"

        self._fleet_thread = threading.Thread(target=run, name="fleet", daemon=True)
        self._fleet_thread.start()

        def stop_fleet() -> None:
            self.fleet.stop()
            if self._fleet_thread is not None:
                self._fleet_thread.join(timeout=15)

        self._stack.callback(stop_fleet)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, *, devices: bool = True) -> Platform:
        """Start every part; with ``devices=False`` the simulated fleet waits for :meth:`start_devices`
        (tests attach observers to the broker first)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            admin_user, admin_password, broker_admin = self._start_broker()
            self._start_api(admin_user, admin_password, broker_admin)
            self._start_bridge()
            from cloud_core.core.db import make_engine

            self.engine = make_engine(self.db_url)
            self._stack.callback(self.engine.dispose)
            if devices:
                self._start_fleet()
        except BaseException:
            self._stack.close()
            raise
        return self

    def start_devices(self) -> None:
        """Enroll and start the simulated fleet (when :meth:`start` was told not to)."""
        try:
            self._start_fleet()
        except BaseException:
            self._stack.close()
            raise

    def stop_devices(self, timeout_s: float = 30.0) -> None:
        """Stop the simulated fleet after it has drained (every batch receipted, or ``timeout_s``)."""
        if self.fleet is not None and self._fleet_thread is not None:
            self.fleet.stop()
            self._fleet_thread.join(timeout=timeout_s)

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Platform:
        return self if self.bridge is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observation -----------------------------------------------------------------------------
    def stats(self) -> PlatformStats:
        from sqlalchemy import func
        from sqlmodel import Session, select

        from cloud_core.analytics.models import Anomaly
        from cloud_core.models import Device

        m = self.bridge.metrics
        rejected = {
            sample.labels["reason"]: int(sample.value)
            for metric in m.rejected.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        with Session(self.engine) as session:
            registered = session.exec(select(func.count()).select_from(Device)).one()
            online = session.exec(
                select(func.count()).select_from(Device).where(Device.presence == "online")
            ).one()
            anomalies = session.exec(select(func.count()).select_from(Anomaly)).one()
        return PlatformStats(
            devices_registered=int(registered),
            devices_connected=self.fleet.connected if self.fleet is not None else 0,
            devices_online=int(online),
            readings_stored=int(m.readings_stored._value.get()),
            batches_stored=int(m.messages_stored._value.get()),
            rejected=rejected,
            duplicates=int(m.duplicates._value.get()),
            backlog=int(m.backlog._value.get()),
            anomalies=int(anomalies),
        )


@contextlib.contextmanager
def running(settings: PlatformSettings) -> Iterator[Platform]:
    with Platform(settings) as platform:
        yield platform
