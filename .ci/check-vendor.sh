#!/usr/bin/env bash
# Fails when the vendored h3 (vendor/h3: h3 with fnroute's QPACK patch, see
# vendor/README.md) stops being the h3 that fnroute is built with.
#
# Cargo.toml's `[patch.crates-io] h3 = { path = "vendor/h3" }` only applies
# while every dependent accepts the vendored version. The day h3-quinn (or
# anything else) asks for another h3, cargo builds crates.io h3 instead, says
# so in a single warning, records a `[[patch.unused]]` entry in Cargo.lock,
# and the patch's speed-up is silently gone. This script checks:
#   1. Cargo.toml still has the patch entry, pointing at vendor/h3;
#   2. Cargo.lock has no `[[patch.unused]]` entry for h3;
#   3. `cargo metadata --locked` resolves exactly one h3, the one at
#      vendor/h3/Cargo.toml (no registry source), every dependent on h3
#      resolves to it, and cargo does not warn that the patch was not used;
#   4. the vendored version satisfies the h3 requirement of h3-quinn (and of
#      every other dependent).
# No build is needed (cargo metadata only). To see it fail: in a copy of the
# repository, bump `version` in vendor/h3/Cargo.toml (vendor/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --locked: CI must check the committed Cargo.lock, not one cargo rewrites.
meta_status=0
cargo metadata --locked --format-version 1 >"$tmp/metadata.json" 2>"$tmp/metadata.err" || meta_status=$?

python3 - "$(pwd -P)" "$meta_status" "$tmp/metadata.json" "$tmp/metadata.err" <<'PY'
import json
import os
import re
import sys

try:
    import tomllib  # Python >= 3.11
except ImportError:
    sys.exit("check-vendor: needs python3 >= 3.11 (tomllib) to read Cargo.toml and Cargo.lock")

repo, meta_status, meta_json, meta_err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
vendored_manifest = os.path.join(repo, "vendor", "h3", "Cargo.toml")
problems = []


def version_tuple(text):
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?", text)
    if not m:
        raise ValueError(f"unparsable version {text!r}")
    return tuple(None if g is None else int(g) for g in m.groups())


def matches(version, req):
    """Whether `version` (x.y.z) satisfies cargo's semver requirement `req`."""
    v = tuple(x or 0 for x in version_tuple(version))
    for part in req.split(","):
        part = part.strip()
        if part in ("*", ""):
            continue
        m = re.fullmatch(r"(\^|~|=|>=|<=|>|<)?\s*([0-9*xX.]+(?:[-+][0-9A-Za-z.+-]*)?)", part)
        if not m:
            raise ValueError(f"unparsable requirement {req!r}")
        op, ver = m.group(1) or "^", re.sub(r"(\.[*xX])+$", "", m.group(2))
        if ver in ("*", "x", "X"):
            continue
        major, minor, patch = version_tuple(ver)
        lo = (major, minor or 0, patch or 0)
        if op == "^":
            if major > 0 or minor is None:
                hi = (major + 1, 0, 0)
            elif minor > 0 or patch is None:
                hi = (0, minor + 1, 0)
            else:
                hi = (0, 0, patch + 1)
            ok = lo <= v < hi
        elif op == "~":
            hi = (major + 1, 0, 0) if minor is None else (major, minor + 1, 0)
            ok = lo <= v < hi
        elif op == "=":
            n = 3 - (minor is None) - (patch is None)
            ok = v[:n] == lo[:n]
        elif op == ">=":
            ok = v >= lo
        elif op == "<":
            ok = v < lo
        elif op == ">":
            n = 3 - (minor is None) - (patch is None)
            ok = v[:n] > lo[:n]
        else:  # "<="
            n = 3 - (minor is None) - (patch is None)
            ok = v[:n] <= lo[:n]
        if not ok:
            return False
    return True


# 1. The patch entry itself.
with open(os.path.join(repo, "Cargo.toml"), "rb") as f:
    manifest = tomllib.load(f)
entry = manifest.get("patch", {}).get("crates-io", {}).get("h3")
if not isinstance(entry, dict) or os.path.normpath(str(entry.get("path", ""))) != os.path.join("vendor", "h3"):
    problems.append(
        'Cargo.toml: `[patch.crates-io] h3 = { path = "vendor/h3" }` is missing or points '
        f"elsewhere (found: {entry!r})"
    )

with open(vendored_manifest, "rb") as f:
    vendored_version = tomllib.load(f)["package"]["version"]

# 2. Cargo.lock's record of patches cargo did not use.
with open(os.path.join(repo, "Cargo.lock"), "rb") as f:
    lock = tomllib.load(f)
for unused in lock.get("patch", {}).get("unused", []):
    if unused.get("name") == "h3":
        problems.append(
            f"Cargo.lock has a [[patch.unused]] entry for h3 {unused.get('version')}: "
            "cargo resolved h3 from crates.io and left the vendored copy out"
        )

# 3. What cargo actually resolves.
with open(meta_err, encoding="utf-8", errors="replace") as f:
    cargo_stderr = f.read()
for line in cargo_stderr.splitlines():
    if re.search(r"[Pp]atch `h3 .*was not used", line):
        problems.append(f"cargo: {line.strip()}")
if meta_status != 0:
    problems.append(
        f"`cargo metadata --locked` failed (exit {meta_status}); Cargo.lock does not match "
        "the manifests (if it says the lock file needs updating, the vendored h3 probably no "
        "longer fits):\n      " + "\n      ".join(cargo_stderr.strip().splitlines()[-6:])
    )
else:
    with open(meta_json) as f:
        meta = json.load(f)
    packages = {p["id"]: p for p in meta["packages"]}
    h3s = [p for p in meta["packages"] if p["name"] == "h3"]
    if len(h3s) != 1:
        found = ", ".join(f"{p['version']} from {p['source'] or p['manifest_path']}" for p in h3s)
        problems.append(f"cargo resolves {len(h3s)} h3 packages, expected exactly one (vendor/h3): {found or 'none'}")
    vendored = [p for p in h3s if os.path.realpath(p["manifest_path"]) == os.path.realpath(vendored_manifest)]
    for p in h3s:
        if p not in vendored or p["source"] is not None:
            problems.append(
                f"h3 {p['version']} is resolved from {p['source'] or p['manifest_path']}, "
                f"not from {vendored_manifest}"
            )
    vendored_id = vendored[0]["id"] if vendored else None
    for node in meta["resolve"]["nodes"]:
        for dep in node["deps"]:
            if dep["name"] == "h3" and dep["pkg"] != vendored_id:
                problems.append(f"{packages[node['id']]['name']} uses {dep['pkg']}, not the vendored h3")

    # 4. Every dependent's requirement, h3-quinn's in particular.
    # (Packages with a resolved edge to h3, so that unused optional or dev-dependencies of
    # registry crates do not count.)
    dependents = {}
    for node in meta["resolve"]["nodes"]:
        if any(dep["name"] == "h3" for dep in node["deps"]):
            p = packages[node["id"]]
            for d in p["dependencies"]:
                if d["name"] == "h3":
                    dependents.setdefault(p["name"], set()).add((p["version"], d["req"]))
    if "h3-quinn" not in dependents:
        problems.append(
            "h3-quinn is not in the dependency graph (or no longer depends on h3): "
            "update .ci/check-vendor.sh and vendor/README.md"
        )
    for name, reqs in sorted(dependents.items()):
        for version, req in sorted(reqs):
            if not matches(vendored_version, req):
                problems.append(
                    f"{name} {version} requires h3 {req}; the vendored h3 is {vendored_version}"
                )

if problems:
    print("check-vendor: FAILED: the vendored h3 (vendor/h3, fnroute's QPACK patch) is not the h3", file=sys.stderr)
    print("fnroute is built with; cargo falls back to crates.io h3 and the patch is silently lost.", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    print(
        "What to do: move the patch to the h3 version now required (vendor/README.md, \"Updating\":\n"
        "  unpack that release into vendor/h3, re-apply every `fnroute patch` change, run\n"
        "  .ci/h3-upstream-tests.sh and tests/run.sh), or keep the dependents on a version that\n"
        f"  accepts h3 {vendored_version} (e.g. `cargo update -p h3-quinn --precise <previous version>`).\n"
        "  If h3 itself now has the patch's properties, drop vendor/h3 and the [patch.crates-io] entry\n"
        "  (and this check from .ci/run).",
        file=sys.stderr,
    )
    sys.exit(1)

print(
    f"check-vendor: ok: h3 {vendored_version} from vendor/h3 is the only h3 "
    f"({', '.join(f'{n} requires {r}' for n, rs in sorted(dependents.items()) for _, r in sorted(rs))})"
)
PY
