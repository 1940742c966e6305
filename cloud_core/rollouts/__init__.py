"""Staged rollouts of configuration and firmware, with health gates and automatic rollback.

The one public entry is :class:`Rollouts` (built in the API's lifespan: release keys and artifact
store, the services behind the routes, the engine thread) and its settings; the API includes
``cloud_core.rollouts.routes.routers`` (imported there, not here: the routes depend on the API).
The engine reaches devices only through the signed desired config (``ConfigService``).

Modules: ``models`` (tables), ``targets`` (who is targeted; pluggable resolvers), ``waves`` (who
goes when), ``gates`` and ``measure`` (when to stop), ``engine`` (the loop, with a database lease),
``service`` (create, pause, resume, abort, views), ``releases`` (manifests, artifacts, downloads),
``history`` (the audit trail), ``permissions``, ``metrics``, ``routes``. Docs: docs/rollouts.md.
"""

from .module import Rollouts
from .settings import RolloutSettings
from .targets import register_resolver

__all__ = ["RolloutSettings", "Rollouts", "register_resolver"]
