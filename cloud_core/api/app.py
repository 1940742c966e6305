"""The REST API application factory: ``create_app(settings)``. The lifespan opens what the API needs
(metadata engine, config-signing key, broker admin and service connection, device-events consumer,
bootstrap admin) and closes it on shutdown; nothing is built at import time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..analytics.settings import AnalyticsSettings
from ..broker.admin import BrokerAdmin, BrokerAdminError, open_broker_admin
from ..broker.client import MqttPublisher, connect
from ..cache import Cache, open_cache
from ..core.config import CloudSettings
from ..core.db import create_all, make_engine, session_scope
from ..core.security import (
    generate_token,
    hash_password,
    hash_token,
    load_or_create_signing_key,
    signing_public_key_b64,
    write_secret_file,
)
from ..rollouts import Rollouts, RolloutSettings
from ..services.config import ConfigService
from ..services.device_events import DeviceEventsConsumer
from ..services.errors import ServiceError
from ..services.registry import Registry
from ..tsdb import TimeSeriesStore, open_tsdb

__all__ = ["AppContext", "Metrics", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    """The API's Prometheus metrics, in a registry of their own (one per app)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "edu_api_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edu_api_request_seconds", "HTTP request latency.", ["route"], registry=self.registry
        )
        self.enrollments = Counter(
            "edu_enrollments", "Enrollment attempts by outcome.", ["outcome"], registry=self.registry
        )
        self.registry_actions = Counter(
            "edu_registry_actions",
            "Registry operations (register, deactivate, rotate).",
            ["action"],
            registry=self.registry,
        )
        self.config_versions = Counter(
            "edu_config_versions_published", "Desired config versions published.", registry=self.registry
        )


@dataclass
class AppContext:
    """Everything a request handler may use, built once per app in the lifespan."""

    settings: CloudSettings
    engine: Engine
    signing_key: Ed25519PrivateKey
    broker: BrokerAdmin
    publisher: MqttPublisher
    registry: Registry
    configs: ConfigService
    metrics: Metrics
    events: DeviceEventsConsumer | None = None
    rollouts: Rollouts | None = None

    @classmethod
    def open(
        cls,
        settings: CloudSettings,
        metrics: Metrics,
        *,
        consume_events: bool = True,
        broker_admin: BrokerAdmin | None = None,
        rollouts: RolloutSettings | None = None,
        tsdb: TimeSeriesStore | None = None,
    ) -> AppContext:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        create_all(engine)
        signing_key = load_or_create_signing_key(settings.signing_key_path)
        service_password = settings.service_password()
        broker = broker_admin if broker_admin is not None else open_broker_admin(settings)
        try:
            broker.ensure_service_account(
                settings.mqtt_username, service_password, prefix=settings.topic_prefix
            )
            host, port = settings.mqtt_host_port
            client = connect(
                host,
                port,
                username=settings.mqtt_username,
                password=service_password,
                timeout_s=settings.mqtt_timeout_s,
                protocol=settings.mqtt_protocol,
            )
        except BaseException:
            broker.close()
            engine.dispose()
            raise
        publisher = MqttPublisher(client, timeout_s=settings.mqtt_timeout_s)
        ctx = cls(
            settings=settings,
            engine=engine,
            signing_key=signing_key,
            broker=broker,
            publisher=publisher,
            registry=Registry(settings, broker, publisher, signing_public_key_b64(signing_key)),
            configs=ConfigService(settings.topic_prefix, signing_key, publisher),
            metrics=metrics,
        )
        try:
            ctx.rollouts = Rollouts.open(
                cloud=settings,
                settings=rollouts if rollouts is not None else RolloutSettings(),
                db=engine,
                configs=ctx.configs,
                registry=metrics.registry,
                tsdb=tsdb,
            )
        except BaseException:
            publisher.close()
            broker.close()
            engine.dispose()
            raise
        ctx.registry.release_public_key = ctx.rollouts.releases.public_key_b64
        ctx.bootstrap_admin()
        if consume_events:
            ctx.events = DeviceEventsConsumer(engine, settings)
            ctx.events.start()
        return ctx

    def bootstrap_admin(self) -> None:
        """At first start (no users): create the admin and write its API token to admin.token (0600)."""
        from .. import crud

        with session_scope(self.engine) as session:
            if crud.count_users(session):
                return
            user = crud.create_user(
                session,
                username=self.settings.bootstrap_admin_username,
                password_hash=hash_password(generate_token()),
                role="admin",
            )
            token = generate_token()
            assert user.id is not None
            crud.create_api_token(session, user_id=user.id, token_hash=hash_token(token), name="bootstrap")
            write_secret_file(self.settings.admin_token_path, token + "\n")
        log.info("bootstrap admin created", extra={"path": str(self.settings.admin_token_path)})

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()
        if self.events is not None:
            self.events.stop()
        self.publisher.close()
        self.broker.close()
        self.engine.dispose()

    def check_ready(self) -> dict[str, str]:
        """What is not ready, by dependency (empty when everything is)."""
        problems: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            problems["database"] = str(exc).splitlines()[0]
        if not self.publisher.client.is_connected():
            problems["broker"] = "not connected to the MQTT broker"
        return problems


def create_app(
    settings: CloudSettings | None = None,
    *,
    consume_events: bool = True,
    broker_admin: BrokerAdmin | None = None,
    analytics: AnalyticsSettings | None = None,
    rollouts: RolloutSettings | None = None,
) -> FastAPI:
    """The API app.

    Args:
        settings: default: read from the environment (``EDU_*``) when the app is built.
        consume_events: run the device-events consumer (presence, health, config reports) in this process.
        broker_admin: administers broker accounts; default: from settings (dynamic security when
            ``mqtt_admin_username`` is set). ``iotctl up`` passes the embedded amqtt broker's admin.
        analytics: when given, also run one analytics worker in this process (embedded mode); in
            production analytics workers are their own processes in the consumer group.
        rollouts: rollout and release settings; default: from the environment (``EDU_ROLLOUT_*``).
    """
    settings = settings if settings is not None else CloudSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tsdb = open_tsdb(settings.tsdb_url)
        try:
            ctx = AppContext.open(
                settings,
                metrics,
                consume_events=consume_events,
                broker_admin=broker_admin,
                rollouts=rollouts,
                tsdb=app.state.tsdb,
            )
        except BaseException:
            app.state.tsdb.close()
            raise
        app.state.ctx = ctx
        app.state.cache = open_cache(settings.cache_url)
        if ctx.rollouts is not None:
            ctx.rollouts.start()
        worker_stop = threading.Event()
        worker: threading.Thread | None = None
        if analytics is not None:
            worker = _start_analytics_worker(analytics, settings, ctx, app.state.cache, worker_stop)
        try:
            yield
        finally:
            worker_stop.set()
            if worker is not None:
                worker.join(timeout=10)
            app.state.tsdb.close()
            ctx.close()

    app = FastAPI(title="edu-platform cloud API", version="1", lifespan=lifespan)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status_code)

    @app.exception_handler(BrokerAdminError)
    async def _broker_error(_request: Request, exc: BrokerAdminError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": "unavailable"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        detail = f"{loc}: {first['msg']}" if loc else str(first["msg"])
        return JSONResponse({"detail": detail, "code": "invalid"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness of the process itself."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    def ready(request: Request) -> JSONResponse:
        """Ready when the metadata database answers and the broker connection is up."""
        problems = request.app.state.ctx.check_ready()
        if problems:
            return JSONResponse({"status": "not ready", "detail": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"])
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from ..analytics import routes as analytics_routes
    from ..rollouts.routes import routers as rollout_routers
    from .deps import require_role
    from .routes import config as config_routes
    from .routes import devices as device_routes

    app.include_router(device_routes.router)
    app.include_router(config_routes.router)
    for router in rollout_routers:
        app.include_router(router)
    app.include_router(analytics_routes.router, dependencies=[Depends(require_role("viewer"))])
    return app


def _start_analytics_worker(
    analytics: AnalyticsSettings, settings: CloudSettings, ctx: AppContext, cache: Cache, stop: threading.Event
) -> threading.Thread:
    """One analytics worker on a thread, publishing alerts with the API's MQTT connection."""
    from iot_protocol import Topics

    from ..analytics.worker import AnalyticsWorker

    worker = AnalyticsWorker(
        analytics, cache, ctx.engine, publish=ctx.publisher.publish, topics=Topics(settings.topic_prefix)
    )
    thread = threading.Thread(target=worker.run, args=(stop,), name="analytics-worker", daemon=True)
    thread.start()
    return thread
