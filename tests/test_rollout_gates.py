"""Rollout planning without servers: waves (deterministic, sticky, canary never empty), targets
parsing, gate expressions, and the gates' verdicts against a control cohort."""

from __future__ import annotations

import pytest

from cloud_core.rollouts.errors import RolloutInvalid
from cloud_core.rollouts.gates import CohortStats, Gates, evaluate, parse_abort_if, parse_gates
from cloud_core.rollouts.targets import parse_target
from cloud_core.rollouts.waves import assign, order, plan_waves

IDS = [f"sim-{i:03d}" for i in range(100)]


def test_waves_are_cumulative_deterministic_and_independent_of_order() -> None:
    plan = plan_waves("5%", ["25%", "50", 100])
    assert plan == [5.0, 25.0, 50.0, 100.0]
    a = assign("rollout-1", IDS, plan)
    assert a == assign("rollout-1", list(reversed(IDS)), plan)  # the same devices, the same waves
    sizes = [sum(1 for w, _ in a.values() if w == k) for k in range(4)]
    assert sizes == [5, 20, 25, 50]
    assert sorted(rank for _, rank in a.values()) == list(range(100))
    other = assign("rollout-2", IDS, plan)  # another rollout picks another canary
    assert {d for d, (w, _) in a.items() if w == 0} != {d for d, (w, _) in other.items() if w == 0}
    # the order is a hash of each device alone: a subset keeps its relative order
    subset = IDS[::7]
    assert order("rollout-1", subset) == [d for d in order("rollout-1", IDS) if d in subset]


def test_a_tiny_fleet_still_has_a_canary() -> None:
    a = assign("r", ["only"], plan_waves(1, ["100%"]))
    assert a == {"only": (0, 0)}
    three = assign("r", ["a", "b", "c"], plan_waves("5%", ["25%", "100%"]))
    assert sorted(w for w, _ in three.values()) == [0, 2, 2]  # wave 1 is empty


@pytest.mark.parametrize(
    ("canary", "waves", "message"),
    [
        ("0%", ["100%"], "canary: '0%' must be more than 0%"),
        ("5%", ["50%", "25%", "100%"], "waves must grow"),
        ("5%", ["50%"], "the last wave must reach 100%"),
        ("five", ["100%"], "not a percentage"),
        ("5%", ["150%"], "at most 100%"),
    ],
)
def test_bad_wave_plans_are_refused_in_one_line(canary: str, waves: list[str], message: str) -> None:
    with pytest.raises(RolloutInvalid, match=message):
        plan_waves(canary, waves)


def test_targets_from_the_api_or_the_cli() -> None:
    t = parse_target({"devices": ["a", "b"], "tags": "pilot,room-2", "type": ["outdoor"]})
    assert t.to_dict() == {"devices": ["a", "b"], "types": ["outdoor"], "tags": ["pilot", "room-2"]}
    assert parse_target(["device:a,b", "tag:pilot"]).to_dict() == {"devices": ["a", "b"], "tags": ["pilot"]}
    with pytest.raises(RolloutInvalid, match="unknown target kind 'room'"):
        parse_target({"room": ["x"]})
    with pytest.raises(RolloutInvalid, match="selects nothing"):
        parse_target({"devices": []})
    with pytest.raises(RolloutInvalid, match="invalid device id"):
        parse_target({"devices": ["bad id"]})


def test_abort_if_expressions_map_onto_gates() -> None:
    g = parse_abort_if(
        ["failed>20%", "offline>control+5%", "rejected>1%", "anomalies>2", "temperature>45", "temperature<-10"]
    )
    assert (g.max_failed, g.max_offline_over_control, g.max_rejected, g.max_anomalies) == (0.2, 0.05, 0.01, 2.0)
    assert g.max_offline == Gates().max_offline  # untouched limits keep their defaults
    assert [(x.field, x.min, x.max) for x in g.guards] == [("temperature", -10.0, 45.0)]
    for bad, message in (
        ("failed=1", "bad --abort-if"),
        ("failed<1", "takes '>'"),
        ("temperature>control+1", "field guard"),
    ):
        with pytest.raises(RolloutInvalid, match=message):
            parse_abort_if([bad])
    with pytest.raises(RolloutInvalid, match=r"gates.max_failed"):
        parse_gates({"max_failed": 2})
    with pytest.raises(RolloutInvalid, match=r"gates.guards.0"):
        parse_gates({"guards": [{"field": "t"}]})


def test_gates_absolute_and_relative_to_control() -> None:
    gates = Gates()
    healthy = CohortStats(devices=5, online_base=5, messages=500, anomaly_base=5)
    assert evaluate(gates, healthy, CohortStats(devices=95, online_base=95, messages=9500)) is None
    # one of five canaries failed: 20% > 10%
    f = evaluate(gates, CohortStats(devices=5, failed=1, failures=("sim-1: crash loop",)), None, label="canary")
    assert (
        f is not None
        and f.gate == "failed"
        and "1 of 5 canary devices failed (20% > 10%): sim-1: crash loop" in f.reason
    )
    # offline: 1 of 20 is under the 20% limit, but 5 points worse than control (limit +10%): passes
    cohort = CohortStats(devices=20, online_base=20, offline=1)
    assert evaluate(gates, cohort, CohortStats(online_base=80, offline=0)) is None
    # 3 of 20 offline against none in control: 15% > +10% over control
    f = evaluate(gates, CohortStats(devices=20, online_base=20, offline=3), CohortStats(online_base=80, offline=0))
    assert f is not None and f.gate == "offline" and "against 0%" in f.reason
    # ... but not when the control is just as bad (a network outage, not the update)
    assert (
        evaluate(gates, CohortStats(devices=20, online_base=20, offline=3), CohortStats(online_base=80, offline=12))
        is None
    )
    # no control (the last wave): only absolute limits
    assert evaluate(gates, CohortStats(devices=20, online_base=20, offline=3), None) is None
    # rejections: 10% of readings dead-lettered
    f = evaluate(gates, CohortStats(devices=5, messages=100, rejected=10), CohortStats(messages=1000, rejected=0))
    assert f is not None and f.gate == "rejected"
    # anomalies per device relative to control
    f = evaluate(gates, CohortStats(devices=4, anomalies=4, anomaly_base=4), CohortStats(anomalies=2, anomaly_base=20))
    assert f is not None and f.gate == "anomalies"
    # a field guard: any device out of range
    guarded = parse_abort_if(["temperature>45"])
    f = evaluate(guarded, CohortStats(devices=5, guard_base=5, guard_violations={"temperature": 1}), None)
    assert f is not None and f.gate == "guard:temperature" and "outside -inf..45" in f.reason
    # a limit set to None is off
    off = parse_gates({"max_failed": None})
    assert evaluate(off, CohortStats(devices=1, failed=1), None) is None
