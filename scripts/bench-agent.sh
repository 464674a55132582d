#!/usr/bin/env bash
# Benchmarks of ibkit-agent and ibkit serve on loopback (release builds):
#   1. latency from work creation (an instance update) to the script's start,
#   2. the agent's idle RSS and CPU over a quiet minute,
#   3. the service under N simulated agents (heartbeat every 5 s + reports),
#      p50/p95/p99 request latency (crates/server/examples/loadgen.rs).
# Env: IBKIT_BENCH_IDLE_SECONDS (60), IBKIT_BENCH_AGENTS (2000),
#      IBKIT_BENCH_LOAD_SECONDS (60).
set -euo pipefail
cd "$(dirname "$0")/.."
idle_seconds="${IBKIT_BENCH_IDLE_SECONDS:-60}"
agents="${IBKIT_BENCH_AGENTS:-2000}"
load_seconds="${IBKIT_BENCH_LOAD_SECONDS:-60}"

cargo build --release -q -p ibkit -p ibkit-agent -p ibkit-server --bins --examples
bin=target/release
work=$(mktemp -d)
cleanup() { kill "${agent_pid:-}" "${serve_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/ibkit" serve --listen 127.0.0.1:0 --state-dir "$work/svc" --agent-binary "$bin/ibkit-agent" \
  >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
read -r _ _ _ _ url _ pin <"$work/serve.out"
token=$(cat "$work/svc/operator-token")
echo "bench: service at $url"

python3 - "$url" "$token" "$work" "$pin" "$bin/ibkit-agent" "$idle_seconds" <<'PY'
import json, os, ssl, subprocess, sys, time, urllib.request
url, token, work, pin, agent_bin, idle_seconds = sys.argv[1:7]
idle_seconds = int(idle_seconds)
ctx = ssl.create_default_context(cafile=f"{work}/svc/tls/cert.pem")

def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    with urllib.request.urlopen(req, context=ctx) as r:
        data = r.read()
        return json.loads(data) if data else None

def spec(n):
    return {"name": "bench", "hosts": [{"name": "h"}], "groups": [{"name": "g", "hosts": ["h"], "steps": [
        {"index": 1, "content": f"date +%s%N > {work}/started; : {n}"}]}]}

created = call("POST", "/v1/instances", spec(0))
iid, key = created["id"], created["hosts"][0]["pairing_key"]
os.makedirs(f"{work}/agent", exist_ok=True)
with open(f"{work}/agent/agent.toml", "w") as f:
    f.write(f'server_url = "{url}"\nserver_cert_sha256 = "{pin}"\ninstance = "{iid}"\nhost = "h"\n'
            f'pairing_key = "{key}"\nstate_dir = "{work}/agent/state"\n')
agent = subprocess.Popen([agent_bin, "run", "--config", f"{work}/agent/agent.toml"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{work}/agent.log", "w"))
open(f"{work}/agent.pid", "w").write(str(agent.pid))

def wait_running():
    for _ in range(600):
        if call("GET", f"/v1/instances/{iid}")["status"] == "running":
            return
        time.sleep(0.05)
    raise SystemExit("bench: instance did not reach running")

wait_running()
lat = []
for n in range(1, 31):
    time.sleep(0.3)  # let the agent go back to its long poll
    t0 = time.time_ns()
    call("PUT", f"/v1/instances/{iid}", spec(n))
    while True:
        try:
            started = int(open(f"{work}/started").read().strip())
            if started > t0:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    lat.append((started - t0) / 1e6)
    wait_running()
lat.sort()
print(f"work->start latency over {len(lat)} updates: median {lat[len(lat)//2]:.1f} ms, "
      f"p95 {lat[int(len(lat)*0.95)-1]:.1f} ms, max {lat[-1]:.1f} ms (target < 100 ms)")

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime in ticks
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
ticks = os.sysconf("SC_CLK_TCK")
time.sleep(2)
c0, t0 = stat(agent.pid), time.time()
peak = 0.0
while time.time() - t0 < idle_seconds:
    peak = max(peak, rss(agent.pid))
    time.sleep(1)
c1, t1 = stat(agent.pid), time.time()
cpu = (c1 - c0) / ticks / (t1 - t0) * 100
print(f"agent idle over {t1 - t0:.0f} s: RSS {rss(agent.pid):.1f} MiB (peak {peak:.1f} MiB, target < 10), "
      f"CPU {cpu:.3f} % (target < 0.1 %)")
agent.kill()
PY

if [ -x "$bin/examples/loadgen" ]; then
  echo "bench: $agents simulated agents for $load_seconds s"
  "$bin/examples/loadgen" --url "$url" --token "$token" --cert "$work/svc/tls/cert.pem" \
    --agents "$agents" --seconds "$load_seconds"
  echo "bench: service RSS $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$serve_pid/status)"
fi
