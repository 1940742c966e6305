"""The cloud's settings (``CloudSettings``): read from ``EDU_*`` environment variables, built once at
the entry point (``iotctl api``, ``iotctl up``, a test) and passed down; never built at import time."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..paths import default_state_dir

__all__ = ["CloudSettings"]


class CloudSettings(BaseSettings):
    """Settings of the cloud services (registry, REST API, config rollout, device events).

    Every field can be set by an environment variable named ``EDU_<FIELD>`` (upper case), e.g.
    ``EDU_DB_URL=postgresql://edu@db/edu``.
    """

    model_config = SettingsConfigDict(env_prefix="EDU_", extra="ignore", validate_default=True)

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Directory for local state: embedded databases, the config-signing key, admin.token.",
    )
    db_url: str = Field(
        default="",
        description="Metadata database: sqlite:///PATH (embedded) or postgresql://... "
        "Empty means sqlite:///<state_dir>/meta.db.",
    )
    tsdb_url: str = Field(
        default="",
        description="Time-series store: sqlite:///PATH or influxdb://host:port/db. "
        "Empty means sqlite:///<state_dir>/readings.db.",
    )
    cache_url: str = Field(
        default="memory://", description="Cache / dedup / event stream: memory:// or redis://host:port/n."
    )
    mqtt_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="How cloud services reach the MQTT broker (mqtt://host:port).",
    )
    public_mqtt_url: str = Field(
        default="",
        description="The broker URL devices are told at enrollment (one they can reach). "
        "Empty means mqtt_url.",
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA certificate (PEM) of the broker's TLS listener. Sent to every device at enrollment "
        "(mqtt_ca_pem), which then trusts only it; the cloud's own clients use it for mqtts:// URLs. "
        "Unset: devices use their system's trusted CAs (a broker certificate from a public CA).",
    )
    mqtt_username: str = Field(
        default="edu-cloud",
        description="The cloud services' MQTT service account (may publish and subscribe anything under the "
        "topic prefix, including $share subscriptions).",
    )
    mqtt_password: SecretStr | None = Field(
        default=None,
        description="Password of the service account. Unset: generated once and kept in "
        "<state_dir>/mqtt-service.secret (mode 0600).",
    )
    mqtt_admin_username: str | None = Field(
        default=None,
        description="Mosquitto dynamic-security admin user, used to provision device credentials and ACLs. "
        "Unset: the broker is unmanaged (development only: it enforces nothing).",
    )
    mqtt_admin_password: SecretStr | None = Field(
        default=None, description="Password of mqtt_admin_username."
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT version the cloud services speak. 5 (Mosquitto, EMQX, ...) lets several replicas "
        "share a subscription; 3.1.1 is for the in-process amqtt fallback broker (one replica).",
    )
    mqtt_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a broker connect, PUBACK or reply."
    )
    topic_prefix: str = Field(default="edu", description="Every topic lives under <prefix>/devices/<id>/...")
    config_signing_key_path: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs desired configs. "
        "Unset: <state_dir>/config-signing.pem, "
        "created once with mode 0600.",
    )
    enrollment_token_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="Seconds an enrollment token stays valid (one use only)."
    )
    api_host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    api_port: int = Field(default=8080, ge=0, le=65535, description="Port the REST API listens on.")
    api_tls_cert_file: Path | None = Field(
        default=None,
        description="Serve HTTPS with this certificate (PEM; from `iotctl pki issue api`). Unset: plain HTTP "
        "(behind an Ingress that terminates TLS, or on loopback).",
    )
    api_tls_key_file: Path | None = Field(default=None, description="The private key of api_tls_cert_file.")
    bootstrap_admin_username: str = Field(
        default="admin",
        description="User created at first start (no users yet); its API token is written to "
        "<state_dir>/admin.token (mode 0600).",
    )
    heartbeat_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between a device's health messages that the cloud expects."
    )
    stale_after_s: float = Field(
        default=90.0,
        gt=0,
        description="Silence (no heartbeat, telemetry or presence) after which an online device is stale.",
    )
    offline_after_s: float = Field(
        default=300.0,
        gt=0,
        description="Silence after which a device is offline even if no last will arrived.",
    )
    events_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds the device-events consumer batches presence/health updates before writing.",
    )
    ingest_receipt_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="POST /v1/data/ingest waits this long for the bridge's receipt, then answers 503 "
        "(the device resends the same bytes later).",
    )
    log_level: str = Field(default="INFO", description="Log level of the JSON logs on stderr.")
    db_auto_migrate: bool = Field(
        default=True,
        description="Migrate an older metadata schema at start. Off: refuse it until 'iotctl db upgrade' runs "
        "(the Helm chart migrates in a hook first). A schema newer than this release is always refused.",
    )
    # --- people: sign-in, tokens, brute-force limits ----------------------------------------------
    access_token_ttl_s: float = Field(
        default=900.0, gt=0, description="Lifetime of an access token (JWT). Short: a refresh token renews it."
    )
    refresh_token_ttl_s: float = Field(
        default=14 * 86400.0, gt=0, description="Lifetime of a refresh token (each use replaces it)."
    )
    login_window_s: int = Field(
        default=900, gt=0, description="Failed logins are counted in windows of this many seconds."
    )
    login_max_per_user_address: int = Field(
        default=5, ge=1, description="Failed logins per window for one username from one address."
    )
    login_max_per_user: int = Field(
        default=20, ge=1, description="Failed logins per window for one username from anywhere."
    )
    login_max_per_address: int = Field(
        default=50, ge=1, description="Failed logins per window from one address, whatever the username."
    )
    password_time_cost: int = Field(
        default=3, ge=1, le=20, description="Argon2id passes per password hash (cost of every login)."
    )
    password_memory_kib: int = Field(
        default=65536,
        ge=1024,
        description="Argon2id memory per password hash in KiB (64 MiB: RFC 9106's low-memory profile, ~50-150 ms "
        "a login here). Lower only for tests.",
    )
    cookie_secure: bool | None = Field(
        default=None,
        description="Mark the sign-in cookies Secure (HTTPS only). None: when the request came over HTTPS.",
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> CloudSettings:
        if not self.db_url:
            self.db_url = f"sqlite:///{self.state_dir / 'meta.db'}"
        if not self.tsdb_url:
            self.tsdb_url = f"sqlite:///{self.state_dir / 'readings.db'}"
        if not self.public_mqtt_url:
            self.public_mqtt_url = self.mqtt_url
        if self.config_signing_key_path is None:
            self.config_signing_key_path = self.state_dir / "config-signing.pem"
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("api_tls_cert_file and api_tls_key_file go together: set both or neither")
        if not self.stale_after_s < self.offline_after_s:
            raise ValueError("stale_after_s must be less than offline_after_s")
        return self

    @property
    def signing_key_path(self) -> Path:
        assert self.config_signing_key_path is not None  # filled by _fill_defaults
        return self.config_signing_key_path

    def service_password(self) -> str:
        """The service account's MQTT password: ``mqtt_password``, or the one generated in the state dir."""
        if self.mqtt_password is not None:
            return self.mqtt_password.get_secret_value()
        from .security import load_or_create_secret

        return load_or_create_secret(self.state_dir / "mqtt-service.secret")

    @property
    def admin_token_path(self) -> Path:
        return self.state_dir / "admin.token"

    @property
    def mqtt_tls(self) -> bool:
        """Whether the cloud's own clients connect with TLS (an mqtts:// mqtt_url)."""
        return self.mqtt_url.startswith("mqtts://")

    def mqtt_tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of the cloud's own MQTT clients: None for mqtt://; for mqtts://, one trusting
        :attr:`mqtt_ca_file` (or the system's CAs)."""
        if not self.mqtt_tls:
            return None
        from iot_protocol.tls import client_context

        return client_context(self.mqtt_ca_file)

    @property
    def mqtt_host_port(self) -> tuple[str, int]:
        """(host, port) of :attr:`mqtt_url`."""
        return parse_mqtt_url(self.mqtt_url)


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> (host, port); the port defaults to 1883 (8883 for
    mqtts). Raises ValueError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "tcp", "mqtts"):
        raise ValueError(f"unsupported MQTT URL {url!r}: use mqtt://host:port or mqtts://host:port")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host:
        return rest.rstrip("/"), 8883 if scheme == "mqtts" else 1883
    return host, int(port)
