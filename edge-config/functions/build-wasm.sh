#!/usr/bin/env bash
# Builds every edge-config/functions/*-wasm/app.py into a wasi:http/proxy
# (WASI 0.2) component <dir>/<name>.wasm, e.g. hello-wasm/hello.wasm, with
# componentize-py (installed by .ci/deps-wasm.sh). Rebuilds only when app.py
# (or the WIT) is newer than the .wasm. Callable from any directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/wit"
world="wasi:http/proxy@0.2.12"
cpy="${COMPONENTIZE_PY:-componentize-py}"
if ! command -v "$cpy" >/dev/null 2>&1; then
  echo "build-wasm: componentize-py not found; run .ci/deps-wasm.sh" >&2
  exit 1
fi
shopt -s nullglob
built=0
for app in "$here"/*-wasm/app.py; do
  dir="$(dirname "$app")"
  name="$(basename "$dir")"
  out="$dir/${name%-wasm}.wasm"
  if [ -f "$out" ] && [ ! "$app" -nt "$out" ] \
     && [ -z "$(find "$wit" -name '*.wit' -newer "$out" -print -quit)" ]; then
    continue
  fi
  echo "build-wasm: $out"
  # -p: app.py's folder is the module search path, whatever the cwd.
  # Written beside the target and renamed, so a failed build leaves no
  # half-written .wasm that looks up to date (the .tmp.wasm is gitignored).
  tmp="${out%.wasm}.tmp.wasm"
  rm -f "$tmp"
  "$cpy" -q -d "$wit" -w "$world" componentize -p "$dir" app -o "$tmp"
  mv "$tmp" "$out"
  built=$((built + 1))
done
echo "build-wasm: $built built"
