"""The agent never loses a reading: real Mosquitto, the embedded cloud side, the real `iotctl agent run`.

Every test ends with ``Rig.drain_and_check`` (tests/durability_rig.py): storage holds exactly what the
agent committed, and every reading a probe sensor outside the agent handed over, except the one an
agent held uncommitted when it was killed. Faults: kill -9 of the agent at random points (>= 20 times),
broker stop/start, broker kill -9 mid-stream, a broker that certainly loses what it acknowledged, a
network cut (a TCP proxy we drop), the bridge down for a while. The same faults against the production
parts are in test_agent_durability_production.py; power cuts in test_agent_power_loss.py.

Long variants are marked ``soak`` and scale with ``SOAK_SCALE`` (``iot_testing.soak_scale``).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from durability_rig import EmbeddedCloud, Rig, TcpProxy, broker_loses_what_it_acknowledged

from iot_testing import soak_scale, wait_for
from iot_testing.processes import signal_worker_thread

pytestmark = pytest.mark.integration

SCALE = soak_scale()
KILL9_SOAK_ROUNDS = 25  # at SOAK_SCALE=1 (CI): about 20 s on an idle 2-core machine; "full" runs 250


@pytest.fixture
def make_rig(tmp_path: Path, mosquitto_factory: Any, topic_prefix: str) -> Iterator[Callable[..., Rig]]:
    """``make(agent="real", **broker_conf)``: a rig on a private broker (one per test)."""
    rigs: list[Rig] = []

    def make(agent: str | None = None, **broker_conf: Any) -> Rig:
        broker = mosquitto_factory(**broker_conf)
        kw = {} if agent is None else {"agent": agent}
        r = Rig(tmp_path, broker, EmbeddedCloud(tmp_path, broker, topic_prefix), **kw)
        rigs.append(r)
        return r

    try:
        yield make
    finally:
        for r in rigs:
            r.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def _kill9_rounds(rig: Rig, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    rig.cloud.start_bridge()
    produced = 0
    for _ in range(rounds):
        rig.start_agent()
        produced = rig.produced_more_than(produced)
        time.sleep(rng.uniform(0.0, 0.6))  # a random moment: sampling, sealing, publishing or receipting
        rig.kill_agent()
    n = rig.drain_and_check()
    assert n > rounds * 3
    assert len(rig.cut_lives) == rounds


def test_kill9_agent_at_random_points_20_times(rig: Rig) -> None:
    _kill9_rounds(rig, 20, seed=1)


@pytest.mark.soak
@pytest.mark.timeout(int(300 * max(1.0, SCALE)))
def test_kill9_agent_soak(rig: Rig) -> None:
    _kill9_rounds(rig, max(1, int(KILL9_SOAK_ROUNDS * SCALE)), seed=2)


def test_broker_stopped_and_restarted(rig: Rig) -> None:
    rig.cloud.start_bridge()
    rig.start_agent()
    p = rig.produced_more_than(20)
    rig.broker.stop()
    p = rig.produced_more_than(p + 40)  # the agent keeps sampling into its buffer
    rig.broker.start()
    rig.produced_more_than(p + 20)
    rig.drain_and_check()


def test_broker_kill9_mid_stream(rig: Rig) -> None:
    rig.cloud.start_bridge()
    rig.start_agent()
    for _ in range(max(1, int(2 * SCALE))):
        p = rig.produced_more_than(rig.counts().produced + 30)
        rig.broker.kill()  # loses what it acknowledged but had not delivered or saved
        rig.produced_more_than(p + 20)
        rig.broker.start()
    rig.produced_more_than(rig.counts().produced + 20)
    rig.drain_and_check()


def test_broker_kill9_loses_what_it_acknowledged(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(autosave_interval=3600)
    broker_loses_what_it_acknowledged(rig)
    rig.drain_and_check()


def test_the_broker_loss_case_catches_an_agent_that_trusts_puback(make_rig: Callable[..., Rig]) -> None:
    """The test above fails for an agent that deletes a batch on PUBACK instead of on the receipt
    (tests/agent_mutants.py): receipts are what make the agent safe, and this proves the test sees it."""
    rig = make_rig(agent="trusts-puback", autosave_interval=3600)
    broker_loses_what_it_acknowledged(rig)
    with pytest.raises(AssertionError, match="committed readings are not stored"):
        rig.drain_and_check()


def test_the_sensor_oracle_catches_an_agent_that_loses_readings_before_committing(
    make_rig: Callable[..., Rig],
) -> None:
    """Comparing storage with the agent's own produced log proves only "committed => stored": an agent
    losing readings before its commit (tests/agent_mutants.py) passes that check, and the probe sensor's
    journal catches it."""
    rig = make_rig(agent="drops-before-commit")
    rig.cloud.start_bridge()
    rig.start_agent()
    rig.produced_more_than(60)
    with pytest.raises(AssertionError, match="readings the sensor handed over are not stored"):
        rig.drain_and_check()
    assert rig.stored(), "the drain stored nothing: the check failed for another reason"


def test_network_cut_then_restored(rig: Rig) -> None:
    rig.proxy = TcpProxy(rig.broker.port)
    rig.cloud.start_bridge()
    through_proxy = f"mqtt://127.0.0.1:{rig.proxy.port}"
    rig.start_agent(rig.config(mqtt_url=through_proxy))
    p = rig.produced_more_than(20)
    rig.proxy.cut()
    p = rig.produced_more_than(p + 50)
    rig.proxy.restore()
    rig.produced_more_than(p + 20)
    # drain through the proxy too: the agent's path is the one that was cut
    rig.kill_agent(signal.SIGTERM)
    before = rig.counts().produced
    rig.start_agent(rig.config("drain.toml", sampling=86_400, mqtt_url=through_proxy))  # samples once
    wait_for(lambda: (c := rig.counts()).depth == 0 and c.produced > before, "buffer drained through the proxy", 60)
    rig.drain_and_check()


def test_sigterm_stops_the_agent_whichever_thread_receives_it(rig: Rig) -> None:
    """systemd stops the agent with SIGTERM, which the kernel may hand to any of its threads. The main
    thread must notice within a second or two, not after its next hour-long wait (it once did not: a
    stop hung whenever the signal landed in the sampler's fork of a command sensor)."""
    rig.start_agent()
    rig.produced_more_than(10)
    assert rig.agent is not None
    signal_worker_thread(rig.agent.pid, signal.SIGTERM)  # as the kernel may: not to the main thread
    try:
        rig.agent.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent ignored a SIGTERM delivered to a worker thread for 15 s")
    assert rig.agent.returncode == 0
    rig.agent = None
    rig.drain_and_check()  # a clean stop: nothing handed over is lost (it is not a cut)


def test_bridge_down_for_a_while(rig: Rig) -> None:
    rig.cloud.start_bridge()
    rig.start_agent()
    rig.produced_more_than(20)
    rig.cloud.stop_bridge()
    before = rig.counts()
    rig.produced_more_than(before.produced + 60)
    after = rig.counts()
    # Nothing is receipted while the bridge is away, so every reading produced since is still buffered
    # (a receipt still in flight at the stop may delete older ones; an agent trusting PUBACKs fails here).
    assert after.depth >= after.produced - before.produced >= 60
    rig.cloud.start_bridge()
    rig.produced_more_than(after.produced + 20)
    rig.drain_and_check()
