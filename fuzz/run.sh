#!/usr/bin/env bash
# Fuzzes the DNS answer path (raw bytes → response) for a bounded time.
#   fuzz/run.sh            # 180 s
#   SECONDS_TO_RUN=600 fuzz/run.sh
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Not part of CI. Crashes land in fuzz/artifacts/dns_answer/.
set -euo pipefail
cd "$(dirname "$0")/.."
T="${SECONDS_TO_RUN:-180}"
corpus=fuzz/corpus/dns_answer
mkdir -p "$corpus"
# Seeds: a plain query, an ECS query, a TXT query (first byte = selector).
printf '\x00\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04echo\x02fn\x04test\x00\x00\x01\x00\x01' > "$corpus/seed-a"
printf '\x00\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01\x06resize\x02fn\x04test\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0b\x00\x08\x00\x07\x00\x01\x18\x00\xc6\x33\x64' > "$corpus/seed-ecs"
printf '\x04\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04echo\x02fn\x04test\x00\x00\x10\x00\x01' > "$corpus/seed-txt"
printf '\x01\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x02fn\x04test\x00\x00\x02\x00\x01' > "$corpus/seed-ns"
cargo +nightly fuzz run dns_answer "$corpus" -- -max_total_time="$T" -max_len=1024 2>&1 | tee fuzz/fuzz-dns.log | tail -25
