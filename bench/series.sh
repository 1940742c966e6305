#!/usr/bin/env bash
# Issue 20's benchmarks, one after another (never two at once: each measures the machine), with the
# time and load average of each start and end in $OUT/series.log and each benchmark's output in
# $OUT/<name>.log (its last line is one JSON object). About 25 minutes on a quiet 2-core machine.
#   bench/series.sh                 # OUT=/tmp/bench-series
#   OUT=/tmp/mine bench/series.sh
# The peer benchmark needs Node-RED (bench/peer_nodered.py says how to install it); without it, it
# prints that and a null peer, and the series goes on.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT="${OUT:-/tmp/bench-series}"
mkdir -p "$OUT"
log() { echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) $*" | tee -a "$OUT/series.log"; }
log "start at $(git rev-parse --short HEAD)"
for i in 1 2 3; do
  log "ingest $i"; $PY bench/ingest.py > "$OUT/ingest$i.log" 2>&1; log "ingest $i rc=$?"
done
log "peer"; $PY bench/peer_nodered.py --rounds 3 > "$OUT/peer.log" 2>&1; log "peer rc=$?"
for i in 1 2 3; do
  log "agent $i"; $PY bench/agent_footprint.py > "$OUT/agent$i.log" 2>&1; log "agent $i rc=$?"
done
for i in 1 2 3; do
  log "sim $i"; $PY bench/sim_scale.py --interval 30 --steady 30 > "$OUT/sim$i.log" 2>&1; log "sim $i rc=$?"
done
log "done"
