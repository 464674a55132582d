#!/usr/bin/env bash
# Benchmarks `ibkit deploy` with the two-host example (examples/deploy/
# two-host.toml, detection_timeout 30s) on the example Debian 12 image,
# under TCG on the local QEMU backend (needs root):
#
#   1. `up` to `running`, with its milestones (VMs created, each agent
#      paired, each host's steps done, health passed);
#   2. kill -9 of the replica's QEMU to `running` again (found by the
#      backend in the next 2 s recovery round, which runs inside `ibkit
#      serve --recover-deployments`);
#   3. the replica cut off the network (its tap leaves the bridge; the VM
#      runs on, its agent goes silent): found by the service's monitor after
#      the 30 s detection timeout, then recreated, to `running` again.
#
# Prints each figure and where the time goes. Run it on an idle machine:
# VMs under TCG compete for the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-deploy: needs root (bridge, taps)" >&2; exit 2; }
./scripts/setup.sh test bench >/dev/null
image=$(./scripts/build-debian-image.sh | head -1)
# The time is the guests' (TCG); IBKIT_BENCH_PROFILE=dev skips the release build.
profile=${IBKIT_BENCH_PROFILE:-release}
cargo build --profile "$profile" --quiet -p ibkit -p ibkit-agent
case $profile in dev) dir=./target/debug ;; *) dir=./target/$profile ;; esac
bin=$dir/ibkit

work=$(mktemp -d /var/tmp/ibkit-bench-deploy.XXXXXX)
bridge=ibkbrbench
net=10.76.0.1/24
serve_pid=''
cleanup() {
  "$bin" deploy down two-host-demo --no-evidence --state "$work/deploy" \
    --serve-state "$work/serve" --bridge "$bridge" --network "$net" -q >/dev/null 2>&1 || true
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; fi
  pkill -KILL -f "$work" 2>/dev/null || true
  ip link del dev "$bridge" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/serve" "$work/m"
"$bin" serve --listen "0.0.0.0:$port" --public-url "https://127.0.0.1:$port" \
  --state-dir "$work/serve" --agent-binary "$dir/ibkit-agent" --monitor-interval 2s \
  --recover-deployments "$work/deploy" --bridge "$bridge" --network "$net" \
  >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 100); do [ -s "$work/serve/endpoint.json" ] && break; sleep 0.1; done
cp examples/deploy/two-host.toml "$work/m/"
ln -s "$(realpath "$image")" "$work/m/debian12.qcow2"
deploy() {
  "$bin" deploy "$@" --state "$work/deploy" --serve-state "$work/serve" \
    --bridge "$bridge" --network "$net"
}

now() { date +%s.%N; }
elapsed() { printf '%.1f' "$(echo "$(now) - $1" | bc -l)"; }

echo "== 1. up -> running"
t=$(now)
deploy up "$work/m/two-host.toml" -q --format json >"$work/up.json"
echo "up -> running: $(elapsed "$t") s"
python3 - "$work/up.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
a = s["attempts"][-1]
t0 = a["started_ms"]
prev = t0
print(f"{'milestone':<24}{'at s':>8}{'since previous s':>18}")
for name, at in sorted(a["milestones"], key=lambda m: m[1]):
    print(f"{name:<24}{(at - t0) / 1000:>8.1f}{(at - prev) / 1000:>18.1f}")
    prev = at
PY

# Recovery runs inside the service (--recover-deployments).
sleep 3

wait_recovered() { # N: the number of recoveries that must be done
  while :; do
    deploy status two-host-demo --format json >"$work/status.json" 2>/dev/null || true
    if python3 - "$work/status.json" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r = s.get("recoveries", [])
ok = s["status"] == "running" and len(r) >= int(sys.argv[2]) and r[-1].get("recovered_ms")
sys.exit(0 if ok else 1)
PY
    then return 0; fi
    sleep 1
  done
}
recovery_table() {
  python3 - "$work/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r = s["recoveries"][-1]
t0 = r["detected_ms"]
print(f"detected as {r['kind']}: {r['reason']}")
print(f"{'milestone':<24}{'after detection s':>18}")
for name, at in sorted(r["milestones"], key=lambda m: m[1]):
    print(f"{name:<24}{(at - t0) / 1000:>18.1f}")
PY
}

echo "== 2. kill -9 of the replica's QEMU -> running"
pid=$(cat "$work/deploy/qemu/vms/two-host-demo/replica-a1/qemu.pid")
t=$(now)
kill -KILL "$pid"
wait_recovered 1
echo "kill -> running: $(elapsed "$t") s"
recovery_table

echo "== 3. the replica cut off the network (agent silent, detection timeout 30 s) -> running"
tap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tap"])' \
  "$work/deploy/qemu/vms/two-host-demo/replica-a2/vm.json")
t=$(now)
ip link set dev "$tap" nomaster
wait_recovered 2
echo "network cut -> running: $(elapsed "$t") s"
recovery_table
