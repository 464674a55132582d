//! `ibkit deploy` end to end with real VMs (QEMU under TCG on the local
//! backend), a real `ibkit serve` process and the real agent installed by
//! the generated cloud-init user data:
//!
//! - the two-host example (`examples/deploy/two-host.toml`) reaches
//!   `running`, its outputs are right, and the replica joined the primary's
//!   join API with the primary's token (the API refuses any other);
//! - the replica's QEMU is killed: the service's recovery rounds
//!   (`ibkit serve --recover-deployments`, the code of `ibkit deploy
//!   watch`) recreate only that
//!   VM (the primary's QEMU process keeps running), the new replica joins
//!   again (a second join with the same token) and the instance is
//!   `running` again, with the dead VM's serial log and disk kept;
//! - the new replica is cut off the network (its VM runs on): the service's
//!   monitor opens a recovery request after the 30 s detection timeout and
//!   the replica is recreated again;
//! - an update of one step reruns only that step; an update of the
//!   replica's flavor recreates only the replica;
//! - a broken script makes a deployment `failed` after its attempts, each
//!   on new VMs, with the script's own words in every failure reason;
//! - `down` deletes VMs, instance, taps and bridge.
//!
//! Needs root (bridge, taps, dnsmasq) and the Debian 12 test image
//! (`IBKIT_DEBIAN_QCOW2`, else built by `scripts/build-debian-image.sh`).

mod deploy_env;
mod serve;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_env::{Env, outputs, wait_recovered};
use ibkit_test_utils::{is_root, link_exists};
use serde_json::Value;

/// The example with the marketplace's billing: a postpaid option, the
/// agent's token file on the primary (VK's path, rotated) and a step that
/// points the image's client (`ibkit-example-billing`, on a 10 s timer) at
/// the service's emulator, as a vendor's script would.
fn with_billing(env: &Env, example: &str) -> String {
    let token_file = "/opt/agent/xaas-secret-auth-token.key";
    let ca = std::fs::read_to_string(env.service.state.join("tls/cert.pem")).expect("cert");
    let (st, key) = env.service.get("/v1/billing/public-key");
    assert_eq!(st, 200, "{key}");
    let public = key["public_key_pem"].as_str().expect("pem");
    let with_token = example.replacen(
        "install_agent = true\n",
        &format!(
            "install_agent = true\nbilling_token = {{ path = \"{token_file}\", rotate = true }}\n"
        ),
        1,
    );
    assert_ne!(with_token, example, "the primary's user data moved");
    format!(
        r#"{with_token}
[billing]
params = ["requests"]

[[groups]]
name = "billing"
hosts = ["primary"]
depends_on = ["init"]

[[groups.steps]]
index = 1
type = "bash"
content = """
set -eu
mkdir -p /etc/ibkit-example
cat > /etc/ibkit-example/ca.pem <<'PEM'
{ca}PEM
cat > /etc/ibkit-example/marketplace.pem <<'PEM'
{public}PEM
cat > /etc/ibkit-example/billing.env <<'ENV'
URL={url}
CA_FILE=/etc/ibkit-example/ca.pem
SCHEME=secure
TOKEN_FILE={token_file}
PUBLIC_KEY=/etc/ibkit-example/marketplace.pem
PARAMS=requests=1
ENV
"""
"#,
        url = env.guest_service_url(),
    )
}

#[test]
fn two_host_example_runs_and_a_killed_replica_is_recreated_alone() {
    assert!(is_root(), "this test needs root (bridge, taps, dnsmasq)");
    let env = Env::new("ibkbrdep", "10.78.0.1/24");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deploy/two-host.toml"),
    )
    .expect("the example");
    let billed = with_billing(&env, &example);
    let manifest = env.manifest("two-host.toml", &billed);
    let manifest_arg = manifest.to_str().expect("utf-8 path");
    let t = Instant::now();

    // up: running, exit 0.
    let out = env.run(
        &["up", manifest_arg, "--format", "json"],
        Duration::from_secs(1500),
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(out.status.success(), "up failed: {status:#}");
    let up_s = t.elapsed().as_secs_f64();
    eprintln!("[deploy test] up -> running in {up_s:.1} s");
    assert_eq!(status["status"], "running", "{status:#}");
    assert_eq!(
        status["attempts"].as_array().map(Vec::len),
        Some(1),
        "{status:#}"
    );
    assert_eq!(status["service"]["status"], "running");
    let name = "two-host-demo";

    // Outputs: the token is 32 hex digits, the join URL is the primary's
    // address on the bridge, and the replica joined once.
    let o = outputs(&env, name);
    let token = o["join_token"]["value"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(token.len(), 32, "{o:#}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{o:#}");
    let url = o["join_url"]["value"].as_str().expect("url");
    assert!(
        url.starts_with("http://10.78.0.") && url.ends_with(":7000/join"),
        "{o:#}"
    );
    assert_eq!(
        o["replica_joined"]["value"], "replica (join number 1)",
        "{o:#}"
    );
    // Masked unless asked for.
    let text = env.run(&["outputs", name], Duration::from_secs(60));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        !text.contains(&token) && text.contains("sensitive"),
        "{text}"
    );
    // The replica's step ran with the primary's token: its environment
    // holds it (resolved by the service) and the primary's API accepted it.
    let id = status["instance_id"].as_str().expect("id").to_string();
    let join = env.service.step(&id, "replica", "join", 1);
    assert_eq!(join["status"], "ok", "{join:#}");
    assert_eq!(join["structured_result"]["joined"], "replica", "{join:#}");

    // Billing: the agent keeps the primary's token file current and the
    // image's own client pushes on its timer; after more than a key's
    // life (20 s) the pushes went on with newer keys.
    std::thread::sleep(Duration::from_secs(45));
    let usage = env.json(&["usage", name, "--format", "json"]);
    assert_eq!(usage["app_billing"]["status"], "pass", "{usage:#}");
    let requests = &usage["params"][0];
    assert_eq!(requests["param"], "requests", "{usage:#}");
    assert!(
        requests["total"].as_f64().is_some_and(|t| t >= 3.0),
        "{usage:#}"
    );
    let keys_used: std::collections::BTreeSet<i64> = usage["pushes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == 200)
        .filter_map(|p| p["key_created_at"].as_i64())
        .collect();
    assert!(
        keys_used.len() >= 2,
        "the token file never rotated: {usage:#}"
    );
    let counted: u64 = usage["pushes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["counted"].as_u64())
        .sum();
    assert_eq!(
        requests["count"].as_u64(),
        Some(counted),
        "every counted push is in the totals: {usage:#}"
    );
    eprintln!(
        "[deploy test] billing: {} pushes, {} keys used",
        usage["pushes"].as_array().map_or(0, Vec::len),
        keys_used.len()
    );

    // Kill the replica's QEMU: the service's recovery rounds find it.
    let primary_pid = env.qemu_pid(name, "primary-a1").expect("primary QEMU");
    let replica_pid = env.qemu_pid(name, "replica-a1").expect("replica QEMU");
    let killed = Instant::now();
    ibkit_vm::procs::sigkill(replica_pid);
    let status = wait_recovered(&env, name, 1, "the instance running again");
    eprintln!(
        "[deploy test] kill -> running in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let rec = &status["recoveries"][0];
    assert_eq!(rec["host"], "replica", "{status:#}");
    assert_eq!(rec["kind"], "vm_stopped", "{status:#}");
    assert_eq!(rec["old_vm"], format!("{name}.replica-a1"));
    assert_eq!(rec["new_vm"], format!("{name}.replica-a2"));
    // The dead VM's serial log and disk are kept.
    let evidence: Vec<&str> = rec["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        evidence.iter().any(|p| p.ends_with("serial.log")),
        "{evidence:?}"
    );
    assert!(
        evidence.iter().any(|p| p.ends_with("overlay.qcow2")),
        "{evidence:?}"
    );
    for p in &evidence {
        assert!(Path::new(p).exists(), "{p} missing");
    }
    // The controller published its timeline to the service (the console
    // shows it): the first attempt reached running, the recovery its
    // milestones.
    let (code, timeline) = env.service.get(&format!("/v1/instances/{id}/deployment"));
    assert_eq!(code, 200, "{timeline:#}");
    assert_eq!(timeline["deployment"], name, "{timeline:#}");
    assert_eq!(
        timeline["attempts"][0]["outcome"], "running",
        "{timeline:#}"
    );
    let published = &timeline["recoveries"][0];
    assert_eq!(published["host"], "replica", "{timeline:#}");
    let reached: Vec<&str> = published["milestones"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(reached.contains(&"recreated"), "{timeline:#}");
    // Only the replica was recreated: the primary's QEMU never stopped.
    assert_eq!(env.qemu_pid(name, "primary-a1"), Some(primary_pid));
    let vms: Vec<String> = status["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["id"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        vms,
        [
            format!("{name}.primary-a1 running"),
            format!("{name}.replica-a2 running")
        ]
    );
    // The new replica resolved the primary's (unchanged, `once`) token
    // again and joined a second time; health checks pass again.
    let o = outputs(&env, name);
    assert_eq!(o["join_token"]["value"], token.as_str(), "{o:#}");
    assert_eq!(
        o["replica_joined"]["value"], "replica (join number 2)",
        "{o:#}"
    );
    assert_eq!(status["service"]["status"], "running");
    let init = env.service.step(&id, "primary", "init", 1);
    assert_eq!(
        init["attempts"], 1,
        "the primary's once step ran again: {init:#}"
    );

    // The replica cut off the network: its VM runs on (the backend sees
    // nothing wrong) but its agent and health results go silent. The
    // service's monitor opens a recovery request after the manifest's
    // detection_timeout (30 s) and the recovery rounds act on it.
    let vm_json: Value = serde_json::from_slice(
        &std::fs::read(
            env.state()
                .join("qemu/vms")
                .join(name)
                .join("replica-a2/vm.json"),
        )
        .expect("vm.json"),
    )
    .expect("vm.json parses");
    let tap = vm_json["tap"].as_str().expect("tap").to_string();
    let cut = Instant::now();
    let ok = Command::new("ip")
        .args(["link", "set", "dev", &tap, "nomaster"])
        .status()
        .expect("ip runs");
    assert!(ok.success());
    let status = wait_recovered(&env, name, 2, "running after the network cut");
    eprintln!(
        "[deploy test] network cut -> running in {:.1} s",
        cut.elapsed().as_secs_f64()
    );
    let rec = &status["recoveries"][1];
    let kind = rec["kind"].as_str().expect("kind");
    assert!(
        kind == "agent_silent" || kind == "health_missing",
        "the service's monitor should have found it: {rec:#}"
    );
    assert!(
        rec["reason"].as_str().is_some_and(|r| r.contains("30s")),
        "{rec:#}"
    );
    assert_eq!(rec["new_vm"], format!("{name}.replica-a3"));
    assert_eq!(env.qemu_pid(name, "primary-a1"), Some(primary_pid));
    let o = outputs(&env, name);
    assert_eq!(
        o["replica_joined"]["value"], "replica (join number 3)",
        "{o:#}"
    );

    // Update 1: only the primary's second step changes. It alone reruns;
    // no VM is recreated, the replica's step (which does not use that
    // step's result) does not rerun. (The service's recovery rounds pause
    // while `up` holds the lock.)
    let exec = |host: &str, group: &str, index: u64| {
        env.service.step(&id, host, group, index)["exec_id"]
            .as_str()
            .map(str::to_string)
    };
    let before = [
        exec("primary", "init", 1),
        exec("primary", "init", 2),
        exec("replica", "join", 1),
    ];
    let changed = billed.replace(
        "chmod 0755 /usr/local/bin/demo-primary",
        "chmod 0755 /usr/local/bin/demo-primary # v2",
    );
    assert_ne!(changed, billed);
    let _ = env.manifest("two-host.toml", &changed);
    let t = Instant::now();
    let out = env.run(
        &["up", manifest_arg, "--format", "json"],
        Duration::from_secs(900),
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(out.status.success(), "update failed: {status:#}");
    eprintln!(
        "[deploy test] step update -> running in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(status["attempts"][1]["kind"], "update", "{status:#}");
    let after = [
        exec("primary", "init", 1),
        exec("primary", "init", 2),
        exec("replica", "join", 1),
    ];
    assert_eq!(after[0], before[0], "the once step reran");
    assert_ne!(after[1], before[1], "the changed step did not rerun");
    assert_eq!(after[2], before[2], "the replica's step reran");
    assert_eq!(env.qemu_pid(name, "primary-a1"), Some(primary_pid));
    assert!(env.qemu_pid(name, "replica-a3").is_some());

    // Update 2: the replica's flavor changes: only its VM is recreated
    // (and it joins a fourth time); the primary keeps running.
    let changed = changed.replacen(
        "flavor = { vcpus = 1, memory_mib = 1024, disk_gib = 4 }\n[hosts.user_data]\nper_instance",
        "flavor = { vcpus = 1, memory_mib = 900, disk_gib = 4 }\n[hosts.user_data]\nper_instance",
        1,
    );
    assert!(changed.contains("memory_mib = 900"));
    let _ = env.manifest("two-host.toml", &changed);
    let t = Instant::now();
    let out = env.run(
        &["up", manifest_arg, "--format", "json"],
        Duration::from_secs(1500),
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(out.status.success(), "update failed: {status:#}");
    eprintln!(
        "[deploy test] flavor update -> running in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let vm_ids: Vec<&str> = status["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(
        vm_ids,
        [
            format!("{name}.primary-a1").as_str(),
            format!("{name}.replica-a4").as_str()
        ]
    );
    assert_eq!(env.qemu_pid(name, "primary-a1"), Some(primary_pid));
    assert_eq!(
        exec("primary", "init", 2),
        after[1],
        "the primary's step reran"
    );
    let o = outputs(&env, name);
    assert_eq!(
        o["replica_joined"]["value"], "replica (join number 4)",
        "{o:#}"
    );

    // down: VMs, taps, bridge and the instance are gone.
    let out = env.run(&["down", name], Duration::from_secs(120));
    assert!(out.status.success());
    assert!(env.qemu_pid(name, "primary-a1").is_none());
    assert!(!link_exists(env.bridge), "the bridge is left");
    assert_eq!(env.service.instance(&id)["status"], "deleted");
    assert_eq!(env.status(name)["status"], "deleted");
}

const BROKEN: &str = r#"
[instance]
name = "broken-demo"
max_attempts = 2
attempt_timeout = "15m"

[[hosts]]
name = "app"
image = "debian12.qcow2"
flavor = { vcpus = 1, memory_mib = 768, disk_gib = 3 }

[[groups]]
name = "setup"
hosts = ["app"]

[[groups.steps]]
index = 1
type = "bash"
content = """
echo "preparing the data directory"
echo "fatal: /srv/data is not writable (disk full?)" >&2
exit 4
"""
[groups.steps.options]
timeout = "30s"
"#;

#[test]
fn a_broken_script_fails_the_deployment_after_its_attempts_with_the_log() {
    assert!(is_root(), "this test needs root (bridge, taps, dnsmasq)");
    let env = Env::new("ibkbrbrk", "10.79.0.1/24");
    let manifest = env.manifest("broken.toml", BROKEN);
    let out = env.run(
        &["up", manifest.to_str().expect("utf-8"), "--format", "json"],
        Duration::from_secs(1800),
    );
    assert_eq!(out.status.code(), Some(1), "up must fail with exit code 1");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["status"], "failed", "{status:#}");
    let attempts = status["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{status:#}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["outcome"], "failed", "{a:#}");
        assert_eq!(a["kind"], if n == 0 { "create" } else { "retry" });
        let why = a["failure"].as_str().expect("failure reason");
        assert!(why.contains("setup"), "{why}");
        assert!(
            why.contains("/srv/data is not writable"),
            "the log is not in {why}"
        );
    }
    let reason = status["status_reason"].as_str().expect("reason");
    assert!(
        reason.contains("2 attempt(s) failed") && reason.contains("not writable"),
        "{reason}"
    );
    // Each attempt ran on a new VM; the first one's evidence is kept.
    assert_eq!(status["vms"][0]["id"], "broken-demo.app-a2", "{status:#}");
    let evidence = env.state().join("qemu/evidence/broken-demo");
    let kept: Vec<String> = std::fs::read_dir(&evidence)
        .expect("evidence dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.iter().any(|k| k.starts_with("app-a1-")), "{kept:?}");
    let out = env.run(
        &["down", "broken-demo", "--no-evidence"],
        Duration::from_secs(120),
    );
    assert!(out.status.success());
    assert!(!link_exists(env.bridge));
}
