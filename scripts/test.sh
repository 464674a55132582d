#!/usr/bin/env bash
# The README's second command: the whole test suite, as CI runs it.
# Installs system packages, builds the real example images (cached by
# content under $IBKIT_CACHE_DIR, default /var/cache/ibkit), then runs every
# test: unit, integration on real disk images, and brief fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
export IBKIT_CACHE_DIR="${IBKIT_CACHE_DIR:-/var/cache/ibkit}"
# Incremental caches are useless on a clean clone and cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The all-in-one OpenStack for the OpenStack backend's tests: its packages
# (~11 min of apt on a fresh machine) install and its daemons start in the
# background while the images build and the workspace tests run; nothing
# waits for it before the VM lane. Stopped at the end unless it was
# already running.
os_log="$(mktemp /tmp/ibkit-openstack.XXXXXX.log)"
os_clouds="$(mktemp /tmp/ibkit-openstack-clouds.XXXXXX)"
os_was_running=0
if ./scripts/openstack-aio.sh status >/dev/null 2>&1; then os_was_running=1; fi
stop_openstack() {
  if [ "$os_was_running" = 0 ]; then ./scripts/openstack-aio.sh stop >/dev/null 2>&1 || true; fi
}
trap stop_openstack EXIT
echo "test: installing and starting the all-in-one OpenStack in the background (log: $os_log)" >&2
# libvirt's packages too: the last test boots real guests through Nova.
(
  IBKIT_OPENSTACK_VIRT=libvirt ./scripts/openstack-aio.sh install &&
    ./scripts/openstack-aio.sh --virt fake start >"$os_clouds"
) >>"$os_log" 2>&1 &
os_pid=$!

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

echo "test: the Debian packages (cargo-deb; the portable agent above, ibkit's dev build) and a throwaway Debian 12 root to install them in (cached by content)" >&2
IBKIT_DEBS="$(./scripts/build-debs.sh --profile dev)"
export IBKIT_DEBS
IBKIT_DEB_ROOT="$(./scripts/build-deb-root.sh)"
export IBKIT_DEB_ROOT

echo "test: cargo test (workspace)" >&2
cargo build --workspace --bins

# The README's demo, its service part: a broken demo fails the suite.
echo "test: the demo's configuration service and two agents (scripts/demo-cluster.sh)" >&2
./scripts/demo-cluster.sh target/debug
# Tests that boot VMs (QEMU under TCG on CI) run last and alone, so other
# tests do not steal the CPU their guests need.
# The OpenStack tests share one cloud (`deploy gc` sweeps it): one at a time
# too.
vm_tests='binary(boot_test) | package(ibkit-vm) & kind(test) | package(ibkit-deploy) & binary(qemu_backend) | package(ibkit) & binary(deploy) | package(ibkit) & binary(package_deploy) | package(ibkit) & binary(deploy_openstack)'
# Real guests through Nova's libvirt driver: last, once the cloud switched.
os_vm_tests='package(ibkit) & binary(deploy_openstack_vm)'
wait_openstack() {
  if ! wait "$os_pid"; then
    tail -n 60 "$os_log" >&2
    echo "test: installing or starting OpenStack failed (whole log: $os_log)" >&2
    exit 1
  fi
  IBKIT_OPENSTACK_CLOUDS="$(tail -n 1 "$os_clouds")"
  export IBKIT_OPENSTACK_CLOUDS
  echo "test: OpenStack is up ($IBKIT_OPENSTACK_CLOUDS)" >&2
}
libvirt_openstack() {
  echo "test: switching the OpenStack compute driver to libvirt (real guests, TCG)" >&2
  ./scripts/openstack-aio.sh --virt libvirt start >/dev/null 2>>"$os_log" || {
    tail -n 60 "$os_log" >&2
    echo "test: OpenStack with libvirt failed to start (whole log: $os_log)" >&2
    exit 1
  }
}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E "not ($vm_tests | $os_vm_tests)"
  wait_openstack
  echo "test: tests that boot VMs or drive the OpenStack cloud (one at a time)" >&2
  cargo nextest run --workspace --no-fail-fast -j 1 -E "$vm_tests"
  libvirt_openstack
  cargo nextest run --workspace --no-fail-fast -j 1 -E "$os_vm_tests"
  cargo test --workspace --doc
else
  wait_openstack
  cargo test --workspace --no-fail-fast -- --skip the_kv_cluster_package_deploys_on_real_guests
  libvirt_openstack
  cargo test -p ibkit --test deploy_openstack_vm
fi

if [ -x scripts/fuzz.sh ]; then
  echo "test: brief fuzzing" >&2
  ./scripts/fuzz.sh "${IBKIT_FUZZ_SECONDS:-20}"
fi
