"""Attacks on the ingest path, built with the wire contract so they look like the real thing.

Each builder returns :class:`AttackMessage` values: the topic, the exact bytes, and the outcome
the bridge must produce (``expected``: the dead-letter reason, or ``duplicate``):

- ``tampered_payload``: a genuinely signed batch with one value changed after signing -> ``bad_signature``;
- ``replayed_batch``: a batch the device already sent, byte for byte -> ``duplicate`` (see below);
- ``reused_seq``: a new, validly signed batch under a seq already stored (cloned or rolled-back
  firmware) -> ``replayed_seq``;
- ``wrong_key``: a batch naming the device, signed with another key -> ``bad_signature``;
- ``foreign_topic``: a device's own valid batch on another device's topic -> ``device_mismatch``
  (anonymous broker), or an ACL denial at the broker (dynamic security: it never reaches the bridge);
- ``oversized``: a validly signed batch above the contract's 256 KiB token limit -> ``too_large``;
- ``malformed``: a validly signed token whose payload is not JSON -> ``bad_json``
  (``params.variant = "envelope"``: not a JWS at all -> ``bad_envelope``);
- ``flood``: ``count`` validly signed batches in one burst -> ``rate_limited``: the bridge's per-device
  token bucket (``rate_limit_msgs_per_s``, ``rate_limit_burst``) refuses what exceeds the burst; what
  fits in it is stored (it is validly signed).

A byte-identical replay is a harmless duplicate by design: the agent itself resends identical
bytes when a receipt is lost, so the bridge must acknowledge it again and store nothing new. What
an attacker cannot do without the key is change a batch (``tampered_payload``), and what a holder
of the key cannot do is rewrite a stored seq (``reused_seq``).

Attack batches that are validly signed use sequence numbers from ``ATTACK_SEQ_BASE`` up, so they
never collide with the device's own seqs, and reading timestamps offset by a few milliseconds
from the sampling grid, so if one were wrongly accepted it could not overwrite an honest reading.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iot_protocol import Batch, Reading, Topics, generate_private_key, jws, seal_batch
from iot_protocol.jws import b64url_decode, b64url_encode
from iot_protocol.messages import TYP_BATCH

__all__ = ["ATTACK_SEQ_BASE", "EXPECTED", "AttackMessage", "Attacker"]

ATTACK_SEQ_BASE = 1_000_000_000

EXPECTED: dict[str, str] = {
    "tampered_payload": "bad_signature",
    "replayed_batch": "duplicate",
    "reused_seq": "replayed_seq",
    "wrong_key": "bad_signature",
    "foreign_topic": "device_mismatch",
    "oversized": "too_large",
    "malformed": "bad_json",
    "flood": "rate_limited",
}


@dataclass(frozen=True, slots=True)
class AttackMessage:
    kind: str
    topic: str
    payload: bytes
    expected: str
    seq: int | None = None
    readings: int = 0


class Attacker:
    """Builds attack messages against ``device_id`` (whose key it may hold, as a compromised device would)."""

    def __init__(
        self, topics: Topics, device_id: str, key: Ed25519PrivateKey, sensor_type: str = "environment"
    ) -> None:
        self.topics = topics
        self.device_id = device_id
        self.key = key
        self.sensor_type = sensor_type
        self._seq = itertools.count(ATTACK_SEQ_BASE + 1)

    def _readings(self, now_ms: int, n: int, *, pad: int = 0) -> tuple[Reading, ...]:
        # +7 ms off the sampling grid: an attack reading can never share a key with an honest one.
        values: dict[str, float] = {"temperature": 21.5, "humidity": 40.0}
        if pad:
            values.update({f"pad_{i:03d}": float(i) for i in range(pad)})
        return tuple(Reading(now_ms - 1000 * (n - i) + 7, self.sensor_type, values) for i in range(n))

    def _batch(self, now_ms: int, n: int = 1, *, seq: int | None = None, pad: int = 0) -> Batch:
        return Batch(
            self.device_id,
            uuid.uuid4().hex,
            next(self._seq) if seq is None else seq,
            now_ms,
            self._readings(now_ms, n, pad=pad),
        )

    def _msg(
        self, kind: str, payload: bytes, seq: int | None, n: int, topic: str | None = None
    ) -> AttackMessage:
        return AttackMessage(
            kind, topic or self.topics.telemetry(self.device_id), payload, EXPECTED[kind], seq, n
        )

    def tampered_payload(self, now_ms: int, genuine: bytes | None = None) -> AttackMessage:
        """Change a value inside a genuinely signed token and keep the old signature."""
        token = genuine if genuine is not None else seal_batch(self._batch(now_ms), self.key)
        h64, p64, s64 = token.split(b".")
        body = orjson.loads(b64url_decode(p64))
        body["readings"][0]["values"] = {k: (v + 10.0) for k, v in body["readings"][0]["values"].items()}
        forged = h64 + b"." + b64url_encode(orjson.dumps(body)) + b"." + s64
        return self._msg("tampered_payload", forged, body.get("seq"), len(body["readings"]))

    def replayed_batch(self, stored_token: bytes) -> AttackMessage:
        """Send an already-stored token again, byte for byte."""
        seq = orjson.loads(jws.decode(stored_token).payload)["seq"]
        return self._msg("replayed_batch", stored_token, seq, 0)

    def reused_seq(self, now_ms: int, stored_seq: int) -> AttackMessage:
        """A different, validly signed batch under a seq the bridge has already stored."""
        batch = self._batch(now_ms, seq=stored_seq)
        return self._msg("reused_seq", seal_batch(batch, self.key), stored_seq, 1)

    def wrong_key(self, now_ms: int) -> AttackMessage:
        batch = self._batch(now_ms)
        return self._msg("wrong_key", seal_batch(batch, generate_private_key()), batch.seq, 1)

    def foreign_topic(self, now_ms: int, victim_id: str) -> AttackMessage:
        """Our own valid batch, published on ``victim_id``'s telemetry topic."""
        batch = self._batch(now_ms)
        return self._msg(
            "foreign_topic", seal_batch(batch, self.key), batch.seq, 1, self.topics.telemetry(victim_id)
        )

    def oversized(self, now_ms: int) -> AttackMessage:
        # ~900 readings of ~320 B: above jws.MAX_TOKEN_BYTES (256 KiB), below MAX_READINGS_PER_BATCH.
        batch = self._batch(now_ms, 900, pad=20)
        token = seal_batch(batch, self.key)
        assert len(token) > jws.MAX_TOKEN_BYTES
        return self._msg("oversized", token, batch.seq, len(batch.readings))

    def malformed(self, now_ms: int, variant: str = "json") -> AttackMessage:
        if variant == "envelope":
            msg = self._msg("malformed", b"{not a jws at all", None, 0)
            return AttackMessage(msg.kind, msg.topic, msg.payload, "bad_envelope")
        token = jws.sign(b"\x00{truncated firmware output", self.key, kid=self.device_id, typ=TYP_BATCH)
        return self._msg("malformed", token, None, 0)

    def flood(self, now_ms: int, count: int) -> list[AttackMessage]:
        out = []
        for i in range(count):
            batch = self._batch(now_ms - (count - i) * 10)
            out.append(self._msg("flood", seal_batch(batch, self.key), batch.seq, 1))
        return out

    def build(
        self,
        kind: str,
        now_ms: int,
        *,
        count: int = 1,
        victim_id: str | None = None,
        stored_tokens: Sequence[bytes] = (),
        variant: str = "json",
    ) -> list[AttackMessage]:
        """Messages for one attack event of ``kind``."""
        if kind == "flood":
            return self.flood(now_ms, count)
        out: list[AttackMessage] = []
        for _ in range(count):
            if kind == "tampered_payload":
                out.append(self.tampered_payload(now_ms, stored_tokens[-1] if stored_tokens else None))
            elif kind == "replayed_batch":
                if not stored_tokens:
                    raise ValueError("replayed_batch needs a batch the device already sent")
                out.append(self.replayed_batch(stored_tokens[0]))
            elif kind == "reused_seq":
                if not stored_tokens:
                    raise ValueError("reused_seq needs a batch the device already stored")
                seq = int(orjson.loads(jws.decode(stored_tokens[0]).payload)["seq"])
                out.append(self.reused_seq(now_ms, seq))
            elif kind == "wrong_key":
                out.append(self.wrong_key(now_ms))
            elif kind == "foreign_topic":
                if victim_id is None:
                    raise ValueError("foreign_topic needs a victim device")
                out.append(self.foreign_topic(now_ms, victim_id))
            elif kind == "oversized":
                out.append(self.oversized(now_ms))
            elif kind == "malformed":
                out.append(self.malformed(now_ms, variant))
            else:
                raise ValueError(f"unknown attack {kind!r}")
        return out
