//! Assertions shared by the package lint tests.

use ibkit_package::{Diagnostic, PkgRule, Severity};

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
