//! The JUnit XML format, for CI systems.
//!
//! - `<testsuites name="ibkit">` with one `<testsuite name="ibkit check
//!   IMAGE">` whose properties record the tool version, profile, manifest,
//!   image format, OS and whether the inspection was complete; notes
//!   (incomplete inspection) go to the suite's `system-err`.
//! - one `<testcase name="RULE-ID" classname="ibkit.rules">` per rule in the
//!   report, catalogue order, `time` = the rule's `elapsed_us`, with the
//!   properties `status` and `severity`:
//!   - `fail`: `<failure message="SUMMARY" type="fail">` whose text lists the
//!     findings (`fail: message`, then `  at /path:line: detail`) and the fix;
//!   - `warn`: **passes**, with `WARNING: SUMMARY` and the findings in
//!     `system-out`. JUnit has no warning outcome; a failure would break CI
//!     builds over advisory rules, and "flaky" would mislead. Use the
//!     `status` property (or the JSON report) to tell warnings apart;
//!   - `unknown`: `<skipped message="SUMMARY">` listing what could not be
//!     verified;
//!   - `waived`: passes, with the waived findings and their reasons in
//!     `system-out`;
//!   - `pass`: passes, with its evidence in `system-out`.
//!
//!   A clean run thus still has one passing test case per rule.

use std::fmt::Write as _;
use std::time::Duration;

use ibkit_rules::{Report, RuleResult, Severity, Status};
use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use crate::text::{evidence_line, finding_label, shown_findings};

/// `classname` of every test case.
pub const CLASSNAME: &str = "ibkit.rules";

/// The report as JUnit XML (final newline).
pub fn render_junit(report: &Report) -> String {
    let mut suite = TestSuite::new(format!("ibkit check {}", report.image.path));
    suite.set_time(Duration::from_millis(report.elapsed_ms));
    let mut props = vec![
        Property::new("ibkit.version", &report.tool.version),
        Property::new("profile", &report.profile),
        Property::new("image.path", &report.image.path),
        Property::new("image.format", &report.image.format),
        Property::new("complete", report.complete.to_string()),
    ];
    if let Some(os) = &report.image.os {
        props.push(Property::new("image.os", os));
    }
    if let Some(m) = &report.manifest {
        props.push(Property::new("manifest", m));
    }
    suite.add_properties(props);
    if !report.notes.is_empty() || !report.complete {
        let mut err = String::from(
            "INCOMPLETE INSPECTION: parts of the image could not be read; rules may have missed problems.\n",
        );
        for n in &report.notes {
            let _ = writeln!(err, "- {n}");
        }
        suite.set_system_err(err);
    }
    suite.add_test_cases(report.results.iter().map(test_case));

    let mut junit = quick_junit::Report::new("ibkit");
    junit.set_time(Duration::from_millis(report.elapsed_ms));
    junit.add_test_suite(suite);
    let mut xml = junit.to_string().expect("JUnit XML serializes to a string");
    if !xml.ends_with('\n') {
        xml.push('\n');
    }
    xml
}

/// Findings (including `info` ones), one or two lines each.
fn findings_text(r: &RuleResult) -> String {
    let mut s = String::new();
    for f in shown_findings(r, true) {
        let label = finding_label(r, f);
        let _ = writeln!(s, "{label}: {}", f.message);
        let ev = evidence_line(&f.evidence);
        if !ev.is_empty() && ev != f.message {
            let _ = writeln!(s, "  {ev}");
        }
        if let Some(reason) = &f.waived {
            let _ = writeln!(s, "  waiver: {reason}");
        }
    }
    s
}

fn evidence_text(r: &RuleResult) -> String {
    let mut s = String::new();
    for e in &r.evidence {
        let _ = writeln!(s, "proof: {}", evidence_line(e));
    }
    s
}

fn unverified_text(r: &RuleResult) -> String {
    let mut s = String::new();
    for u in &r.unverified {
        let _ = writeln!(s, "unverified: {u}");
    }
    s
}

fn fix_text(r: &RuleResult) -> String {
    if r.remediation.is_empty() {
        String::new()
    } else {
        format!("fix: {}\n", r.remediation)
    }
}

fn test_case(r: &RuleResult) -> TestCase {
    let (status, out) = match r.status {
        Status::Fail => {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            st.set_message(&r.summary)
                .set_type("fail")
                .set_description(format!(
                    "{}{}{}",
                    findings_text(r),
                    unverified_text(r),
                    fix_text(r)
                ));
            (st, None)
        }
        Status::Warn => (
            TestCaseStatus::success(),
            Some(format!(
                "WARNING: {}\n{}{}{}",
                r.summary,
                findings_text(r),
                unverified_text(r),
                fix_text(r)
            )),
        ),
        Status::Unknown => {
            let mut st = TestCaseStatus::skipped();
            st.set_message(&r.summary);
            let detail = format!("{}{}", unverified_text(r), findings_text(r));
            if !detail.is_empty() {
                st.set_description(detail);
            }
            (st, None)
        }
        Status::Waived => (
            TestCaseStatus::success(),
            Some(format!(
                "{}\n{}{}",
                r.summary,
                findings_text(r),
                evidence_text(r)
            )),
        ),
        Status::Pass => {
            let text = format!("{}\n{}{}", r.summary, evidence_text(r), findings_text(r));
            (TestCaseStatus::success(), Some(text))
        }
    };
    let mut case = TestCase::new(&r.id, status);
    case.set_classname(CLASSNAME)
        .set_time(Duration::from_micros(r.elapsed_us))
        .add_properties([
            Property::new("status", r.status.as_str()),
            Property::new(
                "severity",
                match r.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                },
            ),
        ]);
    if let Some(out) = out.filter(|o| !o.trim().is_empty()) {
        case.set_system_out(out);
    }
    case
}
