"""Test helpers for the whole platform as a user runs it: ``iotctl up`` as a child process, and a
network namespace standing in for a second machine on the LAN.

``UpProcess`` starts ``iotctl up --no-view`` on a state directory, waits until the platform announces
itself in the state dir's lock (every part running), keeps its stderr, and stops it with SIGINT (what
Ctrl-C sends). ``NetNamespace`` creates a namespace joined to this one by a veth pair, so a process
run in it reaches this machine only through a non-loopback address, as a Raspberry Pi would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["IOTCTL", "NetNamespace", "NetNamespaceUnavailable", "UpProcess", "iotctl"]

IOTCTL = str(Path(sys.executable).with_name("iotctl"))


def iotctl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``iotctl ARGS`` (this environment's), capture its output; never raises on a non-zero exit."""
    return subprocess.run(
        [IOTCTL, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


class UpProcess:
    """``iotctl up --state-dir DIR --no-view ARGS`` as a child process (a context manager)."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.platform: Any = None  # the RunningPlatform of the last start

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def start(self, timeout: float = 120) -> Any:
        """Start and wait until the platform runs; returns its ``iotctl.statedir.RunningPlatform``.

        Raises:
            AssertionError: it exited (with its output) or did not come up within ``timeout``.
        """
        from iotctl.statedir import find_platform

        self._lines = []
        self.proc = subprocess.Popen(
            [IOTCTL, "up", "--state-dir", str(self.state_dir), "--no-view", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        stream = self.proc.stderr
        assert stream is not None
        self._reader = threading.Thread(target=lambda: self._lines.extend(iter(stream.readline, "")), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"iotctl up exited with {self.proc.returncode}:\n{self.stderr}")
            found = find_platform(self.state_dir)
            # running, and its banner read (it is printed just after the lock announces the platform)
            if found is not None and found.pid == self.proc.pid and "  in another terminal: " in self.stderr:
                self.platform = found
                return found
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"iotctl up did not come up within {timeout:g}s:\n{self.stderr}")

    def stop(self, timeout: float = 90) -> int:
        """SIGINT (Ctrl-C) and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"iotctl up did not stop within {timeout:g}s:\n{self.stderr}") from None
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> UpProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


class NetNamespaceUnavailable(Exception):
    """This machine cannot make a network namespace (not root, no iproute2, no CAP_NET_ADMIN)."""


class NetNamespace:
    """A network namespace joined to this one by a veth pair: this side ``host_ip``, the namespace's
    side ``ns_ip`` (a /30 in 10.200.0.0/16 picked at random). Removed on exit, even after a failure.

    Raises:
        NetNamespaceUnavailable: on ``__enter__``, when it cannot be made here.
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"edu-{tag}"
        self.host_if, self.ns_if = f"eh{tag}", f"en{tag}"
        block = secrets.randbelow(16384) * 4  # a /30 inside 10.200.0.0/16
        self.host_ip = f"10.200.{block // 256}.{block % 256 + 1}"
        self.ns_ip = f"10.200.{block // 256}.{block % 256 + 2}"

    def _ip(self, *args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise NetNamespaceUnavailable(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")

    def __enter__(self) -> NetNamespace:
        try:
            self._ip("netns", "add", self.name)
        except (NetNamespaceUnavailable, OSError) as exc:
            raise NetNamespaceUnavailable(str(exc)) from None
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._ip("link", "set", self.ns_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self._ip("-n", self.name, "link", "set", self.ns_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def __exit__(self, *exc: object) -> None:
        for args in (("link", "del", self.host_if), ("netns", "del", self.name)):
            with contextlib.suppress(NetNamespaceUnavailable, OSError):
                self._ip(*args)
