#!/usr/bin/env bash
# Upstream h3's unit tests (QPACK, frames, buffers), run against the vendored, patched h3
# (vendor/README.md, "Upstream's tests"). Fails if they fail, or if fewer
# than MIN_TESTS ran (a filter or layout change that silently runs nothing),
# and first if the h3 library, as fnroute builds it, has any warning.
# About 2 minutes cold (h3's dev-dependencies: quinn, rustls, ring, ...), a
# few seconds warm.
#
# The crates.io package lacks the files h3's integration tests need
# (src/tests/h3_quinn), so `mod tests;` is commented out in a scratch copy;
# vendor/h3 itself is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export CARGO_TERM_COLOR=never

MIN_TESTS=${MIN_TESTS:-150} # 171 when this was written (133 of them QPACK)
start=$(date +%s)

# Fixed locations under target/ (git-ignored): the same scratch path and a
# persistent target directory on every run, so reruns only recompile h3
# itself and stale copies of it do not pile up.
work="$repo/target/h3-upstream"
src="$work/h3"
export CARGO_TARGET_DIR="$work/target"

rm -rf "$src"
mkdir -p "$work"
cp -r vendor/h3 "$src"

# Disable the integration tests; insist that exactly that one line changed.
sed -i 's|^mod tests;|// mod tests; // fnroute CI: files missing from the crates.io package|' "$src/src/lib.rs"
if [ "$(grep -c '^// mod tests; // fnroute CI' "$src/src/lib.rs")" -ne 1 ] || grep -q '^mod tests;' "$src/src/lib.rs"; then
  echo "h3-upstream-tests: could not disable exactly one 'mod tests;' line in vendor/h3/src/lib.rs;" >&2
  echo "  upstream's layout changed: update this script (.ci/h3-upstream-tests.sh)." >&2
  exit 1
fi

# No --locked (cargo would refuse): vendor/h3 has no Cargo.lock of its own
# (the package's was removed when vendoring, vendor/README.md), and h3's
# dev-dependencies (quinn, rcgen 0.13, proptest, ...) are not in fnroute's
# Cargo.lock. Seeding with fnroute's lock keeps every crate the two share
# (bytes, http, tokio, futures-util, ...) at the version fnroute ships with;
# cargo adds only what is missing.
cp Cargo.lock "$src/Cargo.lock"

# The library as fnroute builds it (no features) must compile without warnings:
# cargo shows a path dependency's warnings in every fnroute build, but clippy's
# `-D warnings` does not apply to them. `cargo rustc` passes -D warnings to h3
# only, not to its dependencies.
echo "== h3 library, -D warnings"
if ! (cd "$src" && cargo rustc --lib -- -D warnings); then
  echo "h3-upstream-tests: FAILED: vendor/h3 has warnings (shown in every fnroute build)." >&2
  echo "  Fix them if the fnroute patch caused them; allow upstream's narrowly where they occur," >&2
  echo "  with a '// fnroute patch:' comment (vendor/README.md, src/lib.rs row)." >&2
  exit 1
fi

echo "== upstream unit tests: cargo test --lib"
log="$work/test.log"
set +e
(cd "$src" && cargo test --lib) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "h3-upstream-tests: build and tests took $(($(date +%s) - start)) s"

if [ "$status" -ne 0 ]; then
  echo "h3-upstream-tests: FAILED: upstream's unit tests fail against vendor/h3 (log: $log)." >&2
  echo "  A fnroute patch broke upstream behaviour, or a test needs the same update as the" >&2
  echo "  ones listed in vendor/README.md (codec_6, codec_8, poll_data_unexpected_end, ...)." >&2
  exit 1
fi

# --lib: one test binary, so one result line (summed all the same).
passed=$(awk '/^test result: ok\. [0-9]+ passed/ { n += $4; seen = 1 } END { if (seen) print n }' "$log")
if [ -z "$passed" ]; then
  echo "h3-upstream-tests: FAILED: no 'test result: ok. N passed' line in the output (log: $log)." >&2
  exit 1
fi
if [ "$passed" -lt "$MIN_TESTS" ]; then
  echo "h3-upstream-tests: FAILED: only $passed unit tests ran, expected at least $MIN_TESTS." >&2
  echo "  Upstream's test layout changed: fix .ci/h3-upstream-tests.sh." >&2
  exit 1
fi
echo "h3-upstream-tests: ok, $passed upstream unit tests passed against vendor/h3"
