"""Real servers for tests: Mosquitto, PostgreSQL, Redis and InfluxDB on free loopback ports in temp dirs.

Each server is a context manager that starts the Debian binary on ``127.0.0.1:<free port>`` in its own
temp dir, waits until it really answers its protocol (bounded deadline; the error carries the server's
log tail), and stops it on exit. ``stop()``/``start()``/``restart()`` (graceful) and ``kill()`` (SIGKILL)
keep the same port and data dir, so tests can simulate outages and crashes; ``close()`` stops the server
and deletes its temp dir. Children run in their own process group, die with the test process
(``PR_SET_PDEATHSIG``) and are stopped at interpreter exit. Stdlib only.

Errors::

    ServerError             root
    ├── ServerBinaryMissing the server's binary is not installed (message names the Debian package)
    └── ServerStartError    the server exited or did not answer in time (message has the log tail)
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_core.broker.mosquitto_process import (
    DEFAULT_LIMITS,
    BrokerBinaryMissing,
    BrokerLimits,
    BrokerStartError,
    BrokerTls,
    ChildProcess,
    MosquittoProcess,
    log_tail,
    preexec_for,
    stop_all_children,
    wait_until,
)

__all__ = [
    "InfluxServer",
    "MosquittoServer",
    "PostgresServer",
    "RedisServer",
    "ServerBinaryMissing",
    "ServerError",
    "ServerStartError",
    "find_binary",
    "free_port",
    "soak_scale",
    "unique_name",
]

_PORT_RETRIES = 3


def _port_taken(log_text: str) -> bool:
    return "already in use" in log_text.lower()


class ServerError(RuntimeError):
    """Root of the errors raised by the test servers."""


class ServerBinaryMissing(ServerError):
    """The server's binary is not installed; the message names the Debian package to install."""


class ServerStartError(ServerError):
    """The server exited or did not answer before its deadline; the message has its log tail."""


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the servers retry if it is taken meanwhile).

    Chosen below the kernel's ephemeral range, so no outgoing connection of another test (or test
    worker) takes it in the meantime: a test that restarts a server on the same port (``iotctl up``
    keeps its ports) would otherwise find it held by some client now and then.
    """
    high = min(_ephemeral_low(), 65536)
    low = 10_000 if high > 11_000 else 1024
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: let the kernel pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_SOAK_WORDS = {"ci": 1.0, "full": 10.0}


def soak_scale(default: float = 1.0) -> float:
    """The ``SOAK_SCALE`` multiplier for soak tests: a number, or ``ci`` (1, bounded) / ``full`` (10).

    Raises:
        ValueError: SOAK_SCALE is neither a positive number nor one of those words.
    """
    raw = os.environ.get("SOAK_SCALE", "").strip().lower()
    if not raw:
        return default
    if raw in _SOAK_WORDS:
        return _SOAK_WORDS[raw]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"SOAK_SCALE must be a positive number, 'ci' or 'full', got {raw!r}")
    return value


def unique_name(prefix: str = "t") -> str:
    """A short unique identifier usable as a database name or topic segment: ``prefix_<12 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def find_binary(name: str, package: str, extra_dirs: Sequence[str] = ()) -> str:
    """The path of a server or client binary: on PATH, else in the sbin/bin directories a non-root PATH
    lacks (Debian puts ``mosquitto`` in /usr/sbin).

    Raises:
        ServerBinaryMissing: not installed (the message names the Debian package).
    """
    return _which(name, package, extra_dirs)


def _which(name: str, package: str, extra_dirs: Sequence[str] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in (*extra_dirs, "/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise ServerBinaryMissing(
        f"{name} not found: install the Debian package '{package}' (apt-get install -y {package})"
    )


_OWNER_FILE = ".owner-pid"


def _sweep_stale_roots() -> None:
    """Delete temp dirs left by test processes that were killed before they could clean up."""
    for path in Path(tempfile.gettempdir()).glob("iot-testing-*"):
        try:
            pid = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


_OPEN_ROOTS: set[Path] = set()


@atexit.register
def _cleanup_at_exit() -> None:
    """Stop every child still running, then delete the temp dirs nobody closed."""
    stop_all_children()
    for root in list(_OPEN_ROOTS):
        shutil.rmtree(root, ignore_errors=True)


def _make_root(kind: str, owner: str | None = None) -> Path:
    _sweep_stale_roots()
    root = Path(tempfile.mkdtemp(prefix=f"iot-testing-{kind}-"))
    _OPEN_ROOTS.add(root)
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    # World-traversable so a server running as its own OS user (mosquitto, postgres) can reach it.
    os.chmod(root, 0o755)
    if owner is not None and os.geteuid() == 0:
        user = pwd.getpwnam(owner)
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


class _Lifecycle:
    """What every test server does the same way, given ``start``/``stop``, ``root`` and ``log_path``:
    restart, close (stop and delete the temp dir), the log tail, and use as a context manager."""

    root: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Graceful stop, then start on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temp dir."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            _OPEN_ROOTS.discard(self.root)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(_Lifecycle):
    """Shared lifecycle: a temp dir, one child, graceful/crash stops, and port retry on first start."""

    kind = "server"
    stop_signal = signal.SIGTERM
    run_as: str | None = None
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self) -> None:
        self.root = _make_root(self.kind, self.run_as if os.geteuid() == 0 else None)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._child: ChildProcess | None = None
        self._started_once = False

    # Subclasses implement these.
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time setup before the first start (write config, initdb)."""

    def _repick_ports(self) -> None:
        self.port = free_port()

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.kind}.log"

    @property
    def is_running(self) -> bool:
        return self._child is not None and self._child.is_running

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        """Start (or start again after stop/kill) and wait until the server answers.

        Raises:
            ServerBinaryMissing: the binary is not installed.
            ServerStartError: it exited or did not answer within ``start_timeout``.
        """
        if self.is_running:
            return
        if not self._started_once:
            self._prepare()
        for attempt in range(_PORT_RETRIES):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._child = ChildProcess(
                self._argv(),
                log_path=self.log_path,
                run_as=self.run_as,
                stop_signal=self.stop_signal,
                cwd=self.root,
            )
            try:
                self._child.spawn()
                wait_until(
                    self._ready,
                    child=self._child,
                    what=f"{self.kind} on {self.host}:{self.port}",
                    timeout=self.start_timeout,
                    error=ServerStartError,
                )
            except ServerStartError:
                fresh = self.log_path.read_text(errors="replace")[offset:] if self.log_path.exists() else ""
                if not self._started_once and _port_taken(fresh) and attempt + 1 < _PORT_RETRIES:
                    self._repick_ports()
                    self._on_ports_changed()
                    continue
                raise
            self._started_once = True
            return

    def _on_ports_changed(self) -> None:
        """Rewrite whatever config names the ports."""

    def stop(self) -> None:
        """Graceful stop; the data dir and port are kept for ``start()``."""
        if self._child is not None:
            self._child.terminate(self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self._child is not None:
            self._child.kill()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.host}:{self.port}, running={self.is_running}, root={str(self.root)!r})"


# --------------------------------------------------------------------------- Mosquitto


class MosquittoServer(_Lifecycle):
    """A private Mosquitto (``cloud_core.broker.MosquittoProcess``) on a free port in a temp dir.

    Args:
        dynsec: enable dynamic security (anonymous access off; ``admin_username``/``admin_password``).
        allow_anonymous: accept connections without credentials (ignored with ``dynsec``).
        limits: broker limits; fields may also be given as keyword args (``max_queued_messages=10``).
        start_timeout: seconds to wait for the broker to answer.
        tls: also serve MQTT over TLS with these files (its ``port`` 0: a free port); see ``tls_url``.
        **conf: further ``mosquitto.conf`` lines (``persistent_client_expiration="1h"``); keys named like
            a ``BrokerLimits`` field (``autosave_interval=1``) replace that limit instead.
    """

    def __init__(
        self,
        *,
        dynsec: bool = False,
        allow_anonymous: bool = True,
        limits: BrokerLimits = DEFAULT_LIMITS,
        admin_username: str = "admin",
        admin_password: str | None = None,
        start_timeout: float = 10.0,
        tls: BrokerTls | None = None,
        **conf: object,
    ) -> None:
        fields = {f.name for f in dataclasses.fields(BrokerLimits)}
        if tls is not None and not tls.port:
            tls = dataclasses.replace(tls, port=free_port(), host="127.0.0.1")
        limit_kw = {k: v for k, v in conf.items() if k in fields}
        extra = {k: v for k, v in conf.items() if k not in fields}
        self.root = _make_root("mosquitto")
        self.process = MosquittoProcess(
            self.root / "data",
            port=free_port(),
            dynsec=dynsec,
            allow_anonymous=allow_anonymous,
            admin_username=admin_username,
            admin_password=admin_password or uuid.uuid4().hex,
            limits=dataclasses.replace(limits, **limit_kw),  # type: ignore[arg-type]
            extra_conf=extra,
            start_timeout=start_timeout,
            tls=tls,
        )
        self._started_once = False

    host = property(lambda self: self.process.host)
    port = property(lambda self: self.process.port)
    url = property(lambda self: self.process.url)
    dynsec = property(lambda self: self.process.dynsec)
    admin_username = property(lambda self: self.process.admin_username)
    admin_password = property(lambda self: self.process.admin_password)
    data_dir = property(lambda self: self.process.data_dir)
    log_path = property(lambda self: self.process.log_path)
    conf_path = property(lambda self: self.process.conf_path)
    is_running = property(lambda self: self.process.is_running)
    pid = property(lambda self: self.process.pid)

    @property
    def tls_port(self) -> int:
        assert self.process.tls is not None, "started without tls="
        return self.process.tls.port

    def tls_url(self, host: str = "127.0.0.1") -> str:
        """``mqtts://<host>:<tls port>`` (pass another name to test certificate name checks)."""
        return f"mqtts://{host}:{self.tls_port}"

    def start(self) -> None:
        """Start (again) and wait until it answers a CONNECT. Raises ServerBinaryMissing/ServerStartError."""
        for attempt in range(_PORT_RETRIES):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self.process.start()
            except BrokerBinaryMissing as exc:
                raise ServerBinaryMissing(f"{exc} (Debian package 'mosquitto')") from exc
            except BrokerStartError as exc:
                fresh = self.log_path.read_text(errors="replace")[offset:] if self.log_path.exists() else ""
                if not self._started_once and _port_taken(fresh) and attempt + 1 < _PORT_RETRIES:
                    self.process.port = free_port()
                    if self.process.tls is not None:
                        self.process.tls = dataclasses.replace(self.process.tls, port=free_port())
                    continue
                raise ServerStartError(str(exc)) from exc
            self._started_once = True
            return

    def stop(self) -> None:
        """SIGTERM and wait; Mosquitto saves its state (retained, sessions, queued QoS1) on the way out."""
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL: anything since the last autosave is lost."""
        self.process.kill()

    def __repr__(self) -> str:
        return f"MosquittoServer({self.url}, dynsec={self.dynsec}, running={self.is_running})"


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)

    def version(path: str) -> tuple[int, ...]:
        nums = re.findall(r"\d+", Path(path).parent.name)
        return tuple(int(n) for n in nums)

    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for directory in dirs:
        if (Path(directory) / "postgres").is_file():
            return Path(directory)
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise ServerBinaryMissing(
        "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install the Debian package "
        "'postgresql' (apt-get install -y postgresql), or set PG_BINDIR"
    )


class PostgresServer(_Server):
    """PostgreSQL on a free port; initdb'd once in a temp dir; superuser ``postgres``, trust auth.

    Runs as the ``postgres`` OS user when the test process is root (initdb refuses root). Durability is
    traded for speed (``fsync=off``): a graceful restart keeps the data, and so does ``kill()`` (the OS
    still holds the unsynced pages); only a machine crash would lose it.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast shutdown": roll back open transactions, exit promptly
    start_timeout = 60.0

    def __init__(self, *, max_connections: int = 200) -> None:
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.bindir = _pg_bindir()
        self.max_connections = max_connections
        super().__init__()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.user = "postgres"

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = pwd.getpwnam(self.run_as) if self.run_as else None
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=check,
            cwd=self.root,
            timeout=120,
            preexec_fn=preexec_for(user, None, os.getpid()) if user else None,
            env={**os.environ, "LC_ALL": "C.UTF-8", "PGCONNECT_TIMEOUT": "5"},
        )

    def _prepare(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise ServerStartError(f"initdb failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}") from exc

    def _argv(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            f"max_connections={self.max_connections}",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "log_min_messages=warning",
        ]

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with ``psql`` and return its unaligned output.

        Raises:
            ServerError: psql failed (message has its stderr).
        """
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (default: a unique name) and return its URL."""
        name = name or unique_name("test")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- Redis


def _resp(*args: str | bytes) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class RedisServer(_Server):
    """redis-server on a free port. ``appendonly=True`` makes data survive ``kill()``/``restart()``."""

    kind = "redis"

    def __init__(self, *, appendonly: bool = False) -> None:
        self.binary = _which("redis-server", "redis-server")
        self.appendonly = appendonly
        super().__init__()

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.root),
            "--daemonize",
            "no",
            "--databases",
            "16",
            "--loglevel",
            "notice",
        ]
        if self.appendonly:
            argv += ["--appendfsync", "always"]
        return argv

    def command(self, *args: str | bytes) -> bytes:
        """Send one command and return the raw first reply line (e.g. ``b"+PONG"``).

        Raises:
            OSError: no connection.
        """
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.sendall(_resp(*args))
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]

    def _ready(self) -> bool:
        return self.command("PING") == b"+PONG"

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise ServerError(f"FLUSHALL failed: {reply!r}")


# --------------------------------------------------------------------------- InfluxDB 1.x


class InfluxServer(_Server):
    """influxd 1.x on a free HTTP port (and a free RPC port), meta/data/wal in a temp dir, auth off."""

    kind = "influxdb"
    start_timeout = 60.0

    def __init__(self) -> None:
        self.binary = _which("influxd", "influxdb")
        super().__init__()
        self.rpc_port = free_port()
        self.config_path = self.root / "influxdb.conf"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, database: str) -> str:
        """The ``influxdb://host:port/db`` URL the time-series seam takes."""
        return f"influxdb://{self.host}:{self.port}/{database}"

    def _repick_ports(self) -> None:
        self.port = free_port()
        self.rpc_port = free_port()

    def _on_ports_changed(self) -> None:
        self._write_config()

    def _write_config(self) -> None:
        root = self.root
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true
  check-interval = "30m"

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = true
  log-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
  write-tracing = false

[logging]
  level = "warn"
"""
        )

    def _prepare(self) -> None:
        self._write_config()

    def _argv(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/ping", timeout=1.0) as resp:
                return int(resp.status) == 204
        except urllib.error.URLError:
            return False

    def query(self, q: str, database: str | None = None, *, method: str = "POST") -> dict[str, Any]:
        """Run InfluxQL over HTTP and return the decoded JSON.

        Raises:
            ServerError: a non-2xx answer or an error inside the result.
        """
        params: dict[str, str] = {"q": q}
        if database:
            params["db"] = database
        data = urllib.parse.urlencode(params).encode()
        if method == "GET":
            req = urllib.request.Request(f"{self.http_url}/query?{data.decode()}")
        else:
            req = urllib.request.Request(f"{self.http_url}/query", data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ServerError(f"influx query {q!r} failed: {exc.code} {exc.read()[:300]!r}") from exc
        for result in doc.get("results", []):
            if "error" in result:
                raise ServerError(f"influx query {q!r} failed: {result['error']}")
        return doc

    def write(self, database: str, lines: str | bytes, *, precision: str = "ms") -> None:
        """POST line protocol to ``/write``. Raises ServerError on a non-204 answer."""
        body = lines.encode() if isinstance(lines, str) else lines
        qs = urllib.parse.urlencode({"db": database, "precision": precision})
        req = urllib.request.Request(f"{self.http_url}/write?{qs}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                if int(resp.status) != 204:
                    raise ServerError(f"influx write answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise ServerError(f"influx write failed: {exc.code} {exc.read()[:300]!r}") from exc

    def create_database(self, name: str | None = None) -> str:
        """Create a database (default: a unique name) and return its ``influxdb://`` URL."""
        name = name or unique_name("test")
        self.query(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')
