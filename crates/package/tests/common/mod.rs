//! The example package and assertions shared by the package lint tests.

#![allow(dead_code)]

use std::path::PathBuf;

use ibkit_package::{Diagnostic, PackageFiles, PkgRule, Severity};

/// `examples/packages/grafana`, the package written from VK's docs.
pub fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages/grafana")
}

/// The example read the way `ibkit package lint` reads it.
pub fn grafana() -> PackageFiles {
    let dir = grafana_dir();
    PackageFiles::open(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Exactly one finding, with this rule, severity, file and line, whose
/// message contains `words`.
#[track_caller]
pub fn expect_single(
    d: Vec<Diagnostic>,
    rule: PkgRule,
    sev: Severity,
    file: &str,
    line: Option<u32>,
    words: &str,
) {
    assert_eq!(d.len(), 1, "expected one finding, got {d:#?}");
    let d = &d[0];
    assert_eq!(
        (d.rule, d.severity, d.file.as_str(), d.line),
        (rule, sev, file, line),
        "{d:#?}"
    );
    assert!(d.message.contains(words), "{:?} lacks {words:?}", d.message);
}
