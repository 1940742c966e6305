"""How CLI commands talk to the cloud REST API: base URL and bearer token from options, environment
(``IOTCTL_API``, ``IOTCTL_TOKEN``) or the local admin token; every failure becomes one CliError line."""

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
        help="API bearer token. Default: <state dir>/admin.token (written by the API at first start).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def _admin_token_path() -> Path:
    from cloud_core.paths import default_state_dir

    return default_state_dir() / "admin.token"


def resolve_token(token: str | None) -> str:
    if token:
        return token
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
    content: Any = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    timeout_s: float = 30.0,
) -> Any:
    """Send one request and return the decoded JSON body; raise CliError on any failure. ``content``
    (bytes or an iterator of bytes) is sent as the raw body instead of ``json``."""
    import httpx

    headers = {**(headers or {}), **({"Authorization": f"Bearer {resolve_token(token)}"} if auth else {})}
    api = resolve_api(api)
    url = api.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=json, content=content, headers=headers, timeout=timeout_s)
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
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            detail = response.reason_phrase or "error"
        if response.status_code == 401:
            detail += " (check --token / IOTCTL_TOKEN)"
        raise CliError(f"{detail} [HTTP {response.status_code}]", exit_code=1)
    return body
