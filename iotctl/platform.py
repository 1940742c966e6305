"""The whole platform in one process, as ``iotctl up`` runs it: broker, cloud API, bridge, analytics
worker and a simulated fleet, each the real component, composed in dependency order.

Embedded defaults: a ``mosquitto`` child process with dynamic security when the binary is on PATH
(else the in-process amqtt broker), SQLite for metadata, the embedded SQLite time-series store and an
in-process cache. Any of them can be replaced by a real server's URL.

While it runs, the platform holds the state directory's lock (:mod:`iotctl.statedir`): a second
``iotctl up`` on the same directory is refused. It listens on ``bind_host`` (loopback by default), tells
devices the ``advertised_host``, and keeps its ports across restarts (:mod:`iotctl.network`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from cloud_core.paths import default_state_dir

from .network import (
    Endpoint,
    PortInUse,
    PortPlan,
    advertised_host,
    any_free_port,
    internal_host,
    port_free,
)
from .statedir import PlatformLock, StateDirLocked

log = logging.getLogger(__name__)

__all__ = ["Platform", "PlatformError", "PlatformSettings", "PlatformStats"]

# The schemes of what the platform serves. Beyond loopback, devices get the TLS listeners of the
# embedded CA (cloud_core.pki.up_tls): mqtts on its own port, and the API over https.
MQTT_SCHEME = "mqtt"
HTTP_SCHEME = "http"
MQTTS_SCHEME = "mqtts"
HTTPS_SCHEME = "https"


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
    # Ports: None = the one this state dir used before (first start: the conventional one when it is
    # free, else any free one); a number = that port, refused naming the holder when taken; 0 = any.
    mqtt_port: int | None = None
    api_port: int | None = None
    bridge_metrics_port: int = 9108  # internal (loopback); any free one when taken
    bind_host: str = "127.0.0.1"  # where the API and the embedded broker listen; 0.0.0.0 = every interface
    advertised_host: str | None = None  # the host devices are told at enrollment; None: network.advertised_host
    topic_prefix: str = "edu"
    fleet_prefix: str = "up"  # ids of the platform's own simulated devices: up-000, up-001, ...
    broker_kind: str = "auto"  # auto | mosquitto | amqtt (embedded broker only)
    drain_timeout_s: float = 5.0  # on stop, how long simulated devices wait for outstanding receipts
    # Beyond loopback devices connect over TLS to this port (None: remembered, first start 8883 when free);
    # the plain MQTT listener then stays on loopback for the platform's own parts.
    mqtts_port: int | None = None


@dataclass(frozen=True)
class PlatformStats:
    """One snapshot for the live view: every device the registry knows, and this run's ingest."""

    devices_registered: int
    devices_online: int
    devices_stale: int
    devices_offline: int
    fleet_size: int  # the platform's own simulated devices
    fleet_connected: int
    readings_stored: int
    batches_stored: int
    batches_rejected: dict[str, int]  # messages refused whole, by reason
    rejected: dict[str, int]  # rejections by reason: whole messages, or single readings of a stored batch
    duplicates: int
    backlog: int
    anomalies: int


@dataclass(frozen=True, slots=True)
class _Seen:
    """The columns of a device row that liveness needs."""

    status: str
    presence: str | None
    presence_at: datetime | None
    last_health_at: datetime | None
    last_seen: datetime | None


def _internal_port(wanted: int) -> int:
    """``wanted`` on loopback when it is free, else any free port (0 asks for any)."""
    if wanted and port_free(wanted):
        return wanted
    return any_free_port()


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _counts(counter: Any) -> dict[str, int]:
    return {
        sample.labels["reason"]: int(sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }


class Platform:
    """Starts every part on ``__enter__`` (or :meth:`start`) and stops them in reverse on exit."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.s = settings
        self.state_dir = settings.state_dir.expanduser().resolve()
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self.broker_desc = ""
        self.mqtt_url = ""  # how the platform's own parts reach the broker
        self.api_url = ""  # ... and the API (loopback when the bind covers it)
        self.public_mqtt_url = ""  # what enrollment tells devices
        self.public_api_url = ""  # what devices and other machines use to reach the API
        self.advertised = advertised_host(settings.bind_host, settings.advertised_host)
        self._internal = internal_host(settings.bind_host)
        self._ports = PortPlan(self.state_dir, settings.bind_host)
        self._lock = PlatformLock(self.state_dir)
        self.db_url = settings.db_url or f"sqlite:///{self.state_dir / 'meta.db'}"
        self.tsdb_url = settings.tsdb_url or f"sqlite:///{self.state_dir / 'readings.db'}"
        self.cache_url = settings.cache_url or "memory://edu-platform"
        self.bridge: Any = None
        self.fleet: Any = None
        self.engine: Any = None
        self._fleet_thread: threading.Thread | None = None
        self.fleet_error: str | None = None
        self.mqtt_protocol = "5"
        self.mqtt_port = 0
        self.mqtts_port = 0
        self.api_port = 0
        self.tls: Any = None  # cloud_core.pki.UpTls when binding beyond loopback
        self.ca_file: Path | None = None  # the embedded CA devices pin (with TLS)
        self.simulator: Any = None  # the console's simulator (iotctl.simulations.PlatformSimulator)

    # ---- parts, in start order -------------------------------------------------------------------
    def _start_broker(self) -> tuple[str | None, str | None, Any]:
        """Returns (admin user, admin password, BrokerAdmin or None)."""
        s = self.s
        if s.broker_url is not None:
            self.mqtt_url = s.broker_url
            host = urlsplit(s.broker_url).hostname or ""
            # A broker on this machine's loopback is reached by devices through the advertised host.
            loopback = host in ("127.0.0.1", "localhost", "::1")
            self.public_mqtt_url = _with_host(s.broker_url, self.advertised) if loopback else s.broker_url
            self.broker_desc = f"external {s.broker_url}"
            return s.broker_admin_username, s.broker_admin_password, None
        kind = s.broker_kind
        if kind == "auto":
            kind = "mosquitto" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "amqtt"
        self.tls = self._tls()
        if self.tls is not None and kind == "amqtt":
            raise PlatformError(
                f"binding to {s.bind_host} needs TLS, which the embedded amqtt broker does not serve: "
                "install mosquitto (apt-get install mosquitto) or bind to 127.0.0.1"
            )
        port = self._ports.choose("mqtt", given=s.mqtt_port, default=1883, option="--mqtt-port")
        self.mqtt_port = port
        self.mqtt_url = Endpoint(MQTT_SCHEME, self._internal, port).url
        if self.tls is not None:
            # Devices use the TLS listener; the plain one serves only the platform's own parts, on loopback.
            self.public_mqtt_url = Endpoint(MQTTS_SCHEME, self.advertised, self.mqtts_port).url
            plain_host = self._internal
            listen = (
                f"{Endpoint(MQTTS_SCHEME, s.bind_host, self.mqtts_port).url} (TLS), "
                f"{Endpoint(MQTT_SCHEME, plain_host, port).url} (loopback)"
            )
        else:
            self.public_mqtt_url = Endpoint(MQTT_SCHEME, self.advertised, port).url
            plain_host = s.bind_host
            listen = Endpoint(MQTT_SCHEME, s.bind_host, port).url
        if kind == "mosquitto":
            from cloud_core.broker.mosquitto_process import MosquittoProcess

            proc = MosquittoProcess(
                self.state_dir / "mosquitto",
                host=plain_host,
                port=port,
                dynsec=True,
                tls=self.tls.broker if self.tls else None,
            )
            self._stack.enter_context(proc)
            self.broker_desc = f"mosquitto (pid {proc.pid}) listening on {listen}"
            return proc.admin_username, proc.admin_password, None
        from cloud_core.broker.amqtt_broker import AmqttAdmin, AmqttBroker

        broker = AmqttBroker(self.state_dir / "amqtt", host=s.bind_host, port=port)
        self._stack.enter_context(broker)
        self.mqtt_protocol = "3.1.1"
        self.broker_desc = f"amqtt (in-process, MQTT 3.1.1) listening on {listen}"
        return None, None, AmqttAdmin(broker)

    def _tls(self) -> Any:
        """TLS for devices when binding beyond loopback (the embedded CA), else None."""
        from cloud_core.pki import needs_tls, up_tls

        s = self.s
        if not needs_tls(s.bind_host):
            return None
        self.mqtts_port = self._ports.choose("mqtts", given=s.mqtts_port, default=8883, option="--mqtts-port")
        tls = up_tls(self.state_dir, bind_host=s.bind_host, advertised_host=self.advertised, mqtts_port=self.mqtts_port)
        self.ca_file = tls.files.ca_file if tls is not None else None
        return tls

    def _start_api(self, admin_user: str | None, admin_password: str | None, broker_admin: Any) -> None:
        import uvicorn
        from pydantic import SecretStr

        from cloud_core.analytics.settings import AnalyticsSettings
        from cloud_core.api.app import create_app
        from cloud_core.core.config import CloudSettings

        port = self._ports.choose("api", given=self.s.api_port, default=8080, option="--api-port")
        self.api_port = port
        http = HTTPS_SCHEME if self.tls is not None else HTTP_SCHEME
        self.api_url = Endpoint(http, self._internal, port).url
        self.public_api_url = Endpoint(http, self.advertised, port).url
        self.cloud = CloudSettings(
            state_dir=self.state_dir,
            db_url=self.db_url,
            tsdb_url=self.tsdb_url,
            cache_url=self.cache_url,
            mqtt_url=self.mqtt_url,
            public_mqtt_url=self.public_mqtt_url,
            mqtt_ca_file=self.ca_file,
            mqtt_admin_username=admin_user,
            mqtt_admin_password=SecretStr(admin_password) if admin_password else None,
            mqtt_protocol=self.mqtt_protocol,
            topic_prefix=self.s.topic_prefix,
            api_host=self.s.bind_host,
            api_port=port,
        )
        from .simulations import PlatformSimulator

        # The console's simulator: scenarios run here, on devices of the person who starts them.
        self.simulator = PlatformSimulator(
            api_url=self.api_url,
            mqtt_url=Endpoint(MQTTS_SCHEME, "127.0.0.1", self.mqtts_port).url if self.tls else self.mqtt_url,
            topic_prefix=self.s.topic_prefix,
            ca_file=self.ca_file,
        )
        app = create_app(self.cloud, broker_admin=broker_admin, analytics=AnalyticsSettings(), simulator=self.simulator)
        tls_kwargs = self.tls.uvicorn if self.tls is not None else {}
        server = uvicorn.Server(
            # a request still running 5 s into the shutdown is cancelled
            uvicorn.Config(
                app,
                host=self.s.bind_host,
                port=port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
                **tls_kwargs,
            )
        )
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        verify: Any = True
        if self.ca_file is not None:
            from iot_protocol.tls import client_context

            verify = client_context(self.ca_file)

        def stop_api() -> None:
            app.state.stopping.set()  # open live streams (the console's) end by themselves first
            server.should_exit = True
            thread.join(timeout=10)

        self._stack.callback(stop_api)
        self._stack.callback(self.simulator.close)  # runs first: its devices drain while the API still answers
        deadline = time.monotonic() + 30
        last = "no answer"
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise PlatformError(f"the API stopped during start-up (see the log above); state dir {self.state_dir}")
            try:
                r = httpx.get(f"{self.api_url}/ready", timeout=2, verify=verify)
                if r.status_code == 200:
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
            metrics_port=_internal_port(self.s.bridge_metrics_port),
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
                        "id_prefix": self.s.fleet_prefix,
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
        # The fleet's ids are this platform's own: a restart takes its devices over again.
        credentials = enroll_via_api(self.api_url, token, plan.devices, keys, take_over=True, ca_file=self.ca_file)
        settings = FleetSettings(
            # with TLS the simulated devices use the TLS listener, as real ones on the network do
            mqtt_url=Endpoint(MQTTS_SCHEME, "127.0.0.1", self.mqtts_port).url if self.tls else self.mqtt_url,
            tls_ca_file=self.ca_file,
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
    def _announce(self) -> None:
        """Tell clients where the platform is: the lock's record (the source of truth, dies with the
        process) and the ``api.url`` / ``mqtt.url`` files of earlier versions."""
        self._lock.write(
            api_url=self.api_url,
            mqtt_url=self.mqtt_url,
            public_api_url=self.public_api_url,
            public_mqtt_url=self.public_mqtt_url,
        )
        for name, url in (("api.url", self.api_url), ("mqtt.url", self.mqtt_url)):
            url_file = self.state_dir / name
            url_file.write_text(url + "\n")
            self._stack.callback(url_file.unlink, missing_ok=True)

    def start(self, *, devices: bool = True) -> Platform:
        """Start every part; with ``devices=False`` the simulated fleet waits for :meth:`start_devices`
        (tests attach observers to the broker first).

        Raises:
            PlatformError: the state dir is in use by another ``iotctl up``, a port it must use is
                taken, or a part did not start.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except StateDirLocked as exc:
            raise PlatformError(str(exc)) from None
        self._stack.callback(self._lock.release)
        try:
            admin_user, admin_password, broker_admin = self._start_broker()
            self._start_api(admin_user, admin_password, broker_admin)
            self._start_bridge()
            from cloud_core.core.db import make_engine

            self.engine = make_engine(self.db_url)
            self._stack.callback(self.engine.dispose)
            self._ports.remember(
                **({"mqtt": self.mqtt_port} if self.s.broker_url is None else {}),
                **({"mqtts": self.mqtts_port} if self.mqtts_port else {}),
                api=self.api_port,
            )
            if devices:
                self._start_fleet()
            self._announce()  # only now: a client that finds the platform finds every part running
        except PortInUse as exc:
            self._stack.close()
            raise PlatformError(str(exc)) from None
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
        from cloud_core.liveness import Liveness, liveness
        from cloud_core.models import Device

        m = self.bridge.metrics
        now = datetime.now(UTC)
        states = dict.fromkeys(Liveness, 0)
        with Session(self.engine) as session:
            cols = (Device.status, Device.presence, Device.presence_at, Device.last_health_at, Device.last_seen)
            for row in session.exec(select(*cols)):
                states[liveness(_Seen(*row), now, self.cloud)[0]] += 1
            anomalies = session.exec(select(func.count()).select_from(Anomaly)).one()
        return PlatformStats(
            devices_registered=sum(states.values()),
            devices_online=states[Liveness.ONLINE],
            devices_stale=states[Liveness.STALE],
            devices_offline=states[Liveness.OFFLINE],
            fleet_size=len(self.fleet.devices) if self.fleet is not None else 0,
            fleet_connected=self.fleet.connected if self.fleet is not None else 0,
            readings_stored=int(m.readings_stored._value.get()),
            batches_stored=int(m.messages_stored._value.get()),
            batches_rejected=_counts(m.batches_rejected),
            rejected=_counts(m.rejected),
            duplicates=int(m.duplicates._value.get()),
            backlog=int(m.backlog._value.get()),
            anomalies=int(anomalies),
        )


@contextlib.contextmanager
def running(settings: PlatformSettings) -> Iterator[Platform]:
    with Platform(settings) as platform:
        yield platform
