"""An oracle outside the agent: a command sensor that journals every reading before handing it over.

The agent's own produced log is written in the same SQLite transaction as its buffer rows, so a test
comparing storage with it proves only "committed => stored". :class:`SensorJournal` sits on the other
side of the sensor interface: each sample runs a tiny shell probe that takes the next number ``n``,
appends ``"<life> <n>"`` to a journal file, and only then prints ``{"probe_n": n}`` for the agent to
read. ``<life>`` names the agent process that ran the probe: the test starts each agent with
:meth:`SensorJournal.life_env` (the probe inherits it), because the probe cannot ask for its parent's
pid reliably (if the agent dies between forking the probe and the probe's start, the parent is init).
Comparing storage with the journal proves "handed over => stored", except for the window between a
sensor handing a reading over and the agent's commit, which a crash of the agent may cut::

    journal = SensorJournal(tmp_path / "probe")
    toml = journal.sensor_toml()            # a [[sensors]] table for the agent's settings
    ...
    subprocess.Popen(agent_argv, env={**os.environ, **journal.life_env("3")})
    journal.handed_over()                   # [("3", n), ...] in hand-over order
    journal.check_stored(stored_ns, cut_lives={"3"})   # AssertionError naming what is missing

``/bin/sh`` and ``flock`` (util-linux) only: a probe costs a fork and a few file writes, not a Python start.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LIFE_VARIABLE", "PROBE_FIELD", "JournalVerdict", "SensorJournal"]

PROBE_FIELD = "probe_n"
LIFE_VARIABLE = "IOT_TESTING_PROBE_LIFE"

_SCRIPT = """#!/bin/sh
# One reading per run, journaled before it is handed to the agent (iot_testing.oracle).
d='{dir}'
exec 9>>"$d/lock"
{flock} 9
n=$(( $(cat "$d/counter" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$d/counter"
echo "${{{life}:-ppid-$PPID}} $n" >> "$d/journal"
printf '{{"{field}": %d}}\\n' "$n"
"""


@dataclass(frozen=True, slots=True)
class JournalVerdict:
    """What :meth:`SensorJournal.check_stored` found (when it did not raise)."""

    handed_over: int  # readings the probe handed over
    stored: int  # of them, stored
    lost_in_hand: int  # of them, lost because an agent was cut between the hand-over and its commit


class SensorJournal:
    """A journaling probe sensor in ``directory`` (created). See the module docstring."""

    def __init__(self, directory: Path, *, sensor_type: str = "probe") -> None:
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sensor_type = sensor_type
        flock = shutil.which("flock") or "/usr/bin/flock"
        if "'" in str(self.dir):
            raise ValueError(f"{self.dir}: a quote in the path would break the probe script")
        self.script = self.dir / "probe.sh"
        self.script.write_text(_SCRIPT.format(dir=self.dir, flock=flock, field=PROBE_FIELD, life=LIFE_VARIABLE))
        self.script.chmod(0o755)

    def sensor_toml(self) -> str:
        """The ``[[sensors]]`` table that makes the agent sample this probe."""
        return (
            f'[[sensors]]\ntype = "command"\nsensor_type = "{self.sensor_type}"\n'
            f'command = ["/bin/sh", "{self.script}"]\n'
        )

    @staticmethod
    def life_env(life: str) -> dict[str, str]:
        """Environment for an agent process: its probe readings are journaled under ``life``."""
        if not life or any(c.isspace() for c in life):
            raise ValueError(f"a life is one word, not {life!r}")
        return {LIFE_VARIABLE: life}

    def handed_over(self) -> list[tuple[str, int]]:
        """``(life, n)`` for every reading the probe handed over, in order."""
        path = self.dir / "journal"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            life, n = line.split()
            out.append((life, int(n)))
        return out

    def check_stored(self, stored: Iterable[float], *, cut_lives: Collection[str] = ()) -> JournalVerdict:
        """Assert that storage holds every reading the probe handed over, once, and nothing else, except
        the reading an agent life in ``cut_lives`` (killed or powered off) was holding when it was cut:
        the last one it was handed, if it had not committed it yet.

        Raises:
            AssertionError: naming the readings missing, unexpected or stored twice.
        """
        stored_ns = [int(v) for v in stored]
        assert len(stored_ns) == len(set(stored_ns)), "a probe reading is stored twice"
        journal = self.handed_over()
        handed = {n for _, n in journal}
        assert len(handed) == len(journal), "the probe handed over one number twice (journal broken)"
        extra = set(stored_ns) - handed
        assert not extra, f"stored probe readings the sensor never handed over: {sorted(extra)[:10]}"
        last_of: dict[str, int] = {}
        for life, n in journal:
            last_of[life] = n
        allowed = {last_of[life] for life in cut_lives if life in last_of}
        missing = handed - set(stored_ns)
        lost = sorted(missing - allowed)
        if lost:
            life_of = {n: life for life, n in journal}
            where = "; ".join(
                f"{n} (agent life {life_of[n]}{', cut' if life_of[n] in cut_lives else ''}, "
                f"its probe readings {[m for x, m in journal if x == life_of[n]][:12]})"
                for n in lost[:5]
            )
            raise AssertionError(
                f"{len(lost)} readings the sensor handed over are not stored (beyond the one in hand at each "
                f"cut): {lost[:20]}; {where}"
            )
        return JournalVerdict(len(journal), len(stored_ns), len(missing))
