#!/usr/bin/env bash
# Control plane (issue #18): time from `fnroute deploy` returning to every
# edge serving the new revision.
#
#   EDGES=3|50 DEPLOYS=20 FNROUTE=target/release/fnroute benches/control-deploy.sh
#   (PAUSE_S=1 between deploys by default; at 50 edges use PAUSE_S=3: every
#   artifact fetch holds a consumer on the artifact stream for 30 s and
#   nats-server 2.15 allows 1000 per stream, so 50 edges deploying every
#   ~1.2 s run out after 18 deploys and refuse the 19th; see
#   docs/performance.md. The consumer count is printed after each deploy.)
#
# What it runs, all on this machine:
# - one nats-server with JetStream (random loopback port, store in a
#   temporary directory);
# - EDGES separate `fnroute serve --control URL --node eNN --control-trust
#   KEY.pub --state-dir DIR` processes (one process per edge), edge i on its
#   own loopback address 127.0.2.i with DNS 15300/udp+tcp, QUIC 14433/udp,
#   HTTPS-over-TCP 14433/tcp and admin 19180/tcp (the same ports on every
#   address; never the defaults 5300/4433/9180 a user's edges may be on);
# - no [mesh]: the edges stand alone (the control plane does not need the
#   mesh, and it keeps 50 edges from probing each other 2,450 ways);
# - a topology with the repo's geo/sample.mmdb, a `command` function `ver`
#   (`sh -c 'cat >/dev/null; echo vK'`) and a `bundle` function `app`
#   (run.sh answering `bundle-vK`), so every deploy moves a new bundle
#   artifact as well as new topology text.
#
# Deploy v1, start the edges, wait until every edge reports it. Then
# DEPLOYS times: change the version, `fnroute deploy --key` (signed), take
# the wall clock right after it returns (`date +%s%3N`), wait until every
# edge reports the new revision in the KV bucket (`fnroute`, `edge.<name>`)
# and compute
#     latency = max over edges(since_ms) - deploy_return_ms
# where since_ms is the edge's own clock reading of when it began serving
# the revision (written after the live reload returned): how often the
# script polls does not count. Every edge's since_ms is printed.
# Waiting is done by reading each edge's state-dir copy of its report
# (`applied.json`, written just before the same report is put in KV: one
# cheap `cat` per poll instead of a NATS client per poll on a 2-core
# machine running 50 edges); the figures are then taken from the KV
# reports themselves (`fnroute control status`), which must agree.
#
# A run is invalid (exit 1, "INVALID" printed) if any deploy fails, any
# edge refuses a revision, or any edge misses a revision (TIMEOUT_S).
# p50/p99 are nearest-rank: with 20 samples p99 is the 20th, the max.
set -euo pipefail

EDGES=${EDGES:-3}
DEPLOYS=${DEPLOYS:-20}
REPO=$(cd "$(dirname "$0")/.." && pwd)
FNROUTE=${FNROUTE:-$REPO/target/release/fnroute}
NATS_SERVER=${NATS_SERVER:-nats-server}
PAUSE_S=${PAUSE_S:-1}        # between deploys
POLL_S=${POLL_S:-0.05}       # polling interval
TIMEOUT_S=${TIMEOUT_S:-60}   # an edge that has not reported by then missed it
DNS_PORT=15300 QUIC_PORT=14433 ADMIN_PORT=19180
COMMIT=${COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}

if [ "$EDGES" -lt 1 ] || [ "$EDGES" -gt 254 ]; then
  echo "EDGES must be 1..254" >&2
  exit 2
fi
FNROUTE=$(command -v "$FNROUTE" || true)
[ -x "$FNROUTE" ] || { echo "FNROUTE: no such binary" >&2; exit 2; }

work=$(mktemp -d /tmp/fnroute-control-deploy.XXXXXX)
nats_pid=""
edge_pids=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${edge_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${edge_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${edge_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${edge_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$nats_pid" ]; then
    kill -TERM "$nats_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$nats_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
  fi
  local left=0
  for p in "${edge_pids[@]}" $nats_pid; do kill -0 "$p" 2>/dev/null && left=$((left + 1)); done
  local ports
  ports=$(ss -Hlntu 2>/dev/null | grep -c ' 127\.0\.2\.[0-9]*:' || true)
  echo "cleanup: $left of our processes left, $ports sockets listening on 127.0.2.*"
  if [ "$rc" != 0 ] && [ -d "$work" ]; then
    echo "--- warnings and errors in the logs (at most 40 lines):"
    grep -H -E 'WARN|ERROR|panicked' "$work"/logs/*.log | sed 's/\x1b\[[0-9;]*m//g' | head -n 40 || true
  fi
  [ "${KEEP:-0}" = 1 ] && echo "kept $work" || rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms() { date +%s%3N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
name() { printf 'e%02d' "$1"; }
ip() { echo "127.0.2.$1"; }

echo "== control-deploy: EDGES=$EDGES DEPLOYS=$DEPLOYS"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "commit: $COMMIT"
echo "binary: $FNROUTE sha256 $(sha256sum "$FNROUTE" | cut -d' ' -f1)"
echo "nats-server: $("$NATS_SERVER" --version 2>&1 | head -n1)"
echo "machine: $(nproc) CPUs, $(uname -sr), $(awk '/MemTotal/ {print int($2/1024) " MB"}' /proc/meminfo)"
echo "load at start (1/5/15 min): $(load)"
echo "pause between deploys: ${PAUSE_S}s, poll every ${POLL_S}s"
echo "edges: $EDGES separate fnroute serve --control processes on 127.0.2.1..$EDGES, no [mesh]"

busy=$(ss -Hlntu 2>/dev/null | grep -E " 127\.0\.2\.[0-9]+:($DNS_PORT|$QUIC_PORT|$ADMIN_PORT) " || true)
if [ -n "$busy" ]; then
  echo "ports already in use on 127.0.2.*:" >&2
  echo "$busy" >&2
  exit 2
fi

mkdir -p "$work/nats/ports" "$work/src/app" "$work/logs"

# -- nats-server ------------------------------------------------------------
"$NATS_SERVER" -a 127.0.0.1 -p -1 -m -1 -js -sd "$work/nats/store" \
  --ports_file_dir "$work/nats/ports" >"$work/logs/nats.log" 2>&1 &
nats_pid=$!
url=""
for _ in $(seq 200); do
  url=$(cat "$work"/nats/ports/*.ports 2>/dev/null | grep -o 'nats://[^"]*' | head -n1 || true)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { echo "nats-server did not start" >&2; exit 1; }
mon=$(cat "$work"/nats/ports/*.ports | grep -o 'http://[^"]*' | head -n1)
echo "nats: $url, monitoring $mon (pid $nats_pid)"

# Consumers on the artifact stream (nats-server 2.15 allows 1000 per
# stream by default; every artifact an edge fetches makes an ordered
# consumer that the server removes 30 s after the fetch).
consumers() {
  curl -s "$mon/jsz?streams=true" | python3 -c '
import json, sys
d = json.load(sys.stdin)
n = [s.get("state", {}).get("consumer_count", 0)
     for a in d.get("account_details", []) for s in a.get("stream_detail", [])
     if s.get("name") == "OBJ_fnroute-artifacts"]
print(n[0] if n else "?")' 2>/dev/null || echo "?"
}

"$FNROUTE" control keygen --out "$work/fleet.key" >/dev/null

# -- topology -----------------------------------------------------------------
edges_toml=""
for i in $(seq "$EDGES"); do
  lat=$(( (i * 37) % 120 - 60 ))
  lon=$(( (i * 71) % 360 - 180 ))
  edges_toml+="
[[edge]]
name = \"$(name "$i")\"
location = { lat = $lat.0, lon = $lon.0 }
addresses = [\"$(ip "$i")\"]
dns_listen = \"$(ip "$i"):$DNS_PORT\"
quic_listen = \"$(ip "$i"):$QUIC_PORT\"
tcp_listen = \"$(ip "$i"):$QUIC_PORT\"
admin_listen = \"$(ip "$i"):$ADMIN_PORT\"
capacity = 64
"
done

topology() { # version
  printf 'cat >/dev/null; echo bundle-%s\n' "$1" >"$work/src/app/run.sh"
  cat >"$work/src/topology.toml" <<EOF
zone = "fn.test."
geo_db = "$REPO/geo/sample.mmdb"
default_location = { lat = 50.11, lon = 8.68 }
state_dir = "$work/src/state"

[dns]
ttl = 1
answers = 1
udp_sockets = 1
$edges_toml
[[function]]
name = "ver"
executor = { kind = "command", command = ["sh", "-c", "cat >/dev/null; echo $1"] }
timeout_ms = 3000

[[function]]
name = "app"
bundle = "app"
executor = { kind = "command", command = ["sh", "run.sh"] }
timeout_ms = 3000
EOF
}

deploy() { # -> "revision N" on stdout
  "$FNROUTE" deploy --control "$url" --topology "$work/src/topology.toml" \
    --key "$work/fleet.key" 2>"$work/logs/deploy.err"
}

# Revisions every edge's state-dir report says it serves, one per line.
local_revisions() {
  for i in $(seq "$EDGES"); do
    grep -o '"revision":[0-9]*' "$work/state/$(name "$i")/control/applied.json" 2>/dev/null \
      | cut -d: -f2 || echo none
  done
}

# KV status; fails unless every edge reports revision $1 and nothing was refused.
kv_status() { # revision
  "$FNROUTE" control status --control "$url" >"$work/status.txt" 2>"$work/logs/status.err" || return 1
  if grep -q 'refused revision' "$work/status.txt"; then
    return 3
  fi
  local n
  n=$(awk -v r="$1" 'NR > 2 && $2 == r && $4 == "current"' "$work/status.txt" | wc -l)
  [ "$n" -eq "$EDGES" ]
}

# Waits until every edge reports revision $1 (state dir, then KV).
until_all() { # revision
  local deadline=$(( $(date +%s) + TIMEOUT_S ))
  while :; do
    # One grep per poll: the files whose report is revision $1.
    if [ "$(grep -l "\"revision\":$1,\"since_ms\"" "$work"/state/*/control/applied.json 2>/dev/null | wc -l)" -eq "$EDGES" ]; then
      break
    fi
    # A refusal is only in the report; look at the files' text for it.
    if cat "$work"/state/*/control/applied.json 2>/dev/null | grep -q '"refused":{'; then
      echo "INVALID: an edge refused a revision; the refusals (edge: report):" >&2
      grep -H '"refused":{' "$work"/state/*/control/applied.json \
        | sed "s|^$work/state/||; s|/control/applied.json:|: |" >&2 || true
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "INVALID: not every edge reports revision $1 after ${TIMEOUT_S}s:" >&2
      paste <(seq "$EDGES") <(local_revisions) >&2
      return 1
    fi
    sleep "$POLL_S"
  done
  while :; do
    local rc=0
    kv_status "$1" || rc=$?
    [ "$rc" = 0 ] && return 0
    if [ "$rc" = 3 ]; then
      echo "INVALID: refused:" >&2
      grep 'refused' "$work/status.txt" >&2
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "INVALID: KV reports disagree with the edges' state dirs:" >&2
      cat "$work/status.txt" >&2
      return 1
    fi
    sleep "$POLL_S"
  done
}

# -- v1 and the edges -------------------------------------------------------
topology v1
out=$(deploy) || { echo "INVALID: first deploy failed: $(cat "$work/logs/deploy.err")" >&2; exit 1; }
r1=${out#revision }
echo "v1: $out"
started=$(ms)
for i in $(seq "$EDGES"); do
  RUST_LOG=info "$FNROUTE" serve --control "$url" --node "$(name "$i")" \
    --control-trust "$work/fleet.key.pub" --state-dir "$work/state/$(name "$i")" \
    --grace 1s >/dev/null 2>"$work/logs/$(name "$i").log" &
  edge_pids+=($!)
done
until_all "$r1" || exit 1
echo "all $EDGES edges report revision $r1 after $(( $(ms) - started )) ms (start-up, not a sample); artifact-stream consumers: $(consumers)"
sleep "$PAUSE_S"

# -- the samples --------------------------------------------------------------
samples=()
for k in $(seq "$DEPLOYS"); do
  v="v$((k + 1))"
  topology "$v"
  t0=$(ms)
  if ! out=$(deploy); then
    echo "INVALID: deploy $k failed: $(cat "$work/logs/deploy.err")" >&2
    exit 1
  fi
  t1=$(ms)
  rev=${out#revision }
  until_all "$rev" || exit 1
  deployed_at=$(awk 'NR == 1 {gsub(/\(/, ""); print $6}' "$work/status.txt")
  since=$(awk -v r="$rev" 'NR > 2 && $2 == r {print $1 "=" $3}' "$work/status.txt" | tr '\n' ' ')
  read -r first last last_edge < <(awk -v r="$rev" 'NR > 2 && $2 == r {
      if (min == "" || $3 < min) min = $3
      if (max == "" || $3 > max) {max = $3; who = $1}
    } END {print min, max, who}' "$work/status.txt")
  lat=$((last - t1))
  samples+=("$lat")
  printf 'deploy %2d %s revision %s: deploy ran %d ms (written at +%d ms), latency %d ms (first edge %+d ms, last %s)\n' \
    "$k" "$v" "$rev" $((t1 - t0)) $((deployed_at - t0)) "$lat" $((first - t1)) "$last_edge"
  echo "  deploy_start_ms=$t0 deploy_return_ms=$t1 deployed_at_ms=$deployed_at artifact_stream_consumers=$(consumers)"
  echo "  since_ms: $since"
  sleep "$PAUSE_S"
done

# -- does an edge serve it? ---------------------------------------------------
answer=$("$FNROUTE" invoke ver --data x --edge "$(ip 1):$QUIC_PORT" --insecure 2>&1 || true)
bundle=$("$FNROUTE" invoke app --data x --edge "$(ip 1):$QUIC_PORT" --insecure 2>&1 || true)
echo "invoke ver on $(name 1) ($(ip 1):$QUIC_PORT): $answer (want $v)"
echo "invoke app on $(name 1): $bundle (want bundle-$v)"
wrong=0
for i in $(seq "$EDGES"); do
  a=$("$FNROUTE" invoke ver --data x --edge "$(ip "$i"):$QUIC_PORT" --insecure 2>&1 || true)
  [ "$a" = "$v" ] || { echo "  $(name "$i") answers ver: $a"; wrong=$((wrong + 1)); }
done
echo "invoke ver on every edge: $((EDGES - wrong)) of $EDGES answer $v"

# -- figures ------------------------------------------------------------------
echo "load at end (1/5/15 min): $(load)"
echo "samples (ms, deploy order): ${samples[*]}"
printf '%s\n' "${samples[@]}" | sort -n | awk -v edges="$EDGES" '
  { v[NR] = $1; sum += $1 }
  END {
    n = NR
    p50 = v[int((n * 50 + 99) / 100)]; p99 = v[int((n * 99 + 99) / 100)]
    printf "sorted: "; for (i = 1; i <= n; i++) printf "%s ", v[i]; printf "\n"
    printf "RESULT edges=%d deploys=%d p50=%d ms p99=%d ms (nearest rank; with %d samples p99 is the max) mean=%.0f ms min=%d ms max=%d ms\n",
      edges, n, p50, p99, n, sum / n, v[1], v[n]
  }'
if [ "$answer" != "$v" ] || [ "$bundle" != "bundle-$v" ] || [ "$wrong" != 0 ]; then
  echo "INVALID: the edges do not all answer the last version"
  exit 1
fi
echo "VALID: $DEPLOYS deploys, none failed, none refused, every edge reported every revision"
