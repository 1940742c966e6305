"""Where ``iotctl up`` listens and what it tells devices: the bind address, the advertised host, the
ports it keeps across restarts of one state directory, and who holds a port it cannot take.

Three addresses matter and are kept apart:

- the **bind** address the API and the broker listen on (``127.0.0.1`` by default; ``0.0.0.0`` for the
  whole LAN);
- the **internal** host the platform's own parts use to reach the broker and the API (loopback when the
  bind covers it);
- the **advertised** host put into the URLs that enrollment hands devices and that the CLI prints, one
  a device on the network can reach.

An :class:`Endpoint` carries its scheme, so the TLS listeners of the deployment work (``mqtts://``,
``https://``) change :attr:`Endpoint.scheme`, not the callers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Endpoint",
    "PortInUse",
    "PortPlan",
    "advertised_host",
    "any_free_port",
    "can_bind",
    "internal_host",
    "is_wildcard",
    "port_free",
    "port_holder",
    "primary_address",
]

PORTS_FILE = "ports.json"


class PortInUse(Exception):
    """A port the platform must use is held by another process; the message names it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``scheme://host:port``; IPv6 hosts get their brackets."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_wildcard(bind: str) -> bool:
    return bind in ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def internal_host(bind: str) -> str:
    """The host the platform's own parts connect to: loopback when the bind covers it."""
    if is_wildcard(bind):
        return "::1" if bind == "::" else "127.0.0.1"
    return bind


def primary_address() -> str | None:
    """This machine's address on its default route (what a LAN peer most likely reaches), or None.

    A UDP "connect" sends nothing; it only makes the kernel choose the source address of the route.
    """
    for family, probe in ((socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET6, ("2001:db8::1", 9))):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(probe)
            addr = str(s.getsockname()[0])
            if not _is_loopback(addr):
                return addr
    return None


def advertised_host(bind: str, advertise: str | None) -> str:
    """The host devices are told: ``advertise`` when given; the bind address when it is one address;
    for a wildcard bind, this machine's primary address (loopback when it has none)."""
    if advertise:
        return advertise
    if not is_wildcard(bind):
        return bind
    return primary_address() or "127.0.0.1"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def can_bind(host: str) -> bool:
    """Whether ``host`` is an address of this machine (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def any_free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def port_holder(port: int) -> str:
    """Who listens on TCP ``port``: ``"mosquitto (pid 812)"``, or ``"another process"`` when this
    user may not see it (Linux /proc; elsewhere always the latter)."""
    inodes = _listening_inodes(port)
    if inodes:
        wanted = {f"socket:[{i}]" for i in inodes}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                            comm = Path(f"/proc/{pid}/comm").read_text().strip()
                            return f"{comm} (pid {pid})"
    return "another process"


@dataclass
class PortPlan:
    """The ports of one state directory, remembered in ``<state dir>/ports.json`` so that a restart
    listens where enrolled devices were told to connect.

    Per port: an explicitly given number is used (0: any free port); otherwise the remembered one;
    on the first start the conventional default when it is free, else any free port. A port that
    must be used and is taken raises :class:`PortInUse` naming its holder: silently moving would
    strand every device enrolled with the old URL.
    """

    state_dir: Path
    bind: str

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads((self.state_dir / PORTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}

    def choose(self, name: str, *, given: int | None, default: int, option: str) -> int:
        """The port for ``name`` (``mqtt``, ``api``). Raises PortInUse."""
        host = "0.0.0.0" if is_wildcard(self.bind) else self.bind
        remembered = self._load().get(name)
        if given is not None:
            if given == 0:
                return any_free_port(host)
            if not port_free(given, host):
                raise PortInUse(f"port {given} ({option}) is held by {port_holder(given)}: stop it, or give another")
            return given
        if remembered:
            if not port_free(remembered, host):
                raise PortInUse(
                    f"port {remembered}, this state dir's {name} port (see {self.state_dir / PORTS_FILE}), is held "
                    f"by {port_holder(remembered)}: stop it, or give {option} another port (devices enrolled with "
                    "this one must then be enrolled again)"
                )
            return remembered
        return default if port_free(default, host) else any_free_port(host)

    def remember(self, **ports: int) -> None:
        path = self.state_dir / PORTS_FILE
        data = {**self._load(), **ports}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
