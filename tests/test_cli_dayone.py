"""The rough edges a newcomer hit on day one, through the real ``iotctl`` executable: version and
``-h``, help that looks the same everywhere and names no internals, a "did you mean" for a typo,
``--state-dir`` on every command that finds the platform (and a clear word when none runs),
classroom data that ``--since 1d`` finds, docs without undefined variables, a quiet ``pip install``."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from iot_testing.up import iotctl

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_short_help() -> None:
    v = iotctl("--version")
    assert v.returncode == 0
    assert re.fullmatch(r"iotctl \(edu-platform\) \S+; wire protocol v1; agent firmware \S+\n", v.stdout)
    for args in (["-h"], ["devices", "-h"], ["devices", "register", "-h"], ["sim", "run", "-h"]):
        out = iotctl(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert "Usage: iotctl" in out.stdout


def help_text(*args: str) -> str:
    """``iotctl ARGS -h`` in this process (the same app the executable runs; many times faster)."""
    from typer.testing import CliRunner

    from iotctl.main import _quiet_flags, app

    _quiet_flags()
    out = CliRunner().invoke(app, [*args, "-h"], prog_name="iotctl", terminal_width=100)
    assert out.exit_code == 0, (args, out.output)
    return out.output


def test_help_is_boxed_everywhere_and_flags_show_no_type() -> None:
    """The top-level help was plain text while sub-commands were boxed; flags read ``--help <bool>``;
    sub-commands offered shell-completion installers."""
    top = iotctl("-h").stdout  # the executable once
    assert "╭─ Commands" in top and "╭─ Options" in top
    assert "sim " in top and "Simulate fleets" in top
    for args in (["devices"], ["devices", "register"], ["up"], ["query"], ["sim", "run"]):
        text = help_text(*args)
        assert "╭─ Options" in text, args
        assert "<bool>" not in text, args
        assert "--install-completion" not in text, args
    assert "<path>" in help_text("up")  # options that take a value still say what


def test_a_top_level_typo_gets_a_suggestion() -> None:
    out = iotctl("devics", "list")
    assert out.returncode == 2
    assert "No such command 'devics'. Did you mean 'devices'?" in out.stderr
    assert "Traceback" not in out.stderr


COMMANDS = [
    ("up",), ("agent", "enroll"), ("agent", "run"), ("agent", "status"), ("devices", "register"),
    ("devices", "list"), ("devices", "show"), ("devices", "deactivate"), ("devices", "rotate"),
    ("devices", "ledger"), ("config", "set"), ("config", "show"), ("query",), ("db", "init"), ("bridge", "run"),
    ("api",), ("sim", "run"), ("sim", "generate"), ("anomalies", "list"), ("anomalies", "evaluate"),
    ("anomalies", "worker"), ("anomalies", "train"),
]  # fmt: skip


def test_help_texts_name_no_internals() -> None:
    """Help mentioned "issue 7", module paths and how the code is arranged."""
    internal = re.compile(r"issue \d|\b(edge_agent|cloud_core|broker_bridge|firmware_sim|iot_protocol)[./]|\.py\b")
    for command in COMMANDS:
        text = help_text(*command)
        assert text, command
        assert not internal.search(text), (command, internal.search(text))


STATE_COMMANDS = [
    (["devices", "list"], "no platform is running with state dir {state}"),
    (["devices", "show", "x"], "no platform is running with state dir {state}"),
    (["devices", "register", "x"], "no platform is running with state dir {state}"),
    (["devices", "rotate", "x"], "no platform is running with state dir {state}"),
    (["devices", "deactivate", "x"], "no platform is running with state dir {state}"),
    (["config", "show", "x"], "no platform is running with state dir {state}"),
    (["config", "set", "x", "a=1"], "no platform is running with state dir {state}"),
    (["sim", "run", "--devices", "1"], "no platform is running with state dir {state}"),
    (["query"], "no embedded store at {state}/readings.db"),
    (["devices", "ledger", "x"], "no metadata database at {state}/meta.db"),
    (["anomalies", "list"], ""),
]


@pytest.mark.parametrize(("args", "message"), STATE_COMMANDS, ids=[" ".join(a[:2]) for a, _ in STATE_COMMANDS])
def test_every_command_that_finds_the_platform_takes_state_dir(tmp_path: Path, args: list[str], message: str) -> None:
    """``iotctl up --state-dir`` had no counterpart on the other commands. Each takes it, and with no
    platform running there says so, naming the directory and ``iotctl up`` (the hint named
    ``iotctl api``), in one line."""
    state = tmp_path / "class"
    state.mkdir()
    out = iotctl(*args, "--state-dir", str(state), env={"EDU_STATE_DIR": str(tmp_path / "other")})
    assert "No such option" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    if message:
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert message.format(state=state) in lines[0]
        if "no platform" in message:
            assert "start 'iotctl up' (with the same --state-dir)" in lines[0]
            assert "iotctl api" not in lines[0]


def test_classroom_data_ends_now_so_since_1d_finds_it(tmp_path: Path) -> None:
    """The classroom scenario was pinned to a date months back: ``query --since 1d`` found nothing."""
    out_csv = tmp_path / "classroom.csv"
    before = time.time()
    scenario = ROOT / "firmware_sim/scenarios/classroom.toml"
    r = iotctl("sim", "generate", "--scenario", str(scenario), "--out", str(out_csv))
    assert r.returncode == 0, r.stderr
    with out_csv.open() as f:
        stamps = [datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).timestamp() for row in csv.DictReader(f)]
    assert stamps and min(stamps) >= before - 86_400 - 1 and max(stamps) <= time.time()


def test_docs_commands_have_no_undefined_variables_or_wrong_ports() -> None:
    """docs/simulation.md used port 8000 (the API's is 8080) and a ``$STATE`` nothing defined."""
    for doc in (ROOT / "docs/simulation.md", ROOT / "README.md"):
        blocks = re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S)
        text = "\n".join(blocks)
        assert ":8000" not in text, doc
        defined = set(re.findall(r"export (\w+)=", text)) | {"PWD", "HOME"}
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used <= defined, (doc, used - defined)


def test_pip_install_shows_no_setuptools_deprecation() -> None:
    """``pip install`` warned that ``project.license`` as a table is deprecated (its metadata is built
    in an isolated environment with the current setuptools, as a user's install is)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--dry-run", "-v", "-e", str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Deprecat" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "everywhere"], "error: --bind 'everywhere': give an IP address of this machine"),
        (["--bind", "192.0.2.55"], "error: --bind 192.0.2.55: not an address of this machine (try 0.0.0.0"),
        (["--advertise", "192.0.2.7"], "error: --advertise 192.0.2.7 with --bind 127.0.0.1: the platform listens on"),
        (["--mqtt-port", "70000"], "Invalid value for '--mqtt-port'"),
    ],
)
def test_up_network_options_are_checked_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    out = iotctl("up", "--state-dir", str(tmp_path / "s"), "--no-view", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert not (tmp_path / "s" / "up.lock").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "2", "--duration", "forever"], "bad duration 'forever'"),
        (["--devices", "2", "--speed", "0"], "simulation.speed: Input should be greater than 0"),
        (["--devices", "2", "--interval", "0s"], "sampling_interval: Input should be greater than or equal to 0.05"),
        (["--scenario", "no-such-scenario.toml"], "scenario file no-such-scenario.toml does not exist"),
    ],
)
def test_sim_run_names_a_bad_argument_before_looking_for_the_platform(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A student's typo in ``sim run`` was answered "no platform is running" when none ran: the run's own
    arguments are checked first, so the error names what was wrong."""
    out = iotctl("sim", "run", *args, "--state-dir", str(tmp_path / "empty"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert "no platform is running" not in out.stderr
