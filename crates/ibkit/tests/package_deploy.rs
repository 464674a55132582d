//! `ibkit package deploy` end to end: the multi-host example package
//! (`examples/packages/kv-cluster`, unmodified) on QEMU, through a real
//! `ibkit serve` and the real agent:
//!
//! - the Terraform is evaluated and mapped (hosts from
//!   `vkcs_compute_instance` with `count`, groups from `ivkcs_agent_exec`,
//!   the primary's token reaching the replica through
//!   `data.ivkcs_agent_script_result`, its address through
//!   `access_ip_v4`, an `http_health` check, a `time_sleep`, generated
//!   `random_password` and `ivkcs_ssh_keypair`), and the instance reaches
//!   `running`;
//! - the outputs are right (sensitive ones masked unless asked for);
//! - a second `package deploy` keeps the generated values and redoes
//!   nothing;
//! - the replica's QEMU is killed and the service's recovery rounds
//!   recreate it; the new replica joins the primary again;
//! - `package down` leaves no VM, bridge, instance or kept values.
//!
//! Needs root and the Debian 12 test image, like `deploy.rs`.

mod deploy_env;
mod serve;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy_env::{Env, debian_image, outputs, wait_recovered};
use ibkit_test_utils::{is_root, link_exists};
use serde_json::Value;

const NAME: &str = "kv-test";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages/kv-cluster")
}

fn deploy_args(image: &str) -> Vec<String> {
    [
        "deploy",
        example().to_str().expect("utf-8 path"),
        "--plan",
        "cluster",
        "--var",
        "flavor=STD2-1-1",
        "--map",
        &format!("kv-debian12={image}"),
        "--name",
        NAME,
        "--format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_package(env: &Env, args: &[String], timeout: Duration) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve::run_until(
        env.command_of("package", &args),
        &format!("ibkit package {args:?}"),
        timeout,
        Duration::from_millis(200),
        || {},
    )
}

#[test]
fn kv_cluster_package_deploys_unmodified_recovers_and_goes_down() {
    assert!(is_root(), "this test needs root (bridge, taps, dnsmasq)");
    let env = Env::new("ibkbrpkg", "10.80.0.1/24");
    let image = debian_image();
    let args = deploy_args(image.to_str().expect("utf-8 path"));
    let t = Instant::now();

    // deploy: running, exit 0.
    let out = run_package(&env, &args, Duration::from_secs(1500));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "package deploy failed: {status:#}");
    eprintln!(
        "[package test] deploy -> running in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(status["status"], "running", "{status:#}");

    // The names come from the generated instance_uuid, kept with the
    // deployment.
    let kept = env.state().join("packages").join(NAME);
    let generated: Value = serde_json::from_slice(
        &std::fs::read(kept.join("generated.json")).expect("generated.json"),
    )
    .expect("generated JSON");
    let uuid = generated["instance_uuid"].as_str().expect("uuid");
    let primary = format!("{}-kv-primary", &uuid[..8]);
    let replica = format!("{}-kv-replica-0", &uuid[..8]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(kept.join("generated.json"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "generated.json holds secrets: {mode:o}");
    let dir_mode = std::fs::metadata(&kept).expect("stat").permissions().mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "{} is not private: {dir_mode:o}",
        kept.display()
    );

    // Outputs: the API on the primary's bridge address, the replica's
    // join answer, the generated password and key.
    let o = outputs(&env, NAME);
    let url = o["api_url"]["value"].as_str().expect("api_url");
    assert!(
        url.starts_with("http://10.80.0.") && url.ends_with(":7000"),
        "{o:#}"
    );
    let joined = o["first_replica"]["value"].as_str().expect("first_replica");
    assert!(
        joined.contains(&format!("{replica} joined {primary}")) && joined.contains(&replica),
        "{o:#}"
    );
    let password = o["admin_password"]["value"]
        .as_str()
        .expect("password")
        .to_string();
    assert_eq!(password.len(), 20, "{o:#}");
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()), "{o:#}");
    let key = o["private_key"]["value"].as_str().expect("key");
    assert!(
        key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{o:#}"
    );
    let text = run_package(
        &env,
        &["outputs".to_string(), NAME.to_string()],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        !text.contains(&password) && text.contains("sensitive"),
        "{text}"
    );

    // The replica joined with the token the primary made (the API
    // refuses any other), and the primary's health check passes.
    let id = status["instance_id"].as_str().expect("id").to_string();
    let join = env.service.step(&id, &replica, "join_replicas", 1);
    assert_eq!(join["status"], "ok", "{join:#}");
    let init = env.service.step(&id, &primary, "init_primary", 1);
    let token = init["structured_result"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 32, "{init:#}");
    let detail = env.service.instance(&id);
    let health = detail["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["name"] == primary.as_str())
        .map(|h| h["health"].clone());
    assert_eq!(health, Some(Value::from("healthy")), "{detail:#}");

    // Again: the same generated values, nothing redone.
    let again = run_package(&env, &args, Duration::from_secs(600));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let o2 = outputs(&env, NAME);
    assert_eq!(o2["admin_password"]["value"], password.as_str());
    assert_eq!(
        env.service.step(&id, &replica, "join_replicas", 1)["attempts"],
        join["attempts"],
        "the join step reran"
    );

    // Kill the replica's QEMU: recovered by the service's rounds.
    let primary_pid = env
        .qemu_pid(NAME, &format!("{primary}-a1"))
        .expect("primary QEMU");
    let replica_pid = env
        .qemu_pid(NAME, &format!("{replica}-a1"))
        .expect("replica QEMU");
    let killed = Instant::now();
    ibkit_vm::procs::sigkill(replica_pid);
    let status = wait_recovered(&env, NAME, 1, "the package instance running again");
    eprintln!(
        "[package test] kill -> running in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        status["recoveries"][0]["host"],
        replica.as_str(),
        "{status:#}"
    );
    assert_eq!(
        env.qemu_pid(NAME, &format!("{primary}-a1")),
        Some(primary_pid)
    );
    let rejoined = env.service.step(&id, &replica, "join_replicas", 1);
    assert_eq!(rejoined["status"], "ok", "{rejoined:#}");

    // down: nothing left.
    let out = run_package(
        &env,
        &["down".to_string(), NAME.to_string()],
        Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.qemu_pid(NAME, &format!("{primary}-a1")).is_none());
    assert!(!link_exists(env.bridge), "the bridge is left");
    assert_eq!(env.service.instance(&id)["status"], "deleted");
    assert!(!kept.exists(), "{} is left", kept.display());
}
