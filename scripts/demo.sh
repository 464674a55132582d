#!/usr/bin/env bash
# The README's first command: install what ibkit needs, build the example
# Debian 12 cloud image with the project's own script (cached by content),
# build ibkit, and check the image.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "demo: building the example image (cached after the first run)" >&2
mapfile -t images < <(./scripts/build-debian-image.sh)
qcow2="${images[0]}"
cargo build --release --quiet -p ibkit
echo "demo: ibkit check $qcow2 --manifest examples/debian12/ibkit.toml" >&2
set +e
./target/release/ibkit check "$qcow2" --manifest examples/debian12/ibkit.toml "$@"
code=$?
set -e
echo "demo: exit code $code (0 = all rules pass, 1 = a rule fails, 2 = could not run)" >&2
[ "$code" -eq 0 ] || exit "$code"
echo "demo: the configuration service and two agents on loopback (examples/cluster)" >&2
./scripts/demo-cluster.sh
# The example image is expected to pass; anything else is a demo failure.
exit "$code"
