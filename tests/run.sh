#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotent; each
# area has a .ci/deps-*.sh script), then runs cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
for deps in .ci/deps-*.sh; do
  [ -e "$deps" ] || continue
  echo "== $deps"
  bash "$deps"
done
exec cargo test --locked "$@"
