//! `ibkit deploy --backend openstack` end to end against a real OpenStack
//! Zed control plane (`scripts/openstack-aio.sh`: Keystone, Glance, Nova
//! with its **fake** virt driver, Placement, Neutron with the Linux-bridge
//! agent, MariaDB, RabbitMQ), a real `ibkit serve` process and real agents
//! (the guests are played on this machine, see `openstack/mod.rs`):
//!
//! - `up` of a two-host manifest (one host from a Glance image name, one
//!   from a local file the backend uploads) reaches `running`; the servers
//!   carry the metadata, config drive, flavor and port the backend chose,
//!   and the instance has its own tagged network, subnet and router, a
//!   security group per host with SSH and the manifest's ports, and a
//!   floating IP per server (`--os-floating-ip`);
//! - a server deleted behind ibkit's back is recreated by the service's
//!   recovery rounds (`ibkit serve --recover-deployments`, credentials from
//!   its environment; attempt 2), its agent pairs again and the instance
//!   runs again;
//! - `down` leaves no server, port, router or network of the instance;
//! - `gc` finds what an interrupted `up` left (a tagged port and network of
//!   a deployment this state directory does not know) and deletes it;
//! - `kill -9` of `up` mid-way: `down` leaves nothing; with the state
//!   directory lost too, `gc` leaves nothing;
//! - a flavor no compute host can satisfy makes the server go to ERROR:
//!   the deployment fails with Nova's fault ("No valid host") as reason,
//!   and the failed servers and ports are gone; an image name that does
//!   not exist fails before any server is created, naming the image.
//!
//! Real guests booted by Nova's libvirt driver: `deploy_openstack_vm.rs`.

mod openstack;
mod serve;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ibkit_deploy::openstack::api::Service as Api;
use openstack::{Env, Virt, unique};
use reqwest::Method;
use serde_json::{Value, json};
use serve::wait_every;

fn two_host_manifest(name: &str) -> String {
    format!(
        r#"
[instance]
name = "{name}"
max_attempts = 1
attempt_timeout = "5m"
health_timeout = "2m"

[[hosts]]
name = "primary"
image = "ibkit-test-image"
flavor = {{ vcpus = 1, memory_mib = 512, disk_gib = 2 }}

[[hosts]]
name = "worker"
image = "worker.raw"
flavor = {{ vcpus = 2, memory_mib = 1024, disk_gib = 3 }}
ports = [8080, 9000]

[[groups]]
name = "init"
hosts = ["primary"]
[[groups.steps]]
index = 1
type = "bash"
content = '''printf '{{"token":"tok-%s"}}' "$(id -u)" > /tmp/ibkit-os-{name}.json; echo initialised'''
options = {{ structured_result_file = "/tmp/ibkit-os-{name}.json" }}

[[groups]]
name = "join"
hosts = ["worker"]
depends_on = ["init"]
[[groups.steps]]
index = 1
type = "bash"
content = "echo joining with {{{{ibkit.results.primary.init.1.structured.token}}}}"

[[outputs]]
name = "token"
value = "{{{{ibkit.results.primary.init.1.structured.token}}}}"

[recovery]
detection_timeout = "20s"
backoff = "1s"
"#
    )
}

/// Glance images holding these bytes (by the property ibkit sets).
fn uploaded_images(env: &Env, bytes: &[u8]) -> usize {
    let v = env.cloud.get(
        Api::Image,
        &format!(
            "/images?ibkit-sha256={}",
            ibkit_api::step::sha256_hex(bytes)
        ),
    );
    v["images"].as_array().map_or(0, Vec::len)
}

#[test]
fn openstack_deploy_recover_down_and_gc() {
    let mut env = Env::new(Virt::Fake);
    let name = unique("os-e2e");
    let manifest = env.manifest("deploy.toml", &two_host_manifest(&name));
    // The worker's image is a local file: uploaded once, by content.
    let mut raw = vec![0u8; 1 << 20];
    raw[..16].copy_from_slice(b"ibkit e2e image\n");
    std::fs::write(manifest.with_file_name("worker.raw"), &raw).expect("image file");

    env.extra.push("--os-floating-ip".into());
    let started = Instant::now();
    let out = env.run(
        &["up", manifest.to_str().expect("utf-8"), "--format", "json"],
        &name,
        Duration::from_secs(600),
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert!(
        out.status.success(),
        "up failed: {}",
        serde_json::to_string_pretty(&status).unwrap_or_default()
    );
    eprintln!(
        "[openstack test] up -> running in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status["status"], "running", "{status:#}");
    let instance = status["instance_id"]
        .as_str()
        .expect("instance id")
        .to_string();

    // What the cloud holds: two servers with our metadata and choices.
    let servers = env.cloud.servers(&name);
    assert_eq!(servers.len(), 2, "{servers:#?}");
    let flavors = env.cloud.get(Api::Compute, "/flavors/detail");
    let flavor_name = |id: &Value| {
        flavors["flavors"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["id"] == *id))
            .map(|f| f["name"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for s in &servers {
        let host = s["metadata"]["ibkit-host"].as_str().expect("host");
        assert_eq!(s["metadata"]["ibkit-instance"], instance.as_str());
        assert_eq!(s["metadata"]["ibkit-attempt"], "1");
        assert_eq!(s["name"], format!("ibkit-{name}-{host}-a1"));
        assert_eq!(s["status"], "ACTIVE");
        assert_eq!(s["config_drive"], "True", "{s:#}");
        let expect_flavor = if host == "primary" {
            "ibkit.small"
        } else {
            "ibkit.medium"
        };
        // Microversion 2.47+ embeds the flavor by name.
        let flavor = s["flavor"]["original_name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| flavor_name(&s["flavor"]["id"]));
        assert_eq!(flavor, expect_flavor, "{host}");
        let user_data = env
            .cloud
            .user_data(s["id"].as_str().unwrap_or_default())
            .expect("the server just listed");
        assert!(
            base64::engine::general_purpose::STANDARD
                .encode(&user_data)
                .len()
                <= 65_535
        );
    }
    assert_eq!(
        uploaded_images(&env, &raw),
        1,
        "the worker's file was uploaded once"
    );
    let tagged = env.cloud.tagged(&instance);
    let count = |kind: &str| tagged.iter().filter(|(k, _, _)| k == kind).count();
    assert_eq!(count("networks"), 1, "{tagged:?}");
    assert_eq!(count("subnets"), 1, "{tagged:?}");
    assert_eq!(count("routers"), 1, "{tagged:?}");
    assert_eq!(count("ports"), 2, "{tagged:?}");
    assert_eq!(count("floatingips"), 2, "{tagged:?}");
    assert_eq!(count("security_groups"), 2, "{tagged:?}");
    assert_eq!(
        count("images"),
        1,
        "the uploaded image names its user: {tagged:?}"
    );
    for vm in status["vms"].as_array().expect("vms") {
        assert_eq!(
            vm["addresses"].as_array().map(Vec::len),
            Some(2),
            "a fixed and a floating address: {vm:#}"
        );
    }
    let groups = env.cloud.get(
        Api::Network,
        &format!("/security-groups?tags=ibkit-instance%3A{instance},ibkit-host%3Aworker"),
    );
    let mut rules: Vec<String> = groups["security_groups"][0]["security_group_rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["direction"] == "ingress")
        .map(|r| {
            format!(
                "{}/{}",
                r["protocol"].as_str().unwrap_or(""),
                r["port_range_min"]
            )
        })
        .collect();
    rules.sort();
    assert_eq!(rules, ["icmp/null", "tcp/22", "tcp/8080", "tcp/9000"]);
    let outputs = env.json(&["outputs", &name, "--format", "json"], &name);
    assert!(
        outputs["token"]["value"]
            .as_str()
            .is_some_and(|t| t.starts_with("tok-")),
        "{outputs:#}"
    );

    // A server deleted behind ibkit's back: the service's recovery rounds
    // (`ibkit serve --recover-deployments`) recreate it.
    let worker = servers
        .iter()
        .find(|s| s["metadata"]["ibkit-host"] == "worker")
        .and_then(|s| s["id"].as_str())
        .expect("worker")
        .to_string();
    env.cloud.call(
        true,
        Api::Compute,
        Method::DELETE,
        &format!("/servers/{worker}"),
        None,
    );
    let killed = Instant::now();
    let recovered = wait_every(
        "the worker recreated and the instance running again",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            env.play_guests(&name);
            let s = env.try_status(&name)?;
            let done = s["status"] == "running"
                && s["recoveries"]
                    .as_array()
                    .is_some_and(|r| r.len() == 1 && r[0]["recovered_ms"].is_u64());
            done.then_some(s)
        },
    );
    eprintln!(
        "[openstack test] server deleted -> running again in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        recovered["recoveries"][0]["host"], "worker",
        "{recovered:#}"
    );
    let servers = env.cloud.servers(&name);
    let attempts: BTreeMap<String, String> = servers
        .iter()
        .map(|s| {
            (
                s["metadata"]["ibkit-host"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                s["metadata"]["ibkit-attempt"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        BTreeMap::from([
            ("primary".to_string(), "1".to_string()),
            ("worker".to_string(), "2".to_string())
        ])
    );
    let after = env.cloud.tagged(&instance);
    let count_after = |kind: &str| after.iter().filter(|(k, _, _)| k == kind).count();
    assert_eq!(
        count_after("ports"),
        2,
        "the deleted server's port went: {after:?}"
    );
    assert_eq!(
        count_after("floatingips"),
        2,
        "and its floating IP: {after:?}"
    );

    // down: nothing of the instance is left on the cloud.
    let out = env.run(&["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());
    assert!(env.cloud.servers(&name).is_empty());
    assert_eq!(env.cloud.tagged(&instance), vec![]);
    assert_eq!(
        uploaded_images(&env, &raw),
        0,
        "the upload no other deployment uses is gone"
    );

    // gc: what an interrupted `up` of an unknown deployment left.
    let orphan = uuid::Uuid::new_v4();
    let tags = json!({ "tags": ["ibkit", format!("ibkit-instance:{orphan}")] });
    let net = env.cloud.call(
        false,
        Api::Network,
        Method::POST,
        "/networks",
        Some(json!({ "network": { "name": "ibkit-orphan" } })),
    );
    let net_id = net["network"]["id"].as_str().expect("network").to_string();
    env.cloud.call(
        false,
        Api::Network,
        Method::PUT,
        &format!("/networks/{net_id}/tags"),
        Some(tags.clone()),
    );
    let port = env.cloud.call(
        false,
        Api::Network,
        Method::POST,
        "/ports",
        Some(json!({ "port": { "name": "ibkit-orphan", "network_id": net_id } })),
    );
    let port_id = port["port"]["id"].as_str().expect("port").to_string();
    env.cloud.call(
        false,
        Api::Network,
        Method::PUT,
        &format!("/ports/{port_id}/tags"),
        Some(tags),
    );
    let dry = env.json(
        &["gc", "--older-than", "0s", "--dry-run", "--format", "json"],
        &name,
    );
    assert_eq!(dry["dry_run"], true);
    let listed = dry.to_string();
    assert!(
        listed.contains(&port_id) && listed.contains(&net_id),
        "{dry:#}"
    );
    // An upload that never finished.
    let queued = env.cloud.call(
        false,
        Api::Image,
        Method::POST,
        "/images",
        Some(
            json!({ "name": "ibkit-orphan", "disk_format": "raw", "container_format": "bare",
            "tags": ["ibkit", format!("ibkit-instance:{orphan}")] }),
        ),
    );
    assert_eq!(queued["status"], "queued");
    assert_eq!(env.cloud.tagged(&orphan.to_string()).len(), 3);
    let done = env.json(&["gc", "--older-than", "0s", "--format", "json"], &name);
    assert!(done["total"].as_u64().unwrap_or(0) >= 3, "{done:#}");
    assert_eq!(env.cloud.tagged(&orphan.to_string()), vec![]);
}

/// `up` of a manifest that must fail: its status (JSON), `failed`.
fn failed_up(env: &mut Env, manifest: &std::path::Path, name: &str) -> Value {
    let out = env.run(
        &["up", manifest.to_str().expect("utf-8"), "--format", "json"],
        name,
        Duration::from_secs(300),
    );
    assert!(!out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["status"], "failed", "{status:#}");
    status
}

#[test]
fn openstack_failures_name_their_cause() {
    let mut env = Env::new(Virt::Fake);
    // A flavor only this test asks for, which no compute host can satisfy.
    let flavor_name = "ibkit.test.novalidhost";
    let existing = env
        .cloud
        .get(Api::Compute, "/flavors/detail?is_public=None");
    let found = existing["flavors"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == flavor_name))
        .and_then(|f| f["id"].as_str().map(str::to_string));
    if found.is_none() {
        let created = env.cloud.call(
            true,
            Api::Compute,
            Method::POST,
            "/flavors",
            Some(json!({ "flavor": {
                "name": flavor_name, "vcpus": 3, "ram": 1024, "disk": 10 } })),
        );
        let id = created["flavor"]["id"]
            .as_str()
            .expect("flavor")
            .to_string();
        env.cloud.call(
            true,
            Api::Compute,
            Method::POST,
            &format!("/flavors/{id}/os-extra_specs"),
            Some(json!({ "extra_specs": { "resources:CUSTOM_IBKIT_NOWHERE": "1" } })),
        );
    }
    let name = unique("os-novalid");
    let manifest = env.manifest(
        "novalid.toml",
        &format!(
            r#"
[instance]
name = "{name}"
max_attempts = 1

[[hosts]]
name = "only"
image = "ibkit-test-image"
flavor = {{ vcpus = 3, memory_mib = 1024, disk_gib = 10 }}
"#
        ),
    );
    let status = failed_up(&mut env, &manifest, &name);
    let failure = status["attempts"][0]["failure"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failure.contains("No valid host") && failure.contains(&format!("ibkit-{name}-only-a1")),
        "{status:#}"
    );
    let instance = status["instance_id"].as_str().expect("id").to_string();
    assert!(
        env.cloud.servers(&name).is_empty(),
        "the ERROR server was deleted"
    );
    assert_eq!(
        env.cloud
            .tagged(&instance)
            .iter()
            .filter(|(k, _, _)| k == "ports")
            .count(),
        0
    );
    let out = env.run(&["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());
    assert_eq!(env.cloud.tagged(&instance), vec![]);

    // A flavor named in the manifest that the cloud does not have.
    let name = unique("os-noflavor");
    let manifest = env.manifest(
        "noflavor.toml",
        &format!(
            "[instance]\nname = \"{name}\"\nmax_attempts = 1\n[[hosts]]\nname = \"only\"\nimage = \"ibkit-test-image\"\nos_flavor = \"m1.nonexistent\"\n"
        ),
    );
    let status = failed_up(&mut env, &manifest, &name);
    let failure = status["attempts"][0]["failure"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failure.contains("m1.nonexistent") && failure.contains("ibkit.small"),
        "{status:#}"
    );
    let out = env.run(&["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());

    // An image that is neither a file nor in Glance.
    let name = unique("os-noimage");
    let manifest = env.manifest(
        "noimage.toml",
        &format!(
            "[instance]\nname = \"{name}\"\nmax_attempts = 1\n[[hosts]]\nname = \"only\"\nimage = \"no-such-image-{name}\"\n"
        ),
    );
    let status = failed_up(&mut env, &manifest, &name);
    let failure = status["attempts"][0]["failure"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failure.contains(&format!("no-such-image-{name}"))
            && failure.contains("neither a file nor a Glance image"),
        "{status:#}"
    );
    assert!(env.cloud.servers(&name).is_empty());
    let out = env.run(&["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());
}

/// `kill -9` of `up` once its servers exist (image uploaded, network,
/// router, ports and servers made, the record not finished): `down`
/// leaves nothing of it; with the state directory lost as well, `gc` does.
#[test]
fn a_killed_up_leaves_nothing_after_down_or_gc() {
    let mut env = Env::new(Virt::Fake);
    for lost_state in [false, true] {
        let name = unique("os-killed");
        let manifest = env.manifest(&format!("{name}.toml"), &two_host_manifest(&name));
        // Bytes of this run only: uploaded by it.
        let mut raw = vec![0u8; 1 << 20];
        raw[..36].copy_from_slice(uuid::Uuid::new_v4().to_string().as_bytes());
        std::fs::write(manifest.with_file_name("worker.raw"), &raw).expect("image file");
        let mut up = env
            .command(&["up", manifest.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("up starts");
        // Both servers exist (the worker's image is uploaded); no guest
        // ever pairs, so `up` is still waiting when it is killed.
        wait_every(
            "the deployment's servers",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || (env.cloud.servers(&name).len() == 2).then_some(()),
        );
        up.kill().expect("SIGKILL");
        let _ = up.wait();
        let instance = env
            .try_status(&name)
            .and_then(|s| s["instance_id"].as_str().map(str::to_string))
            .expect("the record names the instance");
        let left = env.cloud.tagged(&instance);
        assert!(
            left.iter().any(|(k, _, _)| k == "ports") && left.iter().any(|(k, _, _)| k == "images"),
            "{left:?}"
        );
        if lost_state {
            std::fs::remove_dir_all(env.state()).expect("rm state");
            let swept = env.json(&["gc", "--older-than", "0s", "--format", "json"], &name);
            assert!(
                swept["total"].as_u64().unwrap_or(0) >= left.len() as u64,
                "{swept:#}"
            );
        } else {
            let out = env.run(&["down", &name], &name, Duration::from_secs(300));
            assert!(out.status.success());
        }
        assert!(
            env.cloud.servers(&name).is_empty(),
            "lost state: {lost_state}"
        );
        assert_eq!(
            env.cloud.tagged(&instance),
            vec![],
            "lost state: {lost_state}"
        );
        assert_eq!(uploaded_images(&env, &raw), 0, "lost state: {lost_state}");
    }
}
