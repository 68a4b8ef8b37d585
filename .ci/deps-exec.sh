#!/usr/bin/env bash
# Executor test dependencies: a Python venv with AWS's Lambda runtime
# interface client (awslambdaric), used by tests/integration/exec.rs.
# Idempotent: reuses the venv when awslambdaric already imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/venv-exec
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import awslambdaric' 2>/dev/null; then
    echo "deps-exec: $VENV already has awslambdaric"
    exit 0
fi
# The example functions need python3; a venv needs ensurepip (Debian's
# python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get -o DPkg::Lock::Timeout=600 update
    apt-get -o DPkg::Lock::Timeout=600 install -y python3 python3-venv
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# --only-binary: a wheel exists for this platform; building from source
# would need cmake, a C++ compiler and libcurl headers.
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: awslambdaric
"$VENV/bin/python" -c 'import awslambdaric; print("deps-exec: awslambdaric", awslambdaric.__version__ if hasattr(awslambdaric, "__version__") else "installed")'
