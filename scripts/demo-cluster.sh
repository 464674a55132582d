#!/usr/bin/env bash
# Runs the example two-host service (examples/cluster/instance.json) on this
# machine: `ibkit serve` on loopback and two `ibkit-agent` processes, one per
# host, each with its own state directory. The replica joins with the
# primary's token, passed as a structured result through the service.
# Prints the instance, every step's status and result.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p ibkit -p ibkit-agent
bin=target/release
work=$(mktemp -d)
cleanup() { jobs -p | xargs -r kill 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/ibkit" serve --listen 127.0.0.1:0 --state-dir "$work/svc" --agent-binary "$bin/ibkit-agent" \
  --heartbeat-interval 2s >"$work/serve.out" 2>"$work/serve.log" &
for _ in $(seq 100); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
read -r _ _ _ _ url _ pin <"$work/serve.out"
token=$(cat "$work/svc/operator-token")
api() { curl -fsS --cacert "$work/svc/tls/cert.pem" -H "authorization: Bearer $token" "$@"; }
echo "demo: ibkit serve listening on $url (certificate sha256 $pin)" >&2

created=$(api -H 'content-type: application/json' --data @examples/cluster/instance.json "$url/v1/instances")
id=$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "demo: created instance $id" >&2
for host in primary replica; do
  key=$(printf '%s' "$created" | python3 -c "import json,sys; print(next(h['pairing_key'] for h in json.load(sys.stdin)['hosts'] if h['name']=='$host'))")
  mkdir -p "$work/$host"
  cat >"$work/$host/agent.toml" <<CONF
server_url = "$url"
server_cert_sha256 = "$pin"
instance = "$id"
host = "$host"
pairing_key = "$key"
state_dir = "$work/$host/state"
CONF
  "$bin/ibkit-agent" run --config "$work/$host/agent.toml" 2>"$work/$host/agent.log" &
done

status=applying
for _ in $(seq 300); do
  status=$(api "$url/v1/instances/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [ "$status" = applying ] || break
  sleep 0.2
done
echo "demo: instance $id is $status" >&2
for host in primary replica; do
  api "$url/v1/instances/$id/hosts/$host/steps" | python3 -c '
import json, sys
host = sys.argv[1]
data = json.load(sys.stdin)
for s in (data if isinstance(data, list) else data.get("steps", [])):
    print(f"  {host}/{s[\"group\"]}/{s[\"index\"]}: {s[\"status\"]} (attempts {s.get(\"attempts\")}, exit {s.get(\"exit_code\")}) result: {(s.get(\"result\") or \"\").strip()!r}")
' "$host"
done
[ "$status" = running ]
