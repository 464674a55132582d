//! `ibkit package lint` end to end: exit codes and formats on the Grafana
//! example package, and `--image KEY=PATH` with a small built image that
//! fails IMG-NO-HISTORY and (with `IBKIT_DEBIAN_QCOW2`) the clean Debian
//! image.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;
use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages/grafana")
}

fn lint(path: &Path, format: &str) -> (i32, String, String) {
    let out = Command::new(cargo_bin("ibkit"))
        .args(["package", "lint", "--format", format])
        .arg(path)
        .output()
        .expect("ibkit runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn example_passes() {
    let (code, out, err) = lint(&fixture(), "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("0 errors, 0 warnings\n"), "{out}");
}

#[test]
fn missing_display_fails_with_json_and_sarif() {
    let t = tempfile::tempdir().unwrap();
    ibkit_test_utils::copy_dir(&fixture(), t.path());
    fs::remove_file(t.path().join("plans/free/display.yaml")).unwrap();
    let (code, out, err) = lint(t.path(), "json");
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["errors"].as_u64().unwrap() >= 1);
    assert!(
        v["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| { d["rule"] == "PKG-STRUCTURE" && d["file"] == "plans/free/display.yaml" })
    );
    let (code, out, _) = lint(t.path(), "sarif");
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(!v["runs"][0]["results"].as_array().unwrap().is_empty());
}

#[test]
fn unreadable_package_exits_2() {
    let t = tempfile::tempdir().unwrap();
    let z = t.path().join("p.zip");
    fs::write(&z, b"not a zip").unwrap();
    let (code, _, err) = lint(&z, "text");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p.zip"), "{err}");
}

fn lint_args(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cargo_bin("ibkit"))
        .args(["package", "lint"])
        .args(args)
        .output()
        .expect("ibkit runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A one-partition ext4 image (cached in target/ibkit-fixtures, like
/// cli.rs's) whose root left a shell history behind.
fn history_image() -> PathBuf {
    let mut t = Tree::new();
    t.file("etc/os-release", "ID=debian\nPRETTY_NAME=\"Fixture\"\n")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
        .file("etc/shadow", "root:*:1::::::\n")
        .file(
            "root/.bash_history",
            "grafana-cli admin reset-admin-password s3cret\n",
        );
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
fn image_findings_join_the_report_in_every_format() {
    let img = history_image();
    let image = format!("grafana={}", img.display());
    let dir = fixture();
    let dir = dir.to_str().unwrap();

    let (code, out, err) = lint_args(&[dir, "--image", &image]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("image grafana: /root/.bash_history: error[IMG-NO-HISTORY]: "),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
    // The package itself is still clean: every line but the counts is
    // the image's.
    let lines: Vec<&str> = out.lines().collect();
    let (counts, body) = lines.split_last().unwrap();
    assert!(counts.contains(" errors, "), "{out}");
    assert!(
        body.iter().all(|l| l.starts_with("image grafana: ")),
        "{out}"
    );

    let (code, out, err) = lint_args(&[dir, "--image", &image, "--format", "json"]);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["diagnostics"], serde_json::json!([]));
    assert_eq!(v["images"][0]["key"], "grafana");
    assert_eq!(v["images"][0]["path"], img.display().to_string());
    let findings = v["images"][0]["findings"].as_array().unwrap();
    let hist = findings
        .iter()
        .find(|f| f["rule"] == "IMG-NO-HISTORY")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(hist["image"], "grafana");
    assert_eq!(hist["severity"], "error");
    assert_eq!(hist["path"], "/root/.bash_history");
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    assert_eq!(v["errors"].as_u64(), Some(errors as u64));

    let (code, out, _) = lint_args(&[dir, "--image", &image, "--format", "sarif"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    let run = &v["runs"][0];
    let r = run["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ruleId"] == "IMG-NO-HISTORY")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(r["level"], "error");
    assert_eq!(r["properties"]["image"], "grafana");
    assert_eq!(r["properties"]["guestPath"], "/root/.bash_history");
    let i = r["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(run["tool"]["driver"]["rules"][i]["id"], "IMG-NO-HISTORY");
}

#[test]
fn image_keys_must_be_names_the_terraform_uses() {
    let dir = fixture();
    let dir = dir.to_str().unwrap();
    // Checked before any image is opened.
    let (code, _, err) = lint_args(&[dir, "--image", "grafna=/nonexistent.qcow2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("names no image \"grafna\""), "{err}");
    assert!(
        err.contains("grafana = data.vkcs_images_image.grafana"),
        "{err}"
    );
    let (code, _, err) = lint_args(&[
        dir,
        "--image",
        "grafana=/a.qcow2",
        "--image",
        "grafana=/b.qcow2",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("given twice"), "{err}");
    let (code, _, err) = lint_args(&[dir, "--image", "grafana=/nonexistent.qcow2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent.qcow2"), "{err}");
    let (code, _, err) = lint_args(&[dir, "--image", "grafana"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEY=PATH"), "{err}");
}

#[test]
fn clean_debian_image_keeps_the_lint_clean() {
    let Some(img) = std::env::var_os("IBKIT_DEBIAN_QCOW2") else {
        eprintln!("skipped: IBKIT_DEBIAN_QCOW2 is not set (scripts/test.sh sets it)");
        return;
    };
    let image = format!(
        "data.vkcs_images_image.grafana={}",
        PathBuf::from(img).display()
    );
    let (code, out, err) = lint_args(&[fixture().to_str().unwrap(), "--image", &image]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("0 errors, 0 warnings\n"), "{out}");
}
