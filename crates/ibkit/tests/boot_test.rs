//! `ibkit boot-test` on real images booted by a real QEMU (TCG here): the
//! example Debian 12 image must pass on its own, and each broken variant
//! built by `scripts/build-boot-images.sh` gets its exact verdict.
//!
//! Each test boots two VMs and restarts one twice: minutes under TCG. The
//! nextest config (`.config/nextest.toml`) runs these one at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// NAME -> qcow2 path, from the environment set by scripts/test.sh, else
/// from the project's script (which builds or finds them by content).
fn images() -> BTreeMap<String, PathBuf> {
    let listing = match std::env::var("IBKIT_BOOT_IMAGES") {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            let out = Command::new(workspace().join("scripts/build-boot-images.sh"))
                .output()
                .expect("build-boot-images.sh runs");
            assert!(
                out.status.success(),
                "build-boot-images.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, p)| (n.trim().to_string(), PathBuf::from(p.trim())))
        .collect()
}

fn image(name: &str) -> PathBuf {
    let all = images();
    all.get(name)
        .unwrap_or_else(|| panic!("no image {name:?} in {all:?}"))
        .clone()
}

struct Run {
    code: i32,
    report: Value,
    stdout: String,
    stderr: String,
    /// The manifest declared postpaid options (APP-BILLING is judged).
    bills: bool,
}

/// The example's manifest: the app without billing (APP-BILLING unknown).
const APP: &str = "examples/debian12/ibkit.toml";
/// The example's manifest with its postpaid options and the setup that
/// points the image's billing client at the emulator.
const BILLED_APP: &str = "examples/debian12/ibkit-billing.toml";

fn boot_test(name: &str, format: &str, dir: &Path) -> Run {
    boot_test_with(name, &workspace().join(APP), format, dir)
}

fn boot_test_with(name: &str, manifest: &Path, format: &str, dir: &Path) -> Run {
    let json = dir.join("report.json");
    let bills = std::fs::read_to_string(manifest)
        .expect("manifest")
        .contains("[billing]");
    let out = Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .arg("boot-test")
        .arg(image(name))
        .arg("--manifest")
        .arg(manifest)
        .arg("--format")
        .arg(format)
        .arg("--report-json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .expect("ibkit runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
    let report: Value = serde_json::from_str(&text).expect("JSON report");
    // Echo progress and timings: they are the benchmark's raw figures too.
    eprintln!("--- {name} ---\n{stderr}");
    Run {
        code: out.status.code().unwrap_or(-1),
        report,
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
        bills,
    }
}

const RULES: &[&str] = &[
    "APP-KVM",
    "APP-NET",
    "APP-NOPASS",
    "APP-PORTS",
    "APP-FLAVOR",
    "APP-AUTOSTART-SOFT",
    "APP-AUTOSTART-HARD",
    "IMG-CLOUDINIT",
    "OS-SSHD",
    "OS-CONSOLE-LOG",
    "OS-NO-FIXED-MAC",
    "KERNEL-VIRTIO",
    "APP-BILLING",
];

fn statuses(r: &Run) -> BTreeMap<String, String> {
    r.report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap_or("").to_string(),
                x["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every rule passes except `exceptions`, which have exactly these
/// statuses, and APP-BILLING, which is `unknown` unless the manifest bills.
fn expect(r: &Run, exceptions: &[(&str, &str)]) {
    let got = statuses(r);
    let mut want = BTreeMap::new();
    for id in RULES {
        want.insert(id.to_string(), "pass".to_string());
    }
    if !r.bills {
        want.insert("APP-BILLING".to_string(), "unknown".to_string());
    }
    for (id, s) in exceptions {
        want.insert(id.to_string(), s.to_string());
    }
    assert_eq!(
        got,
        want,
        "verdicts differ; report:\n{}\nstderr:\n{}",
        serde_json::to_string_pretty(&r.report["results"]).unwrap_or_default(),
        r.stderr
    );
}

/// Rule `id`'s `list` items (`evidence`, `findings`), their `field` text.
fn rule_texts(r: &Run, id: &str, list: &str, field: &str) -> Vec<String> {
    r.report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["id"] == id)
        .flat_map(|x| x[list].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e[field].as_str().map(str::to_string))
        .collect()
}

fn evidence(r: &Run, id: &str) -> Vec<String> {
    rule_texts(r, id, "evidence", "detail")
}

fn finding_messages(r: &Run, id: &str) -> Vec<String> {
    rule_texts(r, id, "findings", "message")
}

/// No QEMU or virtiofsd of this run is left: their command lines name the work directory.
fn no_vm_left(r: &Run, dir: &Path) {
    for vm in r.report["boot"]["vms"].as_array().into_iter().flatten() {
        let cmd = vm["command_line"].as_array().cloned().unwrap_or_default();
        assert!(!cmd.is_empty());
    }
    let ps = Command::new("pgrep")
        .arg("-f")
        .arg(dir.join("work").display().to_string())
        .output()
        .expect("pgrep runs");
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "QEMU or virtiofsd outlived boot-test: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn clean_image_passes_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = boot_test_with("clean", &workspace().join(BILLED_APP), "junit", dir.path());
    expect(&r, &[]);
    assert_eq!(r.code, 0, "exit code; stderr:\n{}", r.stderr);
    // JUnit on stdout, one test case per rule.
    assert!(r.stdout.contains("<testsuites"), "{}", r.stdout);
    assert_eq!(r.stdout.matches("<testcase").count(), RULES.len());
    // The boot section says which accelerator ran and times every step.
    let boot = &r.report["boot"];
    assert!(matches!(boot["accel"].as_str(), Some("kvm" | "tcg")));
    assert!(boot["steps"].as_array().is_some_and(|s| s.len() >= 8));
    assert_eq!(boot["vms"].as_array().map(Vec::len), Some(2));
    // Evidence is specific: the flavor VM grew its root and used the config drive.
    let mut flavor = evidence(&r, "APP-FLAVOR");
    flavor.extend(evidence(&r, "APP-NET"));
    assert!(flavor.iter().any(|d| d.contains("grew")), "{flavor:?}");
    assert!(
        flavor.iter().any(|d| d.contains("config drive")),
        "{flavor:?}"
    );
    // The guests' network is restricted: the billing emulator is the one
    // way out (socat per connection behind https://10.0.2.100).
    assert!(
        r.stderr
            .contains("guests' network: restricted (only the billing emulator"),
        "{}",
        r.stderr
    );
    // APP-BILLING: the image's client pushed both ways, through a rotation
    // that expired the first key.
    let billing = evidence(&r, "APP-BILLING");
    assert!(
        billing
            .iter()
            .any(|d| d.contains("(simple and secure), none refused")),
        "{billing:?}"
    );
    assert!(
        billing
            .iter()
            .any(|d| d.contains("later pushes used the new keys")),
        "{billing:?}"
    );
    no_vm_left(&r, dir.path());
}

#[test]
fn app_not_enabled_fails_only_autostart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = boot_test("noautostart", "json", dir.path());
    expect(
        &r,
        &[
            ("APP-AUTOSTART-SOFT", "fail"),
            ("APP-AUTOSTART-HARD", "fail"),
        ],
    );
    assert_eq!(r.code, 1);
    let soft = finding_messages(&r, "APP-AUTOSTART-SOFT");
    assert!(
        soft.iter()
            .any(|m| m.contains("ibkit-example.service: inactive and disabled")),
        "{soft:?}"
    );
    no_vm_left(&r, dir.path());
}

#[test]
fn console_not_on_serial_fails_console_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = boot_test("console-tty0", "json", dir.path());
    expect(&r, &[("OS-CONSOLE-LOG", "fail")]);
    assert_eq!(r.code, 1);
    no_vm_left(&r, dir.path());
}

/// Also a broken billing client: the app pushes an option its plan does
/// not have (one VM run proves both, sparing a boot).
#[test]
fn extra_port_fails_app_ports_and_a_wrong_option_fails_billing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let billed = std::fs::read_to_string(workspace().join(BILLED_APP)).expect("manifest");
    let broken = billed
        .replace("PARAMS=requests=1 cpu_hours=0.5", "PARAMS=requests=1 cpu=1")
        .replace(
            "deployment_guide = \"docs/deployment.md\"",
            &format!(
                "deployment_guide = {:?}",
                workspace().join("examples/debian12/docs/deployment.md")
            ),
        );
    assert_ne!(broken, billed);
    let manifest = dir.path().join("ibkit.toml");
    std::fs::write(&manifest, broken).expect("write");
    let r = boot_test_with("extra-port", &manifest, "json", dir.path());
    expect(&r, &[("APP-PORTS", "fail"), ("APP-BILLING", "fail")]);
    assert_eq!(r.code, 1);
    let m = finding_messages(&r, "APP-PORTS");
    assert!(m.iter().any(|m| m.contains("9090/tcp")), "{m:?}");
    let m = finding_messages(&r, "APP-BILLING");
    assert!(
        m.iter()
            .any(|m| m.contains("refused with HTTP 400") && m.contains("unknown param \"cpu\"")),
        "{m:?}"
    );
    no_vm_left(&r, dir.path());
}

#[test]
fn pinned_mac_fails_network_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = boot_test("fixed-mac", "json", dir.path());
    // No network with a new MAC: nothing inside the guest can be proved.
    let unknown = [
        "APP-KVM",
        "APP-NOPASS",
        "APP-PORTS",
        "APP-FLAVOR",
        "APP-AUTOSTART-SOFT",
        "APP-AUTOSTART-HARD",
        "IMG-CLOUDINIT",
        "OS-SSHD",
        "KERNEL-VIRTIO",
    ];
    let mut ex: Vec<(&str, &str)> = unknown.iter().map(|id| (*id, "unknown")).collect();
    ex.push(("OS-NO-FIXED-MAC", "fail"));
    ex.push(("APP-NET", "fail"));
    expect(&r, &ex);
    assert_eq!(r.code, 1);
    let m = finding_messages(&r, "OS-NO-FIXED-MAC");
    assert!(
        m.iter().any(|m| m.contains("70-persistent-net.rules")),
        "offline evidence attached: {m:?}"
    );
    no_vm_left(&r, dir.path());
}

#[test]
fn root_password_fails_nopass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = boot_test("root-password", "json", dir.path());
    expect(&r, &[("APP-NOPASS", "fail")]);
    assert_eq!(r.code, 1);
    let m = finding_messages(&r, "APP-NOPASS");
    assert!(
        m.iter().any(|m| m.contains("root") && m.contains("t**r")),
        "{m:?}"
    );
    // The password itself never appears in the report.
    assert!(
        !serde_json::to_string(&r.report)
            .unwrap_or_default()
            .contains("toor")
    );
    no_vm_left(&r, dir.path());
}

#[test]
fn broken_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("garbage.qcow2");
    std::fs::write(&bad, b"QFI\xfbthis is not an image").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .args(["boot-test", "--accel", "tcg"])
        .arg(&bad)
        .output()
        .expect("ibkit runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the image"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .args(["boot-test", "/nonexistent.qcow2"])
        .output()
        .expect("ibkit runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a file"));
}

/// Start a boot test, wait until both VMs run, then stop ibkit with
/// `signal`; no QEMU or virtiofsd of the run may survive.
fn interrupted(signal: &str) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .arg("boot-test")
        .arg(image("clean"))
        .args(["--accel", "tcg", "--work-dir"])
        .arg(&work)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ibkit starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let mut waiting = 0;
    while waiting < 2 {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("waiting for SSH") {
            waiting += 1;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(waiting, 2, "both VMs should be booting:\n{seen}");
    let running = |w: &Path| {
        let out = Command::new("pgrep")
            .arg("-f")
            .arg(w.display().to_string())
            .output()
            .expect("pgrep runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(!running(&work).is_empty(), "QEMU should be running");
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    for l in lines.map_while(Result::ok) {
        seen.push_str(&l);
        seen.push('\n');
    }
    let code = child.wait().expect("ibkit exits").code();
    // PR_SET_PDEATHSIG acts at once, but give the kernel a moment to reap.
    let mut left = running(&work);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = running(&work);
    }
    assert!(
        left.is_empty(),
        "processes outlived ibkit ({signal}): {left}\n{seen}"
    );
    (code, seen)
}

#[test]
fn ctrl_c_stops_every_vm() {
    let (code, seen) = interrupted("INT");
    assert_eq!(code, Some(130), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
}

#[test]
fn sigkill_of_ibkit_takes_the_vms_with_it() {
    let (code, _) = interrupted("KILL");
    assert_eq!(code, None, "killed by a signal");
}
