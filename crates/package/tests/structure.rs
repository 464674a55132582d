//! Structure lint on the Grafana example package and broken copies of it.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

mod common;

use ibkit_package::lint::structure;
use ibkit_package::{Diagnostic, PackageFiles, PkgRule, Severity};

fn fixture() -> PathBuf {
    common::grafana_dir()
}

fn lint_dir(dir: &Path) -> Vec<Diagnostic> {
    let pkg = PackageFiles::open(dir).unwrap();
    let mut out = Vec::new();
    structure::check(&pkg, &mut out);
    out
}

/// Lints a copy of the fixture after `break_it` changed it.
fn broken(break_it: impl FnOnce(&Path)) -> Vec<Diagnostic> {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("grafana");
    ibkit_test_utils::copy_dir(&fixture(), &root);
    break_it(&root);
    lint_dir(&root)
}

/// Exactly one diagnostic, with this severity and file.
fn only(diags: &[Diagnostic], sev: Severity, file: &str) {
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].rule, PkgRule::Structure);
    assert_eq!(diags[0].severity, sev, "{}", diags[0]);
    assert_eq!(diags[0].file, file, "{}", diags[0]);
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    b.extend(w.to_be_bytes());
    b.extend(h.to_be_bytes());
    b.extend([8, 2, 0, 0, 0]);
    b
}

#[test]
fn fixture_is_clean() {
    let d = lint_dir(&fixture());
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn missing_top_level_files() {
    for f in ["version.yaml", "service.yaml", "full_description.md"] {
        let d = broken(|r| fs::remove_file(r.join(f)).unwrap());
        only(&d, Severity::Error, f);
    }
}

#[test]
fn empty_description() {
    let d = broken(|r| fs::write(r.join("full_description.md"), " \n\n").unwrap());
    only(&d, Severity::Error, "full_description.md");
    assert!(d[0].message.contains("empty"));
}

#[test]
fn no_icon() {
    let d = broken(|r| fs::remove_dir_all(r.join("images")).unwrap());
    only(&d, Severity::Error, "images");
}

#[test]
fn jpeg_icon_only() {
    let d = broken(|r| fs::rename(r.join("images/icon.png"), r.join("images/icon.jpg")).unwrap());
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(
        d.iter()
            .any(|x| x.file == "images" && x.severity == Severity::Error)
    );
    assert!(
        d.iter()
            .any(|x| x.file == "images/icon.jpg" && x.severity == Severity::Warning)
    );
}

#[test]
fn small_icon() {
    let d = broken(|r| fs::write(r.join("images/icon.png"), png(32, 64)).unwrap());
    only(&d, Severity::Error, "images/icon.png");
    assert!(d[0].message.contains("32×64"), "{}", d[0]);
}

#[test]
fn not_a_png() {
    let d = broken(|r| fs::write(r.join("images/icon.png"), b"GIF89a").unwrap());
    only(&d, Severity::Error, "images/icon.png");
}

#[test]
fn big_icon() {
    let d = broken(|r| {
        let mut b = png(64, 64);
        b.resize(1 << 21, 0);
        fs::write(r.join("images/icon.png"), b).unwrap();
    });
    only(&d, Severity::Error, "images/icon.png");
    assert!(d[0].message.contains("1 MB"), "{}", d[0]);
}

#[test]
fn svg_icon_is_fine() {
    let d = broken(|r| {
        fs::remove_file(r.join("images/icon.png")).unwrap();
        fs::write(r.join("images/icon.svg"), "<svg/>").unwrap();
    });
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn no_parameters_is_a_warning() {
    let d = broken(|r| fs::remove_dir_all(r.join("parameters")).unwrap());
    only(&d, Severity::Warning, "parameters");
}

#[test]
fn stray_parameter_file() {
    let d = broken(|r| fs::write(r.join("parameters/notes.txt"), "x").unwrap());
    only(&d, Severity::Warning, "parameters/notes.txt");
}

#[test]
fn no_plans() {
    let d = broken(|r| fs::remove_dir_all(r.join("plans")).unwrap());
    only(&d, Severity::Error, "plans");
}

#[test]
fn plan_missing_files() {
    for f in ["plan.yaml", "display.yaml"] {
        let d = broken(|r| fs::remove_file(r.join("plans/free").join(f)).unwrap());
        only(&d, Severity::Error, &format!("plans/free/{f}"));
    }
}

#[test]
fn plan_without_terraform() {
    let d = broken(|r| fs::remove_file(r.join("plans/free/deployment/deploy.tf")).unwrap());
    only(&d, Severity::Error, "plans/free/deployment");
    // A .tf below deployment/ is not read by Terraform.
    let d = broken(|r| {
        let sub = r.join("plans/free/deployment/modules");
        fs::create_dir(&sub).unwrap();
        fs::rename(
            r.join("plans/free/deployment/deploy.tf"),
            sub.join("deploy.tf"),
        )
        .unwrap();
    });
    only(&d, Severity::Error, "plans/free/deployment");
}

#[test]
fn several_tf_files_and_no_settings_are_fine() {
    let d = broken(|r| {
        let dep = r.join("plans/free/deployment");
        fs::remove_file(dep.join("settings.yaml")).unwrap();
        fs::write(dep.join("variables.tf"), "").unwrap();
    });
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn bad_names_warn_once() {
    let d = broken(|r| fs::rename(r.join("plans/free"), r.join("plans/free-plan")).unwrap());
    only(&d, Severity::Warning, "plans/free-plan");
    let d = broken(|r| fs::write(r.join("images/.DS_Store"), "x").unwrap());
    // Not an icon format, and not a recommended name.
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(
        d.iter()
            .all(|x| x.file == "images/.DS_Store" && x.severity == Severity::Warning)
    );
}

#[test]
fn file_directly_in_plans() {
    let d = broken(|r| fs::write(r.join("plans/README"), "x").unwrap());
    only(&d, Severity::Warning, "plans/README");
}

fn zip_dir(root: &Path, prefix: &str, out: &Path) {
    fn add(w: &mut zip::ZipWriter<fs::File>, dir: &Path, name: &str) {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let n = format!("{name}{}", e.file_name().to_str().unwrap());
            if e.file_type().unwrap().is_dir() {
                w.add_directory(format!("{n}/"), opts).unwrap();
                add(w, &e.path(), &format!("{n}/"));
            } else {
                w.start_file(n, opts).unwrap();
                w.write_all(&fs::read(e.path()).unwrap()).unwrap();
            }
        }
    }
    let mut w = zip::ZipWriter::new(fs::File::create(out).unwrap());
    if !prefix.is_empty() {
        let opts = zip::write::SimpleFileOptions::default();
        w.add_directory(prefix, opts).unwrap();
    }
    add(&mut w, root, prefix);
    w.finish().unwrap();
}

#[test]
fn zipped_fixture_is_clean() {
    let t = tempfile::tempdir().unwrap();
    for prefix in ["grafana/", ""] {
        let z = t.path().join("grafana.zip");
        zip_dir(&fixture(), prefix, &z);
        let pkg = PackageFiles::open(&z).unwrap();
        assert!(pkg.zip_bytes.is_some());
        let dir = PackageFiles::open(&fixture()).unwrap();
        assert_eq!(
            pkg.files.keys().collect::<Vec<_>>(),
            dir.files.keys().collect::<Vec<_>>()
        );
        let mut d = Vec::new();
        structure::check(&pkg, &mut d);
        assert!(d.is_empty(), "{prefix}: {d:#?}");
    }
}

#[test]
fn zip_too_big() {
    let mut pkg = PackageFiles::open(&fixture()).unwrap();
    pkg.zip_bytes = Some(31 << 20);
    let mut d = Vec::new();
    structure::check(&pkg, &mut d);
    only(&d, Severity::Error, ".");
    pkg.zip_bytes = Some(30_500_000);
    d.clear();
    structure::check(&pkg, &mut d);
    only(&d, Severity::Warning, ".");
}
