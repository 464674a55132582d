#!/usr/bin/env bash
# Benchmarks `ibkit package`: lint of the example packages and of VK's
# published Grafana manifest in a package, and `package deploy --dry-run`
# (the Terraform evaluated and mapped, no VM) of the same, with and without
# the RSA key generation of `ivkcs_ssh_keypair` (a kept generated.json
# skips it, as a second deploy of the same name does). Prints per case:
# wall time (mean, min, max over the runs) and peak RSS.
#
# Target (issue 15): lint and mapping well under a second on this 2-core
# machine, peak RSS < 64 MiB.
#
# Environment:
#   IBKIT_BENCH_RUNS   timed runs per case (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh bench >/dev/null
cargo build --release --quiet -p ibkit
bin=$PWD/target/release/ibkit
runs=${IBKIT_BENCH_RUNS:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# VK's Grafana manifest, verbatim, in a copy of the Grafana example.
cp -r examples/packages/grafana "$work/vk-grafana"
cp crates/package/tests/fixtures/vk-grafana.tf "$work/vk-grafana/plans/free/deployment/deploy.tf"
touch "$work/disk.qcow2"

# One timed case: NAME, then the command.
bench() {
  local name=$1
  shift
  local times=() i start end rss
  for ((i = 0; i < runs; i++)); do
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1 || true
    end=$(date +%s%N)
    times+=($(((end - start) / 1000)))
  done
  /usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null 2>&1 || true
  rss=$(tail -n 1 "$work/rss")
  printf '%s\n' "${times[@]}" | python3 -c '
import sys
name, rss = sys.argv[1], int(sys.argv[2])
t = [int(x) / 1000 for x in sys.stdin.read().split()]
print(f"{name:<44} mean {sum(t)/len(t):8.1f} ms  min {min(t):8.1f}  max {max(t):8.1f}  peak RSS {rss/1024:6.1f} MiB")
' "$name" "$rss"
}

state=$work/state
kv=(package deploy examples/packages/kv-cluster --plan cluster --var flavor=STD2-1-1 --var replicas=3
  --map "kv-debian12=$work/disk.qcow2" --dry-run --state "$state")
vk=(package deploy "$work/vk-grafana" --plan free --map "8c7a6443-bb79-4f04-884a-14231f0ba6cb=$work/disk.qcow2"
  --dry-run --state "$state")

echo "ibkit package, $runs runs per case ($(nproc) cores)"
bench "lint examples/packages/grafana" "$bin" package lint examples/packages/grafana
bench "lint examples/packages/kv-cluster" "$bin" package lint examples/packages/kv-cluster
bench "lint VK's Grafana manifest" "$bin" package lint "$work/vk-grafana"
bench "map kv-cluster, 4 hosts (RSA keygen)" "$bin" "${kv[@]}" --name kv
bench "map VK's Grafana (RSA keygen)" "$bin" "${vk[@]}" --name vk
# Generated values kept: what a second deploy of the same name does.
for n in kv vk; do
  mkdir -p "$state/packages/$n"
done
python3 - "$state" <<'PY'
import json, subprocess, sys
# A generated.json with a key pair, as `package deploy` keeps it.
state = sys.argv[1]
subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", state + "/k"], check=True)
priv = open(state + "/k").read()
pub = open(state + "/k.pub").read().strip()
for name, addr in (("kv", "ivkcs_ssh_keypair.keypair#rsa2048"), ("vk", "ivkcs_ssh_keypair.keypair#rsa2048")):
    json.dump({"instance_uuid": "4a57a965-3c83-436c-80e2-428e421538cc",
               "secrets": {addr: {"private_key": priv, "public_key": pub}}},
              open(f"{state}/packages/{name}/generated.json", "w"))
PY
bench "map kv-cluster, 4 hosts (values kept)" "$bin" "${kv[@]}" --name kv
bench "map VK's Grafana (values kept)" "$bin" "${vk[@]}" --name vk
