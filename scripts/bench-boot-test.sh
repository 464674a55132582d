#!/usr/bin/env bash
# Benchmarks `ibkit boot-test` on the clean example image: the full suite
# with the two VMs in parallel (the default) and one after the other, under
# whatever accelerator the probe picks (TCG on this kind of machine). Prints
# the wall time, the time of each step and the share spent waiting for the
# guest. Target (issue 4): the full suite under TCG in < 150 s on 2 cores.
# Run it on an otherwise idle machine: VMs under TCG compete for the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test bench >/dev/null
image=$(./scripts/build-boot-images.sh --only clean | cut -f2)
IBKIT_VIRTIOFSD="$(./scripts/install-virtiofsd.sh)"
export IBKIT_VIRTIOFSD
# The time is the guests' (TCG); IBKIT_BENCH_PROFILE=dev skips the release build.
profile=${IBKIT_BENCH_PROFILE:-release}
cargo build --profile "$profile" --quiet -p ibkit
case $profile in dev) bin=./target/debug/ibkit ;; *) bin=./target/$profile/ibkit ;; esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for mode in parallel sequential; do
  extra=()
  [ "$mode" = sequential ] && extra=(--sequential)
  start=$(date +%s.%N)
  code=0
  "$bin" boot-test "$image" --manifest examples/debian12/ibkit.toml --quiet \
    --format json -o "$out/$mode.json" "${extra[@]}" || code=$?
  end=$(date +%s.%N)
  echo "== $mode: exit $code, wall $(printf '%.1f' "$(echo "$end - $start" | bc -l)") s"
  python3 - "$out/$mode.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["boot"]
print(f"accelerator: {b['accel']} ({b['accel_reason']})")
print(f"verdict: {r['summary']}")
print(f"{'step':<36}{'start s':>9}{'time s':>9}{'guest wait s':>14}")
for s in b["steps"]:
    print(f"{s['name']:<36}{s['started_s']:>9.1f}{s['elapsed_s']:>9.1f}{s['guest_wait_s']:>14.1f}")
share = 100 * b["guest_wait_s"] / b["steps_s"] if b["steps_s"] else 0
print(f"total {b['total_s']:.1f} s wall; waiting for the guest: {b['guest_wait_s']:.0f} of {b['steps_s']:.0f} step-seconds ({share:.0f} %)")
PY
done
