"""pytest plugin: fixtures that start real Mosquitto, PostgreSQL, Redis and InfluxDB for the test run.

Register with ``pytest_plugins = ["iot_testing.pytest_plugin"]``. Session-scoped servers start lazily
(only when a test asks) and are shared by the run; the function-scoped fixtures give each test its own
database, flushed Redis, topic prefix or private server. A missing binary fails the test with the
Debian package to install.

    mosquitto           session: MosquittoServer, anonymous allowed (.host .port .url)
    mosquitto_dynsec    session: MosquittoServer with dynamic security (.admin_username .admin_password)
    mosquitto_factory   function: make(dynsec=False, **conf) -> private started MosquittoServer
    postgres            session: PostgresServer (.url, .create_database(), .psql())
    pg_url              function: URL of a fresh empty database, "postgresql://postgres@127.0.0.1:P/test_..."
    postgres_factory    function: make() -> private started PostgresServer (for outage tests)
    redis_server        session: RedisServer (.url, .command())
    redis_url           function: "redis://127.0.0.1:P/0", flushed before the test
    redis_factory       function: make(appendonly=False) -> private started RedisServer (for outage tests)
    influxdb            session: InfluxServer (.http_url .host .port, .query(), .write())
    influx_url          function: "influxdb://127.0.0.1:P/test_...", a fresh database
    influx_factory      function: make() -> private started InfluxServer
    topic_prefix        function: a unique MQTT topic prefix, "test_<12 hex>"
    soak_scale          session: float multiplier for soak tests from SOAK_SCALE (number, "ci"=1, "full"=10)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from iot_testing.ast_guard import serialize_ast_parse
from iot_testing.servers import (
    InfluxServer,
    MosquittoServer,
    PostgresServer,
    RedisServer,
    ServerBinaryMissing,
    ServerError,
    unique_name,
)
from iot_testing.servers import soak_scale as _soak_scale

__all__ = [
    "influx_factory",
    "influx_url",
    "influxdb",
    "mosquitto",
    "mosquitto_dynsec",
    "mosquitto_factory",
    "pg_url",
    "postgres",
    "postgres_factory",
    "redis_factory",
    "redis_server",
    "redis_url",
    "soak_scale",
    "topic_prefix",
]

S = TypeVar("S")

# Servers run on threads of the test process (the API under uvicorn): see iot_testing.ast_guard.
serialize_ast_parse()


def _start(make: Callable[[], S]) -> S:
    """Build and start a server; turn a missing binary or a failed start into a clear test failure."""
    try:
        server = make()
        server.start()  # type: ignore[attr-defined]
    except ServerError as exc:
        with contextlib.suppress(Exception):
            server.close()  # type: ignore[attr-defined]
        if isinstance(exc, ServerBinaryMissing):
            pytest.fail(f"missing server binary: {exc}", pytrace=False)
        pytest.fail(str(exc), pytrace=False)
    return server


def _ensure_running(server: PostgresServer | RedisServer | InfluxServer) -> None:
    """Bring a shared server back if an earlier test stopped it (use the factories for outages)."""
    if not server.is_running:
        try:
            server.start()
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)


def _shared(make: Callable[[], S]) -> Iterator[S]:
    """A session fixture's body: one started server, closed at the end of the run."""
    server = _start(make)
    try:
        yield server
    finally:
        server.close()  # type: ignore[attr-defined]


def _private(build: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A factory fixture's body: ``make(*args, **kw)`` starts ``build(*args, **kw)``; every server it
    made is stopped and removed after the test."""
    made: list[S] = []

    def make(*args: Any, **kw: Any) -> S:
        server = _start(lambda: build(*args, **kw))
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            with contextlib.suppress(Exception):
                server.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """A shared Mosquitto, anonymous access allowed. Use ``topic_prefix`` to keep tests apart."""
    yield from _shared(MosquittoServer)


@pytest.fixture(scope="session")
def mosquitto_dynsec() -> Iterator[MosquittoServer]:
    """A shared Mosquitto with dynamic security: anonymous refused, admin in ``.admin_username/_password``."""
    yield from _shared(lambda: MosquittoServer(dynsec=True))


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., MosquittoServer]]:
    """``make(dynsec=False, **conf)``: a private started broker, stopped and removed after the test."""
    yield from _private(MosquittoServer)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A shared PostgreSQL (initdb once per session); superuser ``postgres``, trust auth."""
    yield from _shared(PostgresServer)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """URL of a fresh empty database, dropped after the test."""
    _ensure_running(postgres)
    name = unique_name("test")
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            postgres.drop_database(name)


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    """``make()``: a private started PostgreSQL (for outage tests), stopped and removed after the test."""
    yield from _private(PostgresServer)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(appendonly=False)``: a private started redis-server (for outage tests), removed after the test."""
    yield from _private(RedisServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A shared redis-server (no persistence)."""
    yield from _shared(RedisServer)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0``, flushed (all databases) before the test."""
    _ensure_running(redis_server)
    redis_server.flushall()
    return redis_server.url_for(0)


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxServer]:
    """A shared influxd 1.x, auth off."""
    yield from _shared(InfluxServer)


@pytest.fixture
def influx_url(influxdb: InfluxServer) -> Iterator[str]:
    """``influxdb://127.0.0.1:PORT/<fresh db>``, dropped after the test."""
    _ensure_running(influxdb)
    name = unique_name("test")
    url = influxdb.create_database(name)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            influxdb.drop_database(name)


@pytest.fixture
def influx_factory() -> Iterator[Callable[[], InfluxServer]]:
    """``make()``: a private started influxd (for outage tests), stopped and removed after the test."""
    yield from _private(InfluxServer)


@pytest.fixture
def topic_prefix() -> str:
    """A unique MQTT topic prefix for this test (valid for ``iot_protocol.topics``)."""
    return unique_name("test")


@pytest.fixture(scope="session")
def soak_scale() -> float:
    """Multiplier for soak tests' sizes: ``SOAK_SCALE`` as a number, ``ci`` (1, bounded) or ``full`` (10)."""
    return _soak_scale()
