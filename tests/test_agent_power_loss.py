"""Power cuts, not only process deaths: what ``buffer_synchronous`` buys.

A kill -9 leaves every write in the kernel's page cache, so it cannot tell ``full`` from ``normal``.
Here the agent runs with ``iot_testing.powercut`` preloaded: each fsync of its buffer files also takes
a copy, and a "power cut" is a kill -9 after which the buffer holds only those copies, exactly what a
disk that persisted nothing unsynced would hold. The real agent, Mosquitto and the embedded bridge.

- ``full`` (the default): every commit is synced, so a cut loses at most the reading a sensor had
  handed over and the agent had not committed yet; seqs are never reused (docs/agent.md).
- ``normal``: the WAL is synced only at checkpoints, so a cut rolls the buffer back to the last one:
  committed readings are lost and seq numbers the cloud has already stored are issued again.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from durability_rig import DEVICE, EmbeddedCloud, Rig

from broker_bridge.testing import ReceiptCollector
from iot_protocol import Topics
from iot_testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path: Path, mosquitto_factory: Any, topic_prefix: str) -> Iterator[Rig]:
    broker = mosquitto_factory()
    r = Rig(tmp_path, broker, EmbeddedCloud(tmp_path, broker, topic_prefix))
    try:
        yield r
    finally:
        r.close()


def test_power_cuts_with_synchronous_full_lose_only_the_reading_in_hand(rig: Rig) -> None:
    rig.watch_power()
    rng = random.Random(5)
    rig.cloud.start_bridge()
    cfg = rig.config(synchronous="full")
    for _ in range(3):
        rig.start_agent(cfg)
        rig.produced_more_than(rig.counts().produced + 40)
        time.sleep(rng.uniform(0.0, 0.5))  # a random moment: sampling, sealing, publishing or receipting
        live = rig.counts()
        rig.power_cut()
        survived = rig.counts()
        # every commit the agent made before the cut is on the disk (at most one more was in progress)
        assert survived.produced >= live.produced, (live, survived)
        assert survived.last_seq >= live.last_seq, (live, survived)
    rig.drain_and_check()
    time.sleep(1.5)  # the bridge writes dead letters on its side-effects flush (0.5 s): let three pass
    assert rig.dead_letters() == {}  # no seq issued twice: nothing refused as replayed


def test_a_power_cut_with_synchronous_normal_loses_committed_readings_and_reuses_seqs(rig: Rig, tmp_path: Path) -> None:
    power = rig.watch_power()
    rig.cloud.start_bridge()
    receipts = ReceiptCollector(rig.broker.host, rig.broker.port, Topics(rig.prefix))
    rig.start_agent(rig.config(synchronous="normal"))
    peek = tmp_path / "peek"

    def a_cut_now_would_lose() -> tuple[Any, Any] | None:
        """(live, what a cut would leave) once the WAL has been checkpointed (synced) at least once and
        a cut would lose >= 40 committed readings and two batch seqs the bridge has already stored. Two:
        the first seq resealed after the cut may hold exactly the readings the image kept unsealed (then
        it is the same batch, stored again as a duplicate); the second holds readings sampled after the
        cut, so its payload certainly differs from the stored one."""
        shutil.rmtree(peek, ignore_errors=True)
        image = power.image(peek)
        live, left = rig.counts(), rig.counts(image / "buffer.db")
        receipted = {seq for _, seq in receipts.stored(DEVICE)}
        if (
            left.produced > 0
            and live.produced - left.produced >= 40
            and {left.last_seq + 1, left.last_seq + 2} <= receipted
        ):
            return live, left
        return None

    try:
        live, left = wait_for(a_cut_now_would_lose, "the WAL running ahead of its last sync", 120, interval=0.2)
    finally:
        receipts.close()
    rig.power_cut()
    survived = rig.counts()
    assert 0 < left.produced <= survived.produced <= live.produced - 40, (live, survived)  # the last checkpoint
    assert survived.last_seq < live.last_seq  # and the next seal reuses a seq
    # The seqs the cloud holds once the dead agent's last messages are through the bridge.
    stored = wait_for(_settled(rig.ledger_seqs), "the bridge done with the dead agent's messages", 30, interval=1.0)
    rig.drain()
    # What that costs today: a resealed batch whose seq the cloud stored is another payload (every seal
    # has a fresh batch id and sent_at), so it is refused as a replay and the agent drops it. Whether the
    # first reused seq was stored depends on when the last sync before the cut happened (the image
    # peeked above may be older than the one the cut leaves), so the refusal is asserted exactly when
    # it is due, and its absence when no reused seq was stored. The bridge writes dead letters on its
    # side-effects flush (every 0.5 s), after the receipt that let the drain finish: wait for it.
    if survived.last_seq + 1 in stored:
        wait_for(lambda: "replayed_seq" in rig.dead_letters(), f"seq {survived.last_seq + 1} refused as a replay", 10)
    refused = rig.dead_letters()
    assert set(refused) <= {"replayed_seq"}, refused
    if not any(seq > survived.last_seq for seq in stored):
        time.sleep(1.5)  # three side-effect flushes: a refusal would be recorded by now
        assert "replayed_seq" not in rig.dead_letters(), (survived, stored[-5:])


def _settled(read: Callable[[], list[int]]) -> Callable[[], list[int] | None]:
    """A wait_for probe: ``read()`` once two reads 1 s apart agree, else None."""
    last: list[list[int]] = []

    def probe() -> list[int] | None:
        now = read()
        same = bool(last) and last[-1] == now
        last[:] = [now]
        return now if same else None

    return probe
