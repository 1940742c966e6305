"""Everything a request handler may use (:class:`AppContext`), built once per app in the lifespan,
and the API's Prometheus metrics. Its own module so ``api/deps.py`` and the routes take it without
importing the app factory (which imports them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import text
from sqlalchemy.engine import Engine

from ..auth.broker_sync import BrokerSync
from ..auth.passwords import configure as configure_passwords
from ..auth.throttle import LoginThrottle
from ..auth.tokens import TokenSigner
from ..broker.admin import BrokerAdmin
from ..broker.client import MqttPublisher, connect
from ..broker.factory import open_broker_admin
from ..cache import Cache, open_cache
from ..core.config import CloudSettings
from ..core.db import create_all, make_engine, session_scope
from ..core.migrate import ensure_schema
from ..core.security import (
    generate_token,
    hash_token,
    load_or_create_signing_key,
    signing_public_key_b64,
    write_secret_file,
)
from ..rollouts import Rollouts, RolloutSettings
from ..services.config import ConfigService
from ..services.device_events import DeviceEventsConsumer
from ..services.registry import Registry
from ..tsdb import TimeSeriesStore

__all__ = ["AppContext", "Metrics"]

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
        self.latency = Histogram("edu_api_request_seconds", "HTTP request latency.", ["route"], registry=self.registry)
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
    signer: TokenSigner
    cache: Cache
    throttle: LoginThrottle
    broker_sync: BrokerSync
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
        configure_passwords(time_cost=settings.password_time_cost, memory_kib=settings.password_memory_kib)
        engine = make_engine(settings.db_url)
        if settings.db_auto_migrate:
            create_all(engine)
        else:
            ensure_schema(engine, migrate=False)
        signing_key = load_or_create_signing_key(settings.signing_key_path)
        service_password = settings.service_password()
        broker = broker_admin if broker_admin is not None else open_broker_admin(settings)
        try:
            broker.ensure_service_account(settings.mqtt_username, service_password, prefix=settings.topic_prefix)
            host, port = settings.mqtt_host_port
            client = connect(
                host,
                port,
                username=settings.mqtt_username,
                password=service_password,
                timeout_s=settings.mqtt_timeout_s,
                protocol=settings.mqtt_protocol,
                tls=settings.mqtt_tls_context(),
            )
        except BaseException:
            broker.close()
            engine.dispose()
            raise
        publisher = MqttPublisher(client, timeout_s=settings.mqtt_timeout_s)
        cache = open_cache(settings.cache_url)
        ctx = cls(
            settings=settings,
            engine=engine,
            signing_key=signing_key,
            broker=broker,
            publisher=publisher,
            registry=Registry(settings, broker, publisher, signing_public_key_b64(signing_key)),
            configs=ConfigService(settings.topic_prefix, signing_key, publisher),
            metrics=metrics,
            signer=TokenSigner(engine, ttl_s=settings.access_token_ttl_s),
            cache=cache,
            throttle=LoginThrottle(
                cache,
                per_user_address=settings.login_max_per_user_address,
                per_user=settings.login_max_per_user,
                per_address=settings.login_max_per_address,
                window_s=settings.login_window_s,
            ),
            broker_sync=BrokerSync(broker, settings.topic_prefix),
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
            cache.close()
            engine.dispose()
            raise
        ctx.registry.release_public_key = ctx.rollouts.releases.public_key_b64
        ctx.bootstrap_admin()
        from .fleet_metrics import FleetCollector

        metrics.registry.register(FleetCollector(engine, settings))
        if consume_events:
            ctx.events = DeviceEventsConsumer(engine, settings)
            ctx.events.start()
        return ctx

    def bootstrap_admin(self) -> None:
        """At first start (no users): create the admin (with a random password nobody knows: set one with
        'iotctl users reset-password') and write an admin API key to admin.token (0600)."""
        from ..auth.models import ApiKey
        from ..auth.users import count_users, create_user

        with session_scope(self.engine) as session:
            if count_users(session):
                return
            user = create_user(
                session,
                actor="system",
                username=self.settings.bootstrap_admin_username,
                password=generate_token(),
                role="admin",
            )
            token = generate_token()
            assert user.id is not None
            session.add(
                ApiKey(token_hash=hash_token(token), prefix=token[:8], user_id=user.id, name="bootstrap", role="admin")
            )
            write_secret_file(self.settings.admin_token_path, token + "\n")
        log.info("bootstrap admin created", extra={"path": str(self.settings.admin_token_path)})

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()
        if self.events is not None:
            self.events.stop()
        self.publisher.close()
        self.broker.close()
        self.cache.close()
        self.engine.dispose()

    def check_ready(self) -> dict[str, str]:
        """What is not ready, by dependency (empty when everything is). Only the database counts: without
        the broker the API still serves reads, registrations and the console, and a broker restart
        must not take every API replica out of its Service at once (paho reconnects by itself)."""
        problems: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            problems["database"] = str(exc).splitlines()[0]
        return problems

    def broker_connected(self) -> bool:
        return bool(self.publisher.client.is_connected())
