"""The console's settings (``ConsoleSettings``, ``EDU_CONSOLE_*``): how often the live stream looks
for new readings, how much it sends, and the windows of the fleet page's rates."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseSettings):
    """Every field can be set by an environment variable ``EDU_CONSOLE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="EDU_CONSOLE_", extra="ignore")

    live_poll_s: float = Field(
        0.5, gt=0, le=60, description="How often a live stream asks the store for readings newer than it sent."
    )
    live_backfill_s: float = Field(
        600.0, gt=0, description="A new live stream first sends this much history before the newest reading."
    )
    live_max_rows: int = Field(
        5000, gt=0, description="Most rows one poll of a live stream sends (the rest come at the next poll)."
    )
    live_heartbeat_s: float = Field(
        15.0, gt=0, description="A comment line on an idle stream this often, so proxies keep it open."
    )
    rate_window_s: int = Field(
        60, gt=0, description="The fleet page's readings/s: readings stamped in the last this many seconds."
    )
    rejections_window_s: float = Field(3600.0, gt=0, description="The fleet page counts dead letters this far back.")
    simulator_key_ttl_s: float = Field(
        900.0, gt=0, description="Life of the API key a simulation run registers and enrolls its devices with."
    )
