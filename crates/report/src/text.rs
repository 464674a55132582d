//! The text format, for terminals. See the crate docs for the layout.

use ibkit_rules::engine::ImageInfo;
use ibkit_rules::{Evidence, Finding, Level, Report, RuleResult, Severity, Status};

use crate::style::{self, Painter, Style, clean, plural, wrap};

/// Lines are wrapped to this many columns.
pub const WIDTH: usize = 100;

/// Column where a rule's body starts (after the status badge).
const BODY: usize = 9;
/// Width of the label column inside a rule's body (`fail`, `waived`, ...).
const LABEL: usize = 6;
/// Findings shown per rule before the rest is summarised (not in verbose mode).
const MAX_FINDINGS: usize = 20;

/// Options of the text format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// Use ANSI colours (only when writing to a terminal that wants them).
    pub color: bool,
    /// Also show passing rules' summaries and evidence, `info` findings,
    /// every finding of a rule (not only the first 20) and requirements.
    pub verbose: bool,
}

/// Statuses in the order the text report lists them: worst first.
const ORDER: [Status; 5] = [
    Status::Fail,
    Status::Warn,
    Status::Unknown,
    Status::Waived,
    Status::Pass,
];

/// The report as text for a terminal, ending with a newline.
pub fn render_text(report: &Report, opts: &TextOptions) -> String {
    let p = Painter { color: opts.color };
    let mut out = String::new();
    header(&mut out, report, &p);
    out.push('\n');

    let id_width = report
        .results
        .iter()
        .map(|r| style::width(&r.id))
        .max()
        .unwrap_or(0);
    for status in ORDER {
        let mut pass_lines = false;
        for r in report.results.iter().filter(|r| r.status == status) {
            if status == Status::Pass && !opts.verbose {
                pass_line(&mut out, r, id_width, &p);
                pass_lines = true;
            } else {
                block(&mut out, r, opts, &p);
                out.push('\n');
            }
        }
        if pass_lines {
            out.push('\n');
        }
    }

    footer(&mut out, report, &p);
    out
}

fn badge(status: Status, p: &Painter) -> String {
    let (name, style) = match status {
        Status::Fail => ("FAIL", Style::BoldRed),
        Status::Warn => ("WARN", Style::BoldYellow),
        Status::Unknown => ("UNKNOWN", Style::Magenta),
        Status::Waived => ("WAIVED", Style::Blue),
        Status::Pass => ("PASS", Style::Green),
    };
    format!("{}{}", p.paint(style, name), " ".repeat(BODY - name.len()))
}

fn header(out: &mut String, report: &Report, p: &Painter) {
    let img = &report.image;
    let title = format!(
        "{} {}: check of {}",
        clean(&report.tool.name),
        clean(&report.tool.version),
        clean(&img.path)
    );
    out.push_str(&p.paint(Style::Bold, &title));
    out.push('\n');
    for (label, value) in header_fields(report, img) {
        let first = format!("  {label:<12}");
        let w = style::width(&first);
        out.push_str(&wrap(&value, WIDTH, &first, w, w));
        out.push('\n');
    }
}

fn header_fields(report: &Report, img: &ImageInfo) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    let mut format = clean(&img.format).into_owned();
    if let Some(size) = img.virtual_size {
        format.push_str(&format!(", {} virtual", style::bytes(size)));
    }
    fields.push(("format", format));
    if img.layers.len() > 1 {
        let chain: Vec<_> = img.layers[1..]
            .iter()
            .map(|l| clean(l).into_owned())
            .collect();
        fields.push(("backing", chain.join(" -> ")));
    }
    if img.partition_table.is_some() || !img.volumes.is_empty() {
        let table = img
            .partition_table
            .as_deref()
            .map(clean)
            .unwrap_or("no partition table".into());
        let vols: Vec<String> = img
            .volumes
            .iter()
            .map(|v| {
                let mut s = format!(
                    "{} {} {}",
                    clean(&v.name),
                    clean(&v.kind),
                    style::bytes(v.size)
                );
                if let Some(label) = &v.label {
                    s.push_str(&format!(" \"{}\"", clean(label)));
                }
                s
            })
            .collect();
        let value = if vols.is_empty() {
            table.into_owned()
        } else {
            format!("{table}: {}", vols.join(", "))
        };
        fields.push(("volumes", value));
    }
    let mounts = if img.mounts.is_empty() {
        "none".to_owned()
    } else {
        img.mounts
            .iter()
            .map(|m| {
                format!(
                    "{} ({}, {})",
                    clean(&m.point),
                    clean(&m.volume),
                    clean(&m.fs_type)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    fields.push(("mounts", mounts));
    fields.push((
        "os",
        img.os
            .as_deref()
            .map(clean)
            .unwrap_or("unknown (no os-release)".into())
            .into_owned(),
    ));
    fields.push(("profile", clean(&report.profile).into_owned()));
    if let Some(m) = &report.manifest {
        fields.push(("manifest", clean(m).into_owned()));
    }
    fields
}

fn pass_line(out: &mut String, r: &RuleResult, id_width: usize, p: &Painter) {
    let id = clean(&r.id);
    let pad = " ".repeat(id_width.saturating_sub(style::width(&id)));
    let first = format!("{}{}{pad}  ", badge(r.status, p), p.paint(Style::Bold, &id));
    let first_width = BODY + style::width(&id) + pad.len() + 2;
    out.push_str(&wrap(&clean(&r.title), WIDTH, &first, first_width, BODY));
    out.push('\n');
}

/// One body line (or paragraph) with a label: `fail  message`.
fn labelled(out: &mut String, label: &str, style: Option<Style>, text: &str, p: &Painter) {
    let shown = match style {
        Some(s) => p.paint(s, label),
        None => label.to_owned(),
    };
    let pad = LABEL.saturating_sub(label.len());
    let first = format!("{}{shown}{}  ", " ".repeat(BODY), " ".repeat(pad));
    let first_width = BODY + label.len() + pad + 2;
    out.push_str(&wrap(text, WIDTH, &first, first_width, first_width));
    out.push('\n');
}

/// An unlabelled paragraph at `indent`.
fn para(out: &mut String, indent: usize, text: &str, style: Option<Style>, p: &Painter) {
    let wrapped = wrap(text, WIDTH, &" ".repeat(indent), indent, indent);
    match style {
        Some(s) if p.color => {
            for line in wrapped.lines() {
                let (sp, rest) = line.split_at(line.len() - line.trim_start().len());
                out.push_str(sp);
                out.push_str(&p.paint(s, rest));
                out.push('\n');
            }
        }
        _ => {
            out.push_str(&wrapped);
            out.push('\n');
        }
    }
}

/// Where evidence was seen: `/etc/ssh/sshd_config:12`, `package gdb 12.1`,
/// or both; `None` for evidence without a location.
pub(crate) fn location(e: &Evidence) -> Option<String> {
    let path = e.path.as_deref().map(|path| match e.line {
        Some(line) => format!("{}:{line}", clean(path)),
        None => clean(path).into_owned(),
    });
    let pkg = e
        .package
        .as_deref()
        .map(|pk| format!("package {}", clean(pk)));
    match (path, pkg) {
        (Some(path), Some(pkg)) => Some(format!("{path} ({pkg})")),
        (a, b) => a.or(b),
    }
}

/// Evidence as one line: `at LOCATION: detail`, `at LOCATION` or `detail`.
pub(crate) fn evidence_line(e: &Evidence) -> String {
    let detail = clean(&e.detail);
    match location(e) {
        Some(loc) if detail.is_empty() => format!("at {loc}"),
        Some(loc) => format!("at {loc}: {detail}"),
        None => detail.into_owned(),
    }
}

/// The label of a finding: `waived`, `fail`, `warn` or `info`. A failing
/// finding of a rule whose severity is `warning` is a `warn`, as its rule.
pub(crate) fn finding_label(r: &RuleResult, f: &Finding) -> &'static str {
    if f.waived.is_some() {
        return "waived";
    }
    match f.level {
        Level::Fail if r.severity == Severity::Error => "fail",
        Level::Fail | Level::Warn => "warn",
        Level::Info => "info",
    }
}

fn label_style(label: &str) -> Style {
    match label {
        "waived" => Style::Blue,
        "fail" => Style::BoldRed,
        "warn" => Style::BoldYellow,
        _ => Style::Dim,
    }
}

/// Findings in the order shown: open problems (worst first), then waived,
/// then info; `info` only in verbose mode.
pub(crate) fn shown_findings(r: &RuleResult, verbose: bool) -> Vec<&Finding> {
    let mut v: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| verbose || f.level > Level::Info || f.waived.is_some())
        .collect();
    v.sort_by_key(|f| {
        (
            f.level == Level::Info,
            f.waived.is_some(),
            std::cmp::Reverse(f.level),
        )
    });
    v
}

fn finding(out: &mut String, r: &RuleResult, f: &Finding, p: &Painter) {
    let label = finding_label(r, f);
    labelled(out, label, Some(label_style(label)), &clean(&f.message), p);
    let indent = BODY + LABEL + 2;
    let ev = evidence_line(&f.evidence);
    if !ev.is_empty() && ev != clean(&f.message) {
        para(out, indent, &ev, Some(Style::Dim), p);
    }
    if let Some(reason) = &f.waived {
        para(out, indent, &format!("waiver: {}", clean(reason)), None, p);
    }
}

fn block(out: &mut String, r: &RuleResult, opts: &TextOptions, p: &Painter) {
    let first = format!(
        "{}{}  ",
        badge(r.status, p),
        p.paint(Style::Bold, &clean(&r.id))
    );
    let first_width = BODY + style::width(&clean(&r.id)) + 2;
    out.push_str(&wrap(&clean(&r.title), WIDTH, &first, first_width, BODY));
    out.push('\n');
    // An unknown rule's summary is usually its first unverified item.
    let repeats = r.status == Status::Unknown && r.unverified.first() == Some(&r.summary);
    if !r.summary.is_empty() && !repeats {
        para(out, BODY, &clean(&r.summary), None, p);
    }
    if opts.verbose && !r.requirement.is_empty() {
        para(
            out,
            BODY,
            &format!("requirement: {}", clean(&r.requirement)),
            Some(Style::Dim),
            p,
        );
    }

    let findings = shown_findings(r, opts.verbose);
    let limit = if opts.verbose {
        usize::MAX
    } else {
        MAX_FINDINGS
    };
    for f in findings.iter().take(limit) {
        finding(out, r, f, p);
    }
    if findings.len() > limit {
        para(
            out,
            BODY,
            &format!(
                "... {} more {} (all are listed in verbose mode and in the JSON report)",
                findings.len() - limit,
                if findings.len() - limit == 1 {
                    "finding"
                } else {
                    "findings"
                }
            ),
            Some(Style::Dim),
            p,
        );
    }

    if opts.verbose || r.status == Status::Pass {
        for e in &r.evidence {
            labelled(out, "proof", Some(Style::Green), &evidence_line(e), p);
        }
    }
    if r.status != Status::Pass || opts.verbose {
        for u in &r.unverified {
            labelled(out, "unverified", Some(Style::Magenta), &clean(u), p);
        }
    }
    if matches!(r.status, Status::Fail | Status::Warn) && !r.remediation.is_empty() {
        labelled(out, "fix", Some(Style::Bold), &clean(&r.remediation), p);
    }
}

fn footer(out: &mut String, report: &Report, p: &Painter) {
    let s = &report.summary;
    let total = s.pass + s.fail + s.warn + s.waived + s.unknown;
    let count = |n: usize, word: &str, style: Style| {
        let text = format!("{n} {word}");
        if n > 0 { p.paint(style, &text) } else { text }
    };
    out.push_str(&format!(
        "{}: {}, {}, {}, {}, {}\n",
        plural(total, "rule"),
        count(s.pass, "pass", Style::Green),
        count(s.fail, "fail", Style::BoldRed),
        count(s.warn, "warn", Style::BoldYellow),
        count(s.waived, "waived", Style::Blue),
        count(s.unknown, "unknown", Style::Magenta),
    ));

    if !report.complete || !report.notes.is_empty() {
        let head = "INCOMPLETE INSPECTION: parts of the image could not be read; rules may have missed problems.";
        out.push_str(&wrap(head, WIDTH, "", 0, 2).replacen(
            "INCOMPLETE INSPECTION:",
            &p.paint(Style::BoldYellow, "INCOMPLETE INSPECTION:"),
            1,
        ));
        out.push('\n');
        for n in &report.notes {
            out.push_str(&wrap(&clean(n), WIDTH, "  - ", 4, 4));
            out.push('\n');
        }
    }

    let failed: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| clean(&r.id).into_owned())
        .collect();
    let incomplete = if report.complete {
        ""
    } else {
        "inspection incomplete"
    };
    let (head, style, rest) = if report.failed() || !failed.is_empty() {
        (
            "Result: FAIL",
            Style::BoldRed,
            format!(
                " ({} failed: {})",
                plural(failed.len(), "rule"),
                failed.join(", ")
            ),
        )
    } else if s.warn > 0 {
        let mut why = plural(s.warn, "warning");
        if !incomplete.is_empty() {
            why = format!("{why}; {incomplete}");
        }
        (
            "Result: PASS with warnings",
            Style::BoldYellow,
            format!(" ({why})"),
        )
    } else if !incomplete.is_empty() {
        ("Result: PASS", Style::Green, format!(" ({incomplete})"))
    } else {
        ("Result: PASS", Style::Green, String::new())
    };
    let verdict = wrap(&format!("{head}{rest}"), WIDTH, "", 0, 2);
    out.push_str(&verdict.replacen(head, &p.paint(style, head), 1));
    out.push('\n');
    out.push_str(&format!(
        "Checked in {}.\n",
        style::millis(report.elapsed_ms)
    ));
}
