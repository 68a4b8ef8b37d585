#!/usr/bin/env bash
# A/B of several fnroute binaries next to the bare quinn+h3 echo, rotated round by round so that
# the shared machine's drift hits every binary alike. Servers pinned to core 1, h3load to core 0.
#
#   CACHE_TTL=3600 ONLY="fnroute" DUR=1s benches/h3-vs-peers.sh    # once: writes target/h3-bench/topology.toml
#   benches/h3-ab.sh old=/path/to/fnroute-old new=/path/to/fnroute-new
#
# Env: TOPO (target/h3-bench/topology.toml: its quic_listen 127.0.0.1:4440 and admin/dns ports are
#      rewritten per binary to 4450+k, 19450+k, 15450+k), FN (bench), C x S (4 x 64), DUR (5s), ROUNDS (4),
#      PEERS_DIR (/tmp/fnroute-peers, see benches/h3-vs-peers.sh). Output: one line per round.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-/tmp/fnroute-peers}
H3=$PEERS_DIR/tools/h3load/target/release/h3load
PEERS=$PEERS_DIR/bench/quic-peers/peers/target/release/peers
C=${C:-4} S=${S:-64} DUR=${DUR:-5s} ROUNDS=${ROUNDS:-4} FN=${FN:-bench}
TOPO=${TOPO:-$ROOT/target/h3-bench/topology.toml}
STATE=${STATE:-$ROOT/target/h3-ab}
[[ -f $TOPO && -x $H3 && -x $PEERS ]] || { echo "run benches/h3-vs-peers.sh once first (topology, h3load, peers)" >&2; exit 1; }
mkdir -p "$STATE"
pids=(); port=4450; declare -A url
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for nb in "$@"; do n=${nb%%=*}; b=${nb#*=}
  sed -e "s/127.0.0.1:4440/127.0.0.1:$port/" -e "s/19199/$((port+15000))/" -e "s/15399/$((port+11000))/" \
      -e "s#state_dir = .*#state_dir = \"$STATE/state-$n\"#" "$TOPO" > "$STATE/topo-$n.toml"
  FNROUTE_LOG=warn taskset -c 1 "$b" serve --config "$STATE/topo-$n.toml" > "$STATE/log-$n" 2>&1 & pids+=($!)
  url[$n]=https://127.0.0.1:$port/fn/$FN; port=$((port+1)); done
taskset -c 1 "$PEERS" h3-echo --listen 127.0.0.1:4502 > "$STATE/log-echo" 2>&1 & pids+=($!)
url[echo]=https://127.0.0.1:4502/echo
sleep 3
names="echo"; for nb in "$@"; do names="$names ${nb%%=*}"; done
# warm-up (and the cache's first miss) outside the clock
for n in $names; do taskset -c 0 "$H3" --url "${url[$n]}" --server-name bench.fn.test --method POST --body-size 256 -c "$C" -s "$S" -d 2s --insecure >/dev/null 2>&1; done
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for n in $names; do
    out=$(taskset -c 0 "$H3" --url "${url[$n]}" --server-name bench.fn.test --method POST --body-size 256 -c "$C" -s "$S" -d "$DUR" --insecure 2>&1)
    rps=$(echo "$out" | awk '/req\/s/{print $2}'); p50=$(echo "$out" | awk '/p50/{print $4}'); st=$(echo "$out" | awk '/status:/{print $2}')
    line="$line $n=$rps(p50 $p50,$st)"
  done; echo "$line"; done
