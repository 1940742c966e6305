"""Settings of rollouts and releases (``RolloutSettings``, environment ``EDU_ROLLOUT_*``), built at
the entry point with the cloud's settings and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RolloutSettings"]


class RolloutSettings(BaseSettings):
    """Every field can be set by ``EDU_ROLLOUT_<FIELD>``. Paths left unset live in the cloud's state dir."""

    model_config = SettingsConfigDict(env_prefix="EDU_ROLLOUT_", extra="ignore", validate_default=True)

    engine: bool = Field(
        default=True,
        description="Run the rollout engine in this API process. Replicas may all run it: a database "
        "lease makes exactly one of them active at a time.",
    )
    tick_s: float = Field(default=2.0, gt=0, le=300, description="Seconds between two engine steps.")
    lease_ttl_s: float = Field(
        default=15.0,
        gt=0,
        description="The engine's lease lasts this long unless renewed (each step renews it); when the "
        "active replica dies, another takes over after at most this long.",
    )
    artifact_dir: Path | None = Field(
        default=None,
        description="Where release artifacts are stored (a volume shared by API replicas in production). "
        "Unset: <state_dir>/artifacts.",
    )
    release_signing_key_path: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs release manifests, distinct from the config key. "
        "Unset: <state_dir>/release-signing.pem, created once with mode 0600, unless release_public_key is "
        "set (manifests are then signed offline with `iotctl release sign` and the API holds no private key).",
    )
    release_public_key: str | None = Field(
        default=None,
        description="The release public key (unpadded base64url) when the private key is kept offline: "
        "uploaded manifests must verify with it; devices receive it at enrollment.",
    )
    public_api_url: str | None = Field(
        default=None,
        description="The API URL devices download artifacts from (one they can reach). "
        "Unset: http://<api_host>:<api_port>.",
    )
    download_max_age_s: float = Field(
        default=300.0, gt=0, description="A device's signed download request is accepted this long (clock skew)."
    )
    default_wave_wait_s: float = Field(
        default=600.0, ge=0, description="Wait after each wave's devices updated, when a rollout gives none."
    )
    default_apply_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A connected device that has not applied (or confirmed) its update this long after it "
        "was sent has failed, when a rollout gives no apply timeout.",
    )
    max_artifact_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest artifact an upload may carry."
    )
