"""The ingest bridge: broker -> verify -> dedup -> validate -> time-series store, PUBACK after the write.

Public entry point::

    from broker_bridge import Bridge, BridgeSettings
    with Bridge(BridgeSettings(mqtt_url=..., db_url=..., tsdb_url=..., cache_url=...)) as bridge:
        bridge.wait_ready()
        ...

or :func:`run_bridge` (blocks until SIGINT/SIGTERM), which ``iotctl bridge run`` calls.
:func:`broker_bridge.ledger.compute_ledger` balances a device's books for ``iotctl devices ledger``.
docs/bridge.md describes the design and guarantees.
"""

from .errors import BridgeError, ConfigError, DirectoryUnavailable, SinkUnavailable
from .ledger import DeviceLedger, compute_ledger
from .service import Bridge, run_bridge
from .settings import BridgeSettings

__all__ = [
    "Bridge",
    "BridgeError",
    "BridgeSettings",
    "ConfigError",
    "DeviceLedger",
    "DirectoryUnavailable",
    "SinkUnavailable",
    "compute_ledger",
    "run_bridge",
]
