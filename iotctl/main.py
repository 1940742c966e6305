"""Root of ``iotctl``: sub-commands are imported only when invoked, so ``iotctl agent ...`` runs
on a Raspberry Pi with only the ``edge`` extra installed."""

from __future__ import annotations

import difflib
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
    "db": ("db", "Initialise databases; migrate the metadata schema (upgrade, current, downgrade)."),
    "bridge": ("bridge", "Run the ingest bridge (broker -> verification -> time-series store)."),
    "api": ("api", "Run the cloud REST API."),
    "sim": ("sim", "Simulate fleets of devices with faults, attacks and ground truth."),
    "anomalies": ("anomalies", "List anomaly alerts; evaluate detectors on labelled data."),
    "pki": ("pki", "A small offline CA: TLS certificates for the broker, API and devices."),
    "login": ("login", "Sign in to a cloud API; the session is kept in a profile for every command."),
    "logout": ("logout", "End a profile's session."),
    "whoami": ("whoami", "Show who is signed in, with role, permissions and classes."),
    "users": ("users", "Add, list, disable users; reset passwords; grants (admins)."),
    "keys": ("keys", "Create, list and revoke API keys for automation and CI."),
    "classes": ("classes", "Classes: create, members (students), quotas and usage."),
    "audit": ("audit", "Read the audit log (admins)."),
}


_OWN_PACKAGES = {"iotctl", "iot_protocol", "edge_agent", "broker_bridge", "cloud_core", "firmware_sim", "iot_testing"}


HELP_OPTIONS = ["-h", "--help"]


def _tidy(command: Any) -> None:
    """Help that reads the same everywhere: ``-h`` as well as ``--help``, and no shell-completion
    options on sub-commands (they are about the shell, not the command)."""
    command.context_settings = {**(command.context_settings or {}), "help_option_names": HELP_OPTIONS}
    command.params = [p for p in command.params if p.name not in ("install_completion", "show_completion")]
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


def _quiet_flags() -> None:
    """Recent typer prints a value type after every option, flags included (``--help <bool>``,
    ``--json <bool>``); a flag takes no value, so its help shows none."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None or getattr(shown, "_iotctl", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._iotctl = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


class LazyGroup(TyperGroup):
    """A group whose sub-commands are Typer apps imported on first use."""

    _listing = False  # while the root's help is drawn: stand-ins, no imports

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            close = difflib.get_close_matches(args[0], list(COMMANDS), n=2)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            ctx.fail(f"No such command {args[0]!r}.{hint} ('iotctl -h' lists them.)")
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        LazyGroup._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            LazyGroup._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        if LazyGroup._listing:  # the root's help lists one-liners: importing every command is slow
            return typer.core.TyperCommand(cmd_name, help=entry[1])
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
        _tidy(command)
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Listing help must not import every sub-command: use the static one-liners.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


app = typer.Typer(
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": HELP_OPTIONS},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("edu-platform")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        from edge_agent import FIRMWARE_VERSION
        from iot_protocol import VERSION

        typer.echo(f"iotctl (edu-platform) {v}; wire protocol v{VERSION}; agent firmware {FIRMWARE_VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Manage and run the edu-platform IoT fleet: devices, config, ingest, simulation, queries.

    Every command takes -h for its help. Start with 'iotctl up'.
    """


def main() -> None:
    """Console entry point: user errors print one line and exit non-zero; bugs keep their traceback."""
    _quiet_flags()
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
