"""Root of ``iotctl``: sub-commands are imported only when invoked, so ``iotctl agent ...`` runs
on a Raspberry Pi with only the ``edge`` extra installed."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from .errors import CliError

# name -> (module under iotctl.commands, one-line help). Each module defines ``app = typer.Typer()``.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "Run the whole platform on this machine (embedded defaults, or real servers by URL)."),
    "agent": ("agent", "Run the edge agent on a device, or enroll it."),
    "devices": ("devices", "Register, list, deactivate and rotate devices; loss ledger."),
    "config": ("config", "Set and show devices' desired configuration."),
    "rollout": ("rollout", "Staged rollouts of config or firmware with health gates and automatic rollback."),
    "release": ("release", "Firmware releases: sign a manifest, upload an artifact, list."),
    "query": ("query", "Read stored readings back as a table, CSV or JSON."),
    "db": ("db", "Initialise databases: metadata tables, InfluxDB retention and downsampling."),
    "bridge": ("bridge", "Run the ingest bridge (broker -> verification -> time-series store)."),
    "api": ("api", "Run the cloud REST API."),
    "sim": ("sim", "Simulate fleets of devices with faults, attacks and ground truth."),
    "anomalies": ("anomalies", "List anomaly alerts; evaluate detectors on labelled data."),
}


_OWN_PACKAGES = {"iotctl", "iot_protocol", "edge_agent", "broker_bridge", "cloud_core", "firmware_sim", "iot_testing"}


class LazyGroup(TyperGroup):
    """A group whose sub-commands are Typer apps imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        try:
            module = importlib.import_module(f"iotctl.commands.{entry[0]}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("iotctl"):
                raise
            raise CliError(
                f"'iotctl {cmd_name}' needs the Python package {exc.name!r}, which is not installed: "
                "pip install 'edu-platform[all]'"
            ) from None
        command = typer.main.get_command(module.app)
        command.help = command.help or entry[1]
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Listing help must not import every sub-command: use the static one-liners.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@app.callback()
def _root() -> None:
    """Manage and run the edu-platform IoT fleet: devices, config, ingest, simulation, queries."""


def main() -> None:
    """Console entry point: user errors print one line and exit non-zero; bugs keep their traceback."""
    try:
        app(prog_name="iotctl")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        # A command imported a package this install lacks (e.g. a cloud command on an edge-only
        # Raspberry Pi). Our own modules missing would be a packaging bug: keep that traceback.
        if not exc.name or exc.name.split(".")[0] in _OWN_PACKAGES:
            raise
        print(
            f"error: this command needs the Python package {exc.name!r}, which is not installed: "
            "pip install 'edu-platform[all]'",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
