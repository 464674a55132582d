//! `ibkit package lint` end to end: exit codes and formats on the Grafana
//! example package.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;
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
