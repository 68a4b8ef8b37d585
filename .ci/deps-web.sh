#!/usr/bin/env bash
# What the web front door tests need (tests/integration/web.rs): curl with
# HTTP/2 (Debian's curl links nghttp2) and nghttp (nghttp2-client: it shows
# the HTTP/2 frames a server sends), clients we did not write.
# Idempotent: installs only what is missing; apt-get update at most once.
set -euo pipefail
missing=()
if ! command -v curl >/dev/null 2>&1 || ! curl -V | grep -q 'HTTP2'; then
  missing+=(curl)
fi
command -v nghttp >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi
echo "curl: $(curl -V | head -n1)"
echo "nghttp: $(nghttp --version 2>&1 | head -n1)"
