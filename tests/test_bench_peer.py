"""bench/peer_nodered.py without Node-RED: it installs nothing, says how to install, exits 0, peer null."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "peer_nodered.py"


def test_without_node_red_it_prints_the_install_line_and_a_null_peer(tmp_path: Path) -> None:
    prefix = tmp_path / "no-node-red-here"
    env = {**os.environ, "EDU_NODERED_PREFIX": str(prefix)}
    r = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    install = f"npm install --prefix {prefix} node-red@4.1 node-red-contrib-influxdb@0.7.0"
    assert last["peer"] is None
    assert last["install"] == install
    assert last["targets"] == {"ratio_single_to_peer": 0.5, "ratio_batch50_to_peer": 2.0}
    assert install in r.stderr  # told to the reader, not only to a parser
    assert not prefix.exists()  # nothing installed, nothing created


def test_a_prefix_with_node_red_but_not_the_influxdb_nodes_is_not_enough(tmp_path: Path) -> None:
    red = tmp_path / "node_modules" / "node-red"
    red.mkdir(parents=True)
    (red / "red.js").write_text("// a stub: the benchmark must not run it without the influxdb nodes\n")
    r = subprocess.run(
        [sys.executable, str(BENCH), "--prefix", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["peer"] is None
    assert "node-red-contrib-influxdb@0.7.0" in last["install"]
