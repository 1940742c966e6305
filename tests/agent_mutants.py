"""Deliberately broken edge agents, to show that the durability tests catch what they claim to catch.

Test-only; nothing outside tests/ imports this. Run like ``iotctl agent run``::

    python tests/agent_mutants.py trusts-puback --config agent.toml

``trusts-puback``: the real agent, except that it treats the broker's PUBACK of a telemetry batch as
if it were the cloud's receipt and deletes the batch from its buffer then. MQTT acknowledgements are
hop by hop, so this agent loses whatever a broker acknowledged and then lost (docs/protocol.md §4).

``drops-before-commit``: the real agent, except that every 10th sample (the readings of all sensors
at one tick) never reaches the buffer. Its produced log (written with the buffer rows) cannot tell;
only an oracle on the sensor side can.
"""

from __future__ import annotations

import argparse
import itertools
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent, setup_logging
from edge_agent.config import load_settings
from edge_agent.identity import load_identity
from iot_protocol import Receipt, decode_batch, encode, jws

__all__ = ["MUTANTS", "DropsBeforeCommitAgent", "PubackTrustingAgent"]


class PubackTrustingAgent(Agent):
    """Deletes a telemetry batch when the broker acknowledges it (the bug the receipts exist to avoid)."""

    def _make_client(self) -> Any:
        # paho runs on_publish under its own locks: trust PUBACKs from a thread of our own instead
        self._acked: queue.SimpleQueue[int] = queue.SimpleQueue()
        threading.Thread(target=self._trust_loop, name="trusts-puback", daemon=True).start()
        client = super()._make_client()
        real_publish = client.publish
        telemetry = self.topics.telemetry(self.device_id)
        lock = threading.Lock()
        pending: dict[int, int | None] = {}  # mid -> seq of the telemetry batch (None: another message)
        early: set[int] = set()  # PUBACKs that arrived before publish() returned the mid

        def publish(topic: str, payload: Any = None, qos: int = 0, retain: bool = False, properties: Any = None) -> Any:
            info = real_publish(topic, payload, qos, retain, properties)
            seq = decode_batch(jws.decode(payload).payload).seq if topic == telemetry else None
            with lock:
                acked_already = info.mid in early
                early.discard(info.mid)
                if not acked_already:
                    pending[info.mid] = seq
            if acked_already and seq is not None:
                self._acked.put(seq)
            return info

        def on_publish(_client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
            with lock:
                if mid not in pending:
                    early.add(mid)
                    return
                seq = pending.pop(mid)
            if seq is not None:
                self._acked.put(seq)

        client.publish = publish
        client.on_publish = on_publish
        return client

    def _trust_loop(self) -> None:
        while True:
            seq = self._acked.get()
            self.pipeline.on_receipt(encode(Receipt(stored=(seq,))))
            self._wake_pub.set()


class DropsBeforeCommitAgent(Agent):
    """Loses every 10th sample between the sensors and the buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = self.pipeline.buffer
        real_add = buffer.add
        counter = itertools.count(1)

        def add(readings: Any) -> int:
            return real_add(readings if next(counter) % 10 else [])

        buffer.add = add  # type: ignore[method-assign]


MUTANTS: dict[str, type[Agent]] = {
    "drops-before-commit": DropsBeforeCommitAgent,
    "trusts-puback": PubackTrustingAgent,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent_mutants", description=__doc__.splitlines()[0])
    ap.add_argument("mutant", choices=sorted(MUTANTS))
    ap.add_argument("--config", "-c", required=True, type=Path)
    args = ap.parse_args(argv)
    settings = load_settings(args.config)
    setup_logging(settings.log_level)
    MUTANTS[args.mutant](settings, load_identity(settings.identity_dir)).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
