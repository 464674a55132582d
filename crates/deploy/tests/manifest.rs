//! The deployment manifest: the example, and broken manifests whose errors
//! must name where the problem is.

use std::path::{Path, PathBuf};

use ibkit_deploy::manifest::ManifestError;
use ibkit_deploy::{DeployManifest, StepResultView, render_outputs};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deploy/two-host.toml")
}

const INSTANCE: &str = "[instance]\nname = \"t\"\n";
const HOST_A: &str = "[[hosts]]\nname = \"a\"\nimage = \"a.qcow2\"\n";
const HOST_B: &str = "[[hosts]]\nname = \"b\"\nimage = \"b.qcow2\"\n";
const GROUP_G: &str = r#"
[[groups]]
name = "g"
hosts = ["a"]
[[groups.steps]]
index = 1
content = "echo '{}' > /tmp/r.json"
options = { structured_result_file = "/tmp/r.json" }
[[groups.steps]]
index = 2
content = "echo two"
"#;

fn parse(text: &str) -> DeployManifest {
    match text.parse::<DeployManifest>() {
        Ok(m) => m,
        Err(e) => panic!("{text}\n--- does not parse: {e}"),
    }
}

#[test]
fn the_example_loads_and_validates() {
    let path = example_path();
    let m = DeployManifest::load_validated(&path).expect("the example is valid");
    assert_eq!(m.instance.name, "two-host-demo");
    let names: Vec<&str> = m.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["primary", "replica"]);
    assert_eq!(m.hosts[0].flavor.vcpus, 1);
    assert_eq!(m.hosts[1].flavor.memory_mib, 1024);
    let dir = path.parent().expect("dir");
    assert_eq!(m.image_path(&m.hosts[0]), dir.join("debian12.qcow2"));
    assert_eq!(m.base_dir(), dir);

    // The instance spec the service gets is valid on its own, with the
    // cross-host reference.
    let spec = m.to_instance_spec();
    spec.validate().expect("spec valid");
    assert_eq!(spec.hosts.len(), 2);
    let order: Vec<&str> = spec.group_order().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(order, ["init", "join"]);
    let join = &spec.groups[1].steps[0];
    assert!(
        join.options.environment_variables[0]
            .contains("{{ibkit.results.primary.init.1.structured.token}}")
    );
    // A health check on each host.
    for h in ["primary", "replica"] {
        let own = spec
            .health_checks
            .iter()
            .filter(|c| !c.hosts.is_empty() && c.applies_to(h))
            .count();
        assert!(own >= 1, "no own health check for {h}");
    }

    // Its outputs render from results like the service's.
    let values = render_outputs(
        &m.outputs,
        &|host, group, index| match (host, group, index) {
            ("primary", "init", 1) => Some(StepResultView {
                raw: "primary initialised at 10.231.0.11\n".into(),
                structured: Some(
                    serde_json::json!({"token":"t0k3n","address":"10.231.0.11","port":7000}),
                ),
            }),
            ("replica", "join", 1) => Some(StepResultView {
                raw: "{\"joined\": \"replica\", \"joins\": 1}\n".into(),
                structured: Some(serde_json::json!({"joined": "replica", "joins": 1})),
            }),
            _ => None,
        },
    );
    let shown: Vec<(&str, Option<&str>, bool)> = values
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_deref(), v.sensitive))
        .collect();
    assert_eq!(
        shown,
        [
            ("join_url", Some("http://10.231.0.11:7000/join"), false),
            ("join_token", Some("t0k3n"), true),
            ("replica_joined", Some("replica (join number 1)"), false),
        ]
    );
    let listing = ibkit_deploy::format_outputs(&values, false);
    assert!(!listing.contains("t0k3n"), "{listing}");

    // Every host has a config hash, different for different hosts.
    let hp = m.host_config_hash("primary").expect("primary");
    let hr = m.host_config_hash("replica").expect("replica");
    assert_ne!(hp, hr);
}

#[test]
fn loading_a_missing_file_names_it() {
    let e = DeployManifest::load(Path::new("/nonexistent/deploy.toml")).expect_err("missing");
    assert!(matches!(e, ManifestError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/deploy.toml"), "{e}");
}

#[test]
fn a_relative_manifest_path_resolves_images_next_to_it() {
    let dir = std::env::temp_dir().join(format!("ibkit-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let file = dir.join("sub/deploy.toml");
    std::fs::write(
        &file,
        format!("{INSTANCE}{HOST_A}[[hosts]]\nname = \"b\"\nimage = \"/abs/b.qcow2\"\n"),
    )
    .expect("write");
    let m = DeployManifest::load_validated(&file).expect("valid");
    assert_eq!(m.image_path(&m.hosts[0]), dir.join("sub/a.qcow2"));
    assert_eq!(m.image_path(&m.hosts[1]), Path::new("/abs/b.qcow2"));
    std::fs::write(&file, format!("{INSTANCE}{HOST_A}{HOST_A}")).expect("write");
    let e = DeployManifest::load_validated(&file).expect_err("duplicate host");
    let text = e.to_string();
    assert!(text.contains("sub/deploy.toml"), "{text}");
    assert!(
        text.contains("hosts[1].name: duplicate host \"a\""),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each broken manifest and the path its (first) error must name.
#[test]
fn broken_manifests_name_the_path() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{INSTANCE}{HOST_A}{HOST_B}flavor = {{ vcpus = 0 }}\n"),
            "hosts[1].flavor.vcpus",
            "must be 1..=64",
        ),
        (
            format!("{INSTANCE}{HOST_A}flavor = {{ memory_mib = 100 }}\n"),
            "hosts[0].flavor.memory_mib",
            "must be 256..=262144",
        ),
        (
            format!("{INSTANCE}{HOST_A}flavor = {{ disk_gib = 0 }}\n"),
            "hosts[0].flavor.disk_gib",
            "must be 1..=2048",
        ),
        (
            format!("{INSTANCE}{HOST_A}{HOST_A}"),
            "hosts[1].name",
            "duplicate host",
        ),
        (
            format!("{INSTANCE}[[hosts]]\nname = \"a b\"\nimage = \"x\"\n"),
            "hosts[0].name",
            "not a valid host name",
        ),
        (
            format!("{INSTANCE}[[hosts]]\nname = \"self\"\nimage = \"x\"\n"),
            "hosts[0].name",
            "not \"self\"",
        ),
        (
            format!("{INSTANCE}[[hosts]]\nname = \"a\"\nimage = \" \"\n"),
            "hosts[0].image",
            "must not be empty",
        ),
        (
            format!("hosts = []\n{INSTANCE}"),
            "hosts",
            "at least one host",
        ),
        (
            format!("[instance]\nname = \"my app\"\n{HOST_A}"),
            "instance.name",
            "not a valid instance name",
        ),
        (
            format!("[instance]\nname = \"t\"\nmax_attempts = 0\n{HOST_A}"),
            "instance.max_attempts",
            "must be 1..=20",
        ),
        (
            format!("[instance]\nname = \"t\"\nattempt_timeout = \"0s\"\n{HOST_A}"),
            "instance.attempt_timeout",
            "longer than 0s",
        ),
        (
            format!(
                "[instance]\nname = \"t\"\nattempt_timeout = \"5m\"\nhealth_timeout = \"10m\"\n{HOST_A}"
            ),
            "instance.health_timeout",
            "longer than attempt_timeout",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.nohost.g.1.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "unknown host \"nohost\"",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.a.nogroup.1.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "unknown group \"nogroup\"",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.a.g.9.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "has no step 9",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.a.g.2.structured.x}}}}\"\n"
            ),
            "outputs[0].value",
            "has no structured_result_file",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{HOST_B}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.b.g.1.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "does not run on host \"b\"",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.self.g.1.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "\"self\"",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}{GROUP_G}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.a.g.x.raw}}}}\"\n"
            ),
            "outputs[0].value",
            "malformed reference",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[outputs]]\nname = \"o\"\nvalue = \"1\"\n[[outputs]]\nname = \"o\"\nvalue = \"2\"\n"
            ),
            "outputs[1].name",
            "duplicate output",
        ),
        (
            format!("{INSTANCE}{HOST_A}[[outputs]]\nname = \"o.x\"\nvalue = \"1\"\n"),
            "outputs[0].name",
            "not a valid output name",
        ),
        (
            format!("{INSTANCE}{HOST_A}[[outputs]]\nname = \"o\"\nvalue = \"\"\n"),
            "outputs[0].value",
            "must not be empty",
        ),
        (
            format!("{INSTANCE}{HOST_A}[[groups]]\nname = \"g\"\nhosts = [\"zz\"]\nsteps = []\n"),
            "groups[0].hosts",
            "unknown host \"zz\"",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[groups]]\nname = \"g\"\nhosts = [\"a\"]\n[[groups.steps]]\nindex = 1\ncontent = \"x\"\noptions = {{ attempts = 0 }}\n"
            ),
            "groups[0].steps[0].options",
            "attempts",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[groups]]\nname = \"g\"\nhosts = [\"a\"]\ndepends_on = [\"g\"]\nsteps = []\n"
            ),
            "groups",
            "cycle",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[groups]]\nname = \"g\"\nhosts = [\"a\"]\n[[groups.steps]]\nindex = 1\ncontent = \"{{{{ibkit.results.a.h.1.raw}}}}\"\n"
            ),
            "groups[0].steps[0].content",
            "unknown group",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[health_checks]]\nname = \"h\"\nhosts = [\"zz\"]\nkind = \"port_health\"\nport = 22\n"
            ),
            "health_checks[0].hosts",
            "unknown host",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[health_checks]]\nname = \"h\"\nkind = \"port_health\"\nport = 0\n"
            ),
            "health_checks[0]",
            "port",
        ),
        (
            format!("{INSTANCE}{HOST_A}[recovery]\nbackoff = \"5m\"\nmax_backoff = \"1m\"\n"),
            "recovery.max_backoff",
            "shorter than backoff",
        ),
        (
            format!("{INSTANCE}{HOST_A}[recovery]\nmax_per_window = 0\n"),
            "recovery.max_per_window",
            "at least 1",
        ),
        (
            format!("{INSTANCE}{HOST_A}[recovery]\nwindow = 0\n"),
            "recovery.window",
            "longer than 0s",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[hosts.user_data]\nssh_authorized_keys = [\"ssh-ed25519\"]\n"
            ),
            "hosts[0].user_data.ssh_authorized_keys[0]",
            "TYPE BASE64-KEY",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[hosts.user_data]\nssh_authorized_keys = [\"ssh-ed25519 AAAA\\nssh-rsa BBBB\"]\n"
            ),
            "hosts[0].user_data.ssh_authorized_keys[0]",
            "single line",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\npackages = [\"jq curl\"]\n"),
            "hosts[0].user_data.packages[0]",
            "not a package name",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\nper_boot = [\"  \"]\n"),
            "hosts[0].user_data.per_boot[0]",
            "must not be empty",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\nper_once = [\"true\", \"\"]\n"),
            "hosts[0].user_data.per_once[1]",
            "must not be empty",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\nagent_memory_max = \"lots\"\n"),
            "hosts[0].user_data.agent_memory_max",
            "MemoryMax",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\ncloud_config = \"\"\n"),
            "hosts[0].user_data.cloud_config",
            "must not be empty",
        ),
    ];
    for (text, path, message) in &cases {
        let m = parse(text);
        let errors = match m.validate() {
            Ok(()) => panic!("{text}\n--- was accepted, expected {path}"),
            Err(e) => e,
        };
        let hit = errors
            .0
            .iter()
            .find(|e| e.path == *path)
            .unwrap_or_else(|| panic!("{text}\n--- expected {path}, got:\n{errors}"));
        assert!(
            hit.message.contains(message),
            "{text}\n--- {path}: expected {message:?} in {:?}",
            hit.message
        );
        // The rendered error starts with the path.
        assert!(hit.to_string().starts_with(&format!("{path}: ")));
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        "[instance]\nname = \"t\"\nmax_attempts = 99\n{HOST_A}flavor = {{ vcpus = 100, memory_mib = 1 }}\n{HOST_A}[[outputs]]\nname = \"o\"\nvalue = \"{{{{ibkit.results.zz.g.1.raw}}}}\"\n[recovery]\nmax_per_window = 0\n"
    );
    let errors = parse(&text).validate().expect_err("invalid");
    assert_eq!(
        errors.paths(),
        [
            "instance.max_attempts",
            "hosts[0].flavor.vcpus",
            "hosts[0].flavor.memory_mib",
            "hosts[1].name",
            "outputs[0].value",
            "recovery.max_per_window",
        ],
        "{errors}"
    );
    // One line per problem.
    assert_eq!(errors.to_string().lines().count(), 6, "{errors}");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_when_parsing() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{INSTANCE}{HOST_A}bogus = 1\n"), "bogus"),
        (format!("{INSTANCE}colour = \"red\"\n{HOST_A}"), "colour"),
        (
            format!("{INSTANCE}{HOST_A}flavor = {{ cpus = 2 }}\n"),
            "cpus",
        ),
        (
            format!("{INSTANCE}{HOST_A}[hosts.user_data]\ninstall_agnet = false\n"),
            "install_agnet",
        ),
        (
            format!("{INSTANCE}{HOST_A}[recovery]\nenable = true\n"),
            "enable",
        ),
        (
            format!("{INSTANCE}{HOST_A}[recovery]\nbackoff = \"5 fortnights\"\n"),
            "5 fortnights",
        ),
        (
            format!("{INSTANCE}{HOST_A}[[outputs]]\nname = \"o\"\nvalue = \"1\"\nsecret = true\n"),
            "secret",
        ),
        (
            format!(
                "{INSTANCE}{HOST_A}[[groups]]\nname = \"g\"\nhosts = [\"a\"]\n[[groups.steps]]\nindex = 1\ncontent = \"x\"\ntimeout = \"5s\"\n"
            ),
            "timeout",
        ),
        (
            format!("{INSTANCE}{HOST_A}[[health_checks]]\nname = \"h\"\nkind = \"ping_health\"\n"),
            "ping_health",
        ),
        (HOST_A.to_string(), "instance"),
        (format!("{INSTANCE}[[hosts]]\nname = \"a\"\n"), "image"),
    ];
    for (text, needle) in &cases {
        let e = match text.parse::<DeployManifest>() {
            Ok(_) => panic!("{text}\n--- parsed, expected an error about {needle}"),
            Err(e) => e,
        };
        assert!(matches!(e, ManifestError::Parse { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(needle),
            "{text}\n--- {needle:?} not in:\n{msg}"
        );
    }
}

#[test]
fn durations_accept_strings_and_seconds() {
    let m = parse(&format!(
        "[instance]\nname = \"t\"\nattempt_timeout = 600\nhealth_timeout = \"1m30s\"\n{HOST_A}[recovery]\nbackoff = \"500ms\"\n"
    ));
    m.validate().expect("valid");
    assert_eq!(m.instance.attempt_timeout.as_millis(), 600_000);
    assert_eq!(m.instance.health_timeout.as_millis(), 90_000);
    assert_eq!(m.recovery.backoff.as_millis(), 500);
}
