#!/usr/bin/env bash
# Brief coverage-guided fuzzing of ibkit's parsers of untrusted input, as CI
# runs it (scripts/test.sh): scripts/fuzz.sh [SECONDS_PER_TARGET] (default 20).
#
#  1. installs cargo-fuzz if `cargo fuzz` is missing (cargo install --locked);
#  2. generates seed corpora from real artefacts (fuzz/seeds.sh);
#  3. builds every target of fuzz/ once (cargo fuzz build, release, with
#     debug assertions and overflow checks, AddressSanitizer when this
#     toolchain can link it, else no sanitizer);
#  4. runs each target for SECONDS (-rss_limit_mb=512, -malloc_limit_mb=512,
#     -timeout=10: an input taking over 10 s is a failure), first replaying
#     fuzz/regressions/TARGET (so a committed reproducer fails until fixed);
#  5. prints one line per target and exits 1 if any crashed, leaked, ran out
#     of memory or timed out (with the artifact and how to reproduce it).
#
# The toolchain is stable Rust: cargo-fuzz needs `-Zsanitizer` and other
# unstable flags, which RUSTC_BOOTSTRAP=1 unlocks on a stable compiler.
#
# Environment:
#   IBKIT_FUZZ_TARGETS     space-separated subset of targets (default: all)
#   IBKIT_FUZZ_SANITIZER   address | none (default: address if it links here)
#   IBKIT_FUZZ_RSS_MB      -rss_limit_mb (default 512 for runs up to 60 s, else
#                          2048: libFuzzer keeps its corpus in memory, and the
#                          inspect corpus alone passes 512 MiB after a few
#                          minutes; -malloc_limit_mb stays 512 either way)
#   IBKIT_FUZZ_JOBS        targets fuzzed at once (default: nproc, at most 2)
#   IBKIT_FUZZ_KEEP_CORPUS 1: add the inputs found to fuzz/corpus/TARGET, to
#                          start from them next time (default: they go to a
#                          temporary directory, removed at the end)
#   IBKIT_FUZZ_TARGET_DIR  cargo target dir (default: $IBKIT_CACHE_DIR/fuzz-target
#                          when IBKIT_CACHE_DIR is set, as in scripts/test.sh, so
#                          a fresh clone reuses the compiled dependencies; else
#                          fuzz/target)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fuzz=$root/fuzz

secs=${1:-20}
case $secs in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

all_targets="qcow2 partition ext4 xfs initramfs inspect check text_formats report"
targets=${IBKIT_FUZZ_TARGETS:-$all_targets}
if [ -n "${IBKIT_FUZZ_TARGET_DIR:-}" ]; then
  target_dir=$IBKIT_FUZZ_TARGET_DIR
elif [ -n "${IBKIT_CACHE_DIR:-}" ]; then
  target_dir=$IBKIT_CACHE_DIR/fuzz-target
else
  target_dir=$fuzz/target
fi
mkdir -p "$target_dir"
export IBKIT_FUZZ_TARGET_DIR=$target_dir
export RUSTC_BOOTSTRAP=1
triple=$(rustc -vV | sed -n 's/^host: //p')
rss_mb=${IBKIT_FUZZ_RSS_MB:-512}
[ -n "${IBKIT_FUZZ_RSS_MB:-}" ] || [ "$secs" -le 60 ] || rss_mb=2048
jobs=${IBKIT_FUZZ_JOBS:-$(nproc)}
[ "$jobs" -ge 1 ] || jobs=1
[ "$jobs" -le 2 ] || jobs=2

say() { echo "fuzz: $*" >&2; }
now() { date +%s; }
t_start=$(now)

# ---------------------------------------------------------------- cargo-fuzz
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz (cargo install --locked cargo-fuzz)"
  cargo install --locked cargo-fuzz
fi

# ----------------------------------------------------------------- sanitizer
# AddressSanitizer needs the compiler's ASan runtime and -Zsanitizer; try a
# one-line program rather than failing a whole build.
san=${IBKIT_FUZZ_SANITIZER:-}
if [ -z "$san" ]; then
  probe=$(mktemp -d)
  echo 'fn main() { let v = vec![1u8; 8]; std::hint::black_box(&v); }' >"$probe/p.rs"
  if rustc -Zsanitizer=address --target "$triple" -o "$probe/p" "$probe/p.rs" >/dev/null 2>&1 &&
    "$probe/p" >/dev/null 2>&1; then
    san=address
  else
    san=none
    say "AddressSanitizer is not available with this toolchain; building without a sanitizer"
  fi
  rm -rf "$probe"
fi

# --------------------------------------------------------------------- seeds
t0=$(now)
"$fuzz/seeds.sh" "$fuzz/corpus"
say "seeds generated in $(($(now) - t0)) s"

# --------------------------------------------------------------------- build
t0=$(now)
say "building fuzz targets (sanitizer: $san, target dir: $target_dir)"
# 16 codegen units: a much faster build on two cores, for slightly slower
# executions (cargo-fuzz defaults to 1).
if ! (cd "$fuzz" && cargo fuzz build -O -s "$san" --codegen-units 16 --target-dir "$target_dir"); then
  say "FAILED: cargo fuzz build"
  exit 1
fi
say "built in $(($(now) - t0)) s"
bin_dir=$target_dir/$triple/release

# ----------------------------------------------------------------------- run
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ibkit-fuzz.XXXXXX")
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  rm -rf "$scratch"
  scratch=$(mktemp -d /dev/shm/ibkit-fuzz.XXXXXX)
fi
logs=$fuzz/artifacts/logs
rm -rf "$logs"
mkdir -p "$logs"
new_units=$(mktemp -d "${TMPDIR:-/tmp}/ibkit-fuzz-new.XXXXXX")
trap 'rm -rf "$scratch" "$new_units"' EXIT
export IBKIT_FUZZ_SCRATCH=$scratch
# ASan's 256 MiB quarantine alone would blow the 512 MiB RSS limit; leaks are
# reported (LeakSanitizer) and fail the target.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0:quarantine_size_mb=16:malloc_context_size=20:detect_leaks=1}

run_target() { # run_target NAME: fuzz it, leave NAME.log and NAME.rc in $logs
  local t=$1 log=$logs/$1.log art=$fuzz/artifacts/$1
  # libFuzzer adds what it finds to the first directory.
  local dirs=("$new_units/$t" "$fuzz/corpus/$t")
  [ "${IBKIT_FUZZ_KEEP_CORPUS:-0}" = 1 ] && dirs=("$fuzz/corpus/$t")
  mkdir -p "$art" "${dirs[@]}"
  if [ -d "$fuzz/regressions/$t" ] && [ -n "$(ls -A "$fuzz/regressions/$t")" ]; then
    dirs+=("$fuzz/regressions/$t")
  fi
  local rc=0
  "$bin_dir/$t" -max_total_time="$secs" -rss_limit_mb="$rss_mb" -malloc_limit_mb=512 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$art/" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
}

say "fuzzing $(echo "$targets" | wc -w) targets for ${secs} s each, $jobs at a time"
t0=$(now)
running=0
for t in $targets; do
  if [ ! -x "$bin_dir/$t" ]; then
    say "no such target: $t (have: $all_targets)"
    exit 2
  fi
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true
t_fuzz=$(($(now) - t0))

# ------------------------------------------------------------------- report
failed=0
passed=0
for t in $targets; do
  log=$logs/$t.log
  rc=$(cat "$logs/$t.rc" 2>/dev/null || echo "?")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)
  if [ "$rc" = 0 ]; then
    printf 'fuzz: %-13s ok      %10s execs  %s\n' "$t" "${execs:-?}" "$cov" >&2
    passed=$((passed + 1))
    continue
  fi
  failed=$((failed + 1))
  artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/^Test unit written to //' || true)
  kind=crash
  grep -q 'ERROR: libFuzzer: timeout' "$log" && kind=timeout
  grep -q 'ERROR: libFuzzer: out-of-memory' "$log" && kind=out-of-memory
  grep -q 'ERROR: LeakSanitizer' "$log" && kind=leak
  printf 'fuzz: %-13s FAILED  %10s execs  (%s, exit %s)\n' "$t" "${execs:-?}" "$kind" "$rc" >&2
  echo "---- $t: last lines of $log" >&2
  grep -vE '^#[0-9]+ +(NEW|REDUCE|pulse)' "$log" | tail -60 >&2
  echo "----" >&2
  if [ -n "$artifact" ]; then
    echo "fuzz: $t: input saved as $artifact" >&2
    echo "fuzz:   reproduce: $bin_dir/$t $artifact" >&2
    echo "fuzz:   (or: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O -s $san --codegen-units 16 --target-dir $target_dir $t $artifact)" >&2
    echo "fuzz:   minimise:  $bin_dir/$t -minimize_crash=1 -runs=10000 -exact_artifact_path=min-$t $artifact" >&2
    echo "fuzz:   keep it as a regression: cp $artifact fuzz/regressions/$t/" >&2
  fi
done
say "fuzzing took ${t_fuzz} s; whole script $(($(now) - t_start)) s; logs in $logs"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
