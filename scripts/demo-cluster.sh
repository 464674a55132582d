#!/usr/bin/env bash
# Runs the example two-host service (examples/cluster/instance.json) on this
# machine: `ibkit serve` on loopback and two `ibkit-agent` processes, one per
# host, each with its own state directory. The replica joins with the
# primary's token, passed as a structured result through the service.
# Prints the instance, every step's status and result (`ibkit instance
# status`), and exits 0 only when the instance is running.
#
# Usage: scripts/demo-cluster.sh [BIN_DIR [INSTANCE_JSON]]
#   BIN_DIR holds `ibkit` and `ibkit-agent` (default: cargo's dev build,
#   made here if missing or stale). INSTANCE_JSON defaults to
#   examples/cluster/instance.json (the tests also run a broken one).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
  bin=$1
else
  cargo build -p ibkit -p ibkit-agent
  bin=target/debug
fi
spec=${2:-examples/cluster/instance.json}
for b in ibkit ibkit-agent; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b is missing" >&2; exit 2; }
done
work=$(mktemp -d)
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Nothing the service or the agents write is for other local users.
umask 077

"$bin/ibkit" serve --listen 127.0.0.1:0 --state-dir "$work/svc" --agent-binary "$bin/ibkit-agent" \
  --heartbeat-interval 2s >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 200); do
  [ -s "$work/svc/endpoint.json" ] && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "demo: ibkit serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$work/svc/endpoint.json" ] || { echo "demo: ibkit serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "demo: $(head -n 1 "$work/serve.out")" >&2

export IBKIT_SERVE_STATE="$work/svc"
id=$("$bin/ibkit" instance create "$spec" --agent-configs "$work/agents")
echo "demo: created instance $id; starting one agent per host" >&2
for host in primary replica; do
  "$bin/ibkit-agent" run --config "$work/agents/$host.toml" 2>"$work/agents/$host.log" &
done

set +e
"$bin/ibkit" instance status "$id" --wait 90s
code=$?
set -e
if [ "$code" -ne 0 ]; then
  echo "demo: the instance is not running; the service's and the agents' logs:" >&2
  tail -n 20 "$work/serve.log" "$work"/agents/*.log >&2 || true
fi
exit "$code"
