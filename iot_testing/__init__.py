"""Public test helpers: real Mosquitto, PostgreSQL, Redis and InfluxDB on free ports, and a pytest plugin.

Use the servers directly (``with RedisServer() as r: ...``) or through the fixtures in
``iot_testing.pytest_plugin`` (register it with ``pytest_plugins = ["iot_testing.pytest_plugin"]``).
"""

from iot_testing.servers import (
    InfluxServer,
    MosquittoServer,
    PostgresServer,
    RedisServer,
    ServerBinaryMissing,
    ServerError,
    ServerStartError,
    find_binary,
    free_port,
    soak_scale,
    unique_name,
)

from .waiting import wait_for

__all__ = [
    "InfluxServer",
    "MosquittoServer",
    "PostgresServer",
    "RedisServer",
    "ServerBinaryMissing",
    "ServerError",
    "ServerStartError",
    "find_binary",
    "free_port",
    "soak_scale",
    "unique_name",
    "wait_for",
]
