#!/usr/bin/env bash
# The resident memory of `ibkit serve` (release build) under the memory
# attacks of issue 12 (item 7): 8 slow clients downloading a 64 MiB agent
# binary (4 are served, streamed; 4 are told to retry) held open while 6
# hosts send 12 final reports of ~15 MiB, each with ~14 MiB of `[0,0,0,…]`
# as its structured result (crates/server/tests/common/attack.rs).
# Target: service RSS < 200 MiB (tests/memory.rs asserts it on a debug build).
# Env: IBKIT_BENCH_SLOW_DOWNLOADS (8), IBKIT_BENCH_HOSTS (6),
#      IBKIT_BENCH_REPORTS_PER_HOST (2).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ibkit --bin ibkit
cargo build --release -q -p ibkit-server --example serve_memory
bin=target/release
work=$(mktemp -d)
cleanup() { kill "${serve_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

head -c $((64 << 20)) /dev/urandom >"$work/agent-binary"
"$bin/ibkit" serve --listen 127.0.0.1:0 --state-dir "$work/svc" \
  --agent-binary "$work/agent-binary" >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
read -r _ _ _ _ url _ <"$work/serve.out"
echo "bench: ibkit serve (pid $serve_pid) at $url"
"$bin/examples/serve_memory" --url "$url" --state-dir "$work/svc" --pid "$serve_pid" \
  --agent-binary "$work/agent-binary" \
  --slow-downloads "${IBKIT_BENCH_SLOW_DOWNLOADS:-8}" \
  --hosts "${IBKIT_BENCH_HOSTS:-6}" \
  --reports-per-host "${IBKIT_BENCH_REPORTS_PER_HOST:-2}"
