"""`iotctl bridge run` as an operator runs it: a process that stops cleanly on SIGTERM, promptly."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from iot_testing import MosquittoServer, free_port, wait_for
from iot_testing.processes import signal_worker_thread

pytestmark = pytest.mark.integration

IOTCTL = str(Path(sys.executable).with_name("iotctl"))


def test_sigterm_stops_the_bridge_whichever_thread_receives_it(
    tmp_path: Path, mosquitto: MosquittoServer, topic_prefix: str
) -> None:
    """Kubernetes and systemd stop the bridge with SIGTERM, which the kernel may hand to any of its
    threads. It must stop within seconds (it once waited forever when the signal missed the main thread,
    until the grace period ran out and SIGKILL came)."""
    port = free_port()
    log = tmp_path / "bridge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [IOTCTL, "bridge", "run", "--mqtt-url", mosquitto.url, "--db-url", f"sqlite:///{tmp_path / 'meta.db'}",
             "--tsdb-url", f"sqlite:///{tmp_path / 'readings.db'}", "--topic-prefix", topic_prefix,
             "--metrics-port", str(port), "--log-level", "WARNING"],
            stderr=out,
        )  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    return int(r.status) == 200
            except OSError:
                return False

        wait_for(ready, "the bridge ready", 60)
        signal_worker_thread(proc.pid, signal.SIGTERM)  # as the kernel may: not to the main thread
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the bridge ignored a SIGTERM delivered to a worker thread for 15 s")
        assert proc.returncode == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
