"""The console's routes: its page and static assets (``/console/``), a sign-in with an API key for
browsers (``POST /v1/console/session``), and the few answers the pages need that the REST API does
not give in one call: the fleet overview, a device's live readings (server-sent events), and the
simulator (catalogue, runs, ground truth against the detector). Each declares its access rule, like
every route of the API; everything else the pages show comes from the REST API itself."""

from __future__ import annotations

import itertools
import mimetypes
import secrets
import threading
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from ..analytics.models import Anomaly
from ..api.deps import ACCESS_COOKIE, CSRF_COOKIE, ContextDep, Id, P, SessionDep, public, require
from ..auth.access import Principal
from ..auth.credentials import authenticate_key, create_api_key, revoke_api_key
from ..auth.errors import NotAuthenticated, NotVisible
from ..auth.users import get_user
from ..services.errors import Conflict, InvalidInput
from .fleet import FleetView, fleet_view
from .live import live_events
from .settings import ConsoleSettings
from .simulator import RunAccess, RunStatus, ScenarioInfo, Simulator, SimulatorRefused, score_run

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = FilePath(__file__).parent / "static"
# Same origin only: no inline script, nothing from elsewhere (the page loads no asset from the internet).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")

router = APIRouter(tags=["console"])
Static = [Depends(public("the console's static files: no data"))]


def _settings(request: Request) -> ConsoleSettings:
    found: ConsoleSettings | None = getattr(request.app.state, "console", None)
    if found is None:
        found = request.app.state.console = ConsoleSettings()
    return found


def _simulator(request: Request) -> Simulator | None:
    return getattr(request.app.state, "simulator", None)


# ---- the page -------------------------------------------------------------------------------------


@router.get("/", dependencies=Static, include_in_schema=True, response_class=RedirectResponse, status_code=307)
def root() -> RedirectResponse:
    """The console."""
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/", dependencies=Static, response_class=FileResponse)
def console_page() -> FileResponse:
    """The console's page (every view is a part of it: #/fleet, #/device/ID, #/alerts, ...)."""
    return FileResponse(STATIC_DIR / "index.html", headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/console/static/{name}", dependencies=Static, response_class=FileResponse)
def console_asset(name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$", max_length=64)]) -> Response:
    """The page's scripts, styles and the vendored chart library (one flat folder)."""
    target = STATIC_DIR / name
    if not target.is_file():
        raise NotVisible(f"no console file {name!r}")
    return FileResponse(target, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})


# ---- signing in with an API key ------------------------------------------------------------------


class TokenSignIn(BaseModel):
    token: str = Field(min_length=8, max_length=256, description="An API key, e.g. the bootstrap admin.token.")


class SignedIn(BaseModel):
    username: str
    role: str


@router.post("/v1/console/session", response_model=SignedIn, dependencies=[Depends(public("the API key itself"))])
def token_session(
    body: TokenSignIn, request: Request, response: Response, session: SessionDep, ctx: ContextDep
) -> SignedIn:
    """Sign a browser in with an API key (the bootstrap admin's ``admin.token``): the key goes into the
    same HttpOnly cookie a password sign-in sets, for this browser session, with a CSRF cookie."""
    if body.token.count(".") == 2:
        raise NotAuthenticated("that is an access token, not an API key: sign in with your password", reason="invalid")
    principal = authenticate_key(session, body.token.strip())
    secure = ctx.settings.cookie_secure if ctx.settings.cookie_secure is not None else request.url.scheme == "https"
    response.set_cookie(ACCESS_COOKIE, body.token.strip(), httponly=True, secure=secure, samesite="strict", path="/")
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), secure=secure, samesite="strict")
    return SignedIn(username=principal.username, role=principal.role)


# ---- fleet -----------------------------------------------------------------------------------------


@router.get("/v1/console/fleet", response_model=FleetView)
def fleet(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    p: Annotated[Principal, Depends(require(P.READ_DEVICES))],
) -> FleetView:
    """Every device you may see, with liveness, firmware and config (desired vs reported), readings/s,
    recent rejections and ledger verdict; and the classes you teach."""
    return fleet_view(
        session, principal=p, cloud=ctx.settings, console=_settings(request), store=request.app.state.tsdb
    )


# ---- live readings ----------------------------------------------------------------------------------


@router.get(
    "/v1/console/devices/{device_id}/live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events: readings."}},
)
async def live(
    device_id: str,
    request: Request,
    _p: Annotated[Principal, Depends(require(P.READ_DATA, device="device_id"))],
    field: Annotated[list[str] | None, Query(max_length=32, description="Fields (repeat); default all.")] = None,
    after_ms: Annotated[int | None, Query(ge=0, description="Resume after this reading time (ms).")] = None,
    duration_s: Annotated[float | None, Query(ge=0, le=86_400, description="End the stream after this long.")] = None,
) -> StreamingResponse:
    """The device's readings as the bridge stores them, as server-sent ``readings`` events."""
    if field is not None and any(not f or len(f) > 64 for f in field):
        raise InvalidInput("each field must be 1-64 characters")
    events = live_events(
        request.app.state.tsdb, device_id, _settings(request), fields=field, after_ms=after_ms,
        duration_s=duration_s, disconnected=request.is_disconnected,
        stopping=getattr(request.app.state, "stopping", None),
    )  # fmt: skip
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# ---- the simulator -----------------------------------------------------------------------------------


class Catalogue(BaseModel):
    available: bool = Field(description="False: this platform runs no simulator (only 'iotctl up' does).")
    scenarios: list[ScenarioInfo]


class RunStart(BaseModel):
    scenario: str = Field(min_length=1, max_length=64)


class LabelPublic(BaseModel):
    device_id: str
    start_ms: int
    end_ms: int
    kind: str
    category: str
    field: str
    counted: bool = Field(description="A value fault the detector is meant to find (counts for recall).")
    found_by: list[int] = Field(description="Episodes that overlap it.")


class RunPublic(BaseModel):
    id: int
    scenario: str
    owner: str
    fleet: str
    device_ids: list[str]
    status: str
    error: str | None
    progress: float
    sim_start_ms: int
    sim_end_ms: int
    sim_now_ms: int
    started_at_ms: int


class RunDetail(RunPublic):
    labels: list[LabelPublic]
    episodes: list[dict[str, Any]] = Field(description="The detector's episodes on the run's devices, with 'true'.")
    precision: float | None
    recall: float | None
    true_episodes: int
    found: int
    counted_labels: int


def _public(run: RunStatus) -> RunPublic:
    return RunPublic(
        id=run.id, scenario=run.scenario, owner=run.owner, fleet=run.fleet, device_ids=list(run.device_ids),
        status=run.status, error=run.error, progress=run.progress, sim_start_ms=run.sim_start_ms,
        sim_end_ms=run.sim_end_ms, sim_now_ms=run.sim_now_ms, started_at_ms=run.started_at_ms,
    )  # fmt: skip


def _mine(p: Principal, run: RunStatus) -> bool:
    return p.is_admin or run.owner_id == p.user_id


def _need(request: Request) -> Simulator:
    sim = _simulator(request)
    if sim is None:  # for good, not for now: 409, not 503
        raise Conflict("this platform runs no simulator: 'iotctl up' does (or use 'iotctl sim run')")
    return sim


_start_lock = threading.Lock()
_key_names = itertools.count(1)


@router.get("/v1/console/scenarios", response_model=Catalogue)
def scenarios(request: Request, _p: Annotated[Principal, Depends(require(P.READ_DEVICES))]) -> Catalogue:
    """The scenarios a student may start here."""
    sim = _simulator(request)
    if sim is None:
        return Catalogue(available=False, scenarios=[])
    return Catalogue(available=True, scenarios=list(sim.catalogue()))


@router.post("/v1/console/simulations", response_model=RunPublic, status_code=201)
def start_simulation(
    body: RunStart,
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    p: Annotated[Principal, Depends(require(P.WRITE_DEVICES))],
) -> RunPublic:
    """Start a scenario on new devices of your own (registered in your class, within its quotas)."""
    sim = _need(request)
    if body.scenario not in {s.name for s in sim.catalogue()}:
        raise InvalidInput(f"no scenario {body.scenario!r} in the catalogue")
    owner = get_user(session, user_id=p.user_id)
    issued = create_api_key(
        session, actor=p, owner=owner, name=f"console simulation {next(_key_names)}", role=p.role,
        expires_in_s=_settings(request).simulator_key_ttl_s,
    )  # fmt: skip
    session.commit()
    assert issued.row.id is not None
    try:
        with _start_lock:
            run = sim.start(
                scenario=body.scenario, owner_id=p.user_id, owner=p.username,
                access=RunAccess(api_key=issued.key, key_id=issued.row.id),
            )  # fmt: skip
    except SimulatorRefused as exc:
        revoke_api_key(session, actor=p, key_id=issued.row.id)
        session.commit()
        raise InvalidInput(str(exc)) from None
    return _public(run)


@router.get("/v1/console/simulations", response_model=list[RunPublic])
def list_simulations(request: Request, p: Annotated[Principal, Depends(require(P.READ_DEVICES))]) -> list[RunPublic]:
    """Your runs, newest first (admins: everyone's)."""
    sim = _simulator(request)
    if sim is None:
        return []
    return [_public(r) for r in sorted(sim.runs(), key=lambda r: -r.id) if _mine(p, r)]


def _run(request: Request, p: Principal, run_id: int) -> RunStatus:
    sim = _simulator(request)
    run = next((r for r in sim.runs() if r.id == run_id), None) if sim is not None else None
    if run is None or not _mine(p, run):
        raise NotVisible(f"no simulation run {run_id}")
    return run


@router.get("/v1/console/simulations/{run_id}", response_model=RunDetail)
def get_simulation(
    run_id: Id, request: Request, session: SessionDep, p: Annotated[Principal, Depends(require(P.READ_DATA))]
) -> RunDetail:
    """The run with its ground truth next to the detector's episodes, and precision and recall."""
    run = _run(request, p, run_id)
    episodes = _episodes(session, run)
    score = score_run(run.labels, episodes)
    for ep in episodes:
        ep["true"] = score.episode_truth.get(int(ep["id"]), False)
    return RunDetail(
        **_public(run).model_dump(),
        labels=[
            LabelPublic(
                device_id=m.label.device_id,
                start_ms=m.label.start_ms,
                end_ms=m.label.end_ms,
                kind=m.label.kind,
                category=m.label.category,
                field=m.label.field,
                counted=m.counted,
                found_by=list(m.found_by),
            )
            for m in score.matches
        ],
        episodes=episodes,
        precision=score.precision,
        recall=score.recall,
        true_episodes=score.true_episodes,
        found=score.found,
        counted_labels=score.labels,
    )


@router.post("/v1/console/simulations/{run_id}/stop", response_model=RunPublic)
def stop_simulation(
    run_id: Id, request: Request, p: Annotated[Principal, Depends(require(P.WRITE_DEVICES))]
) -> RunPublic:
    """Stop a run early (its devices drain what they hold; the ground truth so far is kept)."""
    run = _run(request, p, run_id)
    stopped = _need(request).stop(run.id)
    return _public(stopped or run)


def _episodes(session: Session, run: RunStatus) -> list[dict[str, Any]]:
    if not run.device_ids:
        return []
    rows = session.exec(
        select(Anomaly)
        .where(col(Anomaly.device_id).in_(run.device_ids))
        .where(col(Anomaly.end_ms) >= run.sim_start_ms, col(Anomaly.start_ms) <= run.sim_end_ms)
        .order_by(col(Anomaly.start_ms))
        .limit(1000)
    )
    return [a.to_public() for a in rows]
