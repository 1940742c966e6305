"""Errors of rollouts and releases. They are the cloud services' errors (each carries the HTTP status
the API answers with and a stable ``code``), so the API's one handler turns them into one-line answers.

RolloutError (ServiceError)      root
├── RolloutNotFound      404     no such rollout or release
├── RolloutConflict      409     a target device is in another active rollout; a state change the
│                                rollout's status does not allow (resume a completed rollout); a
│                                release version that exists
├── RolloutInvalid       422     bad target, waves, gate or settings; a manifest that does not verify,
│                                or an artifact whose size or SHA-256 is not the manifest's
└── ReleaseKeyMissing    409     the API holds no release private key (signing is done offline)
"""

from __future__ import annotations

from ..services.errors import Conflict, InvalidInput, NotFound, ServiceError

__all__ = ["ReleaseKeyMissing", "RolloutConflict", "RolloutError", "RolloutInvalid", "RolloutNotFound"]


class RolloutError(ServiceError):
    pass


class RolloutNotFound(RolloutError, NotFound):
    pass


class RolloutConflict(RolloutError, Conflict):
    pass


class RolloutInvalid(RolloutError, InvalidInput):
    pass


class ReleaseKeyMissing(RolloutConflict):
    code = "release_key_missing"
