#!/usr/bin/env bash
# What the web front door tests need (tests/integration/web.rs): curl with
# HTTP/2 (Debian's curl links nghttp2) as a client we did not write.
# Idempotent: installs only what is missing; apt-get update at most once.
set -euo pipefail
missing=()
if ! command -v curl >/dev/null 2>&1 || ! curl -V | grep -q 'HTTP2'; then
  missing+=(curl)
fi
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi
echo "curl: $(curl -V | head -n1)"
