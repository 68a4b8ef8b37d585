#!/usr/bin/env bash
# A/B of one or more fnroute binaries next to the bare quinn+h3 echo (../shared/bench/quic-peers,
# `peers h3-echo`), round by round, servers pinned to core $SRV_CPU and h3load to core $LG_CPU.
# Odd rounds run the servers in the order given (echo first), even rounds in the reverse order, so
# neither server always runs first or last in a round (ABBA). Every slot records the machine's load.
#
#   CACHE_TTL=3600 ONLY="fnroute" DUR=1s benches/h3-vs-peers.sh    # once: writes target/h3-bench/topology.toml
#                                                                  # and builds peers + h3load under $PEERS_DIR
#   benches/h3-ab.sh fnroute=target/release/fnroute                # cache hits vs the echo
#   benches/h3-ab.sh old=/path/to/fnroute-old new=/path/to/fnroute-new
#
# Env: TOPO (target/h3-bench/topology.toml: its quic_listen 127.0.0.1:4440 and admin/dns ports are
#      rewritten per binary to 4450+k, 19450+k, 15450+k), FN (bench), C x S (4 x 64), DUR (5s), ROUNDS (4),
#      BODY (256), NOTE (a free-text header line, e.g. how the binaries were built), SRV_CPU (1), LG_CPU (0), THRESH (90: the summary counts rounds at or above THRESH % of
#      the echo), PEERS_DIR (/tmp/fnroute-peers, see benches/h3-vs-peers.sh),
#      UDP_BUF (equal | kernel; default equal):
#        equal:  the echo's listening socket gets exactly the SO_RCVBUF/SO_SNDBUF the kernel gave fnroute's
#                (fnroute sets them itself, `udp_buffer_bytes`, default 4 MiB, which the kernel doubles to
#                8 MiB when net.core.[rw]mem_max allows; the echo calls no setsockopt and gets
#                net.core.[rw]mem_default, 208 KiB, and drops datagrams at 256 in flight). The script
#                reads fnroute's rb/tb with `ss`, sets net.core.rmem_default/wmem_default to them only
#                while the echo binds its socket, restores them at once (and on exit, by trap), and
#                refuses to run if the two listening sockets' rb/tb differ. Why this way and not fnroute
#                down to the kernel default: fnroute is measured as it ships, the echo (the transport's
#                ceiling) is measured at its best rather than handicapped by drops, so the ratio can only
#                get less flattering; and nothing else changes: h3load's client sockets and everybody
#                else's sockets keep the kernel defaults (the sysctl window is the ~1 s the echo takes
#                to bind).
#        kernel: the old behaviour (fnroute sizes its buffers, the echo keeps the kernel defaults).
#      EXEC (command | lambda; default command): lambda is the warm-invoke topology of
#        `EXEC=lambda benches/h3-vs-peers.sh`: TOPO must then be a topology whose function FN is
#        `kind = "lambda"` (e.g. running examples/lambda_echo; the A/B binaries share the one worker
#        binary the topology names). lambda_runtime needs a JSON event, so every server (the echo too)
#        gets the same BODY-byte JSON document {"pad":"xxx…"} ($STATE/body.json) sent by the copy of
#        h3load that h3-vs-peers.sh patches to read $H3LOAD_BODY_FILE ($PEERS_DIR/tools/h3load-bodyfile;
#        run `EXEC=lambda benches/h3-vs-peers.sh` once to build it). Before the clock, every binary must
#        echo the body unchanged through `fnroute invoke` (else the script stops). The worker processes
#        (children of a server) are counted with their server, not as `other` CPU.
#      PAIR ("": off; e.g. new/old): also print per round the ratio of the two named binaries' req/s
#        (paired within the round) and, in the summary, its median, mean, min/max and sorted values.
#
# Output (stdout): a header (date, commit, kernel, binaries with sha256, every knob, sysctls, `ss -uampn`
# lines of the listening sockets), one line per slot (a server's DUR of load) and one per round, the
# `ss` lines again at the end, and a summary (per binary: median, mean and min/max of the per-round ratio
# binary_rps / echo_rps, paired within the round, the ratio of mean rates, rounds >= THRESH %).
# Per slot: req/s, p50, statuses, h3load's own CPU %, the UDP drops of that server's listening socket
# (skmem d, per socket) and of the whole host (/proc/net/snmp Udp RcvbufErrors: includes h3load's client
# sockets), the 1-minute loadavg at the start, and the CPU that processes OTHER than the servers and
# h3load used during the slot, in % of one core (of 100 x nproc): /proc/stat busy ticks
# (user+nice+system+irq+softirq) minus the servers' utime+stime(+children) from /proc/PID/stat minus
# h3load's (this shell's cutime+cstime, h3load being its only child during the slot). The kernel
# (CONFIG_TICK_CPU_ACCOUNTING, no IRQ time accounting) charges softirq work to the task it interrupts,
# so our own loopback packet processing is ours; tick sampling makes `other` accurate to a few %.
# steal: ticks the hypervisor gave to other guests (also a disturbance, reported separately).
# Only processes this script started are stopped, by their PIDs.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-/tmp/fnroute-peers}
H3=$PEERS_DIR/tools/h3load/target/release/h3load
PEERS=$PEERS_DIR/bench/quic-peers/peers/target/release/peers
C=${C:-4} S=${S:-64} DUR=${DUR:-5s} ROUNDS=${ROUNDS:-4} FN=${FN:-bench} BODY=${BODY:-256}
SRV_CPU=${SRV_CPU:-1} LG_CPU=${LG_CPU:-0} THRESH=${THRESH:-90} UDP_BUF=${UDP_BUF:-equal}
TOPO=${TOPO:-$ROOT/target/h3-bench/topology.toml}
EXEC=${EXEC:-command} PAIR=${PAIR:-}
[[ $EXEC == command || $EXEC == lambda ]] || { echo "EXEC must be command or lambda" >&2; exit 1; }
[[ -z $PAIR || $PAIR =~ ^[A-Za-z][A-Za-z0-9_]*/[A-Za-z][A-Za-z0-9_]*$ ]] || { echo "PAIR must be name/name" >&2; exit 1; }
[[ $EXEC == lambda ]] && H3=$PEERS_DIR/tools/h3load-bodyfile/target/release/h3load
STATE=${STATE:-$ROOT/target/h3-ab}
ECHO_PORT=4502
[[ -f $TOPO && -x $H3 && -x $PEERS ]] || { echo "run benches/h3-vs-peers.sh once first (topology, h3load, peers)" >&2; exit 1; }
(( $# >= 1 )) || { echo "usage: benches/h3-ab.sh name=/path/to/fnroute [name2=/path/to/fnroute2 ...]" >&2; exit 1; }
[[ $UDP_BUF == equal || $UDP_BUF == kernel ]] || { echo "UDP_BUF must be equal or kernel" >&2; exit 1; }
mkdir -p "$STATE"
BODY_FILE=
if [[ $EXEC == lambda ]]; then
  grep -Eq '^executor = \{ kind = "lambda"' "$TOPO" || { echo "EXEC=lambda: $TOPO has no kind = \"lambda\" function" >&2; exit 1; }
  grep -q H3LOAD_BODY_FILE "$PEERS_DIR/tools/h3load-bodyfile/src/main.rs" 2>/dev/null || { echo "EXEC=lambda: $H3 is not the patched h3load (run EXEC=lambda benches/h3-vs-peers.sh once)" >&2; exit 1; }
  (( BODY >= 12 )) || { echo "BODY must be >= 12 bytes with EXEC=lambda" >&2; exit 1; }
  BODY_FILE=$STATE/body.json   # a JSON event of exactly BODY bytes: {"pad":"xxx…"}, as h3-vs-peers.sh writes it
  { printf '{"pad":"'; head -c $((BODY - 10)) /dev/zero | tr '\0' x; printf '"}'; } >"$BODY_FILE"
  export H3LOAD_BODY_FILE=$BODY_FILE
fi
HZ=$(getconf CLK_TCK) NCPU=$(nproc)

# ------------------------------------------------------------------ processes and sysctls, restored on exit
pids=(); declare -A url pid_of
SYSCTL_SAVED=()   # "path=value" to write back
restore_sysctls() { local kv; for kv in "${SYSCTL_SAVED[@]}"; do echo "${kv#*=}" >"${kv%%=*}" 2>/dev/null; done; SYSCTL_SAVED=(); }
cleanup() { # SIGTERM, then wait for the graceful shutdown (at most 5 s) so the ports are free when we return
  local p
  restore_sysctls
  (( ${#pids[@]} )) || return 0
  kill "${pids[@]}" 2>/dev/null
  for p in "${pids[@]}"; do for _ in $(seq 50); do [[ -e /proc/$p ]] || break; sleep 0.1; done; [[ -e /proc/$p ]] && kill -9 "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

udp_sock() { ss -HuampnO "sport = :$1" 2>/dev/null | head -1; }                   # one line, with skmem
skmem() { udp_sock "$1" | grep -o "skmem:([^)]*)" | grep -o "[(,]$2[0-9]*" | head -1 | tr -dc 0-9 || true; }  # port field(rb|tb|d)
wait_udp() { for _ in $(seq 100); do [[ -n $(udp_sock "$1") ]] && return 0; sleep 0.1; done; echo "udp :$1 not listening" >&2; exit 1; }
udp_rcvbuf_errors() { awk '/^Udp:/{n++} /^Udp:/&&n==2{print $6}' /proc/net/snmp; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# ------------------------------------------------------------------ header
names="echo"; for nb in "$@"; do names="$names ${nb%%=*}"; done
for nb in "$@"; do [[ $nb =~ ^[A-Za-z][A-Za-z0-9_]*=. && ${nb%%=*} != echo ]] || { echo "bad argument $nb: want name=/path (name: letters, digits, _; not echo)" >&2; exit 1; }
  [[ -x ${nb#*=} ]] || { echo "${nb#*=}: not an executable" >&2; exit 1; }; done
echo "# benches/h3-ab.sh $*"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')   host: $(hostname)   kernel: $(uname -r)   nproc: $NCPU   CLK_TCK: $HZ"
echo "# commit:   $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) (the script's checkout; a binary's provenance is its path and sha256 below)"
for nb in "$@"; do b=${nb#*=}; echo "# binary:   ${nb%%=*} = $(readlink -f "$b")  sha256 $(sha "$b")"; done
echo "# echo:     $PEERS h3-echo --listen 127.0.0.1:$ECHO_PORT  sha256 $(sha "$PEERS")"
echo "# h3load:   $H3  sha256 $(sha "$H3")"
echo "# knobs:    ROUNDS=$ROUNDS DUR=$DUR C=$C S=$S ($((C * S)) in flight) BODY=$BODY FN=$FN SRV_CPU=$SRV_CPU LG_CPU=$LG_CPU UDP_BUF=$UDP_BUF THRESH=$THRESH"
echo "#           TOPO=$TOPO (sha256 $(sha "$TOPO")) STATE=$STATE PEERS_DIR=$PEERS_DIR"
if [[ $EXEC == lambda ]]; then
  echo "# topology: $(grep -E '^(quic_listen|capacity|udp_buffer_bytes|cache|executor|name|concurrency|memory_mb|timeout_ms|queue|queue_timeout_ms|keep_warm_ms)' "$TOPO" | tr '\n' ';' | sed 's/;$//')"
  for w in $(grep -o 'kind = "lambda", command = \["[^"]*"' "$TOPO" | sed 's/.*\["//; s/"$//' | sort -u); do
    echo "# worker:   $w  sha256 $(sha "$w")"; done
  echo "# EXEC=lambda: body $BODY_FILE ($(wc -c <"$BODY_FILE") bytes JSON, sha256 $(sha "$BODY_FILE")) for every server, h3load = the H3LOAD_BODY_FILE copy"
else
echo "# topology: $(grep -E '^(quic_listen|capacity|udp_buffer_bytes|cache|executor)' "$TOPO" | tr '\n' ';' | sed 's/;$//')"
fi
echo "# sysctl:   $(for k in rmem_default wmem_default rmem_max wmem_max; do printf 'net.core.%s=%s ' $k "$(cat /proc/sys/net/core/$k)"; done)"
[[ -n ${NOTE:-} ]] && echo "# note:     $NOTE"
echo "# order:    odd rounds: $names; even rounds: the reverse"
echo "# load at start: loadavg $(cut -d' ' -f1-3 /proc/loadavg); busy processes: $(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 5 {printf "%s(%s%%) ", $2, $1}')"

# ------------------------------------------------------------------ servers
port=4450
for nb in "$@"; do n=${nb%%=*}; b=${nb#*=}
  sed -e "s/127.0.0.1:4440/127.0.0.1:$port/" -e "s/19199/$((port+15000))/" -e "s/15399/$((port+11000))/" \
      -e "s#state_dir = .*#state_dir = \"$STATE/state-$n\"#" "$TOPO" > "$STATE/topo-$n.toml"
  FNROUTE_LOG=warn taskset -c "$SRV_CPU" "$b" serve --config "$STATE/topo-$n.toml" > "$STATE/log-$n" 2>&1 & pids+=($!)
  pid_of[$n]=$!; url[$n]=https://127.0.0.1:$port/fn/$FN; declare "port_$n=$port"; port=$((port+1)); done
first=${1%%=*}; fport=port_$first; fport=${!fport}
wait_udp "$fport"
FN_RB=$(skmem "$fport" rb) FN_TB=$(skmem "$fport" tb)
if [[ $UDP_BUF == equal ]]; then
  # the echo's socket gets what the kernel gave fnroute's (skmem rb/tb are the kernel's sk_rcvbuf/sk_sndbuf)
  for k in rmem_default wmem_default; do SYSCTL_SAVED+=("/proc/sys/net/core/$k=$(cat /proc/sys/net/core/$k)"); done
  echo "$FN_RB" >/proc/sys/net/core/rmem_default && echo "$FN_TB" >/proc/sys/net/core/wmem_default ||
    { echo "cannot set net.core.[rw]mem_default (root needed); UDP_BUF=kernel runs without" >&2; exit 1; }
fi
taskset -c "$SRV_CPU" "$PEERS" h3-echo --listen 127.0.0.1:$ECHO_PORT > "$STATE/log-echo" 2>&1 & pids+=($!)
pid_of[echo]=$!; url[echo]=https://127.0.0.1:$ECHO_PORT/echo; declare "port_echo=$ECHO_PORT"
wait_udp $ECHO_PORT
restore_sysctls
for nb in "$@"; do p=port_${nb%%=*}; wait_udp "${!p}"; done
sleep 2
echo "# sysctl after the echo bound (restored): $(for k in rmem_default wmem_default; do printf 'net.core.%s=%s ' $k "$(cat /proc/sys/net/core/$k)"; done)"
echo "# listening sockets (ss -uampn), after start:"
for n in $names; do p=port_$n; echo "#   $n: $(udp_sock "${!p}")"; done
E_RB=$(skmem $ECHO_PORT rb) E_TB=$(skmem $ECHO_PORT tb)
bufs_equal=1
for nb in "$@"; do p=port_${nb%%=*}; [[ $(skmem "${!p}" rb) == "$E_RB" && $(skmem "${!p}" tb) == "$E_TB" ]] || bufs_equal=0; done
echo "# UDP buffers: echo rb=$E_RB tb=$E_TB, $first rb=$FN_RB tb=$FN_TB: $( ((bufs_equal)) && echo EQUAL || echo DIFFERENT)"
if [[ $UDP_BUF == equal && $bufs_equal == 0 ]]; then echo "UDP_BUF=equal but the listening sockets' buffers differ: not running" >&2; exit 1; fi

h3() { # name duration -> h3load output (JSON last line)
  taskset -c "$LG_CPU" "$H3" --url "${url[$1]}" --server-name "$FN.fn.test" --method POST --body-size "$BODY" \
    -c "$C" -s "$S" -d "$2" --insecure --json 2>&1
}
if [[ $EXEC == lambda ]]; then # every binary must echo the JSON event unchanged (else: 502s, not throughput)
  for nb in "$@"; do n=${nb%%=*} b=${nb#*=}; p=port_$n
    # from $STATE: `invoke` reads ./edge-config/local.toml if there is one (another build's may not parse)
    got=$(cd "$STATE" && "$b" invoke "$FN" --data-file "$BODY_FILE" --edge "127.0.0.1:${!p}" --insecure 2>&1 || true)
    if [[ $got == "$(cat "$BODY_FILE")" ]]; then echo "# round trip: $n echoed the ${BODY}-byte JSON body unchanged"
    else echo "round trip MISMATCH for $n: got ${got:0:200}" >&2; exit 1; fi
  done
fi
# warm-up (and the cache's first miss) outside the clock
for n in $names; do h3 "$n" 2s >/dev/null; done

# ------------------------------------------------------------------ measurement
# CPU ticks without forking (no child may run between the two reads but h3load)
cpu_ticks() { # -> BUSY STEAL (all CPUs), OURS (servers incl. their children + this shell's reaped children)
  local l u n s idle iow irq sirq st rest a p
  read -r l u n s idle iow irq sirq st rest </proc/stat
  BUSY=$((u + n + s + irq + sirq)) STEAL=$st
  read -r -a a </proc/self/stat; OURS=$((a[15] + a[16]))   # cutime + cstime of this shell (h3load once reaped)
  for p in "${pid_of[@]}"; do
    read -r -a a </proc/$p/stat 2>/dev/null || continue
    OURS=$((OURS + a[13] + a[14] + a[15] + a[16]))          # utime stime cutime cstime (comm has no spaces)
  done
  if [[ $EXEC == lambda ]]; then   # live worker processes (children of a server), found without forking
    local f
    for f in /proc/[0-9]*/stat; do
      read -r -a a <"$f" 2>/dev/null || continue
      [[ -n ${is_server[${a[3]}]:-} ]] && OURS=$((OURS + a[13] + a[14] + a[15] + a[16]))
    done
  fi
}
declare -A is_server; for p in "${pid_of[@]}"; do is_server[$p]=1; done
RES=$STATE/rounds.tsv
: >"$RES"
printf '%-5s %-3s %-8s %9s %8s %-14s %7s %9s %9s %6s %7s %7s\n' round pos server req/s p50_us status lg_cpu% sock_drop host_drop load1 other% steal%
for r in $(seq "$ROUNDS"); do
  order=$names; (( r % 2 == 0 )) && order=$(echo $names | tr ' ' '\n' | tac | paste -sd' ')
  load_r=$(cut -d' ' -f1 /proc/loadavg); pos=0; others_r=0
  for n in $order; do
    pos=$((pos + 1)); p=port_$n
    d0=$(skmem "${!p}" d); u0=$(udp_rcvbuf_errors); load1=$(cut -d' ' -f1 /proc/loadavg)
    cpu_ticks; b0=$BUSY s0=$STEAL o0=$OURS; t0=$EPOCHREALTIME
    out=$(h3 "$n" "$DUR")
    cpu_ticks; b1=$BUSY s1=$STEAL o1=$OURS; t1=$EPOCHREALTIME
    d1=$(skmem "${!p}" d); u1=$(udp_rcvbuf_errors)
    el_cs=$(( (${t1/./} - ${t0/./}) / 10000 ))              # elapsed, 1/100 s
    other=$(( ((b1 - b0) - (o1 - o0)) * 100 * 100 / HZ / el_cs ))   # % of one core
    steal=$(( (s1 - s0) * 100 * 100 / HZ / el_cs ))
    json=$(echo "$out" | grep '^{' | tail -1)
    rps=$(echo "$json" | grep -o '"rps":[0-9.]*' | cut -d: -f2); rps=${rps:-0}
    p50=$(echo "$json" | grep -o '"p50_us":[0-9]*' | cut -d: -f2)
    lg=$(echo "$json" | grep -o '"client_cpu_pct":[0-9]*' | cut -d: -f2)
    st=$(echo "$out" | awk '/^  status:/{$1=""; sub(/^ /,""); gsub(/ /,","); print}')
    errs=$(echo "$out" | grep -c '^  error x')
    printf '%-5s %-3s %-8s %9.0f %8s %-14s %7s %9s %9s %6s %7s %7s%s\n' "$r" "$pos" "$n" "$rps" "${p50:--}" "${st:--}" "${lg:--}" \
      "+$((d1 - d0))" "+$((u1 - u0))" "$load1" "$other" "$steal" "$( ((errs)) && echo "  ERRORS: $(echo "$out" | grep '^  error x' | tr '\n' ' ')")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$n" "$rps" "$other" "$steal" "$load1" "$((d1 - d0))" "$((u1 - u0))" >>"$RES"
  done
  # round line: the paired ratios
  awk -F'\t' -v r="$r" -v order="$order" -v load="$load_r" '$1 == r {rps[$2] = $3; o += $4; if ($4 > om) om = $4; s += $5}
    END {printf "round %s: order %s | load1 %s | other max %d%% of a core, steal sum %d%% |", r, order, load, om, s;
         for (n in rps) if (n != "echo") printf " %s/echo = %.1f%%", n, 100 * rps[n] / rps["echo"]; print ""}' "$RES"
  [[ -n $PAIR ]] && awk -F'\t' -v r="$r" -v a="${PAIR%/*}" -v b="${PAIR#*/}" '$1 == r {rps[$2] = $3}
    END {printf "round %s: %s/%s = %.1f%%\n", r, a, b, 100 * rps[a] / rps[b]}' "$RES"
done

echo "# listening sockets (ss -uampn), at the end:"
for n in $names; do p=port_$n; echo "#   $n: $(udp_sock "${!p}")"; done
echo "# load at end: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ summary
echo "# summary (ratio = binary req/s / echo req/s in the same round; rounds: $ROUNDS x $DUR, $((C * S)) in flight)"
for nb in "$@"; do n=${nb%%=*}
  awk -F'\t' -v n="$n" -v th="$THRESH" '
    $2 == "echo" {e[$1] = $3} $2 == n {b[$1] = $3}
    END {
      k = 0; for (r in b) if (e[r] > 0) { q[++k] = 100 * b[r] / e[r]; se += e[r]; sb += b[r]; if (q[k] >= th) ok++ }
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = (k % 2) ? q[(k + 1) / 2] : (q[k / 2] + q[k / 2 + 1]) / 2
      for (i = 1; i <= k; i++) { sum += q[i]; list = list sprintf(" %.1f", q[i]) }
      printf "%s: median round %.1f%% of the echo (mean %.1f%%, min %.1f%%, max %.1f%%, ratio of mean rates %.1f%%, %d of %d rounds >= %s%%); echo mean %.0f req/s, %s mean %.0f req/s\n",
        n, med, sum / k, q[1], q[k], 100 * sb / se, ok, k, th, se / k, n, sb / k
      printf "%s: sorted ratios:%s\n", n, list
    }' "$RES"
done
if [[ -n $PAIR ]]; then
  awk -F'\t' -v a="${PAIR%/*}" -v b="${PAIR#*/}" -v R="$ROUNDS" '
    $2 == a {x[$1] = $3} $2 == b {y[$1] = $3}
    END {
      k = 0; for (r = 1; r <= R; r++) if (y[r] > 0) { q[++k] = 100 * x[r] / y[r]; byr = byr sprintf(" %.1f", q[k]); sx += x[r]; sy += y[r] }
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = (k % 2) ? q[(k + 1) / 2] : (q[k / 2] + q[k / 2 + 1]) / 2
      for (i = 1; i <= k; i++) { sum += q[i]; list = list sprintf(" %.1f", q[i]) }
      printf "%s/%s: median round %.1f%% (mean %.1f%%, min %.1f%%, max %.1f%%, ratio of mean rates %.1f%%, %d rounds)\n", a, b, med, sum / k, q[1], q[k], 100 * sx / sy, k
      printf "%s/%s: per round:%s\n%s/%s: sorted:%s\n", a, b, byr, a, b, list
    }' "$RES"
fi
awk -F'\t' '{o[$2] += $4; d[$2] += $7; h[$2] += $8; c[$2]++} END {for (n in o) printf "# %s: mean other %.0f%% of a core per slot, socket drops %d, host RcvbufErrors %d\n", n, o[n] / c[n], d[n], h[n]}' "$RES"
