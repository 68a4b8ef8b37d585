#!/usr/bin/env bash
# Rebuild geo/sample.mmdb from geo/sample.csv and check it.
# Creates geo/.venv (gitignored) with pinned packages on first use.
# Extra arguments go to gen_sample.py, e.g. --csv FILE --out FILE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
reqs=(mmdb-writer==0.2.7 netaddr==1.3.0 maxminddb==3.2.0)

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Quiet and idempotent: a no-op when the pins are already installed.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"

exec "$venv/bin/python" "$here/gen_sample.py" --verify "$@"
