#!/usr/bin/env bash
# The Python guest toolchain for the WebAssembly executor: componentize-py
# (the Bytecode Alliance's Python -> WASI 0.2 component compiler; a
# prebuilt wheel that bundles CPython and wasi-libc, so no wasi-sdk or
# Rust target is needed), installed in a venv and linked as
# /usr/local/bin/componentize-py. edge-config/functions/build-wasm.sh uses
# it to build the edge-config/functions/*-wasm/app.py examples.
# Idempotent: installs only what is missing.
set -euo pipefail
want="0.25.1"
venv=/opt/fnroute-wasm
have=$(/usr/local/bin/componentize-py --version 2>/dev/null || true)
if [ "$have" != "componentize-py $want" ]; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends python3 python3-venv
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --only-binary=:all: "componentize-py==$want"
  ln -sf "$venv/bin/componentize-py" /usr/local/bin/componentize-py
fi
echo "componentize-py: $(/usr/local/bin/componentize-py --version 2>&1 | head -n1)"
# The example components the tests run (a no-op when they are up to date).
bash "$(dirname "$0")/../edge-config/functions/build-wasm.sh"
