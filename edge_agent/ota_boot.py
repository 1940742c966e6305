"""The A/B slot layout of an OTA-updatable agent, and the boot step that runs before the agent.

Standard library only, and runnable as a file: systemd starts ``python /opt/edu-agent/boot.py``,
a copy of this module that lives outside the slots, so a broken release in a slot cannot break the
step that switches back from it. Layout under the OTA directory (``ota_dir``)::

    slots/a/             one installed release: edge_agent/, iot_protocol/, VERSION
    slots/b/             the other
    current -> slots/a   symlink to the slot that runs; switched atomically (rename over it)
    state.json           the update state (below), written atomically
    download/            partial downloads, resumed after a cut or a restart

``state.json`` phases: ``idle``; ``trial`` (switched to a new release, not yet confirmed: holds
``version``, ``from_slot``, ``to_slot``, ``boots``, ``max_boots``, ``deadline``); ``confirmed``;
``rolled_back`` (switched back; ``reason`` says why). The boot step, on every start: in ``trial``
it counts the boot, and switches back to ``from_slot`` when the release has booted more than
``max_boots`` times without confirming (a crash loop) or its ``deadline`` passed; then it execs
``python -m edge_agent.agent --config FILE`` with the current slot on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RESTART_EXIT_CODE", "Layout", "boot", "main"]

RESTART_EXIT_CODE = 75  # the agent exits with this to be restarted into another slot (EX_TEMPFAIL)
SLOTS = ("a", "b")


class Layout:
    """Paths and primitive operations of one OTA directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.slots = self.root / "slots"
        self.current_link = self.root / "current"
        self.state_path = self.root / "state.json"
        self.download_dir = self.root / "download"

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        return self.slots / slot

    def current(self) -> str:
        """The slot ``current`` points to."""
        target = os.readlink(self.current_link)
        slot = Path(target).name
        if slot not in SLOTS:
            raise ValueError(f"{self.current_link} points to {target!r}, not a slot")
        return slot

    def other(self) -> str:
        return "b" if self.current() == "a" else "a"

    def slot_version(self, slot: str) -> str | None:
        try:
            return (self.slot_dir(slot) / "VERSION").read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def switch(self, slot: str) -> None:
        """Point ``current`` at ``slot`` atomically (a new symlink renamed over the old one)."""
        tmp = self.root / f".current.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("slots") / slot, tmp)
        os.replace(tmp, self.current_link)
        _fsync_dir(self.root)

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"phase": "idle"}
        except (OSError, ValueError):  # a torn or garbled file: start over (the slots are intact)
            return {"phase": "idle", "note": "state.json was unreadable"}
        return state if isinstance(state, dict) else {"phase": "idle"}

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(f".state.{os.getpid()}.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        _fsync_dir(self.root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def boot(layout: Layout, *, now: float | None = None) -> dict[str, Any]:
    """The boot step: count a trial boot; switch back on a crash loop or a passed deadline.
    Returns the state as written."""
    now = time.time() if now is None else now
    state = layout.read_state()
    if state.get("phase") != "trial":
        return state
    state["boots"] = int(state.get("boots", 0)) + 1
    max_boots = int(state.get("max_boots", 3))
    deadline = float(state.get("deadline", now + 1))
    reason = None
    if state["boots"] > max_boots:
        reason = f"crash loop: {state['boots'] - 1} boots without confirmation"
    elif now > deadline:
        reason = f"not confirmed within {float(state.get('confirm_timeout_s', 0)):g}s of the switch"
    if reason is not None:
        layout.switch(str(state["from_slot"]))
        state.update(phase="rolled_back", reason=reason, reported=False, rolled_back_at=now)
        state.setdefault("failed_versions", []).append(state.get("version"))
    layout.write_state(state)
    return state


def main(argv: list[str] | None = None) -> int:
    """``python boot.py --ota-dir DIR --config FILE``: the boot step, then exec the agent from the
    current slot (same pid: systemd supervises the agent itself)."""
    ap = argparse.ArgumentParser(prog="edu-agent-boot", description="A/B boot step of the edu-platform agent.")
    ap.add_argument("--ota-dir", required=True, type=Path, help="The OTA directory (slots, current, state.json).")
    ap.add_argument("--config", "-c", required=True, help="The agent's TOML file.")
    ap.add_argument("--python", default=sys.executable, help="Interpreter that runs the agent.")
    args = ap.parse_args(argv)
    layout = Layout(args.ota_dir)
    state = boot(layout)
    slot_dir = layout.slot_dir(layout.current()).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(slot_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MALLOC_ARENA_MAX", "2")
    print(
        json.dumps(
            {"msg": "booting agent", "slot": slot_dir.name, "phase": state.get("phase"), "boots": state.get("boots")}
        ),
        file=sys.stderr,
        flush=True,
    )
    argv_ = [args.python, "-m", "edge_agent.agent", "--config", str(args.config)]
    os.execve(args.python, argv_, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
