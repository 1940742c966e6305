"""The REST API application factory: ``create_app(settings)``. The lifespan opens what the API needs
(metadata engine, config-signing key, broker admin and service connection, device-events consumer,
bootstrap admin) and closes it on shutdown; nothing is built at import time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..analytics.settings import AnalyticsSettings
from ..auth.errors import AuthError, NotAuthenticated, TooManyAttempts
from ..broker.admin import BrokerAdmin, BrokerAdminError
from ..cache import Cache
from ..console.settings import ConsoleSettings
from ..core.config import CloudSettings
from ..rollouts import RolloutSettings
from ..services.errors import ServiceError
from ..tsdb import open_tsdb
from .context import AppContext, Metrics
from .deps import public, undeclared_routes

if TYPE_CHECKING:
    from ..console.simulator import Simulator

__all__ = ["ERROR_RESPONSES", "AppContext", "ErrorBody", "Metrics", "create_app"]

log = logging.getLogger(__name__)

class ErrorBody(BaseModel):
    """Every error answer: one line saying what was wrong, and a stable code."""

    detail: str
    code: str | None = None


#: Error answers every route may give (documented in the OpenAPI schema for clients and tests).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "Not signed in, or the credentials are not valid."),
        (403, "Signed in, but the role or the grant does not allow this."),
        (404, "No such resource, or not one you may see."),
        (409, "Conflicts with the current state (exists already, deactivated, over a quota)."),
        (410, "Expired (an enrollment token)."),
        (422, "A bad parameter or body; detail names it."),
        (429, "Too many attempts; see Retry-After."),
        (503, "A dependency (the broker, the store) did not answer; retrying can help."),
    )
}


def create_app(
    settings: CloudSettings | None = None,
    *,
    consume_events: bool = True,
    broker_admin: BrokerAdmin | None = None,
    analytics: AnalyticsSettings | None = None,
    rollouts: RolloutSettings | None = None,
    console: ConsoleSettings | None = None,
    simulator: Simulator | None = None,
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
        console: the web console's settings; default: from the environment (``EDU_CONSOLE_*``).
        simulator: runs the console's simulator scenarios (``iotctl up`` gives one); None: the
            simulator page says this platform has none.
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
        app.state.cache = ctx.cache
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
            ingest = getattr(app.state, "ingest", None)  # made on first use by routes/ingest.py
            if ingest is not None:
                ingest.close()
            app.state.tsdb.close()
            ctx.close()

    app = FastAPI(title="edu-platform cloud API", version="1", lifespan=lifespan)
    app.state.console = console if console is not None else ConsoleSettings()
    app.state.simulator = simulator
    # Set by whoever stops the server, before it drains connections: open live streams end by themselves.
    app.state.stopping = threading.Event()

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

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, NotAuthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, TooManyAttempts):
            headers["Retry-After"] = str(exc.retry_after_s)
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status_code, headers=headers)

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

    ops = [Depends(public("operations: no secrets"))]

    @app.get("/health", tags=["ops"], dependencies=ops)
    def health() -> dict[str, str]:
        """Liveness of the process itself."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], dependencies=ops)
    def ready(request: Request) -> JSONResponse:
        """Ready when the metadata database answers. The broker connection is reported, not required."""
        ctx = request.app.state.ctx
        problems = ctx.check_ready()
        broker = "connected" if ctx.broker_connected() else "disconnected"
        if problems:
            return JSONResponse({"status": "not ready", "detail": problems, "broker": broker}, status_code=503)
        return JSONResponse({"status": "ready", "broker": broker})

    @app.get(
        "/metrics",
        tags=["ops"],
        dependencies=ops,
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    )
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from ..analytics import routes as analytics_routes
    from .routes import audit, auth, classes, config, devices, ingest, keys, ledger, readings, users

    for module in (auth, users, keys, classes, audit, devices, ingest, config, readings, ledger):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(analytics_routes.router, responses=ERROR_RESPONSES)
    from ..rollouts.routes import routers as rollout_routers

    for router in rollout_routers:
        app.include_router(router, responses=ERROR_RESPONSES)
    from ..console import router as console_router

    app.include_router(console_router, responses=ERROR_RESPONSES)
    missing = undeclared_routes(app)
    if missing:  # tests/test_authz_matrix.py fails on these; say so at start too
        log.error("routes without a declared access rule (use deps.require or deps.public): %s", ", ".join(missing))
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
