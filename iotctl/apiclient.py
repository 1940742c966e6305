"""How CLI commands talk to the cloud REST API: base URL and bearer token from options, environment
(``IOTCTL_API``, ``IOTCTL_TOKEN``), the current ``iotctl login`` profile (its access token refreshed
when it is about to expire), or the local admin token; every failure becomes one CliError line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import CliError

__all__ = ["DEFAULT_API", "ApiOption", "JsonOption", "TokenOption", "call"]

DEFAULT_API = "http://127.0.0.1:8080"

ApiOption = Annotated[
    str, typer.Option("--api", envvar="IOTCTL_API", help="Cloud API base URL.", show_default=True)
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="IOTCTL_TOKEN",
        help="API bearer token or key. Default: the 'iotctl login' profile, else <state dir>/admin.token.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def _admin_token_path() -> Path:
    from cloud_core.paths import default_state_dir

    return default_state_dir() / "admin.token"


def _profile_token(api: str) -> str | None:
    """The current profile's access token for ``api`` (refreshed first when it is about to expire)."""
    from .profiles import current_profile, save_profile

    profile = current_profile()
    if profile is None or (api != DEFAULT_API and api.rstrip("/") != profile.api.rstrip("/")):
        return None
    if profile.expired():
        body = call("POST", "/v1/auth/refresh", api=profile.api, token=None, auth=False,
                    json={"refresh_token": profile.refresh_token}, what="refresh the session")  # fmt: skip
        profile.access_token, profile.expires_at = body["access_token"], int(body["expires_at"])
        profile.refresh_token = body["refresh_token"]
        save_profile(profile, make_current=False)
    return profile.access_token


def resolve_token(token: str | None, api: str = DEFAULT_API) -> str:
    if token:
        return token
    from_profile = _profile_token(api)
    if from_profile:
        return from_profile
    path = _admin_token_path()
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CliError(
            f"no API token: pass --token or set IOTCTL_TOKEN (on the API's machine it is in {path})"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read the API token {path}: {exc.strerror}") from None


def resolve_api(api: str) -> str:
    """``api`` as given; but the default URL yields to ``<state dir>/api.url``, which ``iotctl up``
    writes when it had to take another port."""
    if api != DEFAULT_API:
        return api
    from .profiles import current_profile

    profile = current_profile()
    if profile is not None:
        return profile.api
    from cloud_core.paths import default_state_dir

    try:
        return (default_state_dir() / "api.url").read_text(encoding="utf-8").strip() or api
    except OSError:
        return api


def call(
    method: str,
    path: str,
    *,
    api: str,
    token: str | None,
    json: Any = None,
    auth: bool = True,
    timeout_s: float = 30.0,
    params: Any = None,
    raw: bool = False,
    what: str = "",
) -> Any:
    """Send one request and return the decoded JSON body (``raw``: the text); raise CliError on any failure."""
    import httpx

    headers = {"Authorization": f"Bearer {resolve_token(token, api)}"} if auth else {}
    api = resolve_api(api)
    url = api.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=json, params=params, headers=headers, timeout=timeout_s)
    except httpx.InvalidURL:
        raise CliError(f"invalid API URL {api!r}: use e.g. {DEFAULT_API}") from None
    except httpx.UnsupportedProtocol:
        raise CliError(f"invalid API URL {api!r}: use http:// or https://") from None
    except httpx.TimeoutException:
        raise CliError(f"the API at {api} did not answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the API at {api} ({exc}): start it with 'iotctl api' or pass --api"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400 and raw:
        return response.text
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            detail = response.reason_phrase or "error"
        if response.status_code == 401:
            detail += " (check --token / IOTCTL_TOKEN, or run 'iotctl login')"
        if what:
            detail = f"cannot {what}: {detail}"
        raise CliError(f"{detail} [HTTP {response.status_code}]", exit_code=1)
    return body
