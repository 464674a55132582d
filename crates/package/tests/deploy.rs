//! `ibkit package deploy`'s mapping, without VMs: VK's published Grafana
//! manifest and the multi-host example package mapped onto ibkit's
//! deployment manifest, generated values kept, and every refusal naming
//! its cause. (The deploy itself, on QEMU: `crates/ibkit/tests/
//! package_deploy.rs`.)

mod common;

use std::path::{Path, PathBuf};

use ibkit_package::PackageFiles;
use ibkit_package::deploy::{Backend, DeployRequest, Translation, translate};

fn kv_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages/kv-cluster")
}

/// A copy of `base` with the plan's deploy.tf replaced.
fn with_tf(base: &Path, plan: &str, tf: &str) -> (tempfile::TempDir, PackageFiles) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(base, dir.path());
    std::fs::write(
        dir.path()
            .join(format!("plans/{plan}/deployment/deploy.tf")),
        tf,
    )
    .expect("write tf");
    let pkg = PackageFiles::open(dir.path()).expect("package");
    (dir, pkg)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn request(plan: &str, vars: &[(&str, &str)], maps: &[(&str, &str)]) -> DeployRequest {
    DeployRequest {
        plan: plan.into(),
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        maps: maps
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        name: Some("test".into()),
        backend: Backend::Qemu,
    }
}

fn ok(pkg: &PackageFiles, req: &DeployRequest) -> Translation {
    translate(pkg, req, Path::new("/images"), None).unwrap_or_else(|e| panic!("{e}"))
}

fn err(pkg: &PackageFiles, req: &DeployRequest) -> String {
    match translate(pkg, req, Path::new("/images"), None) {
        Ok(t) => panic!("mapped, expected an error:\n{}", t.toml),
        Err(e) => e.to_string(),
    }
}

#[test]
fn vk_published_grafana_manifest_maps_with_warnings_for_what_is_not_emulated() {
    let tf = include_str!("fixtures/vk-grafana.tf");
    let (_d, pkg) = with_tf(&common::grafana_dir(), "free", tf);
    let image = "8c7a6443-bb79-4f04-884a-14231f0ba6cb";
    let req = request(
        "free",
        &[],
        &[
            (image, "grafana.qcow2"),
            ("a493b27d-170d-48eb-a24b-99e9b325f988", "2x4096"),
        ],
    );
    let t = ok(&pkg, &req);
    let m = &t.manifest;
    assert_eq!(m.hosts.len(), 1);
    let h = &m.hosts[0];
    // local.hosts_name from substr(var.instance_uuid, 0, 8): the
    // marketplace sets instance_uuid, whatever the default says.
    let short = t.generated.instance_uuid[..8].to_string();
    assert_ne!(short, "4a57a965");
    assert_eq!(h.name, format!("{short}-grafana"));
    assert_eq!(h.image, "/images/grafana.qcow2");
    assert_eq!((h.flavor.vcpus, h.flavor.memory_mib), (2, 4096));
    // The boot volume's size (var.root_size).
    assert_eq!(h.flavor.disk_gib, 10);
    // count = length(var.ports) rules, element(var.ports, count.index).
    assert_eq!(h.ports, vec![22, 80, 443]);
    // ssh_authorized_keys = [ivkcs_ssh_keypair.keypair.public_key].
    assert_eq!(h.user_data.ssh_authorized_keys.len(), 1);
    assert!(h.user_data.ssh_authorized_keys[0].starts_with("ssh-rsa "));

    let start = m
        .groups
        .iter()
        .find(|g| g.name == "start_grafana")
        .expect("group");
    let script = &start.steps[0].content;
    // try() over an ivkcs_s3 that exists (backup_style = "s3") gives its
    // placeholder; the address is a run-time reference.
    assert!(
        script.contains("backup_access_token=not-emulated:ivkcs_s3.s3_backup[0].access"),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "grafana_domain={{{{ibkit.results.{short}-grafana.ibkit-address.1.raw}}}}"
        )),
        "{script}"
    );
    assert!(script.contains("lego_enabled=false"), "{script}");
    assert_eq!(start.steps[0].options.cwd, "/opt/playbooks");
    assert!(start.depends_on.contains(&"ibkit-address".to_string()));

    // The check of the VM's own address becomes a check of 127.0.0.1.
    assert_eq!(m.health_checks.len(), 1);
    let check = serde_json::to_value(&m.health_checks[0]).expect("json");
    assert_eq!(check["host"], "127.0.0.1", "{check}");
    assert_eq!(check["path"], "/api/health");
    assert_eq!(m.instance.health_timeout.to_std().as_secs(), 300);

    let key = m
        .outputs
        .iter()
        .find(|o| o.name == "keypair")
        .expect("keypair");
    assert!(key.sensitive && key.value.contains("BEGIN OPENSSH PRIVATE KEY"));
    let url = m
        .outputs
        .iter()
        .find(|o| o.name == "grafana_url")
        .expect("url");
    assert_eq!(
        url.value,
        format!("http://{{{{ibkit.results.{short}-grafana.ibkit-address.1.raw}}}}")
    );

    // Not emulated, named, with file and line.
    let warnings = t.warnings.join("\n");
    for w in [
        "ivkcs_s3.s3_backup (plans/free/deployment/deploy.tf:",
        "vkcs_blockstorage_volume.grafana_data",
        "vkcs_compute_volume_attach.attached",
    ] {
        assert!(warnings.contains(w), "{w} missing in:\n{warnings}");
    }
    // settings.yaml retry: no → one attempt.
    assert_eq!(m.instance.max_attempts, 1);
}

#[test]
fn grafana_external_placement_maps_dns_and_floating_ip_as_not_emulated() {
    let tf = include_str!("fixtures/vk-grafana.tf");
    let (_d, pkg) = with_tf(&common::grafana_dir(), "free", tf);
    let req = request(
        "free",
        &[("grafana_placement", "external"), ("backup_style", "none")],
        &[("8c7a6443-bb79-4f04-884a-14231f0ba6cb", "g.qcow2")],
    );
    let t = ok(&pkg, &req);
    let warnings = t.warnings.join("\n");
    assert!(warnings.contains("ivkcs_dns.grafana"), "{warnings}");
    assert!(
        warnings.contains("vkcs_networking_floatingip.fips"),
        "{warnings}"
    );
    assert!(!warnings.contains("ivkcs_s3"), "{warnings}");
    let script = &t
        .manifest
        .groups
        .iter()
        .find(|g| g.name == "start_grafana")
        .expect("g")
        .steps[0]
        .content;
    // try() falls back when the bucket does not exist (count = 0).
    assert!(script.contains("backup_access_token=n/a"), "{script}");
    assert!(script.contains("lego_enabled=true"), "{script}");
}

#[test]
fn kv_cluster_maps_hosts_groups_order_and_result_references() {
    let pkg = PackageFiles::open(&kv_dir()).expect("example");
    let req = request(
        "cluster",
        &[("flavor", "STD2-2-4"), ("replicas", "2")],
        &[("kv-debian12", "kv.qcow2")],
    );
    let t = ok(&pkg, &req);
    let m = &t.manifest;
    let uuid = &t.generated.instance_uuid;
    let short = &uuid[..8];
    // The service's instance is created under the marketplace's uuid, so
    // the app's billing pushes name an instance the service knows.
    assert_eq!(
        m.instance.id.as_ref().map(|i| i.as_str()),
        Some(uuid.as_str())
    );
    let names: Vec<&str> = m.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{short}-kv-primary"),
            format!("{short}-kv-replica-0"),
            format!("{short}-kv-replica-1")
        ]
    );
    // VK's flavor name STD2-2-4: 2 vCPUs, 4 GiB.
    assert!(
        m.hosts
            .iter()
            .all(|h| (h.flavor.vcpus, h.flavor.memory_mib, h.flavor.disk_gib) == (2, 4096, 4))
    );
    assert!(m.hosts.iter().all(|h| h.ports == vec![22, 7000]));
    let group = |n: &str| {
        m.groups
            .iter()
            .find(|g| g.name == n)
            .unwrap_or_else(|| panic!("no group {n}"))
    };
    let join = group("join_replicas");
    assert_eq!(
        join.hosts,
        [
            format!("{short}-kv-replica-0"),
            format!("{short}-kv-replica-1")
        ]
    );
    // depends_on through time_sleep, the script result and the address.
    assert_eq!(
        join.depends_on,
        ["ibkit-address", "init_primary", "sleep-after_primary"]
    );
    assert!(join.steps[0].content.contains(&format!(
        "token='{{{{ibkit.results.{short}-kv-primary.init_primary.1.structured.token}}}}'"
    )));
    let sleep = group("sleep-after_primary");
    assert_eq!(sleep.depends_on, ["init_primary"]);
    assert_eq!(sleep.hosts, join.hosts);
    assert_eq!(sleep.steps[0].content, "sleep 3");
    assert_eq!(
        group("ibkit-address").hosts,
        [format!("{short}-kv-primary")]
    );
    // The generated password reaches the primary's script and the output.
    let password = &m
        .outputs
        .iter()
        .find(|o| o.name == "admin_password")
        .expect("pw")
        .value;
    assert_eq!(password.len(), 20);
    assert!(
        group("init_primary").steps[0]
            .content
            .contains(password.as_str())
    );
    // retry: yes → the platform's three attempts.
    assert_eq!(m.instance.max_attempts, 3);
}

#[test]
fn generated_values_are_kept_when_given_back() {
    let pkg = PackageFiles::open(&kv_dir()).expect("example");
    let req = request(
        "cluster",
        &[("flavor", "STD2-1-1")],
        &[("kv-debian12", "kv.qcow2")],
    );
    let first = ok(&pkg, &req);
    let again = translate(
        &pkg,
        &req,
        Path::new("/images"),
        Some(first.generated.clone()),
    )
    .expect("again");
    assert_eq!(first.toml, again.toml);
    assert_eq!(first.generated, again.generated);
    let fresh = ok(&pkg, &req);
    assert_ne!(first.generated.instance_uuid, fresh.generated.instance_uuid);
}

#[test]
fn refusals_name_their_cause() {
    let pkg = PackageFiles::open(&kv_dir()).expect("example");
    let image = [("kv-debian12", "kv.qcow2")];
    let cases: Vec<(DeployRequest, &str)> = vec![
        (
            request("nope", &[], &image),
            "no plan \"nope\" (the package has: cluster)",
        ),
        (
            request("cluster", &[("flavor", "x"), ("colour", "red")], &image),
            "--var colour: the plan declares no variable",
        ),
        (
            request("cluster", &[], &image),
            "no value for variable flavor",
        ),
        (
            request("cluster", &[("flavor", "x")], &[]),
            "image \"kv-debian12\": give its disk image file with --map kv-debian12=FILE",
        ),
        (
            request("cluster", &[("flavor", "x"), ("replicas", "many")], &image),
            "variable \"replicas\"",
        ),
    ];
    for (req, words) in cases {
        let e = err(&pkg, &req);
        assert!(e.contains(words), "{words:?} not in:\n{e}");
    }
}

#[test]
fn broken_terraform_is_refused_with_the_resource_named() {
    let base = kv_dir();
    let cases: &[(&str, &str)] = &[
        (
            "resource \"vkcs_compute_instance\" \"vm\" {\n  name = \"has space\"\n  image_id = \"img\"\n}\n",
            "the VM name \"has space\" cannot name an ibkit host",
        ),
        (
            "resource \"vkcs_compute_instance\" \"vm\" {\n  name = \"vm\"\n  image_id = \"img\"\n}\nresource \"ivkcs_agent_exec\" \"x\" {\n  name  = \"g\"\n  hosts = [\"other\"]\n  step {\n    index   = 1\n    type    = \"bash\"\n    content = \"true\"\n  }\n}\n",
            "host \"other\" is not the name of any vkcs_compute_instance",
        ),
        (
            "resource \"vkcs_compute_instance\" \"vm\" {\n  name = \"vm\"\n  image_id = \"img\"\n}\nresource \"ivkcs_agent_exec\" \"x\" {\n  name  = \"g\"\n  hosts = [\"vm\"]\n  step {\n    index   = 1\n    type    = \"perl\"\n    content = \"true\"\n  }\n}\n",
            "perl",
        ),
        (
            "resource \"vkcs_compute_instance\" \"vm\" {\n  name = \"vm\"\n  image_id = upper(local.nope)\n}\n",
            "no local value \"nope\"",
        ),
        ("resource \"x\" {\n", "deploy.tf"),
    ];
    for (tf, words) in cases {
        let (_d, pkg) = with_tf(&base, "cluster", tf);
        let req = request("cluster", &[], &[("img", "img.qcow2")]);
        let e = err(&pkg, &req);
        assert!(e.contains(words), "{words:?} not in:\n{e}");
    }
}

#[test]
fn a_missing_map_key_lists_every_problem_at_once() {
    let (_d, pkg) = with_tf(
        &kv_dir(),
        "cluster",
        "resource \"vkcs_compute_instance\" \"a\" {\n  name = \"a\"\n  image_id = \"one\"\n}\nresource \"vkcs_compute_instance\" \"b\" {\n  name = \"b b\"\n  image_id = \"two\"\n}\n",
    );
    let e = err(&pkg, &request("cluster", &[], &[]));
    assert!(e.contains("--map one=FILE") && e.contains("\"b b\""), "{e}");
}

#[test]
fn reboot_and_sleep_become_ordered_groups() {
    // VK's ivkcs_compute_instance_reboot example: a pause after the VM,
    // the reboot, then the scripts.
    let tf = r#"
resource "vkcs_compute_instance" "compute" {
  name     = "app"
  image_id = "img"
}
resource "time_sleep" "before_reboot" {
  create_duration = "30s"
  depends_on      = [vkcs_compute_instance.compute]
}
resource "ivkcs_compute_instance_reboot" "reboot" {
  instance   = vkcs_compute_instance.compute.id
  depends_on = [time_sleep.before_reboot]
}
resource "ivkcs_agent_exec" "start" {
  hosts = ["app"]
  name  = "start"
  step {
    index   = 1
    type    = "bash"
    content = "uptime"
  }
  depends_on = [ivkcs_compute_instance_reboot.reboot]
}
"#;
    let (_d, pkg) = with_tf(&kv_dir(), "cluster", tf);
    let t = ok(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    let g = |n: &str| {
        t.manifest
            .groups
            .iter()
            .find(|g| g.name == n)
            .unwrap_or_else(|| panic!("no group {n}: {:#?}", t.manifest.groups))
    };
    assert_eq!(g("start").depends_on, ["reboot-reboot"]);
    let reboot = g("reboot-reboot");
    assert_eq!(reboot.hosts, ["app"]);
    assert_eq!(reboot.depends_on, ["sleep-before_reboot"]);
    assert!(reboot.steps[0].content.contains("systemctl reboot"));
    assert!(reboot.steps[1].content.contains("boot_id"));
    assert!(reboot.steps.iter().all(|s| s.options.once));
    // The sleep runs before the reboot, on the rebooted host.
    let sleep = g("sleep-before_reboot");
    assert_eq!(sleep.steps[0].content, "sleep 30");
    assert!(sleep.depends_on.is_empty());
}

#[test]
fn file_and_templatefile_read_the_package_only() {
    let tf = r#"
resource "vkcs_compute_instance" "vm" {
  name     = "vm"
  image_id = "img"
}
resource "ivkcs_agent_exec" "x" {
  name  = "g"
  hosts = ["vm"]
  step {
    index   = 1
    type    = "bash"
    content = templatefile("${path.module}/scripts/init.sh.tpl", { who = "world", ports = [80, 443] })
  }
  step {
    index   = 2
    type    = "bash"
    content = file("scripts/plain.sh")
  }
}
"#;
    let (dir, _) = with_tf(&kv_dir(), "cluster", tf);
    let scripts = dir.path().join("plans/cluster/deployment/scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir");
    std::fs::write(
        scripts.join("init.sh.tpl"),
        "#!/bin/bash\necho hello ${who}\n%{ for p in ports }open ${p}\n%{ endfor }",
    )
    .expect("write");
    std::fs::write(
        scripts.join("plain.sh"),
        "#!/bin/bash\necho ${not_a_template}\n",
    )
    .expect("write");
    let pkg = PackageFiles::open(dir.path()).expect("package");
    let t = ok(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    let steps = &t.manifest.groups[0].steps;
    assert_eq!(
        steps[0].content,
        "#!/bin/bash\necho hello world\nopen 80\nopen 443\n"
    );
    assert_eq!(steps[1].content, "#!/bin/bash\necho ${not_a_template}\n");

    // Outside the package: refused.
    let (_d, pkg) = with_tf(
        &kv_dir(),
        "cluster",
        "resource \"vkcs_compute_instance\" \"vm\" {\n  name     = \"vm\"\n  image_id = file(\"../../../../etc/passwd\")\n}\n",
    );
    let e = err(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    assert!(e.contains("must stay inside the package"), "{e}");
}

/// VK's usage billing: `ivkcs_user_data` `token_file_*`/`token_rotate` →
/// the host's billing token file; the plan's `resource_usages` → the
/// instance's `[billing] params`.
#[test]
fn billing_token_file_and_postpaid_options_are_mapped() {
    let tf = r#"
variable "instance_uuid" {
  type = string
}
resource "ivkcs_user_data" "init" {
  uuid             = var.instance_uuid
  hosts            = ["app", "db"]
  target_os        = "almalinux9"
  token_file_path  = "/opt/agent/xaas-secret-auth-token.key"
  token_file_owner = "app"
  token_file_group = "app-readers"
  token_rotate     = true
}
resource "ivkcs_user_data" "plain" {
  uuid             = var.instance_uuid
  hosts            = ["web"]
  target_os        = "almalinux9"
  token_file_path  = "/var/lib/web/token"
}
resource "vkcs_compute_instance" "app" {
  name      = "app"
  image_id  = "img"
  user_data = ivkcs_user_data.init.user_data[0]
}
resource "vkcs_compute_instance" "db" {
  name      = "db"
  image_id  = "img"
  user_data = ivkcs_user_data.init.user_data[0]
}
resource "vkcs_compute_instance" "web" {
  name      = "web"
  image_id  = "img"
  user_data = ivkcs_user_data.plain.user_data[0]
}
"#;
    let (dir, _) = with_tf(&kv_dir(), "cluster", tf);
    let plan = dir.path().join("plans/cluster/plan.yaml");
    let text = std::fs::read_to_string(&plan).expect("plan.yaml");
    std::fs::write(
        &plan,
        format!("{text}resource_usages:\n  - storage\n  - cpu_hours\n"),
    )
    .expect("write");
    let pkg = PackageFiles::open(dir.path()).expect("package");
    let t = ok(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    let m = &t.manifest;
    let host = |n: &str| m.host(n).unwrap_or_else(|| panic!("no host {n}"));
    let b = host("app")
        .user_data
        .billing_token
        .clone()
        .expect("app's token file");
    assert_eq!(
        (
            b.path.as_str(),
            b.owner.as_str(),
            b.group.as_str(),
            b.rotate
        ),
        (
            "/opt/agent/xaas-secret-auth-token.key",
            "app",
            "app-readers",
            true
        )
    );
    // Every host of the resource gets it.
    assert_eq!(host("db").user_data.billing_token, Some(b));
    // Owner and group are optional (root), token_rotate defaults to false.
    let w = host("web")
        .user_data
        .billing_token
        .clone()
        .expect("web's token file");
    assert_eq!(
        (
            w.path.as_str(),
            w.owner.as_str(),
            w.group.as_str(),
            w.rotate
        ),
        ("/var/lib/web/token", "root", "root", false)
    );
    assert!(
        !t.warnings.iter().any(|w| w.contains("token_file")),
        "{:?}",
        t.warnings
    );
    let billing = m.billing.clone().expect("[billing]");
    assert_eq!(billing.params, ["storage", "cpu_hours"]);
    assert_eq!(m.to_instance_spec().billing, Some(billing));
    // What `ibkit deploy` reads back.
    assert!(t.toml.contains("[billing]"), "{}", t.toml);
    assert!(t.toml.contains("billing_token"), "{}", t.toml);

    // The example's plan has no postpaid options: no billing.
    let (_d, pkg) = with_tf(&kv_dir(), "cluster", tf);
    let t = ok(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    assert_eq!(t.manifest.billing, None);

    // Values ibkit refuses are named with the resource.
    let bad = tf
        .replace("\"/opt/agent/xaas-secret-auth-token.key\"", "\"opt/../t\"")
        .replace("= \"app-readers\"", "= \"App Readers\"");
    let (_d, pkg) = with_tf(&kv_dir(), "cluster", &bad);
    let e = err(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    assert!(
        e.contains("ivkcs_user_data.init: token_file_path: \"opt/../t\" is not absolute"),
        "{e}"
    );
    assert!(
        e.contains("ivkcs_user_data.init: token_file_group: \"App Readers\""),
        "{e}"
    );
    assert_eq!(e.matches("token_file_path:").count(), 1, "once: {e}");
}

#[test]
fn each_instance_of_a_counted_sleep_is_its_own_group() {
    let tf = r#"
resource "vkcs_compute_instance" "vm" {
  name     = "vm"
  image_id = "img"
}
resource "time_sleep" "wait" {
  count           = 2
  create_duration = "${count.index + 1}s"
  depends_on      = [vkcs_compute_instance.vm]
}
resource "ivkcs_agent_exec" "x" {
  name  = "g"
  hosts = ["vm"]
  step {
    index   = 1
    type    = "bash"
    content = "true"
  }
  depends_on = [time_sleep.wait]
}
"#;
    let (_d, pkg) = with_tf(&kv_dir(), "cluster", tf);
    let t = ok(&pkg, &request("cluster", &[], &[("img", "img.qcow2")]));
    let sleeps: Vec<(&str, &str)> = t
        .manifest
        .groups
        .iter()
        .filter(|g| g.name.starts_with("sleep-"))
        .map(|g| (g.name.as_str(), g.steps[0].content.as_str()))
        .collect();
    assert_eq!(
        sleeps,
        [("sleep-wait-0-", "sleep 1"), ("sleep-wait-1-", "sleep 2")]
    );
    let g = t.manifest.groups.iter().find(|g| g.name == "g").expect("g");
    assert_eq!(g.depends_on, ["sleep-wait-0-", "sleep-wait-1-"]);
}
