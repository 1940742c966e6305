"""The agent process stays small: no pydantic (about 11 MB of RSS), no cryptography (about 7 MB), and on
plain MQTT neither libssl nor libcrypto (about 4.5 MB): issue 20's budget is 25 MB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iot_testing.servers import MosquittoServer

HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "typer", "sqlmodel", "sqlalchemy")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_the_agent_and_the_contract_do_not_import_pydantic() -> None:
    code = (
        "import iot_protocol, edge_agent.agent, edge_agent.config, edge_agent.identity, edge_agent.buffer\n"
        "from edge_agent.sensors import simulated, cpu_temp, command"
    )
    assert _loaded_after(code) == set()


def test_loading_and_running_the_pipeline_does_not_import_pydantic() -> None:
    # what run_agent does before its network loop: settings, sensors, buffer, one sample and one batch
    code = """
import pathlib, tempfile
from edge_agent.agent import Pipeline, build_sensors, open_buffer
from edge_agent.config import load_settings
from iot_protocol import generate_private_key, parse_settings
d = pathlib.Path(tempfile.mkdtemp())
(d / "a.toml").write_text('buffer_path = "b.db"\\n[[sensors]]\\ntype = "simulated"\\n')
s = load_settings(d / "a.toml")
p = Pipeline(device_id="dev-1", key=generate_private_key(), buffer=open_buffer(s), sensors=build_sensors(s))
p.sample()
assert p.plan(0.0)
parse_settings({"sampling_interval_s": 2})
"""
    assert _loaded_after(code) == set()


def test_the_agent_never_loads_cryptography_and_signs_with_pynacl(tmp_path: Path) -> None:
    # cryptography's compiled core is about 7 MB of the agent's RSS: enrollment writes the key, the
    # agent loads it as a LightEd25519Key and signs batches with PyNaCl
    from edge_agent.identity import write_identity
    from iot_protocol import generate_private_key

    write_identity(
        tmp_path / "id",
        generate_private_key(),
        {"device_id": "dev-1", "mqtt_url": "mqtt://127.0.0.1:1", "topic_prefix": "t", "cloud_public_key": "A" * 43},
    )
    code = f"""
import pathlib, sys
from edge_agent.identity import load_identity
from iot_protocol import Topics, parse_settings, seal_batch, open_batch
from iot_protocol.keys import LightEd25519Key, public_key_raw
from iot_protocol.messages import Batch, Reading
ident = load_identity(pathlib.Path({str(tmp_path / "id")!r}))
assert isinstance(ident.key, LightEd25519Key), type(ident.key)
token = seal_batch(Batch("dev-1", "b" * 32, 1, 1, (Reading(1, "s", {{"t": 1.0}}),)), ident.key)
open_batch(token, topic_device="dev-1", public_key=public_key_raw(ident.key))
"""
    probe = f"{code}\nprint(' '.join(m for m in ('cryptography', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


@pytest.mark.integration
def test_plain_mqtt_loads_neither_libssl_nor_libcrypto_and_paho_still_works(mosquitto: MosquittoServer) -> None:
    # paho imports ssl and hashlib at the top (about 4.5 MB); on mqtt:// the agent refuses both, and
    # paho's socket code must still work: non-blocking reads raise BlockingIOError all the time.
    # urllib.request (http.client, email: ~1 MB) serves only paho's proxy lookup, dead without PySocks
    code = f"""
import sys, threading
from edge_agent.agent import _paho
mqtt = _paho(tls=False)
from paho.mqtt.enums import CallbackAPIVersion
loaded = [m for m in ("ssl", "_ssl", "_hashlib", "urllib.request", "http.client", "email") if m in sys.modules]
got = threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-no-ssl", protocol=mqtt.MQTTv5)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("nossl/echo", qos=1)
c.on_subscribe = lambda cl, u, mid, rcs, p: cl.publish("nossl/echo", b"x" * 100_000, qos=1)
c.on_message = lambda cl, u, m: got.set()
c.connect({mosquitto.host!r}, {mosquitto.port})
c.loop_start()
ok = got.wait(20)
c.loop_stop()
import hashlib
assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf"), "built-in sha256"
assert _paho(tls=True).ssl is __import__("ssl"), "mqtts later gets the real module"
import urllib.request
assert callable(urllib.request.urlopen), "enrollment later gets the real urllib.request"
print(ok, loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[]"]
