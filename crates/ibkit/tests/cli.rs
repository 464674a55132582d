//! The `ibkit` binary end to end: exit codes, formats, manifests, waivers,
//! profiles, and the verdict on the real Debian 12 image built by
//! `scripts/build-debian-image.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;
use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image};
use serde_json::Value;

fn ibkit() -> Command {
    Command::new(cargo_bin("ibkit"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = ibkit().args(args).output().expect("ibkit runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace")
}

/// The real Debian 12 image (qcow2, zlib qcow2, raw): from the environment
/// set by scripts/test.sh, else built (or fetched from its content cache)
/// by the project's script.
fn debian_images() -> [PathBuf; 3] {
    ibkit_test_utils::debian_images().expect("the Debian 12 test image")
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr: {}", r.stdout, r.stderr))
}

fn statuses(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_owned(),
                r["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

/// What we expect of our own Debian 12 cloud image without a manifest:
/// every static rule passes; the app rules and billing cannot be verified.
const DEBIAN_EXPECTED: &[(&str, &str)] = &[
    ("APP-KVM", "pass"),
    ("APP-NET", "pass"),
    ("APP-NOPASS", "pass"),
    ("APP-PORTS", "unknown"),
    ("APP-FLAVOR", "pass"),
    ("APP-AUTOSTART-SOFT", "unknown"),
    ("APP-AUTOSTART-HARD", "unknown"),
    ("APP-BILLING", "unknown"),
    ("APP-DOCS", "unknown"),
    ("IMG-CLOUDINIT", "pass"),
    ("IMG-AGENT-DEPS", "pass"),
    ("IMG-NO-SECRETS", "pass"),
    ("IMG-NO-HISTORY", "pass"),
    ("IMG-NO-DEBUGGERS", "pass"),
    ("OS-SSHD", "pass"),
    ("OS-FIREWALL-OFF", "pass"),
    ("OS-CONSOLE-LOG", "pass"),
    ("OS-NO-FIXED-MAC", "pass"),
    ("KERNEL-VIRTIO", "pass"),
];

#[test]
fn real_debian_image_verdict_in_every_container() {
    let images = debian_images();
    let mut first: Option<Vec<(String, String)>> = None;
    for img in &images {
        let r = run(&["check", img.to_str().expect("utf8"), "--format", "json"]);
        assert_eq!(r.code, 0, "{}: stderr {}", img.display(), r.stderr);
        let v = json(&r);
        let got = statuses(&v);
        let expected: Vec<(String, String)> = DEBIAN_EXPECTED
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, expected, "{}", img.display());
        assert_eq!(
            v["complete"],
            Value::Bool(true),
            "{}: notes {}",
            img.display(),
            v["notes"]
        );
        assert_eq!(v["image"]["os"], "Debian GNU/Linux 12 (bookworm)");
        // Evidence names real places: the kernel's initramfs, the ssh unit link.
        let virtio = v["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["id"] == "KERNEL-VIRTIO")
            .expect("virtio");
        assert!(
            virtio["evidence"].to_string().contains("/boot/initrd.img-"),
            "{virtio}"
        );
        let mounts: Vec<&str> = v["image"]["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["point"].as_str().expect("point"))
            .collect();
        assert_eq!(mounts, ["/", "/boot/efi"]);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "containers disagree"),
        }
    }
}

#[test]
fn real_debian_image_other_formats() {
    let [qcow2, ..] = debian_images();
    let q = qcow2.to_str().expect("utf8");
    let sarif = run(&["check", q, "--format", "sarif"]);
    assert_eq!(sarif.code, 0, "{}", sarif.stderr);
    let s = json(&sarif);
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(
        s["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .expect("rules")
            .len(),
        19
    );
    let junit = run(&["check", q, "--format", "junit"]);
    assert_eq!(junit.code, 0);
    assert_eq!(
        junit.stdout.matches("<testcase ").count(),
        19,
        "{}",
        junit.stdout
    );
    let text = run(&["check", q, "--color", "never"]);
    assert!(text.stdout.contains("Result: PASS"), "{}", text.stdout);
    assert!(!text.stdout.contains('\u{1b}'));
}

fn tree_with_history() -> Tree {
    let mut t = Tree::new();
    t.file("etc/os-release", "ID=debian\nPRETTY_NAME=\"Fixture\"\n")
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\napp:x:999:999::/srv/app:/bin/sh\n",
        )
        .file("etc/shadow", "root:*:1::::::\napp:!:1::::::\n")
        .file(
            "srv/app/.bash_history",
            "curl -u admin:s3cret https://internal/\n",
        );
    t
}

fn history_image() -> PathBuf {
    let t = tree_with_history();
    build_image(
        &Layout::Gpt(vec![GptPart::new(
            "8300",
            "root",
            Volume::new(FsType::Ext4, 16).with_tree(&t),
        )]),
        Container::Qcow2,
    )
    .expect("build")
}

#[test]
fn a_failing_rule_exits_1_and_a_waiver_accepts_it() {
    let img = history_image();
    let p = img.to_str().expect("utf8");
    let r = run(&["check", p, "--rule", "IMG-NO-HISTORY", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(
        statuses(&v),
        vec![("IMG-NO-HISTORY".to_string(), "fail".to_string())]
    );
    assert_eq!(
        v["results"][0]["findings"][0]["evidence"]["path"],
        "/srv/app/.bash_history"
    );
    assert!(!r.stdout.contains("s3cret"));

    let d = tempfile::tempdir().expect("tmp");
    let w = d.path().join("waivers.toml");
    std::fs::write(&w, "[[waiver]]\nrule = \"IMG-NO-HISTORY\"\npath = \"/srv/*/.bash_history\"\nreason = \"test image\"\n").expect("write");
    let r = run(&[
        "check",
        p,
        "--rule",
        "IMG-NO-HISTORY",
        "--format",
        "json",
        "--waivers",
        w.to_str().expect("utf8"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(v["results"][0]["status"], "waived");
    assert_eq!(v["results"][0]["findings"][0]["waived"], "test image");
}

#[test]
fn a_profile_can_turn_a_failure_into_a_warning_or_off() {
    let img = history_image();
    let p = img.to_str().expect("utf8");
    let d = tempfile::tempdir().expect("tmp");
    let prof = d.path().join("p.toml");
    std::fs::write(&prof, "name = \"lenient\"\n[rules]\n\"IMG-NO-HISTORY\" = \"warning\"\n\"APP-BILLING\" = \"off\"\n").expect("write");
    let r = run(&[
        "check",
        p,
        "--profile",
        prof.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    let v = json(&r);
    let st = statuses(&v);
    assert!(
        st.contains(&("IMG-NO-HISTORY".into(), "warn".into())),
        "{st:?}"
    );
    assert!(!st.iter().any(|(id, _)| id == "APP-BILLING"));
    assert_eq!(v["profile"], "lenient");
}

#[test]
fn errors_exit_2_with_a_reason() {
    let d = tempfile::tempdir().expect("tmp");
    let missing = run(&["check", "/nonexistent/image.qcow2"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("/nonexistent/image.qcow2"),
        "{}",
        missing.stderr
    );

    let garbage = d.path().join("garbage.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(4096, 0xff);
    std::fs::write(&garbage, &bytes).expect("write");
    let r = run(&["check", garbage.to_str().expect("utf8")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("garbage.qcow2"), "{}", r.stderr);

    let empty = d.path().join("empty.raw");
    std::fs::write(&empty, vec![0u8; 1 << 20]).expect("write");
    let r = run(&["check", empty.to_str().expect("utf8")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no root filesystem"), "{}", r.stderr);

    let img = history_image();
    let bad = d.path().join("ibkit.toml");
    std::fs::write(
        &bad,
        "[app]\nname = \"x\"\nversion = \"1\"\nports = [\"http\"]\n",
    )
    .expect("write");
    let r = run(&[
        "check",
        img.to_str().expect("utf8"),
        "--manifest",
        bad.to_str().expect("utf8"),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("app.ports") && r.stderr.contains("ibkit.toml"),
        "{}",
        r.stderr
    );

    let r = run(&["check", img.to_str().expect("utf8"), "--rule", "NOPE-1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("NOPE-1"));
}

#[test]
fn rules_and_explain() {
    let r = run(&["rules", "--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r).as_array().expect("array").len(), 19);
    let r = run(&["explain", "img-no-history"]);
    assert_eq!(r.code, 0);
    for h in [
        "IMG-NO-HISTORY",
        "## What it checks",
        "## Traps",
        "/etc/passwd",
    ] {
        assert!(r.stdout.contains(h), "{h}");
    }
}

#[test]
fn directory_input_and_output_file() {
    let t = tree_with_history();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("report.json");
    let r = run(&[
        "check",
        t.path().to_str().expect("utf8"),
        "--format",
        "json",
        "--output",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("read")).expect("json");
    assert_eq!(v["image"]["format"], "directory");
}

#[test]
fn real_debian_image_with_its_manifest_passes_every_static_rule() {
    let [qcow2, ..] = debian_images();
    let manifest = workspace().join("examples/debian12/ibkit.toml");
    let r = run(&[
        "check",
        qcow2.to_str().expect("utf8"),
        "--manifest",
        manifest.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    for (id, status) in statuses(&v) {
        let expected = if id == "APP-BILLING" {
            "unknown"
        } else {
            "pass"
        };
        assert_eq!(status, expected, "{id}: {}", v["results"]);
    }
    // The app's unit is proven to start at boot, through the chain of links.
    let soft = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["id"] == "APP-AUTOSTART-SOFT")
        .expect("soft");
    assert!(
        soft["evidence"]
            .to_string()
            .contains("multi-user.target -> ibkit-example.service"),
        "{soft}"
    );
    let ports = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["id"] == "APP-PORTS")
        .expect("ports");
    assert!(
        ports["evidence"].to_string().contains("8080/tcp"),
        "{ports}"
    );
}

/// `ibkit deploy` refuses bad input before touching anything, and says
/// what is wrong: an invalid manifest (every problem with its path), a
/// missing image, no service to talk to.
#[test]
fn deploy_refuses_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("deploy");
    let serve_state = dir.path().join("no-serve");
    let deploy = |args: &[&str]| {
        let out = ibkit()
            .arg("deploy")
            .args(args)
            .arg("--state")
            .arg(&state)
            .arg("--serve-state")
            .arg(&serve_state)
            .output()
            .expect("ibkit runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[instance]\nname = \"x\"\n[[hosts]]\nname = \"a\"\nimage = \"a.qcow2\"\nflavor = { vcpus = 0 }\n",
    )
    .expect("write");
    let (code, err) = deploy(&["up", bad.to_str().expect("utf-8")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("hosts[0].flavor.vcpus"), "{err}");

    let no_image = dir.path().join("no-image.toml");
    std::fs::write(
        &no_image,
        "[instance]\nname = \"x\"\n[[hosts]]\nname = \"a\"\nimage = \"missing.qcow2\"\n",
    )
    .expect("write");
    let (code, err) = deploy(&["up", no_image.to_str().expect("utf-8")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("host a: image") && err.contains("missing.qcow2"),
        "{err}"
    );

    let (code, err) = deploy(&["status", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("endpoint.json") && err.contains("ibkit serve"),
        "{err}"
    );

    let (code, err) = deploy(&["outputs", "../etc/passwd"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("neither a manifest file nor a deployment name"),
        "{err}"
    );

    // Nothing was deployed.
    let out = ibkit()
        .args(["deploy", "list", "--format", "json", "--state"])
        .arg(&state)
        .output()
        .expect("ibkit runs");
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).ok(),
        Some(serde_json::json!([]))
    );
}
