#!/usr/bin/env bash
# Builds the Debian packages ibkit_*.deb and ibkit-agent_*.deb with cargo-deb
# and prints their paths on stdout (ibkit first). See docs/install.md.
#
# Usage: scripts/build-debs.sh [--profile release|dev]
#   --profile release (default) packages a release build of ibkit (about
#     15 minutes on 2 cores from scratch); --profile dev packages the debug
#     build the test suite has already made (seconds; ~100 MB before
#     stripping), which is what the install/purge test uses.
#   The agent is always the portable glibc-2.28 release binary of
#   scripts/build-agent.sh (cached by cargo: seconds once built).
#
# Man pages and completions are generated from the binaries' clap
# definitions (`ibkit generate …`, `ibkit-agent generate …`) into
# target/ibkit-deb/, and the agent's unit is the installer's one
# (crates/api/dist/ibkit-agent.service) with the platform's 512M filled in
# (`ibkit-agent generate systemd-unit`). cargo-deb is installed once into
# ${IBKIT_CACHE_DIR:-/var/cache/ibkit}/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${IBKIT_CACHE_DIR:-/var/cache/ibkit}/tools"
cargo_deb_version=3.8.0
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    *) echo "build-debs: unknown argument $1 (usage: build-debs.sh [--profile release|dev])" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) bin_dir=target/release ;;
  dev) bin_dir=target/debug ;;
  *) echo "build-debs: --profile must be release or dev" >&2; exit 2 ;;
esac

if [ ! -x "$cache/bin/cargo-deb" ] || ! "$cache/bin/cargo-deb" --version | grep -q "$cargo_deb_version"; then
  echo "build-debs: installing cargo-deb $cargo_deb_version" >&2
  cargo install --quiet --locked cargo-deb --version "$cargo_deb_version" --root "$cache" >&2
fi
export PATH="$cache/bin:$PATH"

echo "build-debs: cargo build --profile $profile -p ibkit" >&2
cargo build --quiet --profile "$profile" -p ibkit --bin ibkit >&2
agent=$(scripts/build-agent.sh)

out=target/ibkit-deb
rm -rf "$out"
# gzip -n: no timestamp, so the same page gives the same bytes.
generate() { # generate NAME BINARY
  local name=$1 bin=$2 dir="$out/$1"
  mkdir -p "$dir/man" "$dir/completions"
  "$bin" generate man "$dir/man" >/dev/null
  gzip -9n "$dir"/man/*.1
  "$bin" generate completions bash >"$dir/completions/$name.bash"
  "$bin" generate completions zsh >"$dir/completions/_$name"
  "$bin" generate completions fish >"$dir/completions/$name.fish"
}
generate ibkit "$bin_dir/ibkit"
generate ibkit-agent "$agent"
mkdir -p "$out/ibkit-agent/unit"
"$agent" generate systemd-unit >"$out/ibkit-agent/unit/ibkit-agent.service"

mkdir -p target/debian
echo "build-debs: cargo deb -p ibkit ($profile)" >&2
cargo deb --quiet --no-build --profile "$profile" -p ibkit -o target/debian/ >&2
# The agent was built for target x86_64-unknown-linux-gnu (zigbuild's
# glibc-suffixed target writes there), so cargo-deb finds it under that
# target's release directory.
echo "build-debs: cargo deb -p ibkit-agent (portable release)" >&2
cargo deb --quiet --no-build --target x86_64-unknown-linux-gnu -p ibkit-agent -o target/debian/ >&2
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="ibkit"))')
realpath "target/debian/ibkit_${version}-1_amd64.deb"
realpath "target/debian/ibkit-agent_${version}-1_amd64.deb"
