"""The agent's OTA against the real API, broker and bridge: resumable downloads through real network
cuts, bounded retries, the bandwidth cap, and nothing installed unless the manifest's signature
(release key), the artifact's size and SHA-256, the device type and the minimum version check out."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_env import Env, platform

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.errors import DownloadError
from edge_agent.identity import enroll
from edge_agent.ota_boot import Layout
from edge_agent.ota_build import build_artifact, init_layout
from edge_agent.ota_fetch import fetch
from iot_protocol import Manifest, generate_private_key, seal_manifest
from iot_protocol.firmware import seal_download_request
from iot_testing import free_port, wait_for

pytestmark = pytest.mark.integration


class CuttingProxy:
    """A real TCP forwarder to ``upstream`` that cuts the first ``cuts`` connections after ``after``
    bytes of response: a network that drops mid-download."""

    def __init__(self, upstream: int, *, cuts: int, after: int) -> None:
        self.upstream, self.cuts, self.after = upstream, cuts, after
        self.connections = 0
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections <= self.cuts
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))

        def forward() -> None:
            try:
                while data := client.recv(65536):
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward, daemon=True).start()
        sent = 0
        try:
            while data := up.recv(4096):
                if cut and sent + len(data) > self.after:
                    client.sendall(data[: max(0, self.after - sent)])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


@pytest.fixture
def env(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Env]:
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path) as e:
        yield e


@pytest.fixture
def artifact(tmp_path: Path) -> bytes:
    return build_artifact(tmp_path / "agent-0.2.0.tar.gz", "0.2.0", workdir=tmp_path).read_bytes()


def _enrolled(env: Env, device_id: str, tmp: Path) -> tuple[Path, Any]:
    token = env.ok("POST", "/v1/devices/register", json={"id": device_id, "device_type": "outdoor"})["enrollment_token"]
    identity = enroll(env.url, token, tmp / "identity")
    assert (tmp / "identity" / "release_public_key").is_file()  # the release key came with enrollment
    return tmp / "identity", identity


def _url(env: Env, version: str) -> str:
    return f"{env.url}/v1/releases/{version}/artifact"


def test_download_resumes_after_network_cuts_and_gives_up_after_bounded_retries(
    env: Env, artifact: bytes, tmp_path: Path
) -> None:
    env.release("0.2.0", artifact, ["outdoor"])
    _dir, identity = _enrolled(env, "ota-fetch", tmp_path)
    port = int(env.url.rsplit(":", 1)[1])

    def auth() -> str:
        return "Device " + seal_download_request("ota-fetch", "0.2.0", identity.key, now_ms=time.time_ns() // 1_000_000)

    # two cuts mid-body: the third attempt resumes with a range request and completes
    proxy = CuttingProxy(port, cuts=2, after=len(artifact) // 3)
    dest = tmp_path / "a.part"
    try:
        got = fetch(
            f"http://127.0.0.1:{proxy.port}/v1/releases/0.2.0/artifact",
            dest,
            size=len(artifact),
            authorization=auth,
            retries=3,
            retry_delay_s=0.05,
        )
    finally:
        proxy.close()
    assert dest.read_bytes() == artifact and proxy.connections == 3
    assert got == len(artifact)  # every byte fetched once: the resumes asked only for the rest
    metrics = httpx.get(env.url + "/metrics").text
    assert 'edu_release_downloads_total{outcome="partial"} 2.0' in metrics

    # a network that always cuts before the first body byte: bounded retries, then a clear error;
    # the partial file stays for the next try
    dest2 = tmp_path / "b.part"
    proxy = CuttingProxy(port, cuts=100, after=100)
    try:
        with pytest.raises(DownloadError, match=r"download failed 3 times in a row at byte 0 of"):
            fetch(
                f"http://127.0.0.1:{proxy.port}/v1/releases/0.2.0/artifact",
                dest2,
                size=len(artifact),
                authorization=auth,
                retries=2,
                retry_delay_s=0.05,
            )
    finally:
        proxy.close()
    assert proxy.connections == 3

    # a truncated body (the connection closes early): resumed from where it stopped
    dest3 = tmp_path / "c.part"
    dest3.write_bytes(artifact[:12345])
    fetch(_url(env, "0.2.0"), dest3, size=len(artifact), authorization=auth)
    assert dest3.read_bytes() == artifact

    # the bandwidth cap holds the download to about the rate asked for
    dest4 = tmp_path / "d.part"
    rate = 64 * 1024
    started = time.monotonic()
    fetch(_url(env, "0.2.0"), dest4, size=len(artifact), authorization=auth, max_bytes_per_s=rate)
    assert time.monotonic() - started >= 0.9 * len(artifact) / rate
    assert dest4.read_bytes() == artifact


def _agent(env: Env, tmp_path: Path, identity_dir: Path, **overrides: Any) -> Agent:
    ota_dir = tmp_path / "ota"
    if not ota_dir.exists():
        init_layout(ota_dir)
    settings = load_settings(
        None,
        identity_dir=str(identity_dir),
        buffer_path=str(tmp_path / "buffer.db"),
        sampling_interval_s=0.2,
        transmission_interval_s=0.2,
        heartbeat_interval_s=1.0,
        ota_dir=str(ota_dir),
        device_type="outdoor",
        ota_retry_delay_s=0.1,
        ota_download_retries=2,
        sensors=[{"type": "simulated", "sensor_type": "environment"}],
        **overrides,
    )
    from edge_agent.identity import load_identity

    agent = Agent(settings, load_identity(identity_dir))
    agent.start()
    assert agent.wait_connected(30)
    return agent


def _steps(env: Env, device_id: str) -> list[tuple[str, str, str | None]]:
    history = env.ok("GET", f"/v1/devices/{device_id}/history")
    return [(e["version"], e["state"], e["error"]) for e in history["firmware_events"]]


def _served(env: Env) -> float:
    for line in httpx.get(env.url + "/metrics").text.splitlines():
        if line.startswith("edu_release_artifact_bytes_served_total "):
            return float(line.split()[1])
    return 0.0


def test_nothing_is_installed_unless_manifest_size_hash_type_and_floor_check_out(
    env: Env, artifact: bytes, tmp_path: Path
) -> None:
    good = env.release("0.2.0", artifact, ["outdoor"])
    identity_dir, _ = _enrolled(env, "ota-verify", tmp_path)
    agent = _agent(env, tmp_path, identity_dir)
    layout = Layout(tmp_path / "ota")
    digest = hashlib.sha256(artifact).hexdigest()

    def signed(**change: Any) -> str:
        body = {"version": "0.2.0", "size": len(artifact), "sha256": digest, "device_types": ["outdoor"], **change}
        return env.ok("POST", "/v1/releases/sign", json=body)["manifest"]  # type: ignore[no-any-return]

    def push(manifest: str) -> None:
        target = {"version": "0.2.0", "manifest": manifest, "url": _url(env, "0.2.0")}
        env.ok("PUT", "/v1/devices/ota-verify/config", json={"settings": {"firmware": target}})

    try:
        cases = [
            (
                "bad_signature",
                seal_manifest(Manifest("0.2.0", len(artifact), digest, ("outdoor",)), generate_private_key()).decode(),
                False,
            ),
            ("wrong_device_type", signed(device_types=["indoor"]), False),
            ("hash_mismatch", signed(sha256=hashlib.sha256(b"another build").hexdigest()), True),
            ("size_mismatch", signed(size=len(artifact) - 1000), True),
        ]
        for reason, manifest, downloads in cases:
            served = _served(env)
            n_failed = len([s for s in _steps(env, "ota-verify") if s[1] == "failed"])
            push(manifest)
            wait_for(
                lambda n=n_failed: len([s for s in _steps(env, "ota-verify") if s[1] == "failed"]) > n,
                reason,
                timeout=30,
            )
            error = [s for s in _steps(env, "ota-verify") if s[1] == "failed"][-1][2]
            assert error is not None and error.startswith(reason), (reason, error)
            assert (_served(env) > served) is downloads, reason  # a bad manifest is refused before any download
            assert layout.current() == "a" and layout.slot_version("b") is None, reason
            assert not agent.restart_requested
        # a validly signed release below the device's minimum version (its anti-rollback floor)
        state = layout.read_state()
        layout.write_state({**state, "floor": "0.3"})
        n_failed = len([s for s in _steps(env, "ota-verify") if s[1] == "failed"])
        push(good["manifest"])
        wait_for(
            lambda: len([s for s in _steps(env, "ota-verify") if s[1] == "failed"]) > n_failed, "below_minimum", 30
        )
        assert "downgrade below the minimum version 0.3" in str(_steps(env, "ota-verify")[-1][2])
        assert layout.slot_version("b") is None
        # the good release: downloaded, verified, installed into slot b, switched, restart requested
        layout.write_state({**layout.read_state(), "floor": None})
        push(good["manifest"])
        wait_for(lambda: agent.restart_requested, "the agent to restart into the new release", timeout=30)
        assert layout.current() == "b" and layout.slot_version("b") == "0.2.0"
        state = layout.read_state()
        assert (state["phase"], state["version"], state["from_slot"], state["boots"]) == ("trial", "0.2.0", "a", 0)
        # the agent reports its steps to the cloud on its own thread: "installed" may land just after
        wait_for(
            lambda: [s[1] for s in _steps(env, "ota-verify")][-2:] == ["downloading", "installed"],
            "the cloud to hold the steps downloading, installed",
            timeout=30,
        )
    finally:
        agent.stop()


def test_a_changed_desired_firmware_cancels_the_download_in_progress(env: Env, artifact: bytes, tmp_path: Path) -> None:
    good = env.release("0.2.0", artifact, ["outdoor"])
    identity_dir, _ = _enrolled(env, "ota-cancel", tmp_path)
    agent = _agent(env, tmp_path, identity_dir)
    layout = Layout(tmp_path / "ota")
    part = layout.download_dir / "0.2.0.part"
    try:
        target = {"version": "0.2.0", "manifest": good["manifest"], "url": _url(env, "0.2.0"), "max_bytes_per_s": 8192}
        env.ok("PUT", "/v1/devices/ota-cancel/config", json={"settings": {"firmware": target}})
        wait_for(lambda: part.exists() and part.stat().st_size > 8192, "the slow download under way", timeout=30)
        # the operator goes back to the running version: the download stops, nothing is installed
        env.ok("PUT", "/v1/devices/ota-cancel/config", json={"settings": {"firmware": {"version": "0.1.0"}}})
        wait_for(lambda: ("0.1.0", "confirmed", None) in _steps(env, "ota-cancel"), "the running version confirmed", 30)
        size = part.stat().st_size
        time.sleep(1.0)  # a download still going would grow the file by ~8 KB in this second
        assert part.stat().st_size == size < len(artifact)
        assert layout.current() == "a" and layout.slot_version("b") is None and not agent.restart_requested
    finally:
        agent.stop()
