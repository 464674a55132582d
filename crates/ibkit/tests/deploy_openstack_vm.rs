//! `ibkit package deploy --backend openstack` with real guests: the
//! multi-host example package (`examples/packages/kv-cluster`, unmodified)
//! on Nova's **libvirt** driver, which boots the Debian 12 test image (a
//! local file ibkit uploads to Glance, given with `--map`) under TCG on the
//! cloud's shared provider network; cloud-init reads the user data and the
//! static network from the config drive, downloads the agent from the real
//! `ibkit serve` and pairs it:
//!
//! - `deploy` → `running`: the replica joined the primary's API at the
//!   primary's address with the primary's token (a script result), and
//!   its answer names the guest's own hostname (Nova's server name): the
//!   scripts ran in those guests;
//! - the replica's guest is destroyed at the hypervisor (`virsh destroy`;
//!   Nova sees SHUTOFF): the recovery keeps its evidence (console log,
//!   server document without user data), boots attempt 2, which pairs and
//!   joins again under its new name;
//! - `down` leaves no server, port or libvirt domain.
//!
//! (`ibkit deploy` of a hand-written manifest takes the same path after
//! the mapping; `deploy_openstack.rs` covers it on the fake driver.)
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

/// The Nova server and libvirt domain of a deployment's host.
fn domain_of(env: &Env, name: &str, host: &str) -> (String, String) {
    let server = env
        .cloud
        .servers(name)
        .into_iter()
        .find(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("ibkit-{name}-{host}-a")))
        })
        .unwrap_or_else(|| panic!("no server of host {host}"));
    let id = server["id"].as_str().expect("id").to_string();
    let domain = env.cloud.get(Api::Compute, &format!("/servers/{id}"))["server"]
        ["OS-EXT-SRV-ATTR:instance_name"]
        .as_str()
        .expect("libvirt domain name")
        .to_string();
    (id, domain)
}

#[test]
fn the_kv_cluster_package_deploys_on_real_guests_recovers_and_goes() {
    let mut env = Env::new(Virt::Libvirt);
    let [image, _, _] = ibkit_test_utils::debian_images().expect("the Debian 12 test image");
    let name = unique("os-pkg");
    let package =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages/kv-cluster");
    let map = format!("kv-debian12={}", image.display());
    let started = Instant::now();
    let out = env.run_of(
        "package",
        &[
            "deploy",
            package.to_str().expect("utf-8"),
            "--plan",
            "cluster",
            "--var",
            "flavor=STD2-1-1",
            "--map",
            &map,
            "--name",
            &name,
            "--format",
            "json",
        ],
        &name,
        Duration::from_secs(1500),
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON status ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "package deploy failed: {status:#}");
    eprintln!(
        "[openstack vm test] package deploy (upload + 2 guests under TCG) -> running in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let generated: Value = serde_json::from_slice(
        &std::fs::read(
            env.state()
                .join("packages")
                .join(&name)
                .join("generated.json"),
        )
        .expect("generated.json"),
    )
    .expect("JSON");
    let short = generated["instance_uuid"].as_str().expect("uuid")[..8].to_string();
    let primary = format!("{short}-kv-primary");
    let replica = format!("{short}-kv-replica-0");
    let joined = |env: &mut Env| {
        let o = env.json(
            &["outputs", &name, "--format", "json", "--show-sensitive"],
            &name,
        );
        o["first_replica"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // The replica's answer: the primary's API accepted its token, and the
    // hostname is Nova's server name of this attempt.
    let first = joined(&mut env);
    assert!(
        first.contains(&format!("ibkit-{name}-{replica}-a1 joined {primary}"))
            && first.contains("\"joined\""),
        "{first}"
    );
    let o = env.json(&["outputs", &name, "--format", "json"], &name);
    let url = o["api_url"]["value"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("http://") && url.ends_with(":7000"),
        "{o:#}"
    );

    let (id, domain) = domain_of(&env, &name, &replica);
    let (_, primary_domain) = domain_of(&env, &name, &primary);
    let domains = libvirt_domains();
    assert!(domains.contains(&domain) && domains.contains(&primary_domain));

    // The replica's guest dies at the hypervisor.
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
    assert_eq!(recovered["recoveries"][0]["host"], replica.as_str());
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
    // The new guest joined again under its new name.
    let again = joined(&mut env);
    assert!(
        again.contains(&format!("ibkit-{name}-{replica}-a2 joined {primary}")),
        "{again}"
    );
    let (_, new_domain) = domain_of(&env, &name, &replica);
    let instance = recovered["instance_id"].as_str().expect("id").to_string();

    let out = env.run_of("package", &["down", &name], &name, Duration::from_secs(300));
    assert!(out.status.success());
    assert!(env.cloud.servers(&name).is_empty());
    assert_eq!(env.cloud.tagged(&instance), vec![]);
    let domains = libvirt_domains();
    assert!(
        !domains.contains(&domain)
            && !domains.contains(&new_domain)
            && !domains.contains(&primary_domain),
        "{domains}"
    );
    assert!(!env.state().join("packages").join(&name).exists());
}
