#!/usr/bin/env bash
# The cost of `GET /metrics` on `ibkit serve` (release build, in-process,
# plain HTTP on loopback): scrape time and size with 500 instances of 4
# hosts (2000 paired hosts), a report's round trip, and what the metrics
# hooks add to one report (crates/server/examples/metrics_bench.rs).
# Env: IBKIT_BENCH_INSTANCES (500), IBKIT_BENCH_HOSTS_PER_INSTANCE (4),
#      IBKIT_BENCH_SCRAPES (20).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ibkit-server --example metrics_bench
target/release/examples/metrics_bench \
  --instances "${IBKIT_BENCH_INSTANCES:-500}" \
  --hosts "${IBKIT_BENCH_HOSTS_PER_INSTANCE:-4}" \
  --scrapes "${IBKIT_BENCH_SCRAPES:-20}"
