#!/usr/bin/env bash
# Streaming responses (issue #19): the three measurements of
# benches/streaming-rule.md, in one run, release build, loopback only.
#
#   benches/streaming.sh                 everything (about 6 minutes)
#   PARTS="ttfb" benches/streaming.sh    only some of: ttfb rss throughput
#
# Three edges from edge-config/three-edges.toml as three `fnroute serve`
# processes (fra, nyc, sin) on ports 47433 (QUIC and TCP), 47300 (DNS) and
# 47180 (admin), all pinned to core $SRV_CPU; clients on core $LG_CPU.
#   ttfb:       examples/stream_ttfb, 200 sequential invocations per run of a
#               function on sin whose first chunk is its own `date +%s%N`:
#               through fra (one mesh hop) and straight to sin (no hop),
#               alternating, $REPS runs each.
#   rss:        1 GiB from a function on sin through fra (HTTP/2, curl
#               --limit-rate 32M, about 32 s); VmRSS of fra and sin every
#               100 ms against their VmRSS after a 64 MiB warm-up stream.
#   throughput: h3load, one connection, one request at a time, for $DUR:
#               100 MiB streamed by a function on fra, against
#               examples/quic_source sending 100 MiB per raw QUIC stream
#               (same quinn, default transport settings on both), alternating,
#               $REPS runs each.
# Env: REPS (3) DUR (15s) SRV_CPU (0) LG_CPU (1) PARTS PEERS_DIR (/tmp/fnroute-peers:
#      h3load, as benches/h3-vs-peers.sh sets it up) OUT (benches/results/streaming-<date>.txt)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${REPS:-3}
DUR=${DUR:-15s}
SRV_CPU=${SRV_CPU:-0}
LG_CPU=${LG_CPU:-1}
PARTS=${PARTS:-ttfb rss throughput}
PEERS_DIR=${PEERS_DIR:-/tmp/fnroute-peers}
H3LOAD=$PEERS_DIR/tools/h3load/target/release/h3load
STATE=${STATE:-/tmp/fnroute-stream-bench}
OUT=${OUT:-$ROOT/benches/results/streaming-$(date +%F).txt}
BIN=$ROOT/target/release/fnroute
EX=$ROOT/target/release/examples

log() { echo "[$(date +%T)] $*" | tee -a "$OUT" >&2; }

if [[ ! -x $H3LOAD ]]; then
  mkdir -p "$PEERS_DIR" && cp -r "$ROOT/../shared/bench" "$ROOT/../shared/tools" "$PEERS_DIR/"
  (cd "$PEERS_DIR/tools/h3load" && cargo build --release -q)
fi
cargo build --release --locked -q --bin fnroute --example stream_ttfb --example quic_source

rm -rf "$STATE" && mkdir -p "$STATE"
: >"$OUT"
log "benches/streaming.sh at $(git rev-parse --short HEAD), REPS=$REPS DUR=$DUR SRV_CPU=$SRV_CPU LG_CPU=$LG_CPU"
log "load before: $(cut -d' ' -f1-3 /proc/loadavg); busiest: $(ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p | tr -s ' ' | paste -sd';')"

# The topology: three-edges.toml on other ports, absolute paths, and the
# benchmark's functions.
TOPO=$STATE/topology.toml
{
  echo "state_dir = \"$STATE/state\""
  sed -e "s#\"\\.\\./geo/#\"$ROOT/geo/#" -e "s#\"dev-certs/#\"$ROOT/edge-config/dev-certs/#g" \
    -e 's/:4433"/:47433"/' -e 's/:5300"/:47300"/' -e 's/:9180"/:47180"/' \
    edge-config/three-edges.toml
  cat <<'EOF'

[[function]]
name = "first"
edges = ["sin"]
streaming = true
executor = { kind = "command", command = ["sh", "-c", "date +%s%N; sleep 0.02"] }

[[function]]
name = "zeros100"
edges = ["fra"]
streaming = true
max_stream_bytes = 209715200
executor = { kind = "command", command = ["head", "-c", "104857600", "/dev/zero"] }

[[function]]
name = "zeros"
edges = ["sin"]
streaming = true
max_stream_bytes = 2147483648
timeout_ms = 900000
executor = { kind = "command", command = ["sh", "-c", "head -c $(cat) /dev/zero"] }
EOF
} >"$TOPO"
grep -q 'functions/' "$TOPO" && sed -i "s#\"functions/#\"$ROOT/edge-config/functions/#g" "$TOPO"
"$BIN" check "$TOPO" >/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
declare -A PID
for node in fra nyc sin; do
  taskset -c "$SRV_CPU" "$BIN" serve --config "$TOPO" --node "$node" 2>"$STATE/$node.log" &
  PID[$node]=$!
  PIDS+=("$!")
done
for _ in $(seq 100); do
  curl -sk -o /dev/null -X POST https://127.0.0.11:47433/fn/zeros100 --max-time 5 -H 'fnroute-timeout-ms: 1000' && break
  sleep 0.2
done
sleep 3 # probes mark every peer up

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

if [[ $PARTS == *ttfb* ]]; then
  log "== ttfb: 200 sequential invocations of 'first' (on sin) per run; µs from the function's write to the client's read"
  for rep in $(seq "$REPS"); do
    for path in hop:127.0.0.11 direct:127.0.0.13; do
      log "-- ttfb run $rep, ${path%%:*} (client -> ${path#*:}:47433)"
      taskset -c "$LG_CPU" "$EX/stream_ttfb" "${path#*:}:47433" localhost first 200 >"$STATE/ttfb.txt"
      tail -1 "$STATE/ttfb.txt" | sed "s/^/ttfb ${path%%:*} run=$rep /" | tee -a "$OUT"
    done
  done
fi

if [[ $PARTS == *rss* ]]; then
  log "== rss: 1 GiB from sin through fra to curl --http2 --limit-rate 32M"
  curl -sSk --http2 -o /dev/null --data 67108864 https://127.0.0.11:47433/fn/zeros
  base_fra=$(rss "${PID[fra]}") base_sin=$(rss "${PID[sin]}")
  peak_fra=$base_fra peak_sin=$base_sin
  start=$(date +%s.%N)
  taskset -c "$LG_CPU" curl -sSk --http2 -N --limit-rate 32M -o /dev/null \
    -w 'curl: %{size_download} bytes, %{speed_download} B/s, exit ok\n' \
    --data 1073741824 https://127.0.0.11:47433/fn/zeros >"$STATE/curl.txt" &
  cpid=$!
  while kill -0 "$cpid" 2>/dev/null; do
    f=$(rss "${PID[fra]}") s=$(rss "${PID[sin]}")
    ((f > peak_fra)) && peak_fra=$f
    ((s > peak_sin)) && peak_sin=$s
    sleep 0.1
  done
  wait "$cpid"
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  tee -a "$OUT" <"$STATE/curl.txt"
  echo "rss fra base_kib=$base_fra peak_kib=$peak_fra growth_kib=$((peak_fra - base_fra))" | tee -a "$OUT"
  echo "rss sin base_kib=$base_sin peak_kib=$peak_sin growth_kib=$((peak_sin - base_sin))" | tee -a "$OUT"
  echo "rss seconds=$secs" | tee -a "$OUT"
fi

if [[ $PARTS == *throughput* ]]; then
  log "== throughput: 100 MiB per request, -c 1 -s 1 -d $DUR"
  taskset -c "$SRV_CPU" "$EX/quic_source" 127.0.0.1:47501 104857600 &
  PIDS+=("$!")
  sleep 1
  for rep in $(seq "$REPS"); do
    log "-- throughput run $rep, fnroute (h3, POST /fn/zeros100 on fra)"
    taskset -c "$LG_CPU" "$H3LOAD" --url https://127.0.0.11:47433/fn/zeros100 --method POST \
      -c 1 -s 1 -d "$DUR" --timeout 60s --insecure | tee -a "$OUT"
    log "-- throughput run $rep, quinn-source (raw QUIC, ALPN source)"
    taskset -c "$LG_CPU" "$H3LOAD" --url https://127.0.0.1:47501/ --raw --alpn source --body-size 0 \
      -c 1 -s 1 -d "$DUR" --timeout 60s --insecure | tee -a "$OUT"
  done
fi
log "done; edge logs in $STATE/*.log"
