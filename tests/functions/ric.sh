#!/bin/sh
# Runs an awslambdaric handler (argument or $_HANDLER) with the venv that
# .ci/deps-exec.sh creates. The venv's python must be exec'd by its own
# path (not a resolved symlink) for the venv to apply.
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../../target/venv-exec/bin/python"
if [ ! -x "$py" ]; then
    echo "awslambdaric venv missing at $py: run .ci/deps-exec.sh" >&2
    exit 127
fi
exec "$py" -m awslambdaric "${1:-$_HANDLER}"
