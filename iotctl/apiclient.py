"""How CLI commands talk to the cloud REST API: base URL and bearer token from options, environment
(``IOTCTL_API``, ``IOTCTL_TOKEN``), the current ``iotctl login`` profile (its access token refreshed
when it is about to expire), the platform ``iotctl up`` runs from the state dir, or the local admin
token; every failure becomes one CliError line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import CliError
from .statedir import find_platform, state_dir

__all__ = ["DEFAULT_API", "ApiOption", "JsonOption", "TokenOption", "call", "public_api", "resolve_api"]

DEFAULT_API = "http://127.0.0.1:8080"

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="IOTCTL_API",
        help=f"Cloud API base URL. Default: the platform 'iotctl up' runs from the state dir, else {DEFAULT_API}.",
        show_default=False,
    ),
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


def _profile_token(api: str | None) -> str | None:
    """The current profile's access token for ``api`` (refreshed first when it is about to expire)."""
    from .profiles import current_profile, save_profile

    profile = current_profile()
    if profile is None or (api and api.rstrip("/") != profile.api.rstrip("/")):
        return None
    if profile.expired():
        body = call("POST", "/v1/auth/refresh", api=profile.api, token=None, auth=False,
                    json={"refresh_token": profile.refresh_token}, what="refresh the session")  # fmt: skip
        profile.access_token, profile.expires_at = body["access_token"], int(body["expires_at"])
        profile.refresh_token = body["refresh_token"]
        save_profile(profile, make_current=False)
    return profile.access_token


def resolve_token(token: str | None, api: str | None = None) -> str:
    if token:
        return token
    from_profile = _profile_token(api)
    if from_profile:
        return from_profile
    path = state_dir() / "admin.token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CliError(
            f"no API token: pass --token or set IOTCTL_TOKEN (on the API's machine it is in {path})"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read the API token {path}: {exc.strerror}") from None


def resolve_api(api: str | None) -> str:
    """``api`` as given (``--api`` or ``IOTCTL_API``); else the current ``iotctl login`` profile's; else
    the platform that ``iotctl up`` runs from the state dir; else the conventional :data:`DEFAULT_API`."""
    if api:
        return api
    from .profiles import current_profile

    profile = current_profile()
    if profile is not None:
        return profile.api
    found = find_platform()
    return found.api_url if found is not None else DEFAULT_API


def public_api(api: str | None) -> str:
    """The API URL a device elsewhere should enroll with (for hints): the given one, or the running
    platform's advertised one, or a placeholder."""
    if api:
        return api
    found = find_platform()
    return found.public_api_url if found is not None else "<API URL>"


def _verify(api: str) -> Any:
    """How to check an https:// API: ``IOTCTL_CA`` (a CA file) when set, else the embedded CA of
    ``iotctl up`` when this machine has one (<state dir>/pki/ca.crt), else the system's CAs."""
    import os

    if not api.startswith("https://"):
        return True
    ca = os.environ.get("IOTCTL_CA") or str(state_dir() / "pki" / "ca.crt")
    if not Path(ca).is_file():
        return True
    from iot_protocol.tls import client_context

    return client_context(ca)


def call(
    method: str,
    path: str,
    *,
    api: str | None,
    token: str | None,
    json: Any = None,
    content: Any = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    timeout_s: float = 30.0,
    params: Any = None,
    raw: bool = False,
    what: str = "",
) -> Any:
    """Send one request and return the decoded JSON body (``raw``: the text); raise CliError on any failure.
    ``content`` (bytes or an iterator of bytes) is sent as the raw body instead of ``json``."""
    import httpx

    from .profiles import current_profile

    guessed = not api and current_profile() is None and find_platform() is None
    no_platform = (
        f"no platform is running with state dir {state_dir()}, and nothing answers at {DEFAULT_API}: start "
        "'iotctl up' (with the same --state-dir), or pass --api URL"
    )
    try:
        headers = {**(headers or {}), **({"Authorization": f"Bearer {resolve_token(token, api)}"} if auth else {})}
    except CliError:
        if guessed:  # the missing token is the smaller problem
            raise CliError(no_platform) from None
        raise
    api = resolve_api(api)
    url = api.rstrip("/") + path
    try:
        response = httpx.request(
            method,
            url,
            json=json,
            content=content,
            params=params,
            headers=headers,
            timeout=timeout_s,
            verify=_verify(api),
        )
    except httpx.InvalidURL:
        raise CliError(f"invalid API URL {api!r}: use e.g. {DEFAULT_API}") from None
    except httpx.UnsupportedProtocol:
        raise CliError(f"invalid API URL {api!r}: use http:// or https://") from None
    except httpx.TimeoutException:
        raise CliError(f"the API at {api} did not answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        if guessed:
            raise CliError(no_platform) from None
        raise CliError(f"cannot reach the API at {api} ({exc}): is 'iotctl up' running? Or pass --api URL") from None
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
