//! `ibkit deploy --backend openstack` with real guests: Nova's **libvirt**
//! driver boots the Debian 12 test image (a local file ibkit uploads to
//! Glance) under TCG on the cloud's shared provider network; cloud-init
//! reads the user data and the static network from the config drive,
//! downloads the agent from the real `ibkit serve` and pairs it:
//!
//! - `up` → `running`, and the step's structured result names the guest's
//!   own hostname (Nova's server name): the script ran in that guest;
//! - the guest is destroyed at the hypervisor (`virsh destroy`; Nova sees
//!   SHUTOFF): the recovery keeps its evidence (console log, server
//!   document without user data), boots attempt 2, which pairs again, and
//!   the output now names the new guest;
//! - `down` leaves no server, port or libvirt domain.
//!
//! Needs the all-in-one cloud in libvirt mode
//! (`scripts/openstack-aio.sh --virt libvirt start`; scripts/test.sh
//! switches to it for this test) and the Debian 12 test image
//! (`IBKIT_DEBIAN_QCOW2`, else built by `scripts/build-debian-image.sh`).

mod openstack;
mod serve;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ibkit_deploy::openstack::api::Service as Api;
use openstack::{Env, Virt, unique};
use serde_json::Value;
use serve::wait_every;

fn libvirt_domains() -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("virsh runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_real_guest_deploys_recovers_and_goes() {
    let mut env = Env::new(Virt::Libvirt);
    let [image, _, _] = ibkit_test_utils::debian_images().expect("the Debian 12 test image");
    let name = unique("os-vm");
    let manifest = env.manifest(
        "vm.toml",
        &format!(
            r#"
[instance]
name = "{name}"
max_attempts = 1
attempt_timeout = "15m"

[[hosts]]
name = "app"
image = "{image}"
flavor = {{ vcpus = 1, memory_mib = 1024, disk_gib = 4 }}

[[groups]]
name = "init"
hosts = ["app"]
[[groups.steps]]
index = 1
type = "bash"
content = '''printf '{{"hostname":"%s"}}' "$(hostname)" > /tmp/ibkit-who.json'''
options = {{ structured_result_file = "/tmp/ibkit-who.json" }}

[[outputs]]
name = "hostname"
value = "{{{{ibkit.results.app.init.1.structured.hostname}}}}"

[recovery]
backoff = "1s"
"#,
            image = image.display()
        ),
    );
    let started = Instant::now();
    let out = env.run(
        &["up", manifest.to_str().expect("utf-8"), "--format", "json"],
        &name,
        Duration::from_secs(1200),
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert!(out.status.success(), "up failed: {status:#}");
    eprintln!(
        "[openstack vm test] up (upload + boot under TCG) -> running in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let hostname = |env: &mut Env| {
        let o = env.json(&["outputs", &name, "--format", "json"], &name);
        o["hostname"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(hostname(&mut env), format!("ibkit-{name}-app-a1"));

    let servers = env.cloud.servers(&name);
    assert_eq!(servers.len(), 1);
    let id = servers[0]["id"].as_str().expect("id").to_string();
    let domain = env.cloud.get(Api::Compute, &format!("/servers/{id}"))["server"]
        ["OS-EXT-SRV-ATTR:instance_name"]
        .as_str()
        .expect("libvirt domain name")
        .to_string();
    assert!(libvirt_domains().contains(&domain));

    // The guest dies at the hypervisor.
    let destroyed = Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", &domain])
        .output()
        .expect("virsh runs");
    assert!(destroyed.status.success(), "{destroyed:?}");
    let killed = Instant::now();
    let mut watch = env
        .command(&["watch", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("watch starts");
    let recovered = wait_every(
        "a new guest and the instance running again",
        Duration::from_secs(900),
        Duration::from_secs(3),
        || {
            let s = env.try_status(&name)?;
            let done = s["status"] == "running"
                && s["recoveries"]
                    .as_array()
                    .is_some_and(|r| r.len() == 1 && r[0]["recovered_ms"].is_u64());
            done.then_some(s)
        },
    );
    let _ = watch.kill();
    let _ = watch.wait();
    eprintln!(
        "[openstack vm test] guest destroyed -> running again in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let evidence: Vec<String> = recovered["recoveries"][0]["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    assert!(
        evidence.iter().any(|p| p.ends_with("server.json"))
            && evidence.iter().any(|p| p.ends_with("console.log")),
        "{recovered:#}"
    );
    for p in evidence.iter().filter(|p| p.ends_with("server.json")) {
        let text = std::fs::read_to_string(p).expect("evidence file");
        assert!(text.contains(&id) && !text.contains("user_data"), "{p}");
    }
    assert_eq!(hostname(&mut env), format!("ibkit-{name}-app-a2"));

    let servers = env.cloud.servers(&name);
    let new_domain = servers
        .first()
        .and_then(|s| s["id"].as_str())
        .map(|id| {
            env.cloud.get(Api::Compute, &format!("/servers/{id}"))["server"]
                ["OS-EXT-SRV-ATTR:instance_name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .expect("the new server");
    let instance = recovered["instance_id"].as_str().expect("id").to_string();

    let out = env.run(&["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());
    assert!(env.cloud.servers(&name).is_empty());
    assert_eq!(env.cloud.tagged(&instance), vec![]);
    let domains = libvirt_domains();
    assert!(
        !domains.contains(&domain) && !domains.contains(&new_domain),
        "{domains}"
    );
}
