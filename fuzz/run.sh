#!/usr/bin/env bash
# Runs the fuzz targets, one at a time, each to a bounded number of
# executions (or for a bounded time), and keeps a log per run.
#
#   fuzz/run.sh                      # every target, 10 000 000 executions each
#   fuzz/run.sh route_stack          # one target (or several, by name)
#   RUNS=1000000 fuzz/run.sh topology
#   SECONDS_TO_RUN=600 fuzz/run.sh dns_answer     # time bound instead of -runs
#   FUZZ_NICE=10                     # niceness (default 10: shared machines)
#
# Targets (fuzz/fuzz_targets/): dns_answer, route_stack, topology,
# runtime_api, gatekeeper_envelope. Seeds are in fuzz/seeds/<target>/
# (committed); the working corpus grows in fuzz/corpus/<target>/ and
# crashes land in fuzz/artifacts/<target>/ (neither is committed).
#
# Logs: fuzz/logs/<target>-<date>.full.log (everything libFuzzer printed,
# not committed) and benches/results/fuzz-<target>-<date>.log, the same
# log, or when it is over 200 KB a filtered copy (the start, the INITED
# and DONE lines, the first status line of every million executions, and
# every line that is not a status line: stats, warnings, crash reports),
# which says so on its first line.
#
# Other people's half-done edits under src/ can keep a shared tree from
# building; to fuzz exactly a commit, export it and run its copy:
#   git archive HEAD | tar -x -C /tmp/snap && \
#     FUZZ_COMMIT=$(git rev-parse --short HEAD) FUZZ_TARGET_DIR=$PWD/fuzz/target \
#     /tmp/snap/fuzz/run.sh topology
# (FUZZ_TARGET_DIR reuses this tree's compiled dependencies; the logs land
# in the snapshot's benches/results/.)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). libFuzzer, single process: no -jobs/-workers. Exits non-zero
# if any target fails (a crash, a leak, a timeout). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(dns_answer route_stack topology runtime_api gatekeeper_envelope)
RUNS="${RUNS:-10000000}"
NICE="${FUZZ_NICE:-10}"
DATE="$(date -u +%Y-%m-%d)"

# Longest input per target: big enough for every seed.
max_len() {
  case "$1" in
    dns_answer) echo 1024 ;;
    topology) echo 4096 ;;
    runtime_api) echo 8192 ;;
    *) echo 2048 ;;
  esac
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL[@]}")

mkdir -p fuzz/logs benches/results
status=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  seeds="fuzz/seeds/$t"
  mkdir -p "$corpus"
  if [ -n "${SECONDS_TO_RUN:-}" ]; then
    bound=(-max_total_time="$SECONDS_TO_RUN")
  else
    bound=(-runs="$RUNS")
  fi
  full="fuzz/logs/$t-$DATE.full.log"
  kept="benches/results/fuzz-$t-$DATE.log"
  # In a git tree: HEAD, and whether src/ or fuzz/ differ from it. In an
  # exported snapshot (see below): FUZZ_COMMIT names what was exported.
  if git rev-parse --git-dir > /dev/null 2>&1; then
    commit="$(git rev-parse --short HEAD)"
    dirty=""
    git diff --quiet HEAD -- src fuzz 2>/dev/null || dirty=" (with uncommitted changes under src/ or fuzz/)"
  else
    commit="${FUZZ_COMMIT:-unknown}"
    dirty=" (exported snapshot, no uncommitted changes)"
  fi
  {
    echo "# fuzz/run.sh $t: commit $commit$dirty, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    # What was built: HEAD plus whatever is uncommitted under src/ and fuzz/.
    git status --short -- src fuzz 2>/dev/null | sed 's/^/#   uncommitted: /' || true
    echo "# cargo +nightly fuzz run $t $corpus $seeds -- ${bound[*]} -max_len=$(max_len "$t") -print_final_stats=1 (nice -n $NICE)"
  } > "$full"
  start=$(date +%s)
  rc=0
  nice -n "$NICE" cargo +nightly fuzz run ${FUZZ_TARGET_DIR:+--target-dir "$FUZZ_TARGET_DIR"} "$t" "$corpus" "$seeds" -- \
    "${bound[@]}" -max_len="$(max_len "$t")" -print_final_stats=1 >> "$full" 2>&1 || rc=$?
  echo "# exit status $rc after $(( $(date +%s) - start )) s wall; load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$full"
  [ "$rc" -eq 0 ] || status=1
  if [ "$(stat -c %s "$full")" -gt 200000 ]; then
    {
      echo "# FILTERED: the full log was $(stat -c %s "$full") bytes; kept: its first 60 lines, the first"
      echo "# status line (#N ...) of every million executions, and every line that is not a status line."
      awk 'NR <= 60 { print; next }
           /^#[0-9]+\t(INITED|DONE)/ { print; next }
           /^#[0-9]+/ { n = substr($1, 2) + 0; m = int(n / 1000000);
                        if (m > last) { print; last = m } ; next }
           { print }' "$full"
    } > "$kept"
  else
    cp "$full" "$kept"
  fi
  echo "== $t: exit $rc; log $kept"
  tail -n 14 "$full"
done
exit "$status"
