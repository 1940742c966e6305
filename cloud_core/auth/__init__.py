"""People on the platform: users and sign-in (JWT access tokens, refresh tokens, API keys), the
seed's permissions and roles, per-device and per-class grants, organisations and classes (teachers,
students), quotas, the audit log, and students' read-only broker accounts.

The API uses it through the typed dependencies of :mod:`cloud_core.api.deps`; the bridge reads
quotas through :func:`cloud_core.auth.quotas.load_device_quotas`. docs/users.md walks through it.
"""

from .errors import AuthError
from .permissions import ROLE_PERMISSIONS, ROLES, Permission

__all__ = ["ROLES", "ROLE_PERMISSIONS", "AuthError", "Permission"]
