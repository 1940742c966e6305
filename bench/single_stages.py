"""Per-stage CPU of one signed single-reading message in the bridge's hot path, in one process.

    .venv/bin/python bench/single_stages.py

Times (best of 7 ``timeit`` repeats, over 2,000 distinct messages of 200 devices, like
bench/ingest.py's single phase) each step the MQTT network thread runs per message: PUBLISH parsing,
the Inbound value, the payload hash, the topic parse, the registry lookup (an in-memory dict here, as
the bridge's KeyDirectory snapshot is), the JWS split with base64url, Ed25519 verification, the batch
decoder, the checks that build the point, and, per point, the writer's line-protocol encoding. Then
the whole ``pipeline.process`` call, with the bridge's garbage-collector setting. Prints one JSON line
(microseconds per message).
"""

from __future__ import annotations

import gc
import sys
import time
import timeit
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker_bridge.mqtt import Inbound, _parse_publish
from broker_bridge.pipeline import DeviceKey, checked_batch, payload_hash, process
from broker_bridge.settings import BridgeSettings
from broker_bridge.testing import make_batch
from broker_bridge.wire import decode_batch_fast
from cloud_core.services.ledger import key_id_of
from cloud_core.tsdb.lineprotocol import encode_points_fast
from iot_protocol import Topics, decode_verified_batch, jws, seal_batch, verify_batch
from iot_protocol.keys import generate_private_key, public_key_raw

N_DEV, N_MSG = 200, 2000


def main() -> None:
    topics = Topics("bench")
    keys = {f"s{i}": generate_private_key() for i in range(N_DEV)}
    dirk = {d: DeviceKey(d, public_key_raw(k), True, "bench", key_id_of(public_key_raw(k))) for d, k in keys.items()}
    ts0 = int(time.time() * 1000) - 6 * 3_600_000
    msgs = []
    for j in range(N_MSG):
        d = f"s{j % N_DEV}"
        msgs.append((topics.telemetry(d), seal_batch(make_batch(d, j // N_DEV + 1, 1, ts0=ts0), keys[d])))
    packets = []
    for t, p in msgs:
        tb = t.encode()
        packets.append(len(tb).to_bytes(2, "big") + tb + b"\x00\x07" + b"\x00" + p)
    parsed = [(t, d, dirk[d], p) for t, p in msgs for d in [topics.parse(t)[0]]]
    tokens = [(d, k, verify_batch(p, topic_device=d, public_key=k.public_key)) for _, d, k, p in parsed]
    batches = [(k, decode_verified_batch(tok, topic_device=d, decode=decode_batch_fast)) for d, k, tok in tokens]
    now = int(time.time() * 1000)
    points = [
        p for k, b in batches for p in checked_batch(b, "bench", "x", k.key_id, now_ms=now, max_skew_ms=300_000).points
    ]
    lookup = dirk.get

    def stage_parse_publish() -> None:
        for pk in packets:
            _parse_publish(pk, 0, len(pk), 1, True)

    def stage_inbound() -> None:
        for t, p in msgs:
            Inbound(7, 1, t, p, time.time())

    def stage_hash() -> None:
        for _, p in msgs:
            payload_hash(p)

    def stage_topic() -> None:
        for t, _ in msgs:
            topics.parse(t)

    def stage_lookup() -> None:
        for _, d, _, _ in parsed:
            lookup(d)

    def stage_jws_decode() -> None:
        for _, _, _, p in parsed:
            jws.decode(p)

    jwss = [jws.decode(p) for _, _, _, p in parsed]
    keys_raw = [k.public_key for _, _, k, _ in parsed]

    def stage_verify() -> None:
        for t, k in zip(jwss, keys_raw, strict=True):
            jws.verify(t, k)

    def stage_decode() -> None:
        for d, _, tok in tokens:
            decode_verified_batch(tok, topic_device=d, decode=decode_batch_fast)

    def stage_check() -> None:
        for k, b in batches:
            checked_batch(b, "bench", "x", k.key_id, now_ms=now, max_skew_ms=300_000)

    def stage_line_protocol() -> None:
        for i in range(0, len(points), 500):  # the writer encodes small batches together
            encode_points_fast(points[i : i + 500])

    def whole_process() -> None:
        for t, p in msgs:
            process(t, p, topics=topics, lookup=lookup, now_ms=now, max_skew_ms=300_000)

    stages = {
        "parse_publish": stage_parse_publish,
        "inbound": stage_inbound,
        "sha256": stage_hash,
        "topic_parse": stage_topic,
        "lookup": stage_lookup,
        "jws_split_b64": stage_jws_decode,
        "ed25519_verify": stage_verify,
        "decode_batch": stage_decode,
        "check_points": stage_check,
        "line_protocol": stage_line_protocol,
        "process_total": whole_process,
    }
    # As `iotctl bridge run` does (the gc_threshold setting): without it a young collection every 700
    # allocations lands in whichever stage allocates, and the stages no longer add up.
    gc.set_threshold(BridgeSettings.model_fields["gc_threshold"].default, *gc.get_threshold()[1:])
    gc.freeze()
    out = {}
    for name, fn in stages.items():
        best = min(timeit.repeat(fn, number=1, repeat=7))
        out[name] = round(best / N_MSG * 1e6, 2)
    out["sum_of_stages"] = round(sum(v for k, v in out.items() if k != "process_total"), 2)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
