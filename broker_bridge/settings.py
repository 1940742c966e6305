"""BridgeSettings: every knob of the ingest bridge, documented where it is defined.

Built once at the entry point (``iotctl bridge run``, ``iotctl up``, tests) and passed down.
Environment variables use the prefix ``EDU_BRIDGE_`` (``EDU_BRIDGE_MQTT_URL=mqtt://...``).
"""

from __future__ import annotations

import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["BridgeSettings"]


def _default_client_id() -> str:
    return f"edu-bridge-{socket.gethostname()}-{os.getpid()}"[:64]


class BridgeSettings(BaseSettings):
    """Settings of one bridge replica. Timing constants are fields so tests set them, not patch them."""

    model_config = SettingsConfigDict(env_prefix="EDU_BRIDGE_", extra="forbid", frozen=True)

    # --- broker -------------------------------------------------------------------------------------
    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883", description="Broker URL, mqtt://host:port (or mqtts://host:port for TLS)."
    )
    tls_ca_file: str | None = Field(
        None, description="mqtts: trust only this CA certificate (PEM); unset: the system's trusted CAs."
    )
    tls_client_cert: str | None = Field(None, description="mqtts with mTLS: client certificate (PEM).")
    tls_client_key: str | None = Field(None, description="Its private key (PEM).")
    mqtt_username: str | None = Field(None, description="Service-account user name (dynamic security).")
    mqtt_password: SecretStr | None = Field(None, description="Service-account password.")
    topic_prefix: str = Field("edu", description="Topic prefix shared with the devices.")
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version: 5 for shared subscriptions (replicas); 3.1.1 for the amqtt fallback "
        "(one replica, plain subscription; the broker's inflight limit then bounds the backlog).",
    )
    share_group: str = Field("bridge", description="MQTT 5 shared-subscription group; replicas split its load.")
    client_id: str = Field(
        default_factory=_default_client_id,
        description="MQTT client id. Keep it stable per replica: a restarted replica resumes its persistent "
        "session and receives the messages it had not acknowledged.",
    )
    session_expiry_s: int = Field(3600, ge=0, description="How long the broker keeps the session while away.")
    keepalive_s: int = Field(30, ge=5, le=65535)
    receive_maximum: int = Field(
        10000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: unacknowledged messages the broker may send us. This is the "
        "backpressure: when writes stall nothing is acknowledged and the broker stops sending at this many.",
    )
    # --- sinks --------------------------------------------------------------------------------------
    db_url: str = Field("sqlite:///meta.db", description="Metadata DB: devices, dead letters, ledger.")
    tsdb_url: str = Field("sqlite:///readings.db", description="Time-series store (influxdb://host:port/db).")
    cache_url: str = Field("memory://", description="Latest-reading cache and event stream (redis://...).")
    # --- batching and backpressure ------------------------------------------------------------------
    # Measured (docs/performance.md): units of up to 20,000 points, 5,000 messages or 0.2 s took
    # 109-118k readings/s at 50 readings/msg where 5,000 / 2,000 / 0.05 s took 94-109k in the same
    # hour (fewer InfluxDB requests, ledger lookups and receipt flushes), for a p99 of 0.27-0.34 s.
    batch_max_points: int = Field(20_000, ge=1, description="Flush a write when it holds this many points...")
    batch_max_messages: int = Field(5_000, ge=1, description="...or this many messages...")
    batch_max_delay_s: float = Field(0.2, gt=0, description="...or when its oldest message waited this long.")
    max_backlog: int = Field(
        20000,
        ge=1,
        description="Messages held in memory (received, not yet acknowledged) at most. The "
        "broker enforces it through Receive Maximum (which must not exceed it); /ready reports a full backlog.",
    )
    receipt_interval_s: float = Field(
        0.1,
        ge=0,
        description="Receipts are cumulative per device: at most one publish per device per this "
        "interval, naming every batch written since (0 = one per device per write).",
    )
    receipts_held_max: int = Field(
        100_000,
        ge=1,
        description="Receipts held while their ledger rows cannot be written (metadata DB down): a receipt "
        "is sent only once the batch's replay state is durable. Beyond this many, the oldest are dropped "
        "(counted in bridge_ledger_rows_dropped_total) and their devices resend.",
    )
    sink_unready_after_s: float = Field(
        30.0,
        gt=0,
        description="/ready turns 503 when a sink (time-series store, ledger, metadata DB, cache) has been "
        "failing for this long; bridge_sink_up{sink} shows each one.",
    )
    retry_initial_s: float = Field(0.2, gt=0, description="First retry delay of a failed write.")
    retry_max_s: float = Field(5.0, gt=0, description="Retry delay cap (exponential backoff with jitter).")
    # --- rate limiting ------------------------------------------------------------------------------
    rate_limit_msgs_per_s: float = Field(
        20.0,
        ge=0,
        description="Per-device token bucket on telemetry messages, by arrival time, before verification: "
        "refill rate in messages/s (0 = off). A message over the limit is dead-lettered 'rate_limited', "
        "acknowledged and receipted as a retry (with after_ms, when a token will be free), so the device "
        "resends it then. Buckets are per replica: with N replicas a device may get up to N times the limit.",
    )
    rate_limit_burst: int = Field(200, ge=1, description="Bucket size: messages a device may send at once.")
    # --- class quotas (broker_bridge/quota.py) ----------------------------------------------------------
    quotas: bool = Field(
        True,
        description="Enforce class quotas (readings/s per device and per class, stored bytes per class): a "
        "message over one is rejected 'quota_exceeded' like 'rate_limited'. Devices in no class cost one dict lookup.",
    )
    quota_refresh_s: float = Field(
        5.0, gt=0, description="How often quotas are re-read and stored bytes written to class_usage."
    )
    quota_lease_s: float = Field(
        1.0,
        gt=0,
        description="Seconds of a bucket's rate one replica takes from the shared bucket at a time (fewer "
        "cache round trips; a replica may hold this much unused for a while).",
    )
    quota_burst_s: float = Field(2.0, gt=0, description="Bucket size in seconds of its rate.")
    # --- verification -------------------------------------------------------------------------------
    key_cache_ttl_s: float = Field(30.0, gt=0, description="Device directory refresh period.")
    max_clock_skew_s: float = Field(300.0, ge=0, description="How far in the future a reading's ts may be.")
    # --- side effects -------------------------------------------------------------------------------
    effects_interval_s: float = Field(
        0.5,
        gt=0,
        description="Period of the side-effect flush (last_seen, "
        "dead letters, ledger rows, latest cache, event stream).",
    )
    deadletter_buffer_max: int = Field(
        10000, ge=1, description="Dead letters held while the DB is down; beyond it they are dropped and counted."
    )
    event_buffer_max: int = Field(10000, ge=1, description="Stream events held while the cache is down.")
    latest_ttl_s: int = Field(86400, ge=1, description="TTL of the latest-reading cache key per device.")
    stream_name: str = Field("edu:readings", description="Cache stream with one event per accepted batch.")
    stream_maxlen: int = Field(100000, ge=1, description="Approximate cap of the event stream's length.")
    switch_interval_s: float | None = Field(
        0.0005,
        gt=0,
        description="Python's GIL switch interval for a bridge process run by run_bridge (the "
        "default 5 ms makes the network thread wait behind the writer after every socket call; None keeps it).",
    )
    gc_threshold: int | None = Field(
        500_000,
        ge=1,
        description="Net allocations between young-generation garbage collections in a bridge process run "
        "by run_bridge (objects alive at startup are frozen out of collection too); None keeps Python's "
        "default of 700. Measured at 50 readings/msg: 50,000 spent 11% of the bridge's CPU in the collector "
        "(each collection walks every live in-flight reading), 500,000 under 1% at the same peak memory.",
    )
    # --- observability ------------------------------------------------------------------------------
    metrics_port: int | None = Field(
        9108, ge=0, le=65535, description="/health /ready /metrics; 0 = any free port, None = off."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics server binds to.")
    sys_topics: bool = Field(True, description="Subscribe to $SYS to export the broker's dropped-message count.")

    @model_validator(mode="after")
    def _check(self) -> BridgeSettings:
        parts = urlsplit(self.mqtt_url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
            raise ConfigError(f"mqtt_url {self.mqtt_url!r}: use mqtt://host:port or mqtts://host:port")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ConfigError("tls_client_cert and tls_client_key go together: set both or neither")
        if self.receive_maximum > self.max_backlog:
            raise ConfigError("receive_maximum must be <= max_backlog: the broker may send that many unacked")
        if self.retry_max_s < self.retry_initial_s:
            raise ConfigError("retry_max_s must be >= retry_initial_s")
        return self

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        return urlsplit(self.mqtt_url).port or (8883 if self.mqtt_tls else 1883)

    @property
    def mqtt_tls(self) -> bool:
        return self.mqtt_url.startswith("mqtts://")
