"""How CLI commands talk to the cloud REST API: base URL and bearer token from options, environment
(``IOTCTL_API``, ``IOTCTL_TOKEN``) or the local admin token; every failure becomes one CliError line."""

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
        help="API bearer token. Default: <state dir>/admin.token (written by the API at first start).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def resolve_token(token: str | None) -> str:
    if token:
        return token
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
    """``api`` as given (``--api`` or ``IOTCTL_API``); else the platform that ``iotctl up`` runs from the
    state dir; else the conventional :data:`DEFAULT_API`."""
    if api:
        return api
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
    auth: bool = True,
    timeout_s: float = 30.0,
) -> Any:
    """Send one request and return the decoded JSON body; raise CliError on any failure."""
    import httpx

    guessed = not api and find_platform() is None
    no_platform = (
        f"no platform is running with state dir {state_dir()}, and nothing answers at {DEFAULT_API}: start "
        "'iotctl up' (with the same --state-dir), or pass --api URL"
    )
    try:
        headers = {"Authorization": f"Bearer {resolve_token(token)}"} if auth else {}
    except CliError:
        if guessed:  # the missing token is the smaller problem
            raise CliError(no_platform) from None
        raise
    api = resolve_api(api)
    url = api.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=json, headers=headers, timeout=timeout_s, verify=_verify(api))
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
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            detail = response.reason_phrase or "error"
        if response.status_code == 401:
            detail += " (check --token / IOTCTL_TOKEN)"
        raise CliError(f"{detail} [HTTP {response.status_code}]", exit_code=1)
    return body
