#!/usr/bin/env bash
# Builds the portable ibkit-agent: a release binary linked against glibc 2.28
# symbols at most, so it runs on every OS the platform targets (Debian 11+,
# Ubuntu 22.04, AlmaLinux 9, CentOS 8, Astra 1.7, Alt 10, RedOS 7). A plain
# `cargo build` here would need glibc 2.34. Uses cargo-zigbuild with zig from
# PyPI's ziglang wheel; both are fetched once into $IBKIT_CACHE_DIR/tools.
# Prints the path of the binary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${IBKIT_CACHE_DIR:-/var/cache/ibkit}/tools"
glibc="${IBKIT_AGENT_GLIBC:-2.28}"
zigbuild_version=0.24.1
ziglang_version=0.17.1
mkdir -p "$cache"

if [ ! -x "$cache/bin/cargo-zigbuild" ] || ! "$cache/bin/cargo-zigbuild" --version | grep -q "$zigbuild_version"; then
  echo "build-agent: installing cargo-zigbuild $zigbuild_version" >&2
  cargo install --quiet --locked cargo-zigbuild --version "$zigbuild_version" --root "$cache" >&2
fi

zig_dir="$cache/ziglang-$ziglang_version"
if [ ! -x "$zig_dir/ziglang/zig" ]; then
  echo "build-agent: fetching zig $ziglang_version (PyPI ziglang wheel)" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "build-agent: python3 -m pip is missing; run scripts/setup.sh" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet "ziglang==$ziglang_version" --no-deps \
    --only-binary=:all: --platform manylinux_2_12_x86_64 -d "$tmp" >&2
  rm -rf "$zig_dir.partial"
  python3 - "$tmp" "$zig_dir.partial" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheel = next(f for f in os.listdir(src) if f.endswith(".whl"))
zipfile.ZipFile(os.path.join(src, wheel)).extractall(dst)
PY
  chmod +x "$zig_dir.partial/ziglang/zig"
  mv "$zig_dir.partial" "$zig_dir"
fi
export PATH="$zig_dir/ziglang:$cache/bin:$PATH"

echo "build-agent: cargo zigbuild --release -p ibkit-agent (glibc $glibc)" >&2
CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
  cargo zigbuild --release -p ibkit-agent --bin ibkit-agent \
  --target "x86_64-unknown-linux-gnu.$glibc" >&2
bin="target/x86_64-unknown-linux-gnu/release/ibkit-agent"

# The newest glibc symbol version the binary needs must not exceed the target.
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
if [ "$(printf '%s\n%s\n' "$newest" "$glibc" | sort -V | tail -1)" != "$glibc" ]; then
  echo "build-agent: $bin needs GLIBC_$newest, more than $glibc" >&2
  exit 1
fi
echo "build-agent: $bin needs at most GLIBC_$newest ($(du -h "$bin" | cut -f1))" >&2
realpath "$bin"
