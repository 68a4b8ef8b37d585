#!/usr/bin/env bash
# fnroute's HTTP/3 front door side by side with the peer anchors, in ONE run:
#   fnroute      POST /fn/$FN through the front door (edge on 127.0.0.1:$FN_PORT)
#   h3-echo      bare quinn + h3 echo server (the transport's ceiling)        ../shared/bench/quic-peers
#   fnroute-404  POST /fn/no-such-function: the front door alone (QUIC, h3, routing, a 404 problem+json), no executor
#   caddy-proxy  Caddy (Debian package) HTTP/3 reverse proxy -> hyper HTTP/1.1 echo (Caddy defaults)
#   caddy-proxy-ka  the same with keepalive_idle_conns_per_host 1024
# at 1 in flight (c1x1: 1 connection x 1 stream) and 256 in flight (c4x64: 4 connections x 64 streams),
# server processes pinned to core $SRV_CPU, h3load pinned to core $LG_CPU. Loopback only (127.0.0.1).
#
#   benches/h3-vs-peers.sh                       # defaults below
#   FN=echo TOPOLOGY=edge-config/local.toml FN_PORT=4433 benches/h3-vs-peers.sh   # once lambda pools land
#   DUR=3s SCENARIOS=c1x1 ONLY="fnroute h3-echo" benches/h3-vs-peers.sh           # quick look
#   EXEC=lambda benches/h3-vs-peers.sh            # warm Rust lambda_runtime worker pool (examples/lambda_echo.rs)
#   CACHE_TTL=3600 ONLY="fnroute h3-echo" benches/h3-vs-peers.sh   # cache hits: FN gets a cache policy and
#                                                 # h3load sends one body, so all but the first request hit
#   EXEC=lambda WORKERS_EXTRA="16 32" benches/h3-vs-peers.sh   # + the same function with max 16 / 32 workers (c4x64 only)
#   EXEC=wasm benches/h3-vs-peers.sh              # a wasi:http component echoing the body (tests/wasm/echo.wat),
#                                                 # a fresh instance per request, in-process on Wasmtime
#
# EXEC=wasm: FN is `kind = "wasm"` running tests/wasm/echo.wat, made binary by
#   `cargo run --release --example wat2wasm`, with concurrency = { max = $WASM_MAX (256) } instances at once and
#   [executors] queue = $QUEUE; it answers 200 with the request body, like the echo peers.
# Env: PEERS_DIR (/tmp/fnroute-peers: a copy of ../shared/bench and ../shared/tools, see its README)
#      FN (bench: a `command` function running `cat`, i.e. one process spawn per request)
#      EXEC (command | lambda). lambda: FN is `kind = "lambda"` running target/release/examples/lambda_echo
#        (AWS's Rust lambda_runtime, echoes the JSON event), concurrency = { min = $MIN_WORKERS (2), max = $WORKERS (8) },
#        [executors] queue = $QUEUE (1024, so 256 in flight queue instead of being shed with 429/503).
#        WORKERS_EXTRA ("") adds $FN-wN functions with max = N, measured as peers fnroute-wN at c4x64 only.
#        lambda_runtime needs a JSON event, so with EXEC=lambda every peer gets the same BODY-byte JSON
#        document ({"pad":"xxx…"}) instead of h3load's 'x' filler: the script uses a copy of h3load
#        ($PEERS_DIR/tools/h3load-bodyfile) patched to read the body from $H3LOAD_BODY_FILE.
#      TOPOLOGY (generated into $STATE/topology.toml with FN as `cat`; give a file to use its functions)
#      FN_PORT (4440; must match TOPOLOGY's quic_listen when TOPOLOGY is given)
#      DUR (10s) BODY (256) SRV_CPU (1) LG_CPU (0) SCENARIOS ("c1x1 c4x64") ONLY (all peers)
#      UDP_BUF (equal | kernel; default equal): equal gives the h3 echo's listening socket exactly the
#        SO_RCVBUF/SO_SNDBUF the kernel gave fnroute's (fnroute sets udp_buffer_bytes, default 4 MiB, 8 MiB
#        after the kernel's doubling; the echo calls no setsockopt and would get net.core.[rw]mem_default,
#        208 KiB, and drop datagrams at 256 in flight): net.core.rmem_default/wmem_default are set to
#        fnroute's rb/tb only while the echo binds, then restored (also on exit). The `ss -uampn` lines of
#        both sockets go to stderr and udp_buf into results.jsonl. kernel: the echo keeps the defaults
#        (runs before 2026-12-01). Same reasoning as benches/h3-ab.sh.
# Output: one JSON line per run in $STATE/results.jsonl (with the response status counts, which h3load's
#         JSON omits: a 429/502 counts as "ok" there) and a table on stdout.
# Only processes this script started are stopped, by the PIDs it recorded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-/tmp/fnroute-peers}
STATE=${STATE:-$ROOT/target/h3-bench}
H3LOAD=$PEERS_DIR/tools/h3load/target/release/h3load
PEERS=$PEERS_DIR/bench/quic-peers/peers/target/release/peers
# the target directory cargo really uses (CARGO_TARGET_DIR, .cargo/config.toml build.target-dir, or ./target)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory 2>/dev/null || true)
TARGET_DIR=${TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}
FNROUTE=${FNROUTE:-$TARGET_DIR/release/fnroute}
LAMBDA_ECHO=${LAMBDA_ECHO:-$TARGET_DIR/release/examples/lambda_echo}
FN=${FN:-bench}
EXEC=${EXEC:-command}
WORKERS=${WORKERS:-8} MIN_WORKERS=${MIN_WORKERS:-2} QUEUE=${QUEUE:-1024} WORKERS_EXTRA=${WORKERS_EXTRA:-}
FN_PORT=${FN_PORT:-4440}
WASM_MAX=${WASM_MAX:-256}
CACHE_LINE=${CACHE_TTL:+"cache = { ttl_s = $CACHE_TTL }"}
DUR=${DUR:-10s}
BODY=${BODY:-256}
SRV_CPU=${SRV_CPU:-1}
LG_CPU=${LG_CPU:-0}
SCENARIOS=${SCENARIOS:-c1x1 c4x64}
ONLY=${ONLY:-fnroute fnroute-404 h3-echo caddy-proxy caddy-proxy-ka}
for w in $WORKERS_EXTRA; do ONLY="$ONLY fnroute-w$w"; done
H3_ECHO_PORT=4502 CADDY_PROXY_PORT=4434 CADDY_PROXY_KA_PORT=4435 BACKEND_PORT=8081

mkdir -p "$STATE/logs"
STATE=$(cd "$STATE" && pwd)   # absolute: the generated topology names files under it
log() { echo "[$(date +%T)] $*" >&2; }

# ------------------------------------------------------------------ prerequisites
if [[ ! -d $PEERS_DIR/bench/quic-peers ]]; then
  log "copying the peer anchors to $PEERS_DIR"
  mkdir -p "$PEERS_DIR" && cp -r "$ROOT/../shared/bench" "$ROOT/../shared/tools" "$PEERS_DIR/"
fi
command -v caddy >/dev/null || { log "installing caddy (Debian package)"; DEBIAN_FRONTEND=noninteractive apt-get install -y caddy >/dev/null; }
command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y jq >/dev/null
[[ -x $H3LOAD ]] || (cd "$PEERS_DIR/tools/h3load" && cargo build --release -q)
[[ -x $PEERS ]] || (cd "$PEERS_DIR/bench/quic-peers/peers" && cargo build --release -q)
[[ -x $FNROUTE && ${REBUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release -q --bin fnroute)
BODY_FILE=
if [[ $EXEC == lambda ]]; then
  [[ -x $LAMBDA_ECHO && ${REBUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release -q --example lambda_echo)
  # a JSON event of exactly BODY bytes: {"pad":"xxx…"}
  BODY_FILE=$STATE/body.json
  (( BODY >= 12 )) || { log "BODY must be >= 12 bytes with EXEC=lambda"; exit 1; }
  { printf '{"pad":"'; head -c $((BODY - 10)) /dev/zero | tr '\0' x; printf '"}'; } >"$BODY_FILE"
  H3SRC=$PEERS_DIR/tools/h3load-bodyfile
  [[ -d $H3SRC ]] || cp -r "$PEERS_DIR/tools/h3load" "$H3SRC"
  grep -q H3LOAD_BODY_FILE "$H3SRC/src/main.rs" ||
    perl -pi -e 's/body: Bytes::from\(vec!\[b.x.; args\.body_size\]\),/body: match std::env::var_os("H3LOAD_BODY_FILE") { Some(p) => Bytes::from(std::fs::read(p).expect("H3LOAD_BODY_FILE")), None => Bytes::from(vec![b\x27x\x27; args.body_size]) },/' "$H3SRC/src/main.rs"
  grep -q H3LOAD_BODY_FILE "$H3SRC/src/main.rs" || { log "could not patch $H3SRC/src/main.rs"; exit 1; }
  H3LOAD=$H3SRC/target/release/h3load
  (cd "$H3SRC" && cargo build --release -q)
  export H3LOAD_BODY_FILE=$BODY_FILE
fi

if [[ -z ${TOPOLOGY:-} ]]; then
  TOPOLOGY=$STATE/topology.toml
  cat >"$TOPOLOGY" <<EOF
# generated by benches/h3-vs-peers.sh
zone = "fn.test."
geo_db = "$ROOT/geo/sample.mmdb"
default_location = { lat = 50.11, lon = 8.68 }
state_dir = "$STATE/state"

[[edge]]
name = "bench"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:15399"
quic_listen = "127.0.0.1:$FN_PORT"
admin_listen = "127.0.0.1:19199"
capacity = 1024

EOF
  if [[ $EXEC == wasm ]]; then
    (cd "$ROOT" && cargo run --release -q --locked --example wat2wasm -- tests/wasm/echo.wat "$STATE/echo.wasm")
    cat >>"$TOPOLOGY" <<EOF

[executors]
queue = $QUEUE
queue_timeout_ms = 10000

[[function]]
name = "$FN"
executor = { kind = "wasm", component = "$STATE/echo.wasm" }
memory_mb = 32
timeout_ms = 10000
concurrency = { max = $WASM_MAX }
$CACHE_LINE
EOF
  elif [[ $EXEC == lambda ]]; then
    cat >>"$TOPOLOGY" <<EOF

[executors]
queue = $QUEUE
queue_timeout_ms = 10000
keep_warm_ms = 600000
EOF
    for spec in "$FN:$WORKERS" $(for w in $WORKERS_EXTRA; do echo "$FN-w$w:$w"; done); do
      cat >>"$TOPOLOGY" <<EOF

[[function]]
name = "${spec%%:*}"
executor = { kind = "lambda", command = ["$LAMBDA_ECHO"] }
memory_mb = 128
timeout_ms = 10000
concurrency = { min = $MIN_WORKERS, max = ${spec##*:} }
EOF
    done
  else
    cat >>"$TOPOLOGY" <<EOF

[[function]]
name = "$FN"
executor = { kind = "command", command = ["cat"] }
timeout_ms = 10000
$CACHE_LINE
EOF
  fi
fi

# ------------------------------------------------------------------ processes (by PID only)
STARTED=()
start_one() { # name cmd...
  local name=$1; shift
  ( exec taskset -c "$SRV_CPU" "$@" ) >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  STARTED+=("$name")
}
stop_all() {
  local n pid
  for n in "${STARTED[@]}"; do
    pid=$(cat "$STATE/$n.pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  for n in "${STARTED[@]}"; do
    pid=$(cat "$STATE/$n.pid" 2>/dev/null || true)
    [[ -n $pid ]] && { for _ in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done; kill -9 "$pid" 2>/dev/null || true; }
    rm -f "$STATE/$n.pid"
  done
  STARTED=()
}
SYSCTL_SAVED=()   # "path=value" to write back
restore_sysctls() { local kv; for kv in "${SYSCTL_SAVED[@]}"; do echo "${kv#*=}" >"${kv%%=*}" 2>/dev/null || true; done; SYSCTL_SAVED=(); }
trap 'stop_all; restore_sysctls' EXIT
wait_udp() { for _ in $(seq 100); do ss -Hlun "sport = :$1" | grep -q . && return 0; sleep 0.1; done; log "udp :$1 not listening"; return 1; }
wait_tcp() { for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done; log "tcp :$1 not listening"; return 1; }

cat >"$STATE/Caddyfile" <<EOF
{
	admin off
	auto_https disable_redirects
	skip_install_trust
	local_certs
	default_sni 127.0.0.1
	storage file_system {
		root $STATE/caddy-data
	}
	servers {
		protocols h1 h2 h3
	}
}

https://127.0.0.1:$CADDY_PROXY_PORT {
	tls internal
	reverse_proxy 127.0.0.1:$BACKEND_PORT
}

https://127.0.0.1:$CADDY_PROXY_KA_PORT {
	tls internal
	reverse_proxy 127.0.0.1:$BACKEND_PORT {
		transport http {
			keepalive_idle_conns_per_host 1024
		}
	}
}
EOF

log "starting servers (pinned to core $SRV_CPU)"
UDP_BUF=${UDP_BUF:-equal}
udp_sock() { ss -HuampnO "sport = :$1" 2>/dev/null | head -1; }
skmem() { udp_sock "$1" | grep -o "skmem:([^)]*)" | grep -o "[(,]$2[0-9]*" | head -1 | tr -dc 0-9 || true; }   # port rb|tb|d
start_one fnroute env FNROUTE_LOG=warn "$FNROUTE" serve --config "$TOPOLOGY"
if [[ $UDP_BUF == equal ]]; then
  wait_udp "$FN_PORT"
  for k in rmem_default wmem_default; do SYSCTL_SAVED+=("/proc/sys/net/core/$k=$(cat /proc/sys/net/core/$k)"); done
  echo "$(skmem "$FN_PORT" rb)" >/proc/sys/net/core/rmem_default && echo "$(skmem "$FN_PORT" tb)" >/proc/sys/net/core/wmem_default ||
    { log "cannot set net.core.[rw]mem_default (root needed); use UDP_BUF=kernel"; exit 1; }
fi
start_one h3-echo "$PEERS" h3-echo --listen 127.0.0.1:$H3_ECHO_PORT
if [[ $UDP_BUF == equal ]]; then wait_udp $H3_ECHO_PORT; restore_sysctls; fi
start_one http-echo "$PEERS" http-echo --listen 127.0.0.1:$BACKEND_PORT
start_one caddy env XDG_CONFIG_HOME="$STATE/caddy-config" XDG_DATA_HOME="$STATE/caddy-data" HOME="$STATE" \
  caddy run --config "$STATE/Caddyfile" --adapter caddyfile
wait_udp "$FN_PORT"; wait_udp $H3_ECHO_PORT; wait_tcp $BACKEND_PORT; wait_udp $CADDY_PROXY_PORT; wait_udp $CADDY_PROXY_KA_PORT
sleep 1
UDP_BUF_DESC="$UDP_BUF: fnroute rb=$(skmem "$FN_PORT" rb) tb=$(skmem "$FN_PORT" tb), h3-echo rb=$(skmem $H3_ECHO_PORT rb) tb=$(skmem $H3_ECHO_PORT tb)"
log "UDP buffers ($UDP_BUF_DESC); ss -uampn:"
for p in "$FN_PORT" $H3_ECHO_PORT; do log "  $(udp_sock "$p")"; done
if [[ $UDP_BUF == equal && $(skmem "$FN_PORT" rb)/$(skmem "$FN_PORT" tb) != $(skmem $H3_ECHO_PORT rb)/$(skmem $H3_ECHO_PORT tb) ]]; then
  log "UDP_BUF=equal but the buffers differ: not running"; exit 1
fi

url() {
  case $1 in
    fnroute) echo "https://127.0.0.1:$FN_PORT/fn/$FN" ;;
    # the front door without an executor: an unknown function answered with a 404 problem+json
    fnroute-404) echo "https://127.0.0.1:$FN_PORT/fn/no-such-function" ;;
    fnroute-w*) echo "https://127.0.0.1:$FN_PORT/fn/$FN-${1#fnroute-}" ;;
    h3-echo) echo "https://127.0.0.1:$H3_ECHO_PORT/echo" ;;
    caddy-proxy) echo "https://127.0.0.1:$CADDY_PROXY_PORT/echo" ;;
    caddy-proxy-ka) echo "https://127.0.0.1:$CADDY_PROXY_KA_PORT/echo" ;;
  esac
}
# fnroute's development certificate names *.fn.test, not the IP: SNI bench.fn.test (h3load --insecure anyway).
extra() { [[ $1 == fnroute* ]] && echo "--server-name $FN.fn.test" || true; }
sys_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }   # all CPUs, 1/100 s ticks
# Wait until others use less than IDLE_MAX % of a core (shared machine), at most IDLE_WAIT s.
IDLE_MAX=${IDLE_MAX:-15} IDLE_WAIT=${IDLE_WAIT:-300}
idle_gate() {
  local waited=0 b0 b1
  while :; do
    b0=$(sys_busy); sleep 1; b1=$(sys_busy); PRE_BUSY=$((b1 - b0))
    (( PRE_BUSY < IDLE_MAX )) && return 0
    (( waited == 0 )) && log "machine busy (${PRE_BUSY}% of a core), waiting up to ${IDLE_WAIT}s"
    (( waited >= IDLE_WAIT )) && { log "still busy, running anyway (pre_run_busy_pct in results)"; return 0; }
    sleep 4; waited=$((waited + 5))
  done
}
udp_rcvbuf_errors() { awk '/^Udp:/{n++} /^Udp:/&&n==2{print $6}' /proc/net/snmp; }

# h3load's "status:     200=123 502=4" line as a JSON object
statuses() { awk '/^  status:/{printf "{"; for(i=2;i<=NF;i++){split($i,a,"="); printf "%s\"%s\":%s", (i>2?",":""), a[1], a[2]} printf "}"; f=1} END{if(!f) printf "{}"}'; }

# sanity: every peer answers 200 (fnroute-404: 404), and the function echoes the body unchanged
for peer in $ONLY; do
  "$H3LOAD" --url "$(url "$peer")" $(extra "$peer") --method POST --body-size "$BODY" -d 300ms --insecure | grep -E 'requests|status' >&2 || true
done
if [[ -n $BODY_FILE ]]; then
  got=$("$FNROUTE" invoke "$FN" --data-file "$BODY_FILE" --edge 127.0.0.1:$FN_PORT --insecure 2>&1 || true)
  if [[ $got == "$(cat "$BODY_FILE")" ]]; then log "round trip OK: $FN echoed the ${BODY}-byte JSON body unchanged"
  else log "round trip MISMATCH: sent $(cat "$BODY_FILE" | head -c 40)…, got: ${got:0:200}"; fi
fi

RESULTS=$STATE/results.jsonl
: >"$RESULTS"
for sc in $SCENARIOS; do
  c=${sc%%x*}; c=${c#c}; s=${sc##*x}
  for peer in $ONLY; do
    [[ $peer == fnroute-w* && $sc == c1x1 ]] && continue   # worker-count variants: throughput only
    cmd=(taskset -c "$LG_CPU" "$H3LOAD" --url "$(url "$peer")" $(extra "$peer") --method POST --body-size "$BODY" -c "$c" -s "$s" -d "$DUR" --insecure --json)
    idle_gate
    log "$peer $sc (others busy before: ${PRE_BUSY}%)"
    u0=$(udp_rcvbuf_errors)
    out=$("${cmd[@]}" 2>&1) || true
    u1=$(udp_rcvbuf_errors)
    echo "$out" >>"$STATE/logs/h3load.log"
    json=$(echo "$out" | grep '^{' | tail -1 || true)
    [[ -n $json ]] || { log "FAILED $peer $sc: $out"; json='{"rps":0,"errors":-1}'; }
    st=$(echo "$out" | statuses)
    echo "$json" | jq -c --arg peer "$peer" --arg sc "$sc" --arg cmd "${cmd[*]}" --argjson drops "$((u1 - u0))" --argjson pre "$PRE_BUSY" \
      --argjson st "$st" --arg exec "$EXEC" --arg body "${BODY_FILE:+json}" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg ub "$UDP_BUF_DESC" \
      '{peer:$peer,scenario:$sc} + . + {statuses:$st,udp_rcvbuf_drops:$drops,pre_run_busy_pct:$pre,loadavg:$load,udp_buf:$ub,exec:$exec,body:(if $body == "" then "x" else $body end),cmd:$cmd}' >>"$RESULTS"
  done
done

log "uptime: $(uptime)"
jq -r '[.peer,.scenario,(.rps|floor),.p50_us,.p99_us,.errors,((.statuses // {}) | to_entries | map("\(.key)=\(.value)") | join(",")),.udp_rcvbuf_drops,.pre_run_busy_pct,.loadavg] | @tsv' "$RESULTS" |
  (echo -e "peer\tscenario\treq/s\tp50_us\tp99_us\terrors\tstatus\tudp_drops\tbusy_before%\tloadavg"; cat) | column -t -s $'\t'
