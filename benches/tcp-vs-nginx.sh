#!/usr/bin/env bash
# fnroute's HTTPS-over-TCP front door (HTTP/1.1 and HTTP/2 by ALPN) next to nginx's proxy_cache, and
# fnroute's HTTP/3 on the same edge, in ONE run: cache hits of a 1 KiB answer to the same POST.
#
#   nginx   Debian nginx, worker_processes 1, TLS on 127.0.0.1:$NGINX_PORT (h1 + h2 by ALPN), `proxy_cache`
#           in front of an origin server block (127.0.0.1:$ORIGIN_PORT) that answers POST /fn/$FN with
#           the 1 KiB body (`return 200 "..."`); POST is cached (`proxy_cache_methods POST`) under a key
#           that includes the request body (`$request_body`), as fnroute's key includes the payload.
#   fnroute `fnroute serve --config <generated topology>`: one edge with quic_listen and tcp_listen on
#           127.0.0.1:$FN_PORT, function $FN = a `command` that prints the same 1 KiB file, with
#           `cache = { ttl_s = 3600 }`.
# Both get the same request from h2load: POST /fn/$FN, the same $REQ_BODY-byte body ('x' x REQ_BODY, the
# bytes h3load sends), no extra headers; both answer the same 1024 bytes (checked with cmp); both use the
# same certificate (ECDSA P-256, made here) and h2load offers both the one TLS 1.3 cipher $TLS13_CIPHER.
#
# Slots (one server x protocol x DUR seconds of load) per round, by default:
#   nginx:h1 fnroute:h1 nginx:h2 fnroute:h2 fnroute:h3
# odd rounds in this order, even rounds reversed (ABBA), so the paired slots of a ratio are adjacent in
# time and neither side always goes first. Servers pinned to core $SRV_CPU, the load generator to core
# $LG_CPU. Loopback only.
#   h1: h2load --h1 -c $C1 -m 1     ($C1 connections, one request in flight each, no pipelining)
#   h2: h2load      -c $C  -m $M    ($C connections x $M streams)
#   h3: h3load      -c $C  -s $M    (same connections x streams as h2; fnroute only)
#
#   benches/tcp-vs-nginx.sh                                   # ROUNDS=5 DUR=5, all slots
#   FNROUTE=/tmp/fnroute-x/target/release/fnroute ROUNDS=10 benches/tcp-vs-nginx.sh
#   SLOTS="nginx:h1 nginx:h2" OUT=/tmp/nginx-trial.txt benches/tcp-vs-nginx.sh   # nginx half only
#
# Before the first round every server is checked (the run stops with a message otherwise):
#   nginx:   curl --http1.1 and --http2: a first POST is a MISS, the next ones X-Cache-Status: HIT, the
#            body is byte-identical to the 1 KiB file; another payload is a MISS, then a HIT (the body is
#            in the key).
#   fnroute: the same with `fnroute-cache: miss|hit` over h1 and h2 on the TCP port, and over h3 with
#            `fnroute invoke -v` (fnroute-cache: hit, identical body). If fnroute exits, or nothing
#            listens on TCP $FN_PORT, or the edge does not answer as above, the run stops there.
# After the last round: the nginx origin's access log (the front server logs nothing) and fnroute's
# /metrics (fnroute_cache_requests_total) must show only the misses of the checks (2 each): every
# timed request was a hit.
#
# Env: FNROUTE (target/release/fnroute; not built here: build it with `cargo build --release --locked`)
#      ROUNDS (5) DUR (5, seconds of measured load per slot) WARMUP (1, h2load --warm-up-time, seconds;
#      h3load has no warm-up: its connections are set up before its clock, and every server gets
#      one untimed slot of each protocol before round 1)
#      C (4) M (64): h2 connections x streams, and h3's; C1 (64): h1 connections
#      REQ_BODY (256 bytes) RESP_BYTES (1024)
#      TLS13_CIPHER (TLS_AES_256_GCM_SHA384): the only TLS 1.3 suite h2load offers to both servers. Default:
#        the suite h3 gets, so all three protocols use one suite: h3load's rustls (ring provider) offers
#        AES-256-GCM first and rustls servers follow the client's order (ServerConfig::ignore_client_order
#        is false). h3load does not print the suite, so for h3 this is inferred, not checked.
#      NGINX_OFC (1): `open_file_cache max=1000 inactive=60s` in nginx's front server. A proxy_cache hit
#        opens, stats, reads and closes the cache file; with open_file_cache the descriptor stays open
#        (nginx's file cache goes through it). Not in Debian's default nginx.conf, but the usual tuning for
#        a hot cache; in one short trial on a busy machine (indicative only) nginx served ~20-30 % more hits
#        per second of its CPU with it. So the comparison is against nginx at its better setting.
#        NGINX_OFC=0: nginx without it.
#      SRV_CPU (0) LG_CPU (1): the issue's setup (benches/h3-*.sh default to the other way round)
#      FN (bench) SLOTS (above)
#      NGINX_PORT (8470) ORIGIN_PORT (8471) FN_PORT (4470, TCP and UDP) FN_ADMIN_PORT (19470) FN_DNS_PORT (15470)
#      STATE ($ROOT/target/tcp-vs-nginx: configs, logs, nginx cache, raw outputs)
#      OUT (benches/results/tcp-vs-nginx-<UTC date>.txt, or ...-<date>-trial.txt when SLOTS is not the
#        default; never overwritten: -2, -3... appended)
#      PEERS_DIR (/tmp/fnroute-peers: h3load is built there from a copy of ../shared/tools, as in
#        benches/h3-vs-peers.sh)
#      QUIET_WAIT (0): before round 1, wait up to this many seconds (polling every 60 s) until no cargo,
#        rustc or fuzz process runs and the 1-minute load is below QUIET_LOAD (1.0); then run anyway.
#        What was found is written into the header.
# Output: $OUT (written only when the run completes; until then $STATE/out.txt) holds the header (date,
# commit, kernel, binaries with sha256, versions, every knob, the generated configs' digests, the check's response heads), one line per slot, one per round, the summary
# (per-round ratios fnroute/nginx on h1 and h2 and fnroute h3/h2, with medians), and at the end every
# h2load/h3load output in full. stdout gets the same without the raw outputs.
# Per slot: req/s, requests done / failed, status counts, negotiated protocol and cipher, response header
# bytes per request (h2load's "headers" traffic / requests; h1/h2 only), CPU of the server, of the load
# generator and of OTHER processes in % of one core (/proc/stat busy ticks minus the server's and the
# load generator's, as in benches/h3-ab.sh), steal, and the 1-minute loadavg at the slot's start.
# A slot is flagged BAD (and the summary says the run is invalid) if any request failed, any status is
# not 2xx, the ALPN protocol is not the slot's, or TLS is not TLSv1.3 with $TLS13_CIPHER.
# Only processes this script started are stopped, by the PIDs it recorded.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FNROUTE=${FNROUTE:-$ROOT/target/release/fnroute}
ROUNDS=${ROUNDS:-5} DUR=${DUR:-5} WARMUP=${WARMUP:-1}
C=${C:-4} M=${M:-64} C1=${C1:-64}
REQ_BODY=${REQ_BODY:-256} RESP_BYTES=${RESP_BYTES:-1024}
TLS13_CIPHER=${TLS13_CIPHER:-TLS_AES_256_GCM_SHA384}
NGINX_OFC=${NGINX_OFC:-1}
SRV_CPU=${SRV_CPU:-0} LG_CPU=${LG_CPU:-1} FN=${FN:-bench}
DEFAULT_SLOTS="nginx:h1 fnroute:h1 nginx:h2 fnroute:h2 fnroute:h3"
SLOTS=${SLOTS:-$DEFAULT_SLOTS}
NGINX_PORT=${NGINX_PORT:-8470} ORIGIN_PORT=${ORIGIN_PORT:-8471}
FN_PORT=${FN_PORT:-4470} FN_ADMIN_PORT=${FN_ADMIN_PORT:-19470} FN_DNS_PORT=${FN_DNS_PORT:-15470}
STATE=${STATE:-$ROOT/target/tcp-vs-nginx}
PEERS_DIR=${PEERS_DIR:-/tmp/fnroute-peers}
H3LOAD=$PEERS_DIR/tools/h3load/target/release/h3load
QUIET_WAIT=${QUIET_WAIT:-0} QUIET_LOAD=${QUIET_LOAD:-1.0}

die() { echo "tcp-vs-nginx: $*" >&2; exit 1; }
log() { echo "[$(date -u +%T)] $*" >&2; }

# ------------------------------------------------------------------ what runs
declare -A want=()   # server -> 1, server:proto -> 1
for s in $SLOTS; do
  [[ $s =~ ^(nginx:h[12]|fnroute:h[123])$ ]] || die "bad slot '$s' in SLOTS (want nginx:h1|h2, fnroute:h1|h2|h3)"
  want[$s]=1; want[${s%%:*}]=1
done
FN_TCP=0; [[ -n ${want[fnroute:h1]:-} || -n ${want[fnroute:h2]:-} ]] && FN_TCP=1
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DUR =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] || die "ROUNDS, DUR must be positive integers, WARMUP an integer"
(( RESP_BYTES > 0 && RESP_BYTES < 4000 )) || die "RESP_BYTES must be 1..3999 (it goes into nginx's return directive)"

if [[ -z ${OUT:-} ]]; then
  OUT=$ROOT/benches/results/tcp-vs-nginx-$(date -u +%F)
  [[ $SLOTS == "$DEFAULT_SLOTS" ]] || OUT=$OUT-trial
  base=$OUT; OUT=$base.txt; k=2
  while [[ -e $OUT ]]; do OUT=$base-$k.txt; k=$((k + 1)); done
fi
mkdir -p "$STATE/logs" "$(dirname "$OUT")" || die "cannot create $STATE or $(dirname "$OUT")"
[[ -w $(dirname "$OUT") ]] || die "cannot write into $(dirname "$OUT")"
FINAL_OUT=$OUT OUT=$STATE/out.txt   # written here; moved to FINAL_OUT only when the run completes
: >"$OUT"
RAW=$STATE/raw.txt; : >"$RAW"
say() { echo "$*" | tee -a "$OUT"; }

# ------------------------------------------------------------------ prerequisites
if ! command -v nginx >/dev/null || ! command -v h2load >/dev/null; then
  log "installing nginx and nghttp2-client (Debian packages)"
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq nginx nghttp2-client >/dev/null ||
    die "apt-get install nginx nghttp2-client failed"
fi
for t in curl openssl taskset ss awk cmp sha256sum; do command -v $t >/dev/null || die "$t is missing"; done
(( $(nproc) > SRV_CPU && $(nproc) > LG_CPU && SRV_CPU != LG_CPU )) || die "need two distinct CPUs SRV_CPU=$SRV_CPU LG_CPU=$LG_CPU (nproc $(nproc))"
if [[ -n ${want[fnroute]:-} ]]; then
  [[ -x $FNROUTE ]] || die "FNROUTE=$FNROUTE is not an executable (build it: cargo build --release --locked --bin fnroute)"
fi
if [[ -n ${want[fnroute:h3]:-} && ! -x $H3LOAD ]]; then
  log "building h3load under $PEERS_DIR"
  [[ -d $PEERS_DIR/tools/h3load ]] || { mkdir -p "$PEERS_DIR/tools" && cp -r "$ROOT/../shared/tools/h3load" "$PEERS_DIR/tools/" && chmod -R u+w "$PEERS_DIR/tools/h3load"; } ||
    die "cannot copy ../shared/tools/h3load to $PEERS_DIR"
  (cd "$PEERS_DIR/tools/h3load" && cargo build --release -q) || die "h3load build failed"
fi
port_busy() { ss -Hln "( sport = :$1 )" 2>/dev/null | grep -q .; }   # tcp or udp
for p in $( [[ -n ${want[nginx]:-} ]] && echo "$NGINX_PORT $ORIGIN_PORT") $( [[ -n ${want[fnroute]:-} ]] && echo "$FN_PORT $FN_ADMIN_PORT $FN_DNS_PORT"); do
  port_busy "$p" && die "port $p is already in use (ss -lntup 'sport = :$p'); pick other ports with the *_PORT variables"
done

# ------------------------------------------------------------------ inputs: certificate, request, answer
CERT=$STATE/cert.pem KEY=$STATE/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=$FN.fn.test" \
  -addext "subjectAltName=DNS:$FN.fn.test,DNS:localhost,IP:127.0.0.1" -keyout "$KEY" -out "$CERT" 2>/dev/null ||
  die "openssl could not make the certificate"
REQ=$STATE/request.bin RESP=$STATE/response.bin REQ2=$STATE/request-other.bin
head -c "$REQ_BODY" /dev/zero | tr '\0' x >"$REQ"          # the bytes h3load --body-size sends
head -c "$REQ_BODY" /dev/zero | tr '\0' y >"$REQ2"         # another payload: must be another key
head -c "$RESP_BYTES" /dev/zero | tr '\0' x >"$RESP"        # the answer (no quotes, $, ; or \ for nginx)

# ------------------------------------------------------------------ nginx config
NGX_CONF=$STATE/nginx.conf
rm -rf "$STATE/nginx-cache" "$STATE/nginx-temp"; mkdir -p "$STATE/nginx-cache" "$STATE/nginx-temp"
: >"$STATE/logs/nginx-origin-access.log"
cat >"$NGX_CONF" <<EOF
# generated by benches/tcp-vs-nginx.sh
worker_processes 1;
pid $STATE/nginx.pid;
error_log $STATE/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path $STATE/nginx-temp/body;
  proxy_temp_path $STATE/nginx-temp/proxy;
  fastcgi_temp_path $STATE/nginx-temp/fastcgi;
  uwsgi_temp_path $STATE/nginx-temp/uwsgi;
  scgi_temp_path $STATE/nginx-temp/scgi;
  proxy_cache_path $STATE/nginx-cache levels=1:2 keys_zone=fn:10m max_size=64m inactive=60m;

  # the origin: only cache misses reach it, and it logs them (the check after the run counts them)
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    access_log $STATE/logs/nginx-origin-access.log;
    location = /fn/$FN { return 200 "$(cat "$RESP")"; }
  }

  # the front server: TLS, HTTP/1.1 and HTTP/2 by ALPN, answers from proxy_cache
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22's default leaves TLSv1.3 out; rustls (fnroute) offers 1.2 and 1.3
    keepalive_requests 100000000;   # never close a connection during a run (fnroute does not either)
    keepalive_timeout 300s;
$( ((NGINX_OFC)) && echo "    open_file_cache max=1000 inactive=60s;")
    location = /fn/$FN {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT;
      proxy_cache fn;
      proxy_cache_methods GET HEAD POST;
      # fnroute's key: function (+ version) + SHA-256 of the payload; here: method, path and the body
      # (\$request_body is set: the body, $REQ_BODY bytes, is read into memory before the key is made)
      proxy_cache_key "\$request_method \$uri \$request_body";
      proxy_cache_valid 200 60m;
      add_header X-Cache-Status \$upstream_cache_status always;
    }
  }
}
EOF
nginx -t -c "$NGX_CONF" -p "$STATE" -g 'daemon off;' >"$STATE/logs/nginx-t.log" 2>&1 || { cat "$STATE/logs/nginx-t.log" >&2; die "nginx -t rejected $NGX_CONF"; }

# ------------------------------------------------------------------ fnroute topology
TOPO=$STATE/topology.toml
cat >"$TOPO" <<EOF
# generated by benches/tcp-vs-nginx.sh
zone = "fn.test."
geo_db = "$ROOT/geo/sample.mmdb"
default_location = { lat = 50.11, lon = 8.68 }
state_dir = "$STATE/fnroute-state"

[tls]
cert = "$CERT"
key = "$KEY"

[[edge]]
name = "bench"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:$FN_DNS_PORT"
quic_listen = "127.0.0.1:$FN_PORT"
$( ((FN_TCP)) && echo "tcp_listen = \"127.0.0.1:$FN_PORT\"" || echo "# tcp_listen: left out (SLOTS has no fnroute:h1/h2)")
admin_listen = "127.0.0.1:$FN_ADMIN_PORT"
capacity = 1024

[[function]]
name = "$FN"
executor = { kind = "command", command = ["sh", "-c", "cat >/dev/null; exec cat $RESP"] }
timeout_ms = 10000
cache = { ttl_s = 3600 }
EOF

# ------------------------------------------------------------------ processes (by PID only)
declare -A pid_of=()
cleanup() {
  local n p
  for n in "${!pid_of[@]}"; do kill -TERM "${pid_of[$n]}" 2>/dev/null; done   # nginx: fast shutdown; fnroute: graceful
  for n in "${!pid_of[@]}"; do
    p=${pid_of[$n]}
    for _ in $(seq 100); do [[ -e /proc/$p ]] || break; sleep 0.1; done
    [[ -e /proc/$p ]] && kill -9 "$p" 2>/dev/null
  done
  pid_of=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
wait_listen() { # proto(t|u) port pid name
  for _ in $(seq 100); do
    ss -Hl"$1"n "( sport = :$2 )" 2>/dev/null | grep -q . && return 0
    alive "$3" || return 1
    sleep 0.1
  done
  return 2
}

if [[ -n ${want[nginx]:-} ]]; then
  log "starting nginx (core $SRV_CPU)"
  taskset -c "$SRV_CPU" nginx -c "$NGX_CONF" -p "$STATE" -g 'daemon off;' >"$STATE/logs/nginx.out" 2>&1 &
  pid_of[nginx]=$!
  wait_listen t "$NGINX_PORT" "${pid_of[nginx]}" || { cat "$STATE/logs/nginx.out" "$STATE/logs/nginx-error.log" >&2; die "nginx did not start"; }
  wait_listen t "$ORIGIN_PORT" "${pid_of[nginx]}" || die "nginx origin not listening"
  sleep 0.3
  NGX_WORKERS=$(pgrep -P "${pid_of[nginx]}" | tr '\n' ' ')
  [[ -n $NGX_WORKERS ]] || die "no nginx worker process under master ${pid_of[nginx]}"
fi
if [[ -n ${want[fnroute]:-} ]]; then
  log "starting fnroute (core $SRV_CPU)"
  FNROUTE_LOG=warn taskset -c "$SRV_CPU" "$FNROUTE" serve --config "$TOPO" >"$STATE/logs/fnroute.log" 2>&1 &
  pid_of[fnroute]=$!
  wait_listen u "$FN_PORT" "${pid_of[fnroute]}"; rc=$?
  if (( rc == 1 )); then
    sed 's/^/  fnroute: /' "$STATE/logs/fnroute.log" | tail -20 >&2
    die "fnroute exited at start (above). tcp_listen needs a build with the TCP front door; topology: $TOPO"
  elif (( rc == 2 )); then die "fnroute runs but nothing listens on udp 127.0.0.1:$FN_PORT (log: $STATE/logs/fnroute.log)"; fi
  if ((FN_TCP)); then
    wait_listen t "$FN_PORT" "${pid_of[fnroute]}"; rc=$?
    (( rc == 0 )) || { tail -20 "$STATE/logs/fnroute.log" >&2; die "fnroute $( ((rc == 1)) && echo exited || echo runs) but nothing listens on tcp 127.0.0.1:$FN_PORT: this build has no TCP front door (tcp_listen)"; }
  fi
fi

# ------------------------------------------------------------------ checks: same request, same 1 KiB, a hit
CHECKS=$STATE/checks.txt; : >"$CHECKS"
url_of() { case $1 in nginx) echo "https://127.0.0.1:$NGINX_PORT/fn/$FN" ;; fnroute) echo "https://127.0.0.1:$FN_PORT/fn/$FN" ;; esac; }
cache_hdr() { case $1 in nginx) echo x-cache-status ;; fnroute) echo fnroute-cache ;; esac; }
# one POST with curl; sets ST (status), CS (cache header value, lower case), BODY_OK (1 if identical to RESP)
post() { # server proto(h1|h2) bodyfile label
  local v=--http1.1 out=$STATE/check-body.bin hd=$STATE/check-head.txt
  [[ $2 == h2 ]] && v=--http2
  rm -f "$out" "$hd"
  curl -sk "$v" --max-time 10 -X POST --data-binary "@$3" -H 'Content-Type:' -D "$hd" -o "$out" "$(url_of "$1")" 2>>"$CHECKS"
  ST=$(awk 'NR==1{print $2}' "$hd" 2>/dev/null)
  CS=$(grep -i "^$(cache_hdr "$1"):" "$hd" 2>/dev/null | head -1 | cut -d: -f2 | tr -d ' \r' | tr '[:upper:]' '[:lower:]')
  BODY_OK=0; cmp -s "$out" "$RESP" && BODY_OK=1
  { echo "## $1 $2 $4: status ${ST:-none}, $(cache_hdr "$1")=${CS:-none}, body $(stat -c %s "$out" 2>/dev/null || echo 0) bytes, identical=$BODY_OK"
    tr -d '\r' <"$hd" 2>/dev/null | sed 's/^/#    /'; } >>"$CHECKS"
}
check_server() { # server: miss, hit (h1), hit (h2), other payload miss then hit
  local s=$1 fail=0
  post "$s" h1 "$REQ" first;        [[ $ST == 200 && $CS == miss && $BODY_OK == 1 ]] || { log "$s h1 first request: status ${ST:-none}, cache ${CS:-none}, body identical $BODY_OK (want 200 miss 1)"; fail=1; }
  post "$s" h1 "$REQ" second;       [[ $ST == 200 && $CS == hit && $BODY_OK == 1 ]] || { log "$s h1 second request: status ${ST:-none}, cache ${CS:-none}, body identical $BODY_OK (want 200 hit 1)"; fail=1; }
  post "$s" h2 "$REQ" third;        [[ $ST == 200 && $CS == hit && $BODY_OK == 1 ]] || { log "$s h2 request: status ${ST:-none}, cache ${CS:-none}, body identical $BODY_OK (want 200 hit 1)"; fail=1; }
  grep -q "^HTTP/2 200" "$STATE/check-head.txt" 2>/dev/null || { log "$s: curl --http2 did not get HTTP/2"; fail=1; }
  post "$s" h1 "$REQ2" other-first; [[ $ST == 200 && $CS == miss ]] || { log "$s other payload: cache ${CS:-none} (want miss: the body must be in the key)"; fail=1; }
  post "$s" h2 "$REQ2" other-second; [[ $ST == 200 && $CS == hit ]] || { log "$s other payload again: cache ${CS:-none} (want hit)"; fail=1; }
  return $fail
}
if [[ -n ${want[nginx]:-} ]]; then
  check_server nginx || { cat "$CHECKS" >&2; die "nginx check failed (above; $STATE/logs/nginx-error.log)"; }
  log "nginx: miss, then hits over h1 and h2 with the identical $RESP_BYTES-byte body; another payload is another key"
fi
if [[ -n ${want[fnroute]:-} ]]; then
  if ((FN_TCP)); then
    check_server fnroute || { cat "$CHECKS" >&2; tail -20 "$STATE/logs/fnroute.log" >&2; die "fnroute check over TCP failed (above): the edge does not answer POST /fn/$FN on tcp $FN_PORT as a cache hit of the same $RESP_BYTES bytes"; }
    log "fnroute: miss, then hits over h1 and h2 with the identical $RESP_BYTES-byte body; another payload is another key"
  fi
  if [[ -n ${want[fnroute:h3]:-} ]]; then
    # over h3 the same payload: a hit when the TCP checks stored it, else the first miss; the second is a hit
    for _ in 1 2; do
      "$FNROUTE" invoke "$FN" --data-file "$REQ" --edge "127.0.0.1:$FN_PORT" --insecure -v >"$STATE/check-body.bin" 2>"$STATE/check-head.txt"
    done
    CS=$(grep -io "fnroute-cache: *[a-z]*" "$STATE/check-head.txt" | head -1 | awk '{print tolower($2)}')
    BODY_OK=0; cmp -s "$STATE/check-body.bin" "$RESP" && BODY_OK=1
    { echo "## fnroute h3 (fnroute invoke -v, second call): fnroute-cache=${CS:-none}, body $(stat -c %s "$STATE/check-body.bin") bytes, identical=$BODY_OK"
      sed 's/^/#    /' "$STATE/check-head.txt"; } >>"$CHECKS"
    [[ $CS == hit && $BODY_OK == 1 ]] || { cat "$CHECKS" >&2; die "fnroute h3 check failed: fnroute-cache ${CS:-none}, body identical $BODY_OK (want hit 1)"; }
    log "fnroute: h3 hit with the identical body"
  fi
fi

# ------------------------------------------------------------------ quiet start (optional)
QUIET_NOTE="not waited (QUIET_WAIT=0)"
if (( QUIET_WAIT > 0 )); then
  waited=0
  while :; do
    busy=$( { pgrep -x cargo; pgrep -x rustc; pgrep -f '^[^ ]*fuzz'; } 2>/dev/null | paste -sd' ')
    l1=$(cut -d' ' -f1 /proc/loadavg)
    if [[ -z $busy ]] && awk -v l="$l1" -v m="$QUIET_LOAD" 'BEGIN{exit !(l < m)}'; then QUIET_NOTE="quiet after ${waited}s (load1 $l1, no cargo/rustc/fuzz)"; break; fi
    (( waited >= QUIET_WAIT )) && { QUIET_NOTE="NOT quiet after ${waited}s (load1 $l1, cargo/rustc/fuzz pids: ${busy:-none}), ran anyway"; break; }
    log "waiting for a quiet machine (load1 $l1, cargo/rustc/fuzz pids: ${busy:-none})"; sleep 60; waited=$((waited + 60))
  done
fi

# ------------------------------------------------------------------ header
sha() { sha256sum "$1" | cut -d' ' -f1; }
{
echo "# benches/tcp-vs-nginx.sh"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')   host: $(hostname)   kernel: $(uname -r)   nproc: $(nproc)"
echo "# commit:   $(git -C "$ROOT" rev-parse HEAD 2>/dev/null) (the script's checkout; $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l) files under src/, Cargo.* differ from it; a binary's provenance is its path and sha256)"
[[ -n ${want[fnroute]:-} ]] && echo "# fnroute:  $(readlink -f "$FNROUTE")  sha256 $(sha "$FNROUTE")  ($("$FNROUTE" --version 2>/dev/null))"
echo "# nginx:    $(readlink -f "$(command -v nginx)")  $(nginx -v 2>&1)  (Debian nginx $(dpkg-query -W -f '${Version}' nginx 2>/dev/null))"
echo "# h2load:   $(h2load --version 2>&1 | head -1)  (Debian nghttp2-client $(dpkg-query -W -f '${Version}' nghttp2-client 2>/dev/null)), $(openssl version)"
[[ -n ${want[fnroute:h3]:-} ]] && echo "# h3load:   $H3LOAD  sha256 $(sha "$H3LOAD")"
echo "# knobs:    ROUNDS=$ROUNDS DUR=${DUR}s WARMUP=${WARMUP}s h1: -c $C1 -m 1; h2: -c $C -m $M; h3: -c $C -s $M; REQ_BODY=$REQ_BODY RESP_BYTES=$RESP_BYTES NGINX_OFC=$NGINX_OFC"
echo "#           TLS13_CIPHER=$TLS13_CIPHER (h2load --tls13-ciphers; h3load: rustls defaults) SRV_CPU=$SRV_CPU LG_CPU=$LG_CPU FN=$FN"
echo "# slots:    odd rounds: $SLOTS; even rounds: the reverse"
echo "# ports:    nginx 127.0.0.1:$NGINX_PORT (origin :$ORIGIN_PORT), fnroute 127.0.0.1:$FN_PORT tcp+udp (admin :$FN_ADMIN_PORT)"
echo "# cert:     $(openssl x509 -in "$CERT" -noout -text | grep -m1 'Public Key Algorithm' | sed 's/^ *//'), $(openssl x509 -in "$CERT" -noout -text | grep -m1 'NIST CURVE' | sed 's/^ *//'), the same files for both"
echo "# configs:  $NGX_CONF (sha256 $(sha "$NGX_CONF")), $TOPO (sha256 $(sha "$TOPO"))"
echo "# request:  POST /fn/$FN, body $REQ_BODY bytes 'x' ($REQ, the same bytes h3load sends); answer $RESP_BYTES bytes 'x' ($RESP)"
echo "# quiet:    $QUIET_NOTE"
echo "# load at start: loadavg $(cut -d' ' -f1-3 /proc/loadavg); busy processes: $(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 5 {printf "%s(%s%%) ", $2, $1}')"
echo "# pids:     $(for n in "${!pid_of[@]}"; do printf '%s=%s ' "$n" "${pid_of[$n]}"; done)${NGX_WORKERS:+nginx workers=$NGX_WORKERS}"
echo "# checks before the run (curl -sk -X POST --data-binary @request.bin -H 'Content-Type:'; fnroute invoke -v for h3):"
cat "$CHECKS"
} | tee -a "$OUT"

# ------------------------------------------------------------------ load
HZ=$(getconf CLK_TCK)
srv_pids() { case $1 in nginx) echo "${pid_of[nginx]} $NGX_WORKERS" ;; fnroute) echo "${pid_of[fnroute]}" ;; esac; }
# CPU ticks without forking (no child may run between the two reads but the load generator)
cpu_ticks() { # server -> BUSY STEAL (all CPUs), SRV (that server), ALLSRV (every server), LG (this shell's reaped children)
  local u n s irq sirq st a p name
  read -r _ u n s _ _ irq sirq st _ </proc/stat
  BUSY=$((u + n + s + irq + sirq)) STEAL=$st SRV=0 ALLSRV=0
  read -r -a a </proc/self/stat; LG=$((a[15] + a[16]))   # cutime + cstime: the load generator once reaped
  for name in nginx fnroute; do
    [[ -n ${want[$name]:-} ]] || continue
    for p in $(srv_pids $name); do
      read -r -a a </proc/"$p"/stat 2>/dev/null || continue
      ALLSRV=$((ALLSRV + a[13] + a[14] + a[15] + a[16]))   # utime stime cutime cstime (comm has no spaces)
      [[ $name == "$1" ]] && SRV=$((SRV + a[13] + a[14] + a[15] + a[16]))
    done
  done
}
pct() { echo $(( $1 * 100 * 100 / HZ / el_cs )); }   # ticks -> % of one core over the slot (el_cs: 1/100 s)
gen() { # server proto duration_s warmup_s -> the load generator's output
  local url; url=$(url_of "$1")
  case $2 in
    h1) taskset -c "$LG_CPU" h2load --h1 -D "$3" --warm-up-time="$4" -c "$C1" -m 1 -d "$REQ" --tls13-ciphers="$TLS13_CIPHER" "$url" 2>&1 ;;
    h2) taskset -c "$LG_CPU" h2load -D "$3" --warm-up-time="$4" -c "$C" -m "$M" -d "$REQ" --tls13-ciphers="$TLS13_CIPHER" "$url" 2>&1 ;;
    h3) taskset -c "$LG_CPU" "$H3LOAD" --url "$url" --server-name "$FN.fn.test" --method POST --body-size "$REQ_BODY" \
          -c "$C" -s "$M" -d "${3}s" --insecure --json 2>&1 ;;
  esac
}
# parse one output into: RPS DONE FAILED STATUS PROTO CIPHER HDRB (header bytes per request) BAD (reasons)
parse() { # proto output
  local o=$2
  BAD=
  if [[ $1 == h3 ]]; then
    local j; j=$(grep '^{' <<<"$o" | tail -1)
    RPS=$(grep -o '"rps":[0-9.]*' <<<"$j" | cut -d: -f2); DONE=$(grep -o '"ok":[0-9]*' <<<"$j" | cut -d: -f2)
    FAILED=$(grep -o '"errors":[0-9]*' <<<"$j" | cut -d: -f2)
    STATUS=$(awk '/^  status:/{$1=""; sub(/^ /,""); gsub(/ /,","); print}' <<<"$o")
    PROTO=h3 CIPHER=rustls-default HDRB=-
    [[ -n $j ]] || BAD="$BAD no-result"
    [[ ${STATUS:-} =~ ^200=[0-9]+$ ]] || BAD="$BAD status:${STATUS:-none}"
  else
    RPS=$(awk '/^finished in/{gsub(",","",$4); print $4}' <<<"$o")
    DONE=$(awk '/^requests:/{print $8}' <<<"$o")
    FAILED=$(awk '/^requests:/{print $12 + $14 + $16}' <<<"$o")   # failed + errored + timeout
    STATUS=$(awk '/^status codes:/{printf "2xx=%s,3xx=%s,4xx=%s,5xx=%s", $3, $5, $7, $9}' <<<"$o")
    PROTO=$(awk -F': ' '/^Application protocol:/{print $2; exit}' <<<"$o")
    CIPHER=$(awk -F': ' '/^Cipher:/{print $2; exit}' <<<"$o")
    local tlsv; tlsv=$(awk -F': ' '/^TLS Protocol:/{print $2; exit}' <<<"$o")
    [[ $tlsv == TLSv1.3 ]] || BAD="$BAD tls:${tlsv:-none}"
    HDRB=$(awk -v d="${DONE:-0}" '/^traffic:/{for(i=1;i<=NF;i++) if($i=="headers"){h=$(i-1); gsub(/[()]/,"",h)} if(d>0) printf "%.0f", h/d}' <<<"$o")
    local want_proto=h2; [[ $1 == h1 ]] && want_proto=http/1.1
    [[ ${PROTO:-} == "$want_proto" ]] || BAD="$BAD proto:${PROTO:-none}"
    [[ ${CIPHER:-} == "$TLS13_CIPHER" ]] || BAD="$BAD cipher:${CIPHER:-none}"
    [[ ${STATUS:-} =~ ^2xx=([0-9]+),3xx=0,4xx=0,5xx=0$ && ${BASH_REMATCH[1]} == "${DONE:-x}" ]] || BAD="$BAD status:${STATUS:-none}"
  fi
  RPS=${RPS:-0} DONE=${DONE:-0} FAILED=${FAILED:-?}
  [[ $FAILED == 0 ]] || BAD="$BAD failed:$FAILED"
  [[ $DONE -gt 0 ]] 2>/dev/null || BAD="$BAD no-requests"
}

log "warm-up: one untimed 2 s slot of each (server, protocol)"
for s in $SLOTS; do gen "${s%%:*}" "${s#*:}" 2 0 >>"$STATE/logs/warmup.txt"; done

RES=$STATE/slots.tsv; : >"$RES"
say ""
say "$(printf '%-5s %-3s %-8s %-2s %9s %9s %6s %-30s %-8s %-22s %6s %6s %6s %6s %6s %5s %s' \
  round pos server pr req/s 'done' failed status proto cipher hdrB/r srv% lg% other% steal% load1 flags)"
for r in $(seq "$ROUNDS"); do
  order=$SLOTS; (( r % 2 == 0 )) && order=$(tr ' ' '\n' <<<"$SLOTS" | tac | paste -sd' ')
  pos=0
  for slot in $order; do
    pos=$((pos + 1)); srv=${slot%%:*} pr=${slot#*:}
    load1=$(cut -d' ' -f1 /proc/loadavg)
    cpu_ticks "$srv"; b0=$BUSY s0=$STEAL v0=$SRV a0=$ALLSRV l0=$LG; t0=$EPOCHREALTIME
    out=$(gen "$srv" "$pr" "$DUR" "$WARMUP")
    cpu_ticks "$srv"; b1=$BUSY s1=$STEAL v1=$SRV a1=$ALLSRV l1=$LG; t1=$EPOCHREALTIME
    el_cs=$(( (${t1/./} - ${t0/./}) / 10000 )); (( el_cs > 0 )) || el_cs=1     # elapsed, 1/100 s
    srv_pct=$(pct $((v1 - v0))) lg_pct=$(pct $((l1 - l0)))
    other=$(pct $(( (b1 - b0) - (a1 - a0) - (l1 - l0) ))) steal=$(pct $((s1 - s0)))
    parse "$pr" "$out"
    { echo "=================== round $r pos $pos: $srv $pr (load1 $load1, $(date -u +%T))"; echo "$out"; } >>"$RAW"
    say "$(printf '%-5s %-3s %-8s %-2s %9.0f %9s %6s %-30s %-8s %-22s %6s %6s %6s %6s %6s %5s %s' \
      "$r" "$pos" "$srv" "$pr" "$RPS" "$DONE" "$FAILED" "${STATUS:--}" "${PROTO:--}" "${CIPHER:--}" "${HDRB:--}" \
      "$srv_pct" "$lg_pct" "$other" "$steal" "$load1" "${BAD:+BAD$BAD}")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$srv" "$pr" "$RPS" "$srv_pct" "$lg_pct" "$other" "$load1" "${BAD:-ok}" "$steal" >>"$RES"
  done
  say "$(awk -F'\t' -v r="$r" -v order="$order" '$1 == r {v[$2 ":" $3] = $4; if ($7 > om) om = $7}
    END {printf "round %s: order %s | other max %d%% of a core |", r, order, om
         if (v["nginx:h1"] > 0 && v["fnroute:h1"] != "") printf " h1 fnroute/nginx %.3f", v["fnroute:h1"] / v["nginx:h1"]
         if (v["nginx:h2"] > 0 && v["fnroute:h2"] != "") printf " h2 fnroute/nginx %.3f", v["fnroute:h2"] / v["nginx:h2"]
         if (v["fnroute:h2"] > 0 && v["fnroute:h3"] != "") printf " fnroute h3/h2 %.3f", v["fnroute:h3"] / v["fnroute:h2"]
         print ""}' "$RES")"
done

# ------------------------------------------------------------------ after the run: only the checks' misses
say ""
say "# load at end: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
POST_BAD=
if [[ -n ${want[nginx]:-} ]]; then
  n=$(grep -c . "$STATE/logs/nginx-origin-access.log")
  say "# nginx origin requests (= cache misses) in the whole run: $n (want 2: the checks' two payloads)"
  [[ $n == 2 ]] || POST_BAD="$POST_BAD nginx-origin-requests=$n"
  alive "${pid_of[nginx]}" || POST_BAD="$POST_BAD nginx-died"
fi
if [[ -n ${want[fnroute]:-} ]]; then
  m=$(curl -s --max-time 5 "http://127.0.0.1:$FN_ADMIN_PORT/metrics" | grep '^fnroute_cache_requests_total')
  say "# fnroute /metrics: $(echo "$m" | tr '\n' ';')"
  misses=$(echo "$m" | grep -i 'miss' | awk '{s += $NF} END {print s + 0}')
  want_m=2; ((FN_TCP)) || want_m=1
  say "# fnroute cache misses in the whole run: $misses (want $want_m: the checks' payloads)"
  [[ $misses == "$want_m" ]] || POST_BAD="$POST_BAD fnroute-misses=$misses"
  alive "${pid_of[fnroute]}" || POST_BAD="$POST_BAD fnroute-died"
fi

# ------------------------------------------------------------------ summary
say ""
say "# summary: $ROUNDS rounds x ${DUR}s per slot; ratio = req/s of the two slots of the same round; median over rounds"
awk -F'\t' '
  function stats(name, arr, k,    i, j, t, med, sum, list) {
    if (k == 0) return
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    med = (k % 2) ? arr[(k + 1) / 2] : (arr[k / 2] + arr[k / 2 + 1]) / 2
    for (i = 1; i <= k; i++) { sum += arr[i]; list = list sprintf(" %.3f", arr[i]) }
    printf "%-22s median %.3f  (mean %.3f, min %.3f, max %.3f, %d rounds; sorted:%s)\n", name, med, sum / k, arr[1], arr[k], k, list
  }
  { v[$1, $2 ":" $3] = $4; if ($1 > R) R = $1; if ($9 != "ok") bad++; key[$2 ":" $3] = 1; sum[$2 ":" $3] += $4; cnt[$2 ":" $3]++
    if ($7 > om[$1]) om[$1] = $7; if ($10 > sm[$1]) sm[$1] = $10
    if ($6 >= 95 && $5 < 90) { cb[$2 ":" $3]++; cbr[$1, $2 ":" $3] = 1 } }
  END {
    for (r = 1; r <= R; r++) {
      dist[r] = (om[r] > 25 || sm[r] > 10); nd += dist[r]
      if (v[r, "nginx:h1"] > 0 && v[r, "fnroute:h1"] != "") { h1[++k1] = v[r, "fnroute:h1"] / v[r, "nginx:h1"]; if (!dist[r]) u1[++j1] = h1[k1] }
      if (v[r, "nginx:h2"] > 0 && v[r, "fnroute:h2"] != "") { h2[++k2] = v[r, "fnroute:h2"] / v[r, "nginx:h2"]; if (!dist[r]) u2[++j2] = h2[k2] }
      if (v[r, "fnroute:h2"] > 0 && v[r, "fnroute:h3"] != "") { h3[++k3] = v[r, "fnroute:h3"] / v[r, "fnroute:h2"]; if (!dist[r]) u3[++j3] = h3[k3] }
    }
    print "all rounds:"
    stats("h1 fnroute/nginx:", h1, k1); stats("h2 fnroute/nginx:", h2, k2); stats("fnroute h3/h2:", h3, k3)
    printf "disturbed rounds (other > 25%% of a core or steal > 10%% in any slot): %d of %d\n", nd, R
    if (nd > 0 && nd < R) {
      print "undisturbed rounds only (reported, not decisive):"
      stats("h1 fnroute/nginx:", u1, j1); stats("h2 fnroute/nginx:", u2, j2); stats("fnroute h3/h2:", u3, j3)
    }
    n = split("nginx:h1 fnroute:h1 nginx:h2 fnroute:h2 fnroute:h3", order, " ")
    for (i = 1; i <= n; i++) if (order[i] in key) printf "%-22s mean %.0f req/s over %d slots\n", order[i], sum[order[i]] / cnt[order[i]], cnt[order[i]]
    printf "other processes, max per round (%% of a core):"; for (r = 1; r <= R; r++) printf " %d", om[r]; print ""
    printf "steal, max per round (%% of a core):"; for (r = 1; r <= R; r++) printf " %d", sm[r]; print ""
    printf "client-bound slots (load generator >= 95%% of its core, server < 90%% of its core):"
    for (i = 1; i <= n; i++) if (order[i] in key) printf " %s %d/%d", order[i], cb[order[i]] + 0, cnt[order[i]]; print ""
    printf "slots flagged BAD: %d\n", bad + 0
  }' "$RES" | tee -a "$OUT"
if [[ -n $POST_BAD || $(awk -F'\t' '$9 != "ok"' "$RES" | wc -l) != 0 ]]; then
  say "# RUN INVALID:${POST_BAD} $(awk -F'\t' '$9 != "ok" {printf "round %s %s:%s %s; ", $1, $2, $3, $9}' "$RES")"
else
  say "# run valid: every timed request answered 2xx over the slot's protocol and cipher; only the checks' requests missed"
fi
say "# results: $FINAL_OUT"

{ echo ""; echo "# ---------------------------------------------------------------- raw load generator output, in run order"; cat "$RAW"; } >>"$OUT"
mv "$OUT" "$FINAL_OUT" || die "could not move $OUT to $FINAL_OUT"
