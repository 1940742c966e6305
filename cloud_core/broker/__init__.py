"""Broker management: the Mosquitto child process used by `iotctl up` and by the test fixtures."""

from cloud_core.broker.mosquitto_process import (
    DEFAULT_LIMITS,
    BrokerBinaryMissing,
    BrokerLimits,
    BrokerProcessError,
    BrokerStartError,
    MosquittoProcess,
)

__all__ = [
    "DEFAULT_LIMITS",
    "BrokerBinaryMissing",
    "BrokerLimits",
    "BrokerProcessError",
    "BrokerStartError",
    "MosquittoProcess",
]
