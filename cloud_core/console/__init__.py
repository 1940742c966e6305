"""The web console: a page served by the API itself (same origin, same sign-in, same access rules)
for students, teachers and fleet managers: the fleet, a device with live charts, alerts, rollouts and
the simulator. Plain ES modules and a vendored chart library (uPlot) in ``static/``: no build step,
no Node server, nothing loaded from the internet.

Public entry: :data:`router` (the page, its assets and the console's own routes), included by
:func:`cloud_core.api.create_app`; :class:`ConsoleSettings`; and the simulator seam
(:class:`Simulator`) that the composing platform may hand to ``create_app``. docs/console.md.
"""

from .routes import router
from .settings import ConsoleSettings
from .simulator import GroundTruth, RunAccess, RunStatus, ScenarioInfo, Simulator, SimulatorRefused, score_run

__all__ = [
    "ConsoleSettings",
    "GroundTruth",
    "RunAccess",
    "RunStatus",
    "ScenarioInfo",
    "Simulator",
    "SimulatorRefused",
    "router",
    "score_run",
]
