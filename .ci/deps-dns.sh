#!/usr/bin/env bash
# Tools the DNS front door's tests need: dig (Debian bind9-dnsutils), which
# tests/integration/dns.rs runs against the server. Idempotent.
set -euo pipefail
if command -v dig >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq bind9-dnsutils
