//! APP-DOCS: a deployment guide that matches the service version.

use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// Text that marks an unfinished template.
pub const PLACEHOLDERS: &[&str] = &[
    "lorem ipsum",
    "TODO",
    "TBD",
    "{{",
    "<app name>",
    "<version>",
    "FIXME",
    "XXX",
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_DOCS,
    title: "Deployment guide for this version",
    requirement: "The application must ship a deployment guide (and optionally a user guide) that matches the service version and is enough for a buyer to get a working instance.",
    severity: Severity::Error,
    doc: r#"## What it checks
The app manifest's `docs.deployment_guide` (required) and `docs.user_guide`
(optional) exist next to the manifest, are not empty, mention the manifest's
`app.version`, and contain no template leftovers (`TODO`, `TBD`, `{{`,
`lorem ipsum`, `<app name>`, ...).

## Why
The marketplace publishes the guide with the listing; a buyer following a
guide for another version gets a broken instance and files a support ticket.

## Evidence
The guide's path and the line where the version appears, or the line with a
placeholder.

## Remediation
Write the guide for this version and name the version in it (e.g. a heading
"Acme Wiki 2.4.1 — deployment").

## Traps
Stale template text from a previous release passes a "file exists" check.
Harmless look-alikes pass: placeholder-like text inside code (fenced blocks
and `inline code`, such as a Helm `{{ .Values.image }}`), and words that only
contain a marker (`TODOs`, `XXXL`, "todo list").
"#,
    remediation: "Ship a deployment guide next to ibkit.toml that names app.version and has no template leftovers.",
    check,
};

/// A Markdown line without its `inline code` spans.
fn strip_inline_code(line: &str) -> String {
    let mut out = String::new();
    let mut code = false;
    for c in line.chars() {
        if c == '`' {
            code = !code;
        } else if !code {
            out.push(c);
        }
    }
    out
}

fn check_doc(o: &mut Outcome, path: &std::path::Path, version: &str, required: bool, what: &str) {
    let shown = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            let msg = format!("{what} {shown} cannot be read: {e}");
            if required {
                o.fail("doc-missing", msg, Evidence::at(shown, "missing"));
            } else {
                o.warn("doc-missing", msg, Evidence::at(shown, "missing"));
            }
            return;
        }
    };
    if text.trim().is_empty() {
        o.fail(
            "doc-empty",
            format!("{what} is empty"),
            Evidence::at(shown, "empty file"),
        );
        return;
    }
    match text.lines().position(|l| l.contains(version)) {
        Some(i) => o.proof(Evidence::at_line(
            shown.clone(),
            i + 1,
            format!("{what} names version {version}"),
        )),
        None => o.fail(
            "doc-version-mismatch",
            format!("{what} does not mention version {version}"),
            Evidence::at(shown.clone(), format!("no line contains {version:?}")),
        ),
    }
    // Examples in code (fenced blocks, `inline code`) are the app's own
    // syntax (`{{ .Values.image }}` for a Helm chart), not template leftovers.
    let mut fenced = false;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let l = strip_inline_code(raw);
        if let Some(p) = PLACEHOLDERS.iter().find(|p| {
            if p.chars().all(|c| c.is_ascii_uppercase()) {
                l.split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == **p)
            } else {
                l.to_lowercase().contains(&p.to_lowercase())
            }
        }) {
            o.warn(
                "doc-placeholder",
                format!("{what} contains template text {p:?}"),
                Evidence::at_line(
                    shown.clone(),
                    i + 1,
                    raw.chars().take(100).collect::<String>(),
                ),
            );
            break;
        }
    }
}

fn check(cx: &Context) -> Outcome {
    let Some(m) = cx.manifest else {
        return Outcome::unknown(
            "no app manifest: declare docs.deployment_guide and app.version in ibkit.toml",
        );
    };
    let mut o = Outcome::default();
    match &m.deployment_guide {
        Some(p) => check_doc(&mut o, p, &m.version, true, "deployment guide"),
        None => o.fail(
            "doc-undeclared",
            "the manifest declares no deployment guide (docs.deployment_guide)",
            Evidence::at(
                m.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "no [docs] deployment_guide",
            ),
        ),
    }
    if let Some(p) = &m.user_guide {
        check_doc(&mut o, p, &m.version, false, "user guide");
    }
    o
}
