"""Day one on a real network, as a class runs it: ``iotctl up`` next to the README's ``iotctl sim run``,
one ``iotctl up`` per state dir, an agent enrolled from another network namespace surviving a restart
of ``up``, stable ports, a new identity taken up without restarting the agent, a ledger that stays
balanced while a device runs, and a live view that counts every device and batches by outcome."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from cloud_core.core.db import make_engine
from cloud_core.models import BatchLedger, RejectedMessage
from cloud_core.tsdb import open_tsdb
from edge_agent.buffer import Buffer
from edge_agent.identity import load_identity
from iot_protocol import Reading
from iot_testing import free_port, wait_for
from iot_testing.up import IOTCTL, NetNamespace, NetNamespaceUnavailable, UpProcess, iotctl
from iotctl.network import primary_address
from iotctl.platform import Platform, PlatformSettings

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"
SIM_LINE = "iotctl sim run --devices 20 --speed 60 --duration 10m"


def _up_args(*extra: str) -> tuple[str, ...]:
    # Explicit free ports: 1883 and 8080 belong to whoever else runs on this machine.
    return ("--mqtt-port", str(free_port()), "--api-port", str(free_port()), *extra)


def _count(state: Path, device_prefix: str) -> int:
    store = open_tsdb(f"sqlite:///{state / 'readings.db'}")
    try:
        rows = store.query(device_id=None, fields=["quality_score"], start_ms=0, end_ms=2**62)
    finally:
        store.close()
    return sum(1 for r in rows if r.device_id.startswith(device_prefix))


def _dead_letters(state: Path) -> list[tuple[str | None, str]]:
    engine = make_engine(f"sqlite:///{state / 'meta.db'}")
    try:
        with Session(engine) as s:
            return [(m.device_id, m.reason) for m in s.exec(select(RejectedMessage)).all()]
    finally:
        engine.dispose()


def _devices(state: Path) -> dict[str, str]:
    out = iotctl("devices", "list", "--json", "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    return {d["id"]: d["state"] for d in json.loads(out.stdout)}


# ------------------------------------------------------------------------------------------ defect 1, 2
def test_readme_sim_run_next_to_iotctl_up_stores_every_reading(tmp_path: Path) -> None:
    """The README's student command next to a running ``iotctl up``: it used to take over up's own
    device ids (up's devices refused for the rest of the run) and, at speed 60, stamp readings up to
    10 min in the future (rejected). Now: every simulated reading stored, none rejected, up's devices
    online and still storing, and the summary says where the data is."""
    assert SIM_LINE in README.read_text(), "the README no longer shows the command this test runs"
    state = tmp_path / "state"
    with UpProcess(state, *_up_args("--devices", "3", "--interval", "0.5")) as up:
        wait_for(lambda: _count(state, "up-") >= 10, "up's own devices storing", 60)
        sim = iotctl(*SIM_LINE.split()[1:], "--state-dir", str(state), timeout=300)
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "Traceback" not in sim.stderr
        summary = dict(re.findall(r"^(\w[\w ]*?)\s{2,}(.*)$", sim.stdout, re.M))
        produced = int(summary["produced"].split()[0].replace(",", ""))
        assert produced == 20 * 60  # 10 simulated minutes, one reading per 10 s, 20 devices
        assert summary["stored"] == f"{produced:,}"
        assert summary["rejected"] == "0" and summary["unreceipted"] == "0"
        fleet = re.search(r"fleet (sim-[0-9a-f]{4}): 20 devices", sim.stderr)
        assert fleet, sim.stderr
        assert "ETA" in sim.stderr  # the progress line
        assert f"iotctl query --device {fleet.group(1)}-000 --start" in summary["see it with"]
        # the simulated history ends at (or before) the wall clock: nothing from the future
        end = datetime.fromisoformat(summary["data"].split(" .. ")[1].split()[0].replace("Z", "+00:00"))
        assert end <= datetime.now(UTC)
        assert _count(state, fleet.group(1)) == produced
        assert _dead_letters(state) == []
        # up's devices were never touched: online, and still storing after the simulation
        states = _devices(state)
        assert {d: s for d, s in states.items() if d.startswith("up-")} == dict.fromkeys(
            ("up-000", "up-001", "up-002"), "online"
        )
        before = _count(state, "up-")
        wait_for(lambda: _count(state, "up-") >= before + 6, "up's devices still storing", 30)
        # reusing another fleet's ids is an explicit choice, never silent
        taken = iotctl("sim", "run", "--devices", "2", "--fleet", "up", "--state-dir", str(state))
        assert taken.returncode == 2
        assert taken.stderr.strip().splitlines()[-1] == (
            "error: device ids up-000, up-001 already registered (another fleet or a real device uses them): give "
            "this fleet other ids with --fleet NAME, or pass --take-over to rotate them and take them over "
            "(whatever runs as them now is cut off)"
        )
        assert up.proc is not None and up.proc.poll() is None
    assert up.proc is not None and up.proc.returncode == 0, up.stderr


def test_a_taken_id_is_reused_only_with_take_over(tmp_path: Path) -> None:
    """``--take-over`` is the explicit flag: the registered device is rotated and the fleet runs as it."""
    state = tmp_path / "state"
    with UpProcess(state, *_up_args("--devices", "0")):
        reg = iotctl("devices", "register", "lab-000", "--state-dir", str(state))
        assert reg.returncode == 0, reg.stderr
        # device types are free-form labels, but a new one (a typo?) gets a note, and a malformed one an error
        typo = iotctl("devices", "register", "lab-x", "--type", "enviroment", "--state-dir", str(state))
        assert typo.returncode == 0 and typo.stderr.strip() == (
            "note: no other device has type 'enviroment' (types in use: environment); types are free-form "
            "labels, so check the spelling"
        )
        bad = iotctl("devices", "register", "lab-y", "--type", "weather station!", "--state-dir", str(state))
        assert bad.returncode == 2 and bad.stderr.strip() == (
            "error: bad --type 'weather station!': use 1-64 of letters, digits, _ . - (e.g. environment)"
        )
        sd = str(state)
        refused = iotctl("sim", "run", "--devices", "1", "--fleet", "lab", "--duration", "3s", "--state-dir", sd)
        assert refused.returncode == 2 and "lab-000 already registered" in refused.stderr
        assert _count(state, "lab-") == 0
        ok = iotctl(
            "sim", "run", "--devices", "1", "--fleet", "lab", "--duration", "20s", "--interval", "2s",
            "--take-over", "--state-dir", str(state),
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert _count(state, "lab-000") == 10


def test_a_run_that_would_stamp_the_future_is_refused(tmp_path: Path) -> None:
    """A scenario pinned to start now at speed 60 would run ahead of the clock: refused before anything
    is registered, naming a start that works."""
    scenario = tmp_path / "s.toml"
    start = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    scenario.write_text(
        f'[simulation]\nstart = "{start}"\nduration = "1h"\nspeed = 60\n\n[[devices]]\ncount = 1\nid_prefix = "x"\n'
    )
    db = tmp_path / "meta.db"
    out = iotctl("sim", "run", "--scenario", str(scenario), "--db", f"sqlite:///{db}")
    assert out.returncode == 2
    assert "would stamp readings up to 1.0 h in the future" in out.stderr and "leave 'start' out" in out.stderr
    assert not db.exists()


# ------------------------------------------------------------------------------------------ defect 4
def test_one_iotctl_up_per_state_dir_and_clients_do_not_guess(tmp_path: Path) -> None:
    """A second ``iotctl up`` on the same state dir used to run too (shared databases, and on stop it
    deleted the first one's URL files); then ``sim run`` silently went to some broker on 1883."""
    state = tmp_path / "state"
    # PATH without this environment's bin: as after ./scripts/up, whose .venv is not on PATH
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(IOTCTL).parent)
    with UpProcess(state, *_up_args("--devices", "1", "--interval", "0.5"), env={"PATH": path}) as first:
        # the banner's commands work as printed: iotctl's full path, and this state dir
        assert f"in another terminal: {IOTCTL} devices list --state-dir {state}  |" in first.stderr
        api_url = (state / "api.url").read_text()
        second = subprocess.run(
            [IOTCTL, "up", "--state-dir", str(state), "--no-view", *_up_args()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: the state dir {state} is in use by another 'iotctl up' (pid {first.platform.pid}): stop it "
            "first, or give this one another --state-dir"
        )
        assert (state / "api.url").read_text() == api_url  # the first one's files are untouched
        assert first.proc is not None and first.proc.poll() is None
        listed = _devices(state)
        assert list(listed) == ["up-000"]
    # stopped: clients say so instead of guessing a default broker or API
    sim = iotctl("sim", "run", "--devices", "2", "--duration", "5s", "--state-dir", str(state))
    assert sim.returncode == 2
    assert sim.stderr.strip() == (
        f"error: no platform is running with state dir {state}: start 'iotctl up' (with the same --state-dir), "
        "or pass --api URL --token T (another machine's platform) or --broker URL"
    )
    # a crashed run's leftovers do not count either: the lock dies with the process
    (state / "api.url").write_text("http://127.0.0.1:9\n")
    devices = iotctl("devices", "list", "--state-dir", str(state))
    assert devices.returncode == 2
    assert "no platform is running with state dir" in devices.stderr and "start 'iotctl up'" in devices.stderr


# ------------------------------------------------------------------------------------------ defect 3
AGENT_TOML = """\
identity_dir = "{identity}"
buffer_path = "{buffer}"
sampling_interval_s = 0.2
transmission_interval_s = 0.5
heartbeat_interval_s = {heartbeat}
receipt_timeout_s = 5.0
backoff_initial_s = 0.2
backoff_max_s = 1.0
identity_poll_s = {poll}
buffer_synchronous = "normal"

[[sensors]]
type = "simulated"
seed = 7
"""


def _agent_config(tmp_path: Path, *, heartbeat: float = 60.0, poll: float = 0.5) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        AGENT_TOML.format(
            identity=tmp_path / "identity", buffer=tmp_path / "buffer.db", heartbeat=heartbeat, poll=poll
        )
    )
    return cfg


class AgentProcess:
    """``iotctl agent run`` (optionally inside a namespace) with its JSON log lines collected."""

    def __init__(self, config: Path, prefix: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), IOTCTL, "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        assert self.proc.stderr is not None
        self._t = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._t.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def logged(self, msg: str) -> list[dict[str, Any]]:
        return [x for x in list(self.lines) if x.get("msg", "").startswith(msg)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._t.join(5)


def _token(register_output: str) -> str:
    lines = register_output.splitlines()
    return lines[lines.index(next(x for x in lines if x.startswith("enrollment token"))) + 1].strip()


@pytest.fixture
def second_machine() -> Iterator[NetNamespace | None]:
    """A network namespace, or None where none can be made (then the test uses this machine's
    non-loopback address, still not loopback)."""
    try:
        with NetNamespace() as ns:
            yield ns
    except NetNamespaceUnavailable:
        if primary_address() is None:
            pytest.skip("no network namespace and no non-loopback address on this machine")
        yield None


def test_agent_on_another_machine_enrolls_against_up_bind_all_and_survives_its_restart(
    tmp_path: Path, second_machine: NetNamespace | None
) -> None:
    """``iotctl up --bind 0.0.0.0``: a device in another network namespace (a Raspberry Pi on the LAN)
    enrolls with the URL ``devices register`` prints, gets the advertised broker URL, stores readings,
    and keeps storing across a restart of ``up``, which listens on the same ports again."""
    ns = second_machine
    host = ns.host_ip if ns is not None else primary_address()
    assert host is not None
    state = tmp_path / "state"
    mqtt_port, mqtts_port, api_port = free_port("0.0.0.0"), free_port("0.0.0.0"), free_port("0.0.0.0")
    up = UpProcess(
        state, "--bind", "0.0.0.0", "--advertise", host, "--mqtt-port", str(mqtt_port), "--mqtts-port",
        str(mqtts_port), "--api-port", str(api_port), "--devices", "0",
    )  # fmt: skip
    agent: AgentProcess | None = None
    try:
        found = up.start()
        # beyond loopback: TLS with the platform's own CA, for the API and for devices' MQTT
        assert found.public_api_url == f"https://{host}:{api_port}"
        assert found.public_mqtt_url == f"mqtts://{host}:{mqtts_port}"
        ca = state / "pki" / "ca.crt"
        assert "over TLS" in up.stderr and str(ca) in up.stderr
        reg = iotctl("devices", "register", "pi-1", "--state-dir", str(state))
        assert reg.returncode == 0, reg.stderr
        hint = (
            f"on the device: iotctl agent enroll --api https://{host}:{api_port} --ca {ca} "
            f"--token {_token(reg.stdout)}"
        )
        assert hint in reg.stdout
        prefix = ns.argv([]) if ns is not None else []
        enroll = subprocess.run(
            [*prefix, IOTCTL, "agent", "enroll", "--api", f"https://{host}:{api_port}", "--ca", str(ca),
             "--token", _token(reg.stdout), "--dir", str(tmp_path / "identity")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert enroll.returncode == 0, enroll.stderr
        identity = load_identity(tmp_path / "identity")
        assert identity.mqtt_url == f"mqtts://{host}:{mqtts_port}"
        assert identity.ca_file is not None and identity.ca_file.read_bytes() == ca.read_bytes()  # pinned
        agent = AgentProcess(_agent_config(tmp_path), prefix)
        wait_for(lambda: _count(state, "pi-1") >= 10, "readings from the other machine", 60)
        assert up.stop() == 0
        stored_before = _count(state, "pi-1")
        restarted = up.start()  # no port options: the state dir's ports
        assert (restarted.public_mqtt_url, restarted.public_api_url) == (found.public_mqtt_url, found.public_api_url)
        wait_for(lambda: _count(state, "pi-1") >= stored_before + 10, "readings after the restart", 90)
        assert agent.proc.poll() is None
        assert agent.logged("connected") and len(agent.logged("connected")) >= 2
    finally:
        if agent is not None:
            agent.stop()
        up.stop()
        up.kill()


def test_a_port_this_state_dir_uses_is_refused_naming_its_holder(tmp_path: Path) -> None:
    """``up`` used to move to another port when its port was taken, stranding every enrolled device.
    A restart keeps the state dir's ports; a taken one is refused, naming the process holding it."""
    state = tmp_path / "state"
    api_port, mqtt_port = free_port(), free_port()  # below the ephemeral range: no client takes them meanwhile
    with UpProcess(state, "--mqtt-port", str(mqtt_port), "--api-port", str(api_port), "--devices", "0"):
        pass
    assert json.loads((state / "ports.json").read_text()) == {"mqtt": mqtt_port, "api": api_port}
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the broker's closed connections linger
    holder.bind(("127.0.0.1", mqtt_port))
    holder.listen()
    try:
        again = subprocess.run(
            [IOTCTL, "up", "--state-dir", str(state), "--no-view", "--devices", "0"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.close()
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    me = Path("/proc/self/comm").read_text().strip()
    assert last == (
        f"error: port {mqtt_port}, this state dir's mqtt port (see {state / 'ports.json'}), is held by {me} "
        f"(pid {os.getpid()}): stop it, or give --mqtt-port another port (devices enrolled with this one must then "
        "be enrolled again)"
    )
    # freed, the same ports again
    with UpProcess(state, "--devices", "0") as up:
        lock = json.loads((state / "up.lock").read_text())
        assert lock["mqtt_url"].endswith(f":{mqtt_port}") and lock["api_url"].endswith(f":{api_port}")
    assert up.proc is not None and up.proc.returncode == 0


# ------------------------------------------------------------------------------------------ defect 5
@pytest.mark.parametrize("how", ["poll", "sighup"])
def test_agent_takes_up_a_new_identity_without_restart(tmp_path: Path, how: str) -> None:
    """After ``devices rotate`` the running agent's credentials are refused; it used to retry them
    forever. Re-enrolled into its identity dir, the same process takes up the new identity (polling
    the dir, or at once on SIGHUP), re-signs the batches the old key sealed that were never receipted,
    and every one of their readings is stored: none rejected, none looping."""
    state = tmp_path / "state"
    platform = Platform(
        PlatformSettings(state_dir=state, devices=0, mqtt_port=0, api_port=0, bridge_metrics_port=0)
    ).start()
    agent: AgentProcess | None = None
    try:
        env = {"EDU_STATE_DIR": str(state)}
        reg = iotctl("devices", "register", "pi-r", env=env)
        assert reg.returncode == 0, reg.stderr
        ident = tmp_path / "identity"
        assert iotctl("agent", "enroll", "--api", platform.api_url, "--token", _token(reg.stdout), "--dir",
                      str(ident)).returncode == 0  # fmt: skip
        old_key = load_identity(ident).key
        # Batches the old key sealed and sent, whose receipts never came: in the buffer, unreceipted.
        t0 = int(time.time() * 1000) - 60_000
        buf = Buffer(tmp_path / "buffer.db", synchronous="normal")
        buf.add([Reading(t0 + i * 1000, "environment", {"temperature": 20.0 + i}, 1.0, ()) for i in range(6)])
        sealed = [buf.next_batch("pi-r", old_key, max_readings=3, now_ms=t0 + 10_000) for _ in range(2)]
        assert all(sealed) and len(buf.unreceipted()) == 2
        buf.close()
        rot = iotctl("devices", "rotate", "pi-r", env=env)
        assert rot.returncode == 0, rot.stderr
        agent = AgentProcess(_agent_config(tmp_path, poll=0.5 if how == "poll" else 0))
        wait_for(lambda: agent.logged("broker refused the connection"), "the old credentials refused", 60)
        assert iotctl("agent", "enroll", "--api", platform.api_url, "--token", _token(rot.stdout), "--dir",
                      str(ident)).returncode == 0  # fmt: skip
        if how == "sighup":
            agent.proc.send_signal(signal.SIGHUP)
        taken = wait_for(lambda: agent.logged("new identity taken up"), "the new identity taken up", 60)
        assert taken[0]["resealed_batches"] == 2
        wait_for(lambda: _count(state, "pi-r") >= 6 + 5, "the old batches and new readings stored", 60)
        store = open_tsdb(platform.tsdb_url)
        try:
            old_rows = store.query(device_id="pi-r", fields=["temperature"], start_ms=t0, end_ms=t0 + 6000)
        finally:
            store.close()
        assert [r.values["temperature"] for r in old_rows] == [20.0 + i for i in range(6)]
        assert agent.proc.poll() is None  # the same process throughout
        assert all(r != "bad_signature" for _, r in _dead_letters(state))
        # the agent logs ISO 8601 times, as the platform does
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", x["ts"]) for x in agent.lines)
    finally:
        if agent is not None:
            agent.stop()
        platform.stop()


# ------------------------------------------------------------------------------------------ defect 6
def test_ledger_verdict_stays_balanced_while_a_healthy_device_runs(tmp_path: Path) -> None:
    """The ledger compared the last health message with everything stored since, so a device that kept
    sending showed ``NOT BALANCED``, ``in flight -3``. Asked again and again while the device runs
    (batches every 0.5 s, health every second), it must say balanced, never a negative term."""
    state = tmp_path / "state"
    with UpProcess(state, *_up_args("--devices", "0")) as up:
        reg = iotctl("devices", "register", "pi-l", "--state-dir", str(state))
        assert iotctl("agent", "enroll", "--api", up.platform.api_url, "--token", _token(reg.stdout), "--dir",
                      str(tmp_path / "identity")).returncode == 0  # fmt: skip
        agent = AgentProcess(_agent_config(tmp_path, heartbeat=1.0))
        try:
            wait_for(lambda: _count(state, "pi-l") >= 10, "readings", 60)
            verdicts = []
            for _ in range(8):
                out = iotctl("devices", "ledger", "pi-l", "--json", "--state-dir", str(state))
                assert out.returncode == 0, out.stderr
                books = json.loads(out.stdout)
                assert min(books[k] for k in ("stored", "rejected", "buffered", "dropped", "in_flight")) >= 0
                assert books["produced"] == sum(
                    books[k] for k in ("stored", "rejected", "buffered", "dropped", "in_flight")
                )
                verdicts.append((books["balanced"], books["verdict"]))
                time.sleep(0.3)
            assert all(ok for ok, _ in verdicts), verdicts
            assert books["produced"] > 10 and books["stored_batches"] > 5
        finally:
            agent.stop()


# ------------------------------------------------------------------------------------------ defect 7, 2
SKEWED = """\
[simulation]
duration = "20s"
speed = 1
[[devices]]
count = 3
id_prefix = "k"
sampling_interval = "1s"
transmission_interval = "1s"
[[events]]
kind = "clock_skew"
device = "k-000"
at = "4s"
duration = "4s"
magnitude = 900
"""


def test_live_view_counts_every_device_and_batches_by_outcome(tmp_path: Path) -> None:
    """The live view counted only up's own devices ("5 connected, 14 online" with 113 registered) and
    counted rejected batches as stored. A simulated fleet with one device's clock 15 min ahead runs
    next to up's two devices: the view counts all five, and the skewed batches as rejected, by reason;
    the simulator logs the reason, sums up by outcome and exits 1 (honest readings were not stored)."""
    from rich.console import Console

    from iotctl.commands.up import _view

    state = tmp_path / "state"
    platform = Platform(
        PlatformSettings(
            state_dir=state, devices=2, sampling_interval_s=0.5, mqtt_port=0, api_port=0, bridge_metrics_port=0
        )
    ).start()
    try:
        scenario = tmp_path / "skew.toml"
        scenario.write_text(SKEWED)
        proc = subprocess.Popen(
            [IOTCTL, "sim", "run", "--scenario", str(scenario), "--fleet", "c", "--state-dir", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: platform.stats().devices_online == 5, "five devices online", 60)
        st = platform.stats()
        assert (st.devices_registered, st.fleet_size, st.fleet_connected) == (5, 2, 2)
        console = Console(record=True, width=200)
        console.print(_view(platform, time.monotonic(), 0.0)[0])
        text = console.export_text()
        assert re.search(r"devices\s+│ 5 registered: [345] online, ", text) and "2/2 connected (up-*)" in text, text
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert "c-k-000: batch" in err and "rejected by the platform: future_timestamp" in err
        assert re.search(r"^rejected\s+\d+\s+batches by reason: future_timestamp \d+$", out, re.M), out
        assert "honest readings were not stored" in err.strip().splitlines()[-1]
        platform.stop_devices()  # nothing more arrives: the counters and the ledger settle

        def ledger_rows() -> tuple[int, int]:
            with Session(platform.engine) as s:
                rows = s.exec(select(BatchLedger.readings)).all()
            return sum(1 for n in rows if n > 0), sum(1 for n in rows if n == 0)

        st = platform.stats()
        assert st.batches_rejected.get("future_timestamp", 0) >= 3
        # every batch is counted once, by its outcome: the stored ones as stored, the skewed ones rejected
        wait_for(lambda: ledger_rows() == (st.batches_stored, st.batches_rejected["future_timestamp"]), "ledger", 30)
        console = Console(record=True, width=200)
        console.print(_view(platform, time.monotonic(), 0.0)[0])
        text = console.export_text()
        rejected = st.batches_rejected["future_timestamp"]
        assert f"{st.batches_stored:,} stored, 0 duplicates (resends stored once), {rejected} rejected " in text
        assert f"(future_timestamp {rejected})" in text
    finally:
        platform.stop()


def test_a_student_signs_in_from_another_laptop_and_simulates_against_up_over_tls(tmp_path: Path) -> None:
    """The README's class walk-through: the teacher runs ``iotctl up --bind 0.0.0.0`` (TLS with the
    platform's own CA) and adds a student; the student, on a laptop with its own state dir and only the
    copied CA file, signs in and runs a simulation as themselves: every reading stored, the devices
    theirs (they see them, and only them)."""
    teacher_state = tmp_path / "teacher"
    student_env = {
        "EDU_STATE_DIR": str(tmp_path / "student-state"),  # no platform runs there: the profile is the way in
        "IOTCTL_CONFIG": str(tmp_path / "student-profiles.json"),
    }
    mqtt_port, mqtts_port, api_port = free_port("0.0.0.0"), free_port("0.0.0.0"), free_port("0.0.0.0")
    up_args = ("--bind", "0.0.0.0", "--advertise", "127.0.0.1", "--mqtt-port", str(mqtt_port),
               "--mqtts-port", str(mqtts_port), "--api-port", str(api_port), "--devices", "0")  # fmt: skip
    with UpProcess(teacher_state, *up_args) as up:
        api = up.platform.public_api_url
        assert api == f"https://127.0.0.1:{api_port}"
        ca = tmp_path / "copied-ca.crt"  # what the teacher hands out
        ca.write_bytes((teacher_state / "pki" / "ca.crt").read_bytes())
        added = iotctl("users", "add", "ana", "--state-dir", str(teacher_state))
        assert added.returncode == 0, added.stderr
        password = re.search(r"password \(shown once\): (\S+)", added.stdout)
        assert password, added.stdout
        login = subprocess.run(
            [IOTCTL, "login", "--api", api, "-u", "ana", "--password-stdin"],
            input=password.group(1) + "\n", capture_output=True, text=True, timeout=60,
            env={**os.environ, **student_env, "IOTCTL_CA": str(ca)},
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        sim = iotctl(
            "sim", "run", "--fleet", "ana", "--devices", "3", "--speed", "60", "--duration", "2m", "--ca", str(ca),
            env=student_env, timeout=300,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "as ana" in sim.stderr and "-> mqtts://127.0.0.1:" in sim.stderr
        summary = dict(re.findall(r"^(\w[\w ]*?)\s{2,}(.*)$", sim.stdout, re.M))
        produced = int(summary["produced"].split()[0].replace(",", ""))
        assert produced == 3 * 12 and summary["stored"] == f"{produced:,}"
        assert _count(teacher_state, "ana-") == produced
        mine = iotctl("devices", "list", "--json", env={**student_env, "IOTCTL_CA": str(ca)})
        assert mine.returncode == 0, mine.stderr
        assert sorted(d["id"] for d in json.loads(mine.stdout)) == ["ana-000", "ana-001", "ana-002"]
