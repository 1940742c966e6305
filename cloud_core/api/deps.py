"""Typed dependencies of the API's routes: the app context, a database session per request, who is
asking (:class:`Principal`, from a bearer JWT, an API key, or the sign-in cookie), and each route's
**declared access rule**.

Every route declares what it needs with one dependency, :func:`require` (or :data:`public`)::

    @router.get("/devices/{device_id}/config")
    def get_config(device_id: str, p: Annotated[Principal, Depends(require(P.READ_DEVICES, device="device_id"))]):

``require(permission)`` admits principals whose role holds the permission; ``device=NAME`` also
checks their reach to the device named by the path or query parameter NAME (404 when they cannot
see it, 403 when they may only read it); ``klass=NAME`` checks class membership (``teacher=True``:
teachers only). ``public`` marks a route that needs no person: its own check (an enrollment token,
a device's signature) or none. tests/test_authz_matrix.py fails for any route without a declaration,
and :func:`undeclared_routes` lists them.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.routing import APIRoute
from sqlmodel import Session

from ..auth.access import Principal, authorize_class, authorize_device, require_fleet, require_permission
from ..auth.credentials import KEY_PREFIX, authenticate_key, authenticate_token
from ..auth.errors import AuthInvalid, Forbidden, NotAuthenticated, NotVisible
from ..auth.permissions import Permission
from .context import AppContext

__all__ = [
    "ACCESS_COOKIE",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "MAX_ID",
    "REFRESH_COOKIE",
    "Admin",
    "Authenticated",
    "ContextDep",
    "Id",
    "P",
    "Requirement",
    "SessionDep",
    "api_routes",
    "declared_requirement",
    "public",
    "require",
    "undeclared_routes",
]

P = Permission
MAX_ID = 2_147_483_647  # ids are 32-bit integers in every database
#: An id in a path: 1..2^31-1 (anything else is a 422 naming it, never a database overflow).
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
ACCESS_COOKIE = "edu_access"
REFRESH_COOKIE = "edu_refresh"
CSRF_COOKIE = "edu_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with Session(ctx.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _credentials(request: Request) -> tuple[str, bool] | None:
    """(the presented secret, whether it came from the cookie), or None."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticated("use 'Authorization: Bearer <token>'", reason="malformed")
        return value.strip(), False
    cookie = request.cookies.get(ACCESS_COOKIE)
    if cookie:
        return cookie, True
    return None


def authenticate(request: Request, session: Session, ctx: AppContext) -> Principal:
    """The principal behind the request's credentials. Raises NotAuthenticated.

    A JWT (three dot-separated parts) is an access token; anything else is an API key. A request
    authenticated by the cookie that changes something must carry the CSRF header equal to the
    CSRF cookie (double submit): another site can make a browser send the cookie, not the header."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    found = _credentials(request)
    if found is None:
        raise NotAuthenticated("not signed in: send 'Authorization: Bearer <token>' or log in", reason="missing")
    secret, from_cookie = found
    if from_cookie and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header (cookie sign-in)")
    if secret.count(".") == 2 and not secret.startswith(KEY_PREFIX):
        principal = authenticate_token(session, ctx.signer, secret)
    else:
        principal = authenticate_key(session, secret)
    request.state.principal = principal
    return principal


class Requirement:
    """A route's declared access rule, used as its dependency; returns the principal (None for public).

    Args:
        permission: what the route needs (None: a public route).
        device: the path or query parameter naming the device the action is on.
        klass: the path parameter naming the class the action is on.
        anomaly: the path parameter naming an anomaly episode: the action is on its device.
        fleet: the action spans the whole fleet (rollouts, releases): only a principal reaching every
            device with ``permission`` may do it (:func:`cloud_core.auth.access.require_fleet`).
        teacher: with ``klass``, only the class's teachers (and admins).
        note: for public routes, what protects them instead.
    """

    def __init__(
        self,
        permission: Permission | None,
        *,
        device: str | None = None,
        klass: str | None = None,
        anomaly: str | None = None,
        fleet: bool = False,
        teacher: bool = False,
        note: str = "",
    ) -> None:
        self.permission = permission
        self.device = device
        self.anomaly = anomaly
        self.fleet = fleet
        self.klass = klass
        self.teacher = teacher
        self.note = note

    def __repr__(self) -> str:
        if self.permission is None:
            return f"public({self.note})"
        scope = (
            f", device={self.device}"
            if self.device
            else f", device of anomaly={self.anomaly}"
            if self.anomaly
            else f", class={self.klass}"
            if self.klass
            else ", fleet"
            if self.fleet
            else ""
        )
        return f"require({self.permission.value}{scope}{', teacher' if self.teacher else ''})"

    def __call__(self, request: Request, session: SessionDep, ctx: ContextDep) -> Any:
        if self.permission is None:
            return None
        principal = authenticate(request, session, ctx)
        require_permission(principal, self.permission)
        if self.fleet:
            require_fleet(principal, self.permission)
        if self.device is not None:
            device_id = request.path_params.get(self.device) or request.query_params.get(self.device)
            if device_id:
                request.state.device = authorize_device(session, principal, str(device_id), self.permission)
        if self.anomaly is not None:
            request.state.device = authorize_device(
                session, principal, _anomaly_device(session, request.path_params.get(self.anomaly)), self.permission
            )
        if self.klass is not None:
            raw = request.path_params.get(self.klass)
            try:
                class_id = int(raw)
            except (TypeError, ValueError):
                raise AuthInvalid(f"{self.klass} must be an integer, not {raw!r}") from None
            if not 1 <= class_id <= MAX_ID:
                raise AuthInvalid(f"{self.klass} must be 1-{MAX_ID}, not {raw}")
            request.state.classroom = authorize_class(session, principal, class_id, teacher=self.teacher)
        return principal


def _anomaly_device(session: Session, raw: Any) -> str:
    """The device of anomaly episode ``raw`` (a path parameter). Raises NotVisible when there is none,
    the same answer as for a device one may not see."""
    from ..analytics.models import Anomaly

    try:
        anomaly_id = int(raw)
    except (TypeError, ValueError):
        raise AuthInvalid(f"anomaly_id must be an integer, not {raw!r}") from None
    row = session.get(Anomaly, anomaly_id) if 1 <= anomaly_id <= MAX_ID else None
    if row is None:
        raise NotVisible(f"no anomaly with id {anomaly_id}: see 'iotctl anomalies list'")
    return row.device_id


def require(
    permission: Permission,
    *,
    device: str | None = None,
    klass: str | None = None,
    anomaly: str | None = None,
    fleet: bool = False,
    teacher: bool = False,
) -> Requirement:
    """The access rule of a route (see the module docstring)."""
    return Requirement(permission, device=device, klass=klass, anomaly=anomaly, fleet=fleet, teacher=teacher)


def public(note: str) -> Requirement:
    """A route no person signs in for; ``note`` says what protects it (shown in the route table)."""
    return Requirement(None, note=note)


Authenticated = Annotated[Principal, Depends(require(P.READ_DEVICES))]
Admin = Annotated[Principal, Depends(require(P.ADMIN_PANEL))]


def _requirements(dependant: Any) -> list[Requirement]:
    found = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, Requirement):
            found.append(dep.call)
        found.extend(_requirements(dep))
    return found


def api_routes(app: FastAPI) -> list[tuple[str, frozenset[str], APIRoute]]:
    """(path, methods, route) of every API route, routers included (FastAPI >= 0.16x keeps included
    routers as nodes; older versions flatten them into ``app.routes``)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:
        return [(r.path, frozenset(r.methods), r) for r in app.routes if isinstance(r, APIRoute)]
    out = []
    for rc in iter_route_contexts(app.routes):
        route = rc.original_route
        if isinstance(route, APIRoute):
            out.append((str(rc.path), frozenset(rc.methods or route.methods), route))
    return out


def declared_requirement(route: APIRoute) -> Requirement | None:
    """The route's declared rule (its first :class:`Requirement` dependency), or None."""
    found = _requirements(route.dependant)
    return found[0] if found else None


def undeclared_routes(app: FastAPI) -> list[str]:
    """``METHOD path`` of every API route that declares no access rule."""
    return sorted(
        f"{','.join(sorted(methods))} {path}"
        for path, methods, route in api_routes(app)
        if declared_requirement(route) is None
    )
