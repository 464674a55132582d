#!/usr/bin/env bash
# Benchmarks `ibkit check` on the real Debian 12 image in its three
# containers: wall time (hyperfine, warm page cache), peak RSS (GNU time),
# and the per-rule times from the JSON report. Prints a figure table.
# Targets (issue 2): < 0.5 s wall and < 64 MiB peak RSS on qcow2.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
mapfile -t images < <(./scripts/build-debian-image.sh)
cargo build --release --quiet -p ibkit
bin=./target/release/ibkit
runs=${IBKIT_BENCH_RUNS:-20}

printf '%-12s %10s %10s %10s %12s\n' container "mean ms" "min ms" "max ms" "peak RSS MiB"
for img in "${images[@]}"; do
  case "$img" in *.zlib.qcow2) name=qcow2-zlib ;; *.qcow2) name=qcow2 ;; *) name=raw ;; esac
  json=$(mktemp)
  hyperfine --warmup 3 --runs "$runs" --style none --export-json "$json" \
    "$bin check $img --format json --quiet" >/dev/null 2>&1 || true
  read -r mean min max < <(python3 -c "import json;r=json.load(open('$json'))['results'][0];print(round(r['mean']*1000,1),round(r['min']*1000,1),round(r['max']*1000,1))")
  rm -f "$json"
  rss=$( { /usr/bin/time -f '%M' "$bin" check "$img" --format json --quiet >/dev/null; } 2>&1 | tail -1)
  printf '%-12s %10s %10s %10s %12.1f\n' "$name" "$mean" "$min" "$max" "$(echo "$rss / 1024" | bc -l)"
done

echo
echo "per-rule time on qcow2 (one run, microseconds):"
"$bin" check "${images[0]}" --format json --quiet | python3 -c '
import json,sys
r=json.load(sys.stdin)
for x in sorted(r["results"], key=lambda x:-x["elapsed_us"]):
    print("  %-20s %8d" % (x["id"], x["elapsed_us"]))
print("  %-20s %8d" % ("total (wall)", r["elapsed_ms"]*1000))'
