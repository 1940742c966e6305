"""The state directory as the CLI sees it: the ``--state-dir`` option every command shares, the lock
``iotctl up`` holds while it runs, and how a client finds the running platform (or says it cannot).

``iotctl up`` holds an exclusive ``flock`` on ``<state dir>/up.lock`` for its whole life and writes its
pid and URLs into it; a second ``iotctl up`` on the same directory is refused with that pid. The lock
dies with the process (even on ``kill -9``), so a client can tell a running platform from the URL
files a crashed one left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from .errors import CliError

__all__ = [
    "LOCK_FILE",
    "PlatformLock",
    "RunningPlatform",
    "StateDirLocked",
    "StateDirOption",
    "find_platform",
    "require_platform",
    "state_dir",
]

LOCK_FILE = "up.lock"


def _use_state_dir(value: Path | None) -> Path | None:
    # Every command resolves the state dir through cloud_core.paths.default_state_dir(), which reads
    # EDU_STATE_DIR: setting it here makes --state-dir mean the same thing for all of them.
    if value is not None:
        os.environ["EDU_STATE_DIR"] = str(value.expanduser())
    return value


StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="EDU_STATE_DIR",
        callback=_use_state_dir,
        help="The platform's state directory (what 'iotctl up --state-dir' uses). "
        "Default: $EDU_STATE_DIR, else the user's data dir.",
        show_default=False,
    ),
]


def state_dir() -> Path:
    """The state directory in effect (``--state-dir``, ``$EDU_STATE_DIR`` or the user's data dir)."""
    from cloud_core.paths import default_state_dir

    return default_state_dir().expanduser()


class StateDirLocked(Exception):
    """Another ``iotctl up`` runs on this state directory; the message names its pid."""


@dataclass(frozen=True)
class RunningPlatform:
    """What ``iotctl up`` wrote into its lock: where to reach it."""

    state_dir: Path
    pid: int
    api_url: str  # for clients on this machine
    mqtt_url: str
    public_api_url: str  # what devices and other machines use
    public_mqtt_url: str
    started_at: float


class PlatformLock:
    """The exclusive lock of one state directory; ``acquire`` raises StateDirLocked naming the holder."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            info = _parse(fh.read())
            fh.close()
            pid = info.get("pid", "?")
            raise StateDirLocked(
                f"the state dir {self.path.parent} is in use by another 'iotctl up' (pid {pid}): stop it "
                "first, or give this one another --state-dir"
            ) from None
        self._fh = fh
        self.write(pid=os.getpid(), started_at=time.time())

    def write(self, **info: Any) -> None:
        """Record ``info`` (merged with what is there) for clients; only the holder writes."""
        assert self._fh is not None, "lock not held"
        self._fh.seek(0)
        merged = {**_parse(self._fh.read()), **info}
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(merged) + "\n")
        self._fh.flush()

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            self._fh.close()  # closing drops the flock
            self._fh = None


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def find_platform(directory: Path | None = None) -> RunningPlatform | None:
    """The platform ``iotctl up`` runs from ``directory`` (default: the state dir in effect), or None
    when none runs there (no lock file, or nobody holds it: a crashed run's leftovers do not count)."""
    d = directory or state_dir()
    path = d / LOCK_FILE
    try:
        fh = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _parse(fh.read())  # held: it runs
        else:
            return None  # we could lock it: nobody holds it
    try:
        return RunningPlatform(
            state_dir=d,
            pid=int(info["pid"]),
            api_url=str(info["api_url"]),
            mqtt_url=str(info["mqtt_url"]),
            public_api_url=str(info.get("public_api_url") or info["api_url"]),
            public_mqtt_url=str(info.get("public_mqtt_url") or info["mqtt_url"]),
            started_at=float(info.get("started_at", 0.0)),
        )
    except (KeyError, ValueError, TypeError):
        return None  # still starting: the URLs are written once the API answers


def require_platform(hint: str) -> RunningPlatform:
    """The running platform, or a CliError saying that none runs in the state dir; ``hint`` says
    how to point the command elsewhere (e.g. "or pass --api URL")."""
    found = find_platform()
    if found is None:
        raise CliError(
            f"no platform is running with state dir {state_dir()}: start 'iotctl up' (with the same "
            f"--state-dir), {hint}"
        )
    return found
