#!/usr/bin/env bash
# fnroute's DNS front door side by side with gdnsd (geoip plugin, nearest by
# distance), same run, same query file (per-query ECS), dnsperf on loopback.
# Each server is pinned to core 1 (taskset), dnsperf to core 0. Peak runs
# alternate between the servers inside each repetition; then each server is
# measured at ~50% of its own peak (dnsperf -Q, per-query latencies from -v
# give p50/p99).
#
#   benches/dns-vs-gdnsd.sh                  # DURATION=15 REPS=2
#   DURATION=20 REPS=3 benches/dns-vs-gdnsd.sh
#
# Needs the peers' set-up (see /work/shared/bench/README.md); copies it to
# $PEERS_ROOT if missing. Installs gdnsd, dnsperf, dig and python3-dnspython
# with apt when missing. Stops only the processes it started (by PID).
# Besides qps it records each server's CPU time during the run (from
# /proc/PID/stat), so qps per CPU-second can be compared even when other
# work on the machine steals time from core 1.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_ROOT="${PEERS_ROOT:-/tmp/fnroute-peers}"
SHARED="${SHARED:-/work/shared}"
PEERS="$PEERS_ROOT/bench/dns-peers"
DURATION="${DURATION:-15}"
REPS="${REPS:-2}"
CLIENTS="${CLIENTS:-4}"
OUTSTANDING="${OUTSTANDING:-100}"
BLOB="${BLOB:-mix-ecs}"
OUT="${OUT:-$ROOT/target/dns-bench}"
FN_PORT=5310
GDNSD_PORT=5301

# ------------------------------------------------------------------ set-up
missing=()
for p in gdnsd dnsperf bind9-dnsutils python3-dnspython; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ ! -d "$PEERS" ]; then
  mkdir -p "$PEERS_ROOT"
  cp -r "$SHARED/bench" "$SHARED/tools" "$PEERS_ROOT/"
  chmod -R u+w "$PEERS_ROOT"
fi
if [ ! -f "$PEERS/conf/gdnsd/config" ]; then
  (cd "$PEERS" && /usr/bin/python3 gen_configs.py)
fi
mkdir -p "$OUT/raw" "$PEERS/run/gdnsd" "$PEERS/run/gdnsd-state"

(cd "$ROOT" && cargo build --release --bin fnroute)
# A private copy: the shared target directory may be rebuilt meanwhile.
target_dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cp "$target_dir/release/fnroute" "$OUT/fnroute"

pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_all EXIT
FNROUTE_LOG=warn taskset -c 1 "$OUT/fnroute" serve --config "$PEERS/fnroute-topology.toml" --node fra \
  > "$OUT/fnroute.log" 2>&1 &
FN_PID=$!; pids+=("$FN_PID")
taskset -c 1 gdnsd -c "$PEERS/conf/gdnsd" start > "$OUT/gdnsd.log" 2>&1 &
GD_PID=$!; pids+=("$GD_PID")
for port in $FN_PORT $GDNSD_PORT; do
  for _ in $(seq 100); do
    dig @127.0.0.1 -p "$port" +norec +time=1 +tries=1 +short resize.fn.example A | grep -q . && break
    sleep 0.2
  done
done
for p in "$FN_PID" "$GD_PID"; do
  kill -0 "$p" 2>/dev/null || { echo "a server did not start (port taken?): see $OUT/*.log" >&2; exit 1; }
done
taskset -a -p -c 1 "$FN_PID" >/dev/null
taskset -a -p -c 1 "$GD_PID" >/dev/null
{ gdnsd -c "$PEERS/conf/gdnsd" checkconf 2>&1 | grep -m1 version || true; dnsperf -h 2>&1 | grep -m1 Version;
  uname -r; nproc; git -C "$ROOT" rev-parse --short HEAD; } > "$OUT/versions.txt"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
port_of() { if [ "$1" = fnroute ]; then echo $FN_PORT; else echo $GDNSD_PORT; fi; }
pid_of() { if [ "$1" = fnroute ]; then echo "$FN_PID"; else echo "$GD_PID"; fi; }
hz=$(getconf CLK_TCK)

# ------------------------------------------------------------------ warm-up
# Discarded: lets both servers finish start-up work (gdnsd builds its geo
# map in the background) before anything is measured.
for port in $FN_PORT $GDNSD_PORT; do
  taskset -c 0 dnsperf -B -d "$PEERS/queries/$BLOB.blob" -s 127.0.0.1 -p "$port" \
    -l 5 -c "$CLIENTS" -q "$OUTSTANDING" -t 2 > /dev/null 2>&1 || true
done

# ------------------------------------------------------------------ peak
TSV="$OUT/peak.tsv"
echo -e "server\trep\tsent\tcompleted\tlost\tqps\tavg_lat_ms\tmax_lat_ms\tcpu_s\tqps_per_cpu_s" > "$TSV"
for rep in $(seq "$REPS"); do
  for srv in fnroute gdnsd; do
    raw="$OUT/raw/peak-$srv-rep$rep.txt"
    c0=$(cpu_ticks "$(pid_of $srv)")
    taskset -c 0 dnsperf -B -d "$PEERS/queries/$BLOB.blob" -s 127.0.0.1 -p "$(port_of $srv)" \
      -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" -t 2 > "$raw" 2>&1 || true
    c1=$(cpu_ticks "$(pid_of $srv)")
    sent=$(awk '/Queries sent:/{print $3}' "$raw"); comp=$(awk '/Queries completed:/{print $3}' "$raw")
    lost=$(awk '/Queries lost:/{print $3}' "$raw"); qps=$(awk '/Queries per second:/{print $4}' "$raw")
    read -r avg mx < <(sed -n 's/.*Average Latency (s): *\([0-9.]*\) (min [0-9.]*, max \([0-9.]*\)).*/\1 \2/p' "$raw")
    cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)/hz}')
    per=$(awk -v c="$comp" -v s="$cpu" 'BEGIN{ if (s > 0) printf "%.0f", c/s; else print "-" }')
    line=$(awk -v s="$srv" -v r="$rep" -v se="$sent" -v co="$comp" -v l="$lost" -v q="$qps" -v a="$avg" -v m="$mx" -v c="$cpu" -v p="$per" \
      'BEGIN{printf "%s\t%s\t%s\t%s\t%s\t%.0f\t%.3f\t%.1f\t%s\t%s", s, r, se, co, l, q, a*1000, m*1000, c, p}')
    echo -e "$line" | tee -a "$TSV"
  done
done

# ------------------------------------------------------------------ ~50% of peak
HALF="$OUT/half.tsv"
echo -e "server\ttarget_qps\tqps\tlost\tp50_ms\tp99_ms\tp999_ms\tmax_ms" > "$HALF"
for srv in fnroute gdnsd; do
  peak=$(awk -F'\t' -v s="$srv" '$1==s && $6>m {m=$6} END{print int(m)}' "$TSV")
  target=$((peak / 2))
  raw="$OUT/raw/half-$srv.txt"
  taskset -c 0 dnsperf -B -d "$PEERS/queries/$BLOB.blob" -s 127.0.0.1 -p "$(port_of $srv)" \
    -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" -t 2 -Q "$target" -v > "$raw" 2>&1 || true
  qps=$(awk '/Queries per second:/{printf "%.0f", $4}' "$raw"); lost=$(awk '/Queries lost:/{print $3}' "$raw")
  # Per-query latencies (seconds, last field of "> NOERROR ..." lines) in
  # 1 µs buckets.
  read -r p50 p99 p999 mx < <(awk '/^> /{b=int($NF*1e6); h[b]++; n++; if (b>m) m=b}
    END{ c=0; split("0.5 0.99 0.999", qs, " "); qi=1;
         for (i=0; i<=m && qi<=3; i++) { c+=h[i]; while (qi<=3 && c >= qs[qi]*n) { r[qi]=i; qi++ } }
         printf "%.3f %.3f %.3f %.3f\n", r[1]/1000, r[2]/1000, r[3]/1000, m/1000 }' "$raw")
  echo -e "$srv\t$target\t$qps\t$lost\t$p50\t$p99\t$p999\t$mx" | tee -a "$HALF"
done

echo
echo "== peak (server on core 1, dnsperf on core 0): $TSV"
column -t -s $'\t' "$TSV"
echo "== ~50% of peak: $HALF"
column -t -s $'\t' "$HALF"
