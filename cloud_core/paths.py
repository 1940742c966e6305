"""Where the embedded mode keeps its state, so ``iotctl up``, ``iotctl query`` and ``iotctl db`` agree."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_db_url", "default_state_dir", "default_tsdb_url"]


def default_state_dir() -> Path:
    """``$EDU_STATE_DIR`` if set, else platformdirs' user data dir for "edu-platform". Not created here."""
    env = os.environ.get("EDU_STATE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("edu-platform"))


def default_tsdb_url() -> str:
    """The embedded time-series store: ``sqlite:///<state dir>/readings.db``."""
    return f"sqlite:///{default_state_dir() / 'readings.db'}"


def default_db_url() -> str:
    """The embedded metadata database: ``sqlite:///<state dir>/meta.db``."""
    return f"sqlite:///{default_state_dir() / 'meta.db'}"
