#!/usr/bin/env bash
# Install virtiofsd 1.14.0 (not packaged for Debian 12) into the ibkit tool cache
# and print the path of the binary on stdout. Idempotent: a second run only prints
# the path. Needs the apt packages libseccomp-dev and libcap-ng-dev
# (scripts/apt-packages.txt) and network access to crates.io.
set -euo pipefail

version="1.14.0"
cache_dir="${IBKIT_CACHE_DIR:-/var/cache/ibkit}"
root="${cache_dir}/tools/virtiofsd-${version}"
bin="${root}/bin/virtiofsd"

if [[ -x "${bin}" ]]; then
    printf '%s\n' "${bin}"
    exit 0
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-virtiofsd: cargo not found in PATH" >&2
    exit 1
fi

mkdir -p "${root}"
echo "install-virtiofsd: building virtiofsd ${version} into ${root} (about a minute)" >&2
# cargo writes its progress to stderr; keep stdout for the path only.
cargo install --locked virtiofsd --version "${version}" --root "${root}" 1>&2

if [[ ! -x "${bin}" ]]; then
    echo "install-virtiofsd: cargo install finished but ${bin} is missing" >&2
    exit 1
fi
printf '%s\n' "${bin}"
