#!/usr/bin/env bash
# What the operations tests need (tests/integration/admin.rs): Debian's
# chromium, to render the admin status page headless and screenshot it, and
# systemd-analyze (package systemd), to verify edge-config/deploy/fnroute.service.
# Idempotent: installs only what is missing; apt-get update at most once.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi
echo "chromium: $(chromium --version 2>/dev/null || echo missing)"
echo "systemd-analyze: $(systemd-analyze --version 2>/dev/null | head -n1 || echo missing)"
