"""A Mosquitto broker run as a child process from a generated config (embedded mode and test fixtures).

``MosquittoProcess`` renders ``mosquitto.conf`` into a data directory (listener, persistence, the
deliberate limits, optional dynamic security with an admin account), starts the Debian ``mosquitto``
binary in its own process group with stdout captured to ``mosquitto.log`` in that directory, and waits
until the broker really answers an MQTT CONNECT. ``stop()``/``start()``/``kill()``/``restart()`` keep the
same port and data directory, so state (retained messages, persistent sessions, dynsec accounts)
survives restarts and tests can simulate outages and crashes.

Errors::

    BrokerProcessError        root: the broker process could not be managed
    ├── BrokerBinaryMissing   the mosquitto binary or the dynamic security plugin is not installed
    └── BrokerStartError      the broker did not answer before the deadline (message has the log tail)

Root: when this process runs as root, the broker is started as the ``mosquitto`` user (Mosquitto would
drop to it anyway and then could not write a root-owned directory), and the data directory is chowned
to it. Children are asked to die with their parent (``PR_SET_PDEATHSIG``) and are also stopped at exit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_LIMITS",
    "BrokerBinaryMissing",
    "BrokerLimits",
    "BrokerProcessError",
    "BrokerStartError",
    "BrokerTls",
    "ChildProcess",
    "MosquittoProcess",
    "dies_with_this_process",
    "find_dynsec_plugin",
    "log_tail",
    "mqtt_connect_probe",
    "preexec_for",
    "stop_all_children",
    "wait_until",
    "write_dynsec_config",
]

DYNSEC_PLUGIN_NAME = "mosquitto_dynamic_security.so"


class BrokerProcessError(RuntimeError):
    """Root of the errors raised while managing a broker process."""


class BrokerBinaryMissing(BrokerProcessError):
    """The ``mosquitto`` binary or its dynamic security plugin is not installed."""


class BrokerStartError(BrokerProcessError):
    """The broker exited or did not answer before the deadline; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """Deliberate broker limits; Mosquitto's defaults silently drop QoS1 messages for slow subscribers.

    Attributes:
        max_queued_messages: QoS1/2 messages queued per client beyond those in flight (default 1000
            in Mosquitto: a subscriber that falls behind loses the rest, logged only as "Outgoing
            messages are being dropped"). Sized to hold a bridge outage of a school's fleet.
        max_queued_bytes: byte cap on the same queue (0 = no cap beyond the count).
        max_inflight_messages: unacknowledged QoS1/2 messages per client (default 20); higher keeps a
            fast subscriber's pipe full, the queue above holds the rest.
        max_packet_size: largest packet accepted, in bytes; a signed batch of 50 readings is ~10 KiB.
        set_tcp_nodelay: disable Nagle so small QoS1 PUBACKs and receipts are not delayed ~40 ms.
        autosave_interval: seconds between saves of the in-memory state to ``mosquitto.db``; a
            SIGKILL loses at most this much (end-to-end receipts cover the loss).
    """

    max_queued_messages: int = 100_000
    max_queued_bytes: int = 0
    max_inflight_messages: int = 100
    max_packet_size: int = 1_048_576
    set_tcp_nodelay: bool = True
    autosave_interval: int = 30


DEFAULT_LIMITS = BrokerLimits()


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """A TLS listener (MQTT over TLS 1.2+) next to the plain one, for devices.

    Attributes:
        port: its port (8883 by convention).
        host: its address (``0.0.0.0``: every interface).
        ca_file: the CA certificate; with ``require_certificate`` clients must present one it signed.
        cert_file: the server certificate (its names must be the ones devices connect to).
        key_file: its private key. The three files are copied into the data directory (``tls/``, mode
            0600, owned by the broker's user), so the originals may stay readable only by their owner.
        require_certificate: mTLS: refuse clients without a certificate from ``ca_file`` (they still log
            in with their user name and password).
        tls_version: the lowest TLS version accepted (Mosquitto takes tlsv1.2 as "1.2 or newer").
    """

    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    host: str = "0.0.0.0"
    require_certificate: bool = False
    tls_version: str = "tlsv1.2"


# --------------------------------------------------------------------------- child processes

_PR_SET_PDEATHSIG = 1
_LIVE_CHILDREN: set[ChildProcess] = set()  # strong refs: an unreferenced server is still stopped at exit
_LIVE_LOCK = threading.Lock()


def stop_all_children() -> None:
    """Stop every child this process started and has not stopped (run at interpreter exit)."""
    with _LIVE_LOCK:
        children = list(_LIVE_CHILDREN)
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate(timeout=5.0)


atexit.register(stop_all_children)


def preexec_for(
    run_as: pwd.struct_passwd | None, death_signal: int | None, parent_pid: int, umask: int | None = None
) -> Callable[[], None]:
    """A ``preexec_fn``: set ``umask``, become ``run_as`` (when given), then ask for ``death_signal`` if
    the parent dies."""

    def setup() -> None:
        if umask is not None:
            os.umask(umask)
        if run_as is not None:
            os.setgid(run_as.pw_gid)
            os.initgroups(run_as.pw_name, run_as.pw_gid)
            os.setuid(run_as.pw_uid)
        if death_signal is not None:
            # After setuid: a credential change clears the parent-death signal.
            with contextlib.suppress(Exception):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent_pid:  # parent already gone
                os.kill(os.getpid(), death_signal)

    return setup


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for a plain child (a benchmark's helper process): killed when this process dies,
    even by kill -9, so none is left loading the machine."""
    return preexec_for(None, signal.SIGKILL, os.getpid())


class ChildProcess:
    """One long-lived server child: own session, stdout+stderr appended to a log file, stopped at exit.

    Args:
        argv: command line.
        log_path: file the child's stdout and stderr are appended to.
        run_as: OS user name to run as (only when this process is root), or None.
        stop_signal: signal for a graceful stop (SIGTERM; PostgreSQL prefers SIGINT, "fast shutdown").
        die_with_parent: ask the kernel to send ``stop_signal`` if this process dies.
        cwd: working directory.
        env: extra environment variables.
        umask: the child's umask (None: inherited); 0o077 keeps every file it creates private.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        run_as: str | None = None,
        stop_signal: int = signal.SIGTERM,
        die_with_parent: bool = True,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        umask: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.umask = umask
        self.log_path = log_path
        self.run_as = run_as
        self.stop_signal = stop_signal
        self.die_with_parent = die_with_parent
        self.cwd = cwd
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def spawn(self) -> None:
        """Start the child (no readiness check: the owner polls its own protocol)."""
        if self.is_running:
            return
        user = pwd.getpwnam(self.run_as) if self.run_as and os.geteuid() == 0 else None
        env = {**os.environ, **self.env}
        log: IO[bytes]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec_for(
                    user, self.stop_signal if self.die_with_parent else None, os.getpid(), self.umask
                ),
            )
        with _LIVE_LOCK:
            _LIVE_CHILDREN.add(self)

    def terminate(self, timeout: float = 10.0) -> None:
        """Graceful stop with ``stop_signal``; SIGKILL the group if it has not exited by ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
        self._reap_group(proc)
        with _LIVE_LOCK:
            _LIVE_CHILDREN.discard(self)

    def kill(self) -> None:
        """SIGKILL the child and its process group (a crash: nothing is saved)."""
        proc = self._proc
        if proc is None:
            return
        self._kill_group(proc)
        with _LIVE_LOCK:
            _LIVE_CHILDREN.discard(self)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    @staticmethod
    def _reap_group(proc: subprocess.Popen[bytes]) -> None:
        # Helpers left in the session (e.g. PostgreSQL workers) go with the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def wait_until(
    ready: Callable[[], bool],
    *,
    child: ChildProcess,
    what: str,
    timeout: float,
    error: type[Exception] = BrokerStartError,
) -> None:
    """Poll ``ready`` until it is true; raise ``error`` with the log tail on exit or deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if not child.is_running:
            raise error(
                f"{what} exited with code {child.returncode} while starting; log {child.log_path}:\n"
                f"{log_tail(child.log_path)}"
            )
        with contextlib.suppress(OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            child.kill()
            raise error(f"{what} did not answer within {timeout:g}s; log {child.log_path}:\n{log_tail(child.log_path)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# --------------------------------------------------------------------------- MQTT probe


def _mqtt_str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def mqtt_connect_probe(
    host: str, port: int, *, username: str | None = None, password: str | None = None, timeout: float = 2.0
) -> int:
    """Send an MQTT 3.1.1 CONNECT and return the CONNACK return code (0 accepted, 4/5 refused).

    Raises:
        OSError: no connection, or the peer did not answer with a CONNACK.
    """
    flags = 0x02  # clean session
    payload = _mqtt_str(f"probe-{secrets.token_hex(4)}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_str(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_str(password)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    packet = bytes([0x10, len(body)]) + body  # body < 128 bytes for any sane probe
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(packet)
        reply = b""
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError("connection closed before CONNACK")
            reply += chunk
        if reply[0] != 0x20:
            raise ConnectionError(f"not a CONNACK: {reply!r}")
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return reply[3]


# --------------------------------------------------------------------------- dynamic security


def find_dynsec_plugin() -> Path:
    """Locate ``mosquitto_dynamic_security.so`` (env ``MOSQUITTO_DYNSEC_PLUGIN`` overrides).

    Raises:
        BrokerBinaryMissing: the plugin is not installed.
    """
    override = os.environ.get("MOSQUITTO_DYNSEC_PLUGIN")
    if override:
        if Path(override).is_file():
            return Path(override)
        raise BrokerBinaryMissing(f"MOSQUITTO_DYNSEC_PLUGIN={override} does not exist")
    patterns = [
        "/usr/lib/*/{n}",
        "/usr/lib/{n}",
        "/usr/lib/mosquitto/{n}",
        "/usr/lib64/{n}",
        "/usr/lib64/mosquitto/{n}",
        "/usr/local/lib/{n}",
        "/usr/local/lib/*/{n}",
        "/usr/local/lib/mosquitto/{n}",
        "/opt/homebrew/lib/{n}",
        "/opt/homebrew/opt/mosquitto/lib/{n}",
    ]
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary:
        prefix = Path(binary).resolve().parent.parent
        patterns += [str(prefix / "lib" / "{n}"), str(prefix / "lib" / "*" / "{n}")]
    for pattern in patterns:
        for hit in sorted(glob.glob(pattern.format(n=DYNSEC_PLUGIN_NAME))):
            return Path(hit)
    raise BrokerBinaryMissing(
        f"{DYNSEC_PLUGIN_NAME} not found (Debian/Ubuntu: apt-get install mosquitto; "
        "or set MOSQUITTO_DYNSEC_PLUGIN=/path/to/it)"
    )


def _admin_acls() -> list[dict[str, Any]]:
    acls = []
    for topic in ("$CONTROL/dynamic-security/#",):
        acls += [
            {"acltype": "publishClientSend", "topic": topic, "allow": True},
            {"acltype": "publishClientReceive", "topic": topic, "allow": True},
            {"acltype": "subscribePattern", "topic": topic, "allow": True},
        ]
    for topic in ("$SYS/#", "#"):
        acls += [
            {"acltype": "publishClientReceive", "topic": topic, "allow": True},
            {"acltype": "subscribePattern", "topic": topic, "allow": True},
        ]
    acls.append({"acltype": "unsubscribePattern", "topic": "#", "allow": True})
    return acls


def write_dynsec_config(path: Path, admin_username: str, admin_password: str) -> None:
    """Write a dynamic-security JSON with one admin, as ``mosquitto_ctrl dynsec init`` does.

    The admin may use the ``$CONTROL/dynamic-security/v1`` API and read everything, but not publish
    to ordinary topics; applications get their own clients and roles through that API.
    """
    salt = secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", admin_password.encode(), salt, iterations, 64)
    doc = {
        "clients": [
            {
                "username": admin_username,
                "textName": "Dynsec admin user",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": iterations,
                "roles": [{"rolename": "admin"}],
            }
        ],
        "roles": [{"rolename": "admin", "acls": _admin_acls()}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the broker


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if Path(candidate).is_file():
            return candidate
    raise BrokerBinaryMissing("mosquitto binary not found (Debian/Ubuntu: apt-get install mosquitto)")


def _reachable_by(user: pwd.struct_passwd, directory: Path) -> bool:
    """Whether ``user`` may traverse every directory down to and including ``directory``."""
    path = directory.resolve()
    for part in [path, *path.parents]:
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


class MosquittoProcess:
    """A Mosquitto child process owning one data directory; a context manager (start on enter).

    Args:
        data_dir: holds ``mosquitto.conf``, ``mosquitto.db``, ``mosquitto.log``, ``dynamic-security.json``
            and ``dynsec-admin.secret``; created if missing, reused as is across runs.
        host: listener address.
        port: listener port (kept across stop/start).
        allow_anonymous: accept connections without credentials (forced off with ``dynsec``).
        dynsec: load the dynamic security plugin; an admin account is created on first start.
        admin_username: the dynsec admin's name.
        admin_password: the dynsec admin's password; None: generated once and kept in
            ``dynsec-admin.secret`` (mode 0600) so a persistent data dir keeps working.
        limits: the deliberate limits written to the config.
        extra_conf: more ``key value`` lines for the config (e.g. ``{"persistent_client_expiration": "1d"}``).
        start_timeout: seconds to wait for the broker to answer a CONNECT.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        die_with_parent: the broker gets SIGTERM if this process dies (tests; embedded mode).
        binary: path of the mosquitto binary (default: found on PATH or in /usr/sbin).
        tls: also listen with TLS for devices (the plain listener stays on ``host``, for the cloud).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        allow_anonymous: bool = True,
        dynsec: bool = False,
        admin_username: str = "admin",
        admin_password: str | None = None,
        limits: BrokerLimits = DEFAULT_LIMITS,
        extra_conf: Mapping[str, object] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
        binary: str | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.tls = tls
        self.host = host
        self.port = port
        self.dynsec = dynsec
        self.allow_anonymous = allow_anonymous and not dynsec
        self.admin_username = admin_username
        self._admin_password = admin_password
        self.limits = limits
        self.extra_conf = dict(extra_conf or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self._binary = binary
        self._child: ChildProcess | None = None

    # -- paths and addresses
    @property
    def conf_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def dynsec_path(self) -> Path:
        return self.data_dir / "dynamic-security.json"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_dir(self) -> Path:
        """Where the TLS listener's files are copied (readable by the broker's user only)."""
        return self.data_dir / "tls"

    @property
    def admin_password(self) -> str:
        """The dynsec admin's password (generated and saved on first use when not given)."""
        if self._admin_password is None:
            secret = self.data_dir / "dynsec-admin.secret"
            if secret.exists():
                self._admin_password = secret.read_text().strip()
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._admin_password = secrets.token_urlsafe(18)
                fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(self._admin_password + "\n")
        return self._admin_password

    @property
    def is_running(self) -> bool:
        return self._child is not None and self._child.is_running

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    # -- config
    def render_config(self) -> str:
        """The mosquitto.conf text for this broker."""
        lim = self.limits
        lines = [
            "# Generated by cloud_core.broker.mosquitto_process; edits are overwritten on start.",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {_conf_value(self.allow_anonymous)}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {lim.autosave_interval}",
            f"max_queued_messages {lim.max_queued_messages}",
            f"max_queued_bytes {lim.max_queued_bytes}",
            f"max_inflight_messages {lim.max_inflight_messages}",
            f"max_packet_size {lim.max_packet_size}",
            f"set_tcp_nodelay {_conf_value(lim.set_tcp_nodelay)}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        run_as = self._run_as()
        if os.geteuid() == 0:
            lines.append(f"user {run_as or 'root'}")
        if self.dynsec:
            lines += [
                f"plugin {find_dynsec_plugin()}",
                f"plugin_opt_config_file {self.dynsec_path}",
            ]
        if self.tls is not None:
            t = self.tls
            lines += [
                f"listener {t.port} {t.host}",
                f"cafile {self.tls_dir / 'ca.crt'}",
                f"certfile {self.tls_dir / 'server.crt'}",
                f"keyfile {self.tls_dir / 'server.key'}",
                f"tls_version {t.tls_version}",
                f"require_certificate {_conf_value(t.require_certificate)}",
            ]
        lines += [f"{key} {_conf_value(value)}" for key, value in self.extra_conf.items()]
        return "\n".join(lines) + "\n"

    def _run_as(self) -> str | None:
        """``mosquitto`` when we are root and that user can reach the data dir, else None (as is)."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return None
        return "mosquitto" if _reachable_by(user, self.data_dir.parent) else None

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.dynsec and not self.dynsec_path.exists():
            write_dynsec_config(self.dynsec_path, self.admin_username, self.admin_password)
        self.conf_path.write_text(self.render_config())
        if self.tls is not None:
            self.tls_dir.mkdir(mode=0o700, exist_ok=True)
            for src, name in ((self.tls.ca_file, "ca.crt"), (self.tls.cert_file, "server.crt"),
                              (self.tls.key_file, "server.key")):  # fmt: skip
                dst = self.tls_dir / name
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(Path(src).read_bytes())
        run_as = self._run_as()
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            tls_files = [*self.tls_dir.iterdir()] if self.tls_dir.exists() else []
            for path in [self.data_dir, *self.data_dir.iterdir(), *tls_files]:
                if path.name == "dynsec-admin.secret":
                    continue
                with contextlib.suppress(OSError):
                    os.chown(path, user.pw_uid, user.pw_gid)

    # -- lifecycle
    def start(self) -> None:
        """Start the broker and wait until it answers a CONNECT.

        Raises:
            BrokerBinaryMissing: mosquitto (or the dynsec plugin) is not installed.
            BrokerStartError: it exited or did not answer within ``start_timeout``.
        """
        if self.is_running:
            return
        binary = self._binary or _find_mosquitto()
        self._prepare()
        child = ChildProcess(
            [binary, "-c", str(self.conf_path)],
            log_path=self.log_path,
            run_as=self._run_as(),
            die_with_parent=self.die_with_parent,
            cwd=self.data_dir,
            umask=0o077,  # dynamic-security.json (rewritten on every change) and mosquitto.db stay 0600
        )
        self._child = child
        child.spawn()
        wait_until(
            lambda: mqtt_connect_probe(self.host, self.port, timeout=1.0) >= 0,
            child=child,
            what=f"mosquitto on {self.host}:{self.port}",
            timeout=self.start_timeout,
        )
        if self.dynsec:
            code = mqtt_connect_probe(self.host, self.port, username=self.admin_username, password=self.admin_password)
            if code != 0:
                self.stop()
                raise BrokerStartError(
                    f"mosquitto refused the dynsec admin {self.admin_username!r} (CONNACK {code}): "
                    f"{self.dynsec_path} was created with another password; pass that one, or delete "
                    "the file to start over with a fresh admin"
                )

    def stop(self) -> None:
        """SIGTERM and wait (Mosquitto saves its state on the way out); SIGKILL after ``stop_timeout``."""
        if self._child is not None:
            self._child.terminate(self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; anything since the last autosave is lost."""
        if self._child is not None:
            self._child.kill()

    def restart(self) -> None:
        """Graceful stop then start, same port and data directory."""
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MosquittoProcess({self.url}, data_dir={str(self.data_dir)!r}, running={self.is_running})"
