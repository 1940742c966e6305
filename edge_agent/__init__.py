"""The edge agent: sample sensors into a durable SQLite buffer, publish signed batches over MQTT,
delete them only on the cloud's receipt, apply signed config, report health.

The pure pipeline (:class:`edge_agent.agent.Pipeline`: sample -> buffer -> next batch -> seal ->
receipt) is separate from the MQTT networking (:class:`edge_agent.agent.Agent`), so the simulator
can drive many pipelines cheaply. Modules are imported lazily to keep the footprint small.
"""

from __future__ import annotations

__all__ = ["FIRMWARE_VERSION"]

FIRMWARE_VERSION = "edu-agent/0.1.0"
