"""``iotctl agent``: enroll this device, run the edge agent, show its buffer and counters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from iotctl.errors import CliError

app = typer.Typer(no_args_is_help=True, help="Run the edge agent on a device, or enroll it.")

_DEFAULT_DIR = Path("/var/lib/edu-agent/identity")


@app.command()
def enroll(
    api: str = typer.Option(..., "--api", help="Cloud API base URL, e.g. https://iot.school.example"),
    token: str = typer.Option(..., "--token", help="One-time enrollment token from `iotctl devices register`."),
    dir: Path = typer.Option(_DEFAULT_DIR, "--dir", help="Identity directory (key and credentials, mode 0600)."),
    ca: Path | None = typer.Option(
        None, "--ca", help="CA certificate that verifies an https:// API (default: the system's trusted CAs)."
    ),
) -> None:
    """Generate this device's key pair, enroll it with a one-time token, store the credentials (and the
    broker's CA, which the agent then trusts alone)."""
    from edge_agent.errors import AgentError
    from edge_agent.identity import enroll as do_enroll

    try:
        ident = do_enroll(api, token, dir, ca_file=ca)
    except AgentError as exc:
        raise CliError(str(exc)) from None
    pinned = f"; broker CA pinned in {ident.ca_file}" if ident.ca_file else ""
    typer.echo(f"enrolled as {ident.device_id} (key version {ident.key_version}); identity in {dir}{pinned}")


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="Agent TOML file (docs/agent.md shows one)."),
) -> None:
    """Run the agent until SIGTERM/SIGINT (what the systemd unit starts).

    The settings are checked first (errors as one line); then the agent replaces this process (same
    pid, a small footprint). It picks up a new identity (after 'iotctl agent enroll' into its identity
    dir) without a restart; SIGHUP makes it look at once.
    """
    from edge_agent.config import load_settings
    from edge_agent.errors import AgentError
    from edge_agent.identity import load_identity

    try:
        load_identity(load_settings(config).identity_dir)
    except AgentError as exc:
        raise CliError(str(exc)) from None
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", "2")  # fewer glibc arenas for the agent's threads: less RSS
    argv = [sys.executable, "-m", "edge_agent.agent", "--config", str(config)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


@app.command()
def status(config: Path = typer.Option(..., "--config", "-c", help="Agent TOML file.")) -> None:
    """Show the buffer's depth and the persisted counters (works while the agent runs)."""
    from edge_agent.agent import status_lines
    from edge_agent.errors import AgentError

    try:
        rows = list(status_lines(config))
    except AgentError as exc:
        raise CliError(str(exc)) from None
    for name, value in rows:
        typer.echo(f"{name:<20} {value}")


@app.command("ota-init")
def ota_init(
    ota_dir: Path = typer.Option(..., "--ota-dir", help="Where the A/B slots go, e.g. /var/lib/edu-agent/ota."),
    version: str | None = typer.Option(None, "--version", help="Version of the installed code (default: its own)."),
) -> None:
    """Prepare A/B firmware updates: slot a = the installed agent code, current -> slots/a, boot.py.
    Then set ota_dir in agent.toml and start the agent through boot.py (edge_agent/edu-agent-ota.service)."""
    from edge_agent.ota_build import init_layout

    try:
        layout = init_layout(ota_dir, version=version)
    except (OSError, RuntimeError) as exc:
        raise CliError(f"cannot set up {ota_dir}: {exc}") from None
    typer.echo(f"A/B layout ready in {ota_dir}: slot a = {layout.slot_version('a')}, current -> slots/a")
    typer.echo(f"run the agent with: {sys.executable} {ota_dir / 'boot.py'} --ota-dir {ota_dir} --config AGENT.toml")
