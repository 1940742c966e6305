"""The simulator page's seam and its lesson: a :class:`Simulator` runs scenarios from a catalogue on
a student's own devices (the platform that hosts the API provides one: ``iotctl up`` runs them in its
own process with firmware_sim; a plain ``iotctl api`` has none), and :func:`score_run` puts the run's
ground truth next to the anomaly detector's episodes with precision and recall.

cloud_core does not import firmware_sim: the implementation is handed to ``create_app`` by whoever
composes the platform, and speaks only the plain values below.

Scoring: an episode is a true alarm when its time overlaps a ground-truth window of the same device
(widened by ``tolerance_ms`` on both sides); precision = true episodes / episodes. Recall counts the
labels the detector is meant to find, the value faults (category ``sensor``: spikes, drifts, stuck
values, noise, dropouts): found labels / such labels. Attacks and network faults are the bridge's to
refuse, not the detector's, and are listed without counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "GroundTruth",
    "RunAccess",
    "RunScore",
    "RunStatus",
    "ScenarioInfo",
    "Simulator",
    "SimulatorRefused",
    "score_run",
]

DETECTOR_CATEGORIES = frozenset({"sensor"})


class SimulatorRefused(Exception):
    """The simulator cannot start this run (unknown scenario, too many runs, ...); the message says why."""


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """One scenario of the catalogue."""

    name: str
    title: str
    description: str
    devices: int
    duration_s: float
    speed: float
    events: int


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """One injected event (firmware_sim's label), in simulated time."""

    device_id: str
    start_ms: int
    end_ms: int
    kind: str
    category: str
    field: str = ""


@dataclass(frozen=True, slots=True)
class RunAccess:
    """What a run registers and enrolls its devices with: an API key of the person who started it
    (``key_id`` to revoke it once the devices are enrolled)."""

    api_key: str
    key_id: int


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run as the simulator sees it."""

    id: int
    scenario: str
    owner_id: int
    owner: str
    fleet: str
    device_ids: tuple[str, ...]
    status: str  # starting | running | finished | stopped | failed
    error: str | None
    progress: float  # 0..1 of the simulated duration
    sim_start_ms: int
    sim_end_ms: int
    sim_now_ms: int
    started_at_ms: int
    labels: tuple[GroundTruth, ...] = ()


class Simulator(Protocol):
    """What the console needs from a simulator."""

    def catalogue(self) -> Sequence[ScenarioInfo]: ...

    def start(self, *, scenario: str, owner_id: int, owner: str, access: RunAccess) -> RunStatus:
        """Start a run of ``scenario`` on new devices owned by ``owner`` (registered with ``access``).
        Returns at once; the run goes on in the background. Raises SimulatorRefused."""
        ...

    def runs(self) -> Sequence[RunStatus]: ...

    def stop(self, run_id: int) -> RunStatus | None: ...


@dataclass(frozen=True, slots=True)
class Match:
    label: GroundTruth
    counted: bool  # a label the detector is meant to find
    found_by: tuple[int, ...]  # ids of the episodes that overlap it


@dataclass(frozen=True, slots=True)
class RunScore:
    episodes: int
    true_episodes: int
    labels: int  # counted labels
    found: int
    precision: float | None
    recall: float | None
    matches: tuple[Match, ...]
    episode_truth: dict[int, bool] = field(default_factory=dict)  # episode id -> overlaps a label


def score_run(
    labels: Sequence[GroundTruth], episodes: Sequence[dict[str, Any]], *, tolerance_ms: int = 300_000
) -> RunScore:
    """Ground truth against the detector's episodes (``Anomaly.to_public()`` dicts: ``id``,
    ``device_id``, ``start_ms``, ``end_ms``). See the module docstring for the rules."""

    def overlaps(lab: GroundTruth, ep: dict[str, Any]) -> bool:
        return (
            ep["device_id"] == lab.device_id
            and int(ep["start_ms"]) <= lab.end_ms + tolerance_ms
            and int(ep["end_ms"]) >= lab.start_ms - tolerance_ms
        )

    truth = {int(ep["id"]): any(overlaps(lab, ep) for lab in labels) for ep in episodes}
    matches = tuple(
        Match(
            label=lab,
            counted=lab.category in DETECTOR_CATEGORIES,
            found_by=tuple(int(ep["id"]) for ep in episodes if overlaps(lab, ep)),
        )
        for lab in sorted(labels, key=lambda x: (x.start_ms, x.device_id))
    )
    counted = [m for m in matches if m.counted]
    found = sum(1 for m in counted if m.found_by)
    true_eps = sum(truth.values())
    return RunScore(
        episodes=len(episodes),
        true_episodes=true_eps,
        labels=len(counted),
        found=found,
        precision=true_eps / len(episodes) if episodes else None,
        recall=found / len(counted) if counted else None,
        matches=matches,
        episode_truth=truth,
    )
