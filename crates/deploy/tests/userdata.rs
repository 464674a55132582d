//! The user data, read back by independent tools: python3's `email` parser
//! (and PyYAML when present), `bash -n`, shellcheck when present, and the
//! bootstrap scripts run for real against a fake curl, installer and agent.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use ibkit_deploy::manifest::HostDef;
use ibkit_deploy::userdata::{AGENT_PART_FILENAME, VENDOR_MERGE_TYPE};
use ibkit_deploy::{AgentBootstrap, DeployManifest, Secret, UserDataError, render_user_data};
use serde_json::Value;

const KEY: &str = "ibkp_Zm9vYmFyYmF6cXV4-secret_KEY.42";
const INSTANCE_ID: &str = "6f1c2a9e-3b1d-4c55-9a0e-2f4b8e7d1c00";
const PIN: &str = "sha256//YhKJKSzoTt2b5FP18fvpHo7fJYqQCjAa3HWY3tvRMwE=";
const CERT: &str = "AB:CD:0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

const MANIFEST: &str = r##"
[instance]
name = "ud"

[[hosts]]
name = "primary"
image = "app.qcow2"
[hosts.user_data]
agent_memory_max = "768M"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example", "ssh-rsa AAAAB3Nza second"]
packages = ["jq", "postgresql-15"]
per_boot = ["echo boot >> /var/log/boot.log", "#!/usr/bin/python3\nprint('grüße')\n"]
per_instance = ["echo first > /etc/motd\n"]
per_once = ["touch /var/lib/once"]
cloud_config = """
#cloud-config
timezone: Europe/Berlin
runcmd:
  - [sh, -c, "echo vendor"]
"""

[[hosts]]
name = "baked"
image = "app.qcow2"
[hosts.user_data]
install_agent = false

[[hosts]]
name = "plain"
image = "app.qcow2"
"##;

fn manifest() -> DeployManifest {
    let m: DeployManifest = MANIFEST.parse().expect("parses");
    m.validate().expect("valid");
    m
}

fn host<'a>(m: &'a DeployManifest, name: &str) -> &'a HostDef {
    m.host(name).expect("host")
}

fn bootstrap(host: &str) -> AgentBootstrap {
    AgentBootstrap {
        service_url: "https://10.231.0.1:8443/".into(),
        cert_sha256_hex: CERT.into(),
        curl_pin: PIN.into(),
        instance_id: INSTANCE_ID.parse().expect("uuid"),
        host: host.into(),
        pairing_key: Secret::new(KEY),
    }
}

/// Parses the message with python3's `email` and returns
/// `{content_type, boundary, parts: [{content_type, filename, cte, merge_type, payload}]}`.
fn python_parse(message: &[u8]) -> Value {
    const SCRIPT: &str = r#"
import email, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read())
out = {"content_type": m.get_content_type(), "mime_version": m["MIME-Version"],
       "boundary": m.get_boundary(), "defects": [str(d) for d in m.defects], "parts": []}
for p in m.walk():
    if p.is_multipart():
        continue
    out["parts"].append({
        "content_type": p.get_content_type(),
        "filename": p.get_filename(),
        "disposition": p.get_content_disposition(),
        "cte": p["Content-Transfer-Encoding"],
        "merge_type": p["Merge-Type"],
        "payload": p.get_payload(decode=True).decode("utf-8"),
        "defects": [str(d) for d in p.defects],
    })
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 prints JSON")
}

fn part<'a>(parsed: &'a Value, filename: &str) -> &'a Value {
    parsed["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|p| p["filename"] == filename)
        .unwrap_or_else(|| panic!("no part {filename} in {parsed}"))
}

fn payload(p: &Value) -> &str {
    p["payload"].as_str().expect("payload")
}

/// The JSON after the `#cloud-config` line.
fn cloud_config_json(p: &Value) -> Value {
    let text = payload(p);
    let json = text
        .strip_prefix("#cloud-config\n")
        .unwrap_or_else(|| panic!("no #cloud-config line: {text}"));
    serde_json::from_str(json).expect("the cloud-config is JSON")
}

#[test]
fn full_user_data_round_trips_through_python_email() {
    let m = manifest();
    let ud = render_user_data(host(&m, "primary"), &bootstrap("primary")).expect("renders");
    let parsed = python_parse(&ud);
    assert_eq!(parsed["content_type"], "multipart/mixed");
    assert_eq!(parsed["mime_version"], "1.0");
    assert_eq!(parsed["defects"], serde_json::json!([]));
    let boundary = parsed["boundary"].as_str().expect("boundary").to_string();
    let parts = parsed["parts"].as_array().expect("parts");
    let summary: Vec<(&str, &str)> = parts
        .iter()
        .map(|p| {
            (
                p["content_type"].as_str().unwrap_or(""),
                p["filename"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("text/cloud-config", "ibkit-cloud-config.yaml"),
            ("text/x-shellscript", "ibkit-agent-bootstrap.sh"),
            ("text/cloud-config", "vendor-cloud-config.yaml"),
        ]
    );
    for p in parts {
        assert_eq!(p["disposition"], "attachment");
        assert_eq!(p["defects"], serde_json::json!([]));
        assert!(!payload(p).contains(&boundary), "boundary inside a part");
    }

    // Part 1: our cloud-config.
    let cfg = cloud_config_json(&parts[0]);
    assert_eq!(parts[0]["cte"], "8bit"); // the python script has non-ASCII text
    assert_eq!(
        cfg["ssh_authorized_keys"],
        serde_json::json!([
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example",
            "ssh-rsa AAAAB3Nza second"
        ])
    );
    assert_eq!(cfg["packages"], serde_json::json!(["jq", "postgresql-15"]));
    assert_eq!(cfg["package_update"], Value::Bool(true));
    let files = cfg["write_files"].as_array().expect("write_files");
    let got: Vec<(&str, &str, &str, &str)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or(""),
                f["permissions"].as_str().unwrap_or(""),
                f["owner"].as_str().unwrap_or(""),
                f["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "/var/lib/cloud/scripts/per-boot/01-ibkit-per-boot.sh",
                "0755",
                "root:root",
                "#!/bin/bash\necho boot >> /var/log/boot.log"
            ),
            (
                "/var/lib/cloud/scripts/per-boot/02-ibkit-per-boot.sh",
                "0755",
                "root:root",
                "#!/usr/bin/python3\nprint('grüße')\n"
            ),
            (
                "/var/lib/cloud/scripts/per-instance/01-ibkit-per-instance.sh",
                "0755",
                "root:root",
                "#!/bin/bash\necho first > /etc/motd\n"
            ),
            (
                "/var/lib/cloud/scripts/per-once/01-ibkit-per-once.sh",
                "0755",
                "root:root",
                "#!/bin/bash\ntouch /var/lib/once"
            ),
        ]
    );

    // Part 2: the agent installer, with the values it needs.
    let agent = payload(&parts[1]);
    assert!(agent.starts_with("#!/bin/bash\n"));
    assert!(
        agent.contains("service_url='https://10.231.0.1:8443'\n"),
        "{agent}"
    );
    assert!(agent.contains(&format!("curl_pin='{PIN}'")));
    assert!(agent.contains(&format!("instance='{INSTANCE_ID}'")));
    assert!(agent.contains("host='primary'"));
    assert!(agent.contains(&format!("pairing_key='{KEY}'")));
    assert!(agent.contains("memory_max='768M'"));
    assert!(agent.contains("--retry 30 --retry-delay 5"));
    assert!(agent.contains("--retry-all-errors"));
    assert!(agent.contains("--pinnedpubkey \"$curl_pin\""));
    assert!(agent.contains("/v1/agent/install.sh"));

    // Part 3: the vendor's cloud-config, byte for byte, merged by appending.
    let vendor = &parts[2];
    assert_eq!(
        payload(vendor),
        m.hosts[0].user_data.cloud_config.as_deref().expect("set")
    );
    assert_eq!(vendor["merge_type"], VENDOR_MERGE_TYPE);
}

#[test]
fn cloud_config_is_yaml_too() {
    // cloud-init reads the part with PyYAML; JSON must load the same there.
    let have_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_yaml {
        eprintln!("PyYAML not installed: skipped");
        return;
    }
    let m = manifest();
    let ud = render_user_data(host(&m, "primary"), &bootstrap("primary")).expect("renders");
    let parsed = python_parse(&ud);
    let text = payload(part(&parsed, "ibkit-cloud-config.yaml")).to_string();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.argv[1])))",
            &text,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_yaml: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        via_yaml,
        cloud_config_json(part(&parsed, "ibkit-cloud-config.yaml"))
    );
}

#[test]
fn minimal_user_data_has_two_parts() {
    let m = manifest();
    let ud = render_user_data(host(&m, "plain"), &bootstrap("plain")).expect("renders");
    let parsed = python_parse(&ud);
    let parts = parsed["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2);
    assert_eq!(cloud_config_json(&parts[0]), serde_json::json!({}));
    assert_eq!(parts[0]["cte"], "7bit");
    assert!(payload(&parts[1]).contains("memory_max='512M'"));
    // A fresh boundary every time.
    let again = render_user_data(host(&m, "plain"), &bootstrap("plain")).expect("renders");
    assert_ne!(
        python_parse(&again)["boundary"],
        parsed["boundary"],
        "boundaries repeat"
    );
}

fn agent_script(host_name: &str) -> String {
    let m = manifest();
    let ud = render_user_data(host(&m, host_name), &bootstrap(host_name)).expect("renders");
    payload(part(&python_parse(&ud), AGENT_PART_FILENAME)).to_string()
}

#[test]
fn agent_scripts_pass_bash_n_and_shellcheck() {
    let have_shellcheck = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    for host_name in ["primary", "baked"] {
        let script = agent_script(host_name);
        let dir = TempDir::new();
        let file = dir.path().join("agent.sh");
        std::fs::write(&file, &script).expect("write");
        let out = Command::new("bash")
            .arg("-n")
            .arg(&file)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{host_name}: bash -n: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        if have_shellcheck {
            let out = Command::new("shellcheck")
                .args(["-s", "bash", "-S", "warning"])
                .arg(&file)
                .output()
                .expect("shellcheck");
            assert!(
                out.status.success(),
                "{host_name}: shellcheck:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn baked_agent_script_writes_the_unit_it_would_need() {
    let script = agent_script("baked");
    assert!(script.contains("Type=notify"));
    assert!(script.contains("MemoryMax=512M"));
    assert!(!script.contains("@MEMORY_MAX@") && !script.contains("@UNIT@"));
    assert!(script.contains("ibkit-agent.service.d/ibkit-deploy.conf"));
    assert_eq!(
        script.matches("MemoryMax=512M").count(),
        2,
        "unit and drop-in"
    );
    assert!(script.contains("pair --config \"$config\""));
    assert!(script.contains("systemctl enable ibkit-agent.service"));
    assert!(!script.contains("curl "), "a baked agent needs no download");
    // The agent's pin is normalised as the agent reads it.
    assert!(script.contains(
        "cert_sha256='abcd0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab'"
    ));
}

/// Runs the install-mode script with a fake `curl` whose "installer"
/// records its arguments.
#[test]
fn install_script_downloads_with_the_pin_and_runs_the_installer() {
    let dir = TempDir::new();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    write_exe(
        &bin.join("curl"),
        r#"#!/bin/bash
if [ "${1:-}" = "--help" ]; then echo " --retry-all-errors  Retry all errors"; exit 0; fi
echo call >> "$RECORD/curl-calls"
printf '%s\n' "$@" > "$RECORD/curl-args"
[ -n "${FAIL_CURL:-}" ] && exit 7
out=''
while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift 2 ;; *) shift ;; esac; done
cat > "$out" <<'EOF'
printf '%s\n' "$@" > "$RECORD/installer-args"
while [ $# -gt 0 ]; do
  case "$1" in
    --pairing-key-file) cp "$2" "$RECORD/key-at-install"; stat -c %a "$2" > "$RECORD/key-mode"; echo "$2" > "$RECORD/key-path"; shift 2 ;;
    *) shift ;;
  esac
done
EOF
"#,
    );
    let script = agent_script("primary");
    let run = |fail: bool| {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(&script)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("RECORD", dir.path())
            .env("IBKIT_RETRY_PAUSE", "0");
        if fail {
            cmd.env("FAIL_CURL", "1");
        }
        cmd.output().expect("bash")
    };
    let out = run(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("installed, paired and running"), "{stderr}");
    let curl_args = read(&dir.path().join("curl-args"));
    let curl_args: Vec<&str> = curl_args.lines().collect();
    for needed in [
        "-fsS",
        "--retry",
        "30",
        "--retry-delay",
        "5",
        "--retry-all-errors",
        "-k",
        "--pinnedpubkey",
        PIN,
        "https://10.231.0.1:8443/v1/agent/install.sh",
    ] {
        assert!(curl_args.contains(&needed), "{needed} not in {curl_args:?}");
    }
    let installer_args = read(&dir.path().join("installer-args"));
    let key_path = read(&dir.path().join("key-path")).trim().to_string();
    assert_eq!(
        installer_args.lines().collect::<Vec<_>>(),
        [
            "--server-url",
            "https://10.231.0.1:8443",
            "--instance",
            INSTANCE_ID,
            "--host",
            "primary",
            "--pairing-key-file",
            &key_path,
            "--memory-max",
            "768M"
        ]
    );
    // The key is passed on in a private file, never as an argument (every
    // local user can read a process's arguments) and never logged; the
    // file is gone once the bootstrap ends.
    assert!(!installer_args.contains(KEY) && !curl_args.contains(&KEY));
    assert_eq!(read(&dir.path().join("key-at-install")), format!("{KEY}\n"));
    assert_eq!(read(&dir.path().join("key-mode")).trim(), "600");
    assert!(!Path::new(&key_path).exists(), "the key file is removed");
    assert!(!stderr.contains(KEY));

    // An unreachable service: five rounds, then a clear failure.
    std::fs::remove_file(dir.path().join("curl-calls")).expect("rm");
    let out = run(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("giving up"), "{stderr}");
    assert_eq!(read(&dir.path().join("curl-calls")).lines().count(), 5);
}

/// Runs the baked-agent script below IBKIT_ROOT with a fake agent.
#[test]
fn baked_script_configures_and_pairs_the_image_agent() {
    let dir = TempDir::new();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
    write_exe(
        &root.join("usr/local/bin/ibkit-agent"),
        r#"#!/bin/bash
printf '%s\n' "$@" > "$RECORD/agent-args"
cp "$3" "$RECORD/config-at-pair"
"#,
    );
    let script = agent_script("baked");
    let run = || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("IBKIT_ROOT", &root)
            .env("IBKIT_NO_SYSTEMD", "1")
            .env("IBKIT_RETRY_PAUSE", "0")
            .env("RECORD", dir.path())
            .output()
            .expect("bash")
    };
    // State left in the image by its build: removed before pairing.
    let state = root.join("var/lib/ibkit-agent");
    std::fs::create_dir_all(state.join("outbox")).expect("mkdir");
    std::fs::write(state.join("credential"), "stale").expect("write");
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("removing the agent state left in the image"),
        "{stderr}"
    );
    assert!(!state.join("credential").exists());
    assert!(!state.join("outbox").exists());
    assert!(!stderr.contains(KEY));

    let config_path = root.join("etc/ibkit/agent.toml");
    let mode = std::fs::metadata(&config_path)
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = read(&config_path);
    let parsed: toml::Table = toml::from_str(&config).expect("the config is TOML");
    let get = |k: &str| parsed[k].as_str().unwrap_or_default().to_string();
    assert_eq!(get("server_url"), "https://10.231.0.1:8443");
    assert_eq!(
        get("server_cert_sha256"),
        "abcd0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"
    );
    assert_eq!(get("instance"), INSTANCE_ID);
    assert_eq!(get("host"), "baked");
    // The key is in its own 0600 file, which the agent deletes once paired;
    // the configuration only names it.
    assert!(!config.contains(KEY), "{config}");
    assert!(parsed.get("pairing_key").is_none());
    let key_file = root.join("etc/ibkit/pairing-key");
    assert_eq!(get("pairing_key_file"), key_file.display().to_string());
    assert_eq!(read(&key_file), format!("{KEY}\n"));
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(get("state_dir"), state.display().to_string());
    assert_eq!(
        read(&dir.path().join("agent-args"))
            .lines()
            .collect::<Vec<_>>(),
        ["pair", "--config", &config_path.display().to_string()]
    );
    assert_eq!(read(&dir.path().join("config-at-pair")), config);

    // Run again with the same configuration (cloud-init re-run): the
    // agent's state is kept.
    std::fs::write(state.join("credential"), "current").expect("write");
    let out = run();
    assert!(out.status.success());
    assert_eq!(read(&state.join("credential")), "current");

    // No agent in the image: a clear failure.
    std::fs::remove_file(root.join("usr/local/bin/ibkit-agent")).expect("rm");
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no ibkit-agent"));
}

#[test]
fn the_pairing_key_stays_out_of_debug_output() {
    let b = bootstrap("primary");
    let debug = format!("{b:?}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(debug.contains("pairing_key: ***"), "{debug}");
    assert_eq!(format!("{:?}", Secret::new("x")), "***");
    assert_eq!(b.pairing_key.expose(), KEY);
    // Nor in errors about it.
    let mut bad = bootstrap("primary");
    bad.pairing_key = Secret::new("bad key'$(reboot)");
    let e = bad.validate().expect_err("invalid key");
    assert!(!e.to_string().contains("reboot"), "{e}");
    assert!(!format!("{e:?}").contains("reboot"), "{e:?}");
}

#[test]
fn bootstrap_values_are_checked() {
    let m = manifest();
    let h = host(&m, "primary");
    type Change = Box<dyn Fn(&mut AgentBootstrap)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|b| b.service_url = "ftp://x".into()),
            "service_url",
        ),
        (
            Box::new(|b| b.service_url = "https://x/$(id)".into()),
            "service_url",
        ),
        (
            Box::new(|b| b.service_url = "https://x'y".into()),
            "service_url",
        ),
        (
            Box::new(|b| b.cert_sha256_hex = "abc".into()),
            "cert_sha256_hex",
        ),
        (Box::new(|b| b.curl_pin = "sha1//abc".into()), "curl_pin"),
        (Box::new(|b| b.curl_pin = "sha256//a b".into()), "curl_pin"),
        (Box::new(|b| b.pairing_key = Secret::new("")), "pairing_key"),
    ];
    for (change, field) in cases {
        let mut b = bootstrap("primary");
        change(&mut b);
        match render_user_data(h, &b) {
            Err(UserDataError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // Empty pins: the service has a CA-signed certificate.
    let mut b = bootstrap("primary");
    b.curl_pin.clear();
    b.cert_sha256_hex.clear();
    let ud = render_user_data(h, &b).expect("renders");
    let script = payload(part(&python_parse(&ud), AGENT_PART_FILENAME)).to_string();
    assert!(script.contains("curl_pin=''"));
    // A bootstrap for another host is refused.
    assert!(matches!(
        render_user_data(h, &bootstrap("baked")),
        Err(UserDataError::HostMismatch { .. })
    ));
}

// --- helpers ---

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ibkit-deploy-ud-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
