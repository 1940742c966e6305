"""bench/agent_footprint.py's import breakdown charges the agent only for libraries it really mapped.

On plain MQTT the agent refuses ``_hashlib`` and ``ssl`` (libcrypto, libssl: ~4 MB); its ``-X
importtime`` list still names them, so the replay must refuse them too, or the report shows megabytes
the agent never had."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "agent_footprint.py"


def _bench() -> ModuleType:
    if str(BENCH.parent) not in sys.path:  # as when run as a script: its sibling benchargs
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("agent_footprint_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _importtime(*modules: str) -> str:
    return "".join(f"import time:       100 |        100 | {m}\n" for m in modules)


def test_a_library_the_agent_never_mapped_is_not_charged() -> None:
    bench = _bench()
    log = _importtime("_hashlib", "hashlib")
    _, refused = bench.import_breakdown(log, ["libcrypto", "libssl"])
    _, loaded = bench.import_breakdown(log, [])
    assert refused.get("hashlib (libcrypto)", 0.0) < 1.0
    assert loaded["hashlib (libcrypto)"] > 1.5  # the replay does see libcrypto when the agent had it
