"""Where ``iotctl login`` keeps its sign-ins: one profile per API and person (like kubectl contexts),
in ``<user config dir>/edu-platform/profiles.json`` (mode 0600; ``$IOTCTL_CONFIG`` names another
file). The current profile is the last one logged into; ``$IOTCTL_PROFILE`` picks another."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import CliError

__all__ = ["Profile", "config_path", "current_profile", "load_profiles", "remove_profile", "save_profile"]


@dataclass
class Profile:
    name: str
    api: str
    username: str
    access_token: str
    expires_at: int
    refresh_token: str

    def expired(self, margin_s: float = 30.0) -> bool:
        return time.time() + margin_s >= self.expires_at


def config_path() -> Path:
    env = os.environ.get("IOTCTL_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("edu-platform")) / "profiles.json"


def load_profiles() -> dict[str, Any]:
    path = config_path()
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {"current": None, "profiles": {}}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc} (delete it and log in again)") from None
    data.setdefault("profiles", {})
    return data


def _write(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def save_profile(profile: Profile, *, make_current: bool = True) -> None:
    data = load_profiles()
    entry = asdict(profile)
    entry.pop("name")
    data["profiles"][profile.name] = entry
    if make_current:
        data["current"] = profile.name
    _write(data)


def remove_profile(name: str) -> None:
    data = load_profiles()
    data["profiles"].pop(name, None)
    if data.get("current") == name:
        data["current"] = next(iter(data["profiles"]), None)
    _write(data)


def current_profile(name: str | None = None) -> Profile | None:
    """The profile named ``name``, or ``$IOTCTL_PROFILE``, or the current one; None when there is none.
    Raises CliError when a profile is asked for by name and does not exist."""
    data = load_profiles()
    wanted = name or os.environ.get("IOTCTL_PROFILE")
    key = wanted or data.get("current")
    if not key:
        return None
    entry = data["profiles"].get(key)
    if entry is None:
        if wanted:
            known = ", ".join(sorted(data["profiles"])) or "none"
            raise CliError(f"no profile {key!r} (profiles: {known}): run 'iotctl login --profile {key}'")
        return None
    return Profile(name=key, **entry)
