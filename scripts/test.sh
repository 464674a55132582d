#!/usr/bin/env bash
# The README's second command: the whole test suite, as CI runs it.
# Installs system packages, builds the real example images (cached by
# content under $IBKIT_CACHE_DIR, default /var/cache/ibkit), then runs every
# test: unit, integration on real disk images, and brief fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
export IBKIT_CACHE_DIR="${IBKIT_CACHE_DIR:-/var/cache/ibkit}"

echo "test: building the example Debian 12 image (cached by content)" >&2
mapfile -t images < <(./scripts/build-debian-image.sh)
export IBKIT_DEBIAN_QCOW2="${images[0]}" IBKIT_DEBIAN_QCOW2_ZLIB="${images[1]}" IBKIT_DEBIAN_RAW="${images[2]}"

echo "test: building the boot-test images: clean + broken variants (cached by content)" >&2
IBKIT_BOOT_IMAGES="$(./scripts/build-boot-images.sh)"
export IBKIT_BOOT_IMAGES

echo "test: building the foreign images: other tools' images + one-change variants (cached by content)" >&2
IBKIT_FOREIGN_IMAGES="$(./scripts/build-foreign-images.sh)"
export IBKIT_FOREIGN_IMAGES

echo "test: virtiofsd for the boot tests' virtiofs share (cargo install, cached)" >&2
IBKIT_VIRTIOFSD="$(./scripts/install-virtiofsd.sh)"
export IBKIT_VIRTIOFSD

echo "test: building the portable agent (glibc 2.28, cargo-zigbuild)" >&2
IBKIT_AGENT_BINARY="$(./scripts/build-agent.sh)"
export IBKIT_AGENT_BINARY

echo "test: cargo test (workspace)" >&2
cargo build --workspace --bins

# The README's demo, its service part: a broken demo fails the suite.
echo "test: the demo's configuration service and two agents (scripts/demo-cluster.sh)" >&2
./scripts/demo-cluster.sh target/debug
# Tests that boot VMs (QEMU under TCG on CI) run last and alone, so other
# tests do not steal the CPU their guests need.
vm_tests='binary(boot_test) | package(ibkit-vm) & kind(test) | package(ibkit-deploy) & binary(qemu_backend) | package(ibkit) & binary(deploy)'
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E "not ($vm_tests)"
  echo "test: tests that boot VMs (one at a time)" >&2
  cargo nextest run --workspace --no-fail-fast -j 1 -E "$vm_tests"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

if [ -x scripts/fuzz.sh ]; then
  echo "test: brief fuzzing" >&2
  ./scripts/fuzz.sh "${IBKIT_FUZZ_SECONDS:-20}"
fi
