//! The SARIF 2.1.0 format, for GitHub code scanning and similar UIs.
//!
//! The document is built with `serde_json` directly (the shape is small and
//! fixed; tests check it against `serde-sarif`'s typed model):
//!
//! - one run; `tool.driver` is `ibkit` with its version and one
//!   `reportingDescriptor` per rule in the report (catalogue order), with
//!   `id` (the SPEC rule ID), `name` (the title in PascalCase),
//!   `shortDescription` (title), `fullDescription` (the marketplace's
//!   requirement), `help` (remediation as text; the rule's documentation as
//!   markdown when the rule is in the catalogue) and
//!   `defaultConfiguration.level` (`error`/`warning`, the catalogue's
//!   severity). When the active profile changes a rule's severity,
//!   `invocations[0].ruleConfigurationOverrides` says so.
//! - one `result` per `fail`/`warn` finding (not `info`): `ruleId`,
//!   `ruleIndex`, `level` (`error` for a `fail` finding of an `error`
//!   rule, else `warning`), `message.text` (the message, then what was seen),
//!   and a location: guest paths become
//!   `physicalLocation.artifactLocation {uri: "root/.bash_history",
//!   uriBaseId: "GUEST_ROOT"}` (percent-encoded, no leading slash) with
//!   `region.startLine` when the line is known; the manifest (a host file)
//!   is located by its own path without a base; package evidence becomes a
//!   `logicalLocations` entry of kind `package`. `partialFingerprints`
//!   carries a stable `ibkit/v1` key (rule, kind, path or package and
//!   message; not the line, which moves between builds) so a UI can
//!   match alerts across runs; `properties` has the finding's `kind` and
//!   the rule's `status`.
//! - waived findings are results too, with
//!   `suppressions: [{kind: "external", status: "accepted", justification}]`.
//! - rules that are `unknown` (or pass) produce no result but are listed in
//!   `rules`.
//! - `originalUriBaseIds.GUEST_ROOT` describes the base ("root of the guest
//!   filesystem in IMAGE"); `invocations[0].executionSuccessful` is
//!   `report.complete` and each note becomes a
//!   `toolExecutionNotifications` entry (level `warning`).
//! - results are sorted by rule (catalogue order), then location, line and
//!   message, so the same report always renders the same document.

use std::fmt::Write as _;

use ibkit_rules::{Evidence, Finding, Level, Report, RuleDef, RuleResult, Severity, find_rule};
use serde_json::{Map, Value, json};

/// `$schema` of the document.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
/// The base URI ID guest paths are relative to.
pub const GUEST_ROOT: &str = "GUEST_ROOT";

/// The report as a SARIF 2.1.0 log (pretty-printed, final newline), with
/// rule documentation from the catalogue.
pub fn render_sarif(report: &Report) -> String {
    render_sarif_with(report, find_rule)
}

/// Like [`render_sarif`], with rule metadata from `lookup` instead of the
/// catalogue (rules it does not know fall back to the report's own title,
/// requirement and remediation).
pub fn render_sarif_with(
    report: &Report,
    lookup: impl Fn(&str) -> Option<&'static RuleDef>,
) -> String {
    let mut s = serde_json::to_string_pretty(&sarif_value(report, lookup))
        .expect("a JSON value always serializes");
    s.push('\n');
    s
}

/// The SARIF log as a JSON value.
pub fn sarif_value(report: &Report, lookup: impl Fn(&str) -> Option<&'static RuleDef>) -> Value {
    let mut rules = Vec::new();
    let mut overrides = Vec::new();
    let mut results: Vec<(usize, SortKey, Value)> = Vec::new();
    for (index, r) in report.results.iter().enumerate() {
        let def = lookup(&r.id);
        let default_severity = def.map(|d| d.severity).unwrap_or(r.severity);
        rules.push(descriptor(r, def, default_severity));
        if default_severity != r.severity {
            overrides.push(json!({
                "descriptor": { "id": r.id, "index": index },
                "configuration": { "level": severity_level(r.severity) },
            }));
        }
        for f in r.findings.iter().filter(|f| f.level >= Level::Warn) {
            results.push((index, sort_key(f), result(report, r, index, f)));
        }
    }
    results.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let results: Vec<Value> = results.into_iter().map(|(_, _, v)| v).collect();

    let notifications: Vec<Value> = report
        .notes
        .iter()
        .map(|n| json!({ "level": "warning", "message": { "text": n } }))
        .collect();
    let mut invocation = json!({
        "executionSuccessful": report.complete,
        "toolExecutionNotifications": notifications,
    });
    if !overrides.is_empty() {
        invocation["ruleConfigurationOverrides"] = Value::Array(overrides);
    }

    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": report.tool.name,
                    "version": report.tool.version,
                    "semanticVersion": report.tool.version,
                    "rules": rules,
                }
            },
            "originalUriBaseIds": {
                GUEST_ROOT: {
                    "description": {
                        "text": format!("root of the guest filesystem in {}", report.image.path)
                    }
                }
            },
            "invocations": [invocation],
            "results": results,
            "properties": {
                "profile": report.profile,
                "image": report.image.path,
                "complete": report.complete,
                "summary": report.summary,
            },
        }]
    })
}

fn severity_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// `No command history in the image` -> `NoCommandHistoryInTheImage`.
fn pascal(title: &str) -> String {
    title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            cs.next()
                .map(|c| c.to_uppercase().chain(cs).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn descriptor(r: &RuleResult, def: Option<&RuleDef>, default_severity: Severity) -> Value {
    let title = def
        .map(|d| d.title)
        .filter(|t| !t.is_empty())
        .unwrap_or(&r.title);
    let requirement = def
        .map(|d| d.requirement)
        .filter(|t| !t.is_empty())
        .unwrap_or(&r.requirement);
    let remediation = def
        .map(|d| d.remediation)
        .filter(|t| !t.is_empty())
        .unwrap_or(&r.remediation);
    let name = match pascal(title) {
        n if n.is_empty() => pascal(&r.id.to_lowercase()),
        n => n,
    };
    let short = if title.is_empty() {
        r.id.as_str()
    } else {
        title
    };
    let full = if requirement.is_empty() {
        short
    } else {
        requirement
    };
    let help_text = if remediation.is_empty() {
        full
    } else {
        remediation
    };
    let help_markdown = match def.map(|d| d.doc).filter(|d| !d.trim().is_empty()) {
        Some(doc) => doc.trim().to_owned(),
        None => {
            let mut md = format!("**{}**: {}\n", r.id, full);
            if !remediation.is_empty() {
                let _ = write!(md, "\n## Remediation\n{remediation}\n");
            }
            md
        }
    };
    json!({
        "id": r.id,
        "name": name,
        "shortDescription": { "text": short },
        "fullDescription": { "text": full },
        "help": { "text": help_text, "markdown": help_markdown },
        "defaultConfiguration": { "level": severity_level(default_severity) },
        "properties": { "tags": ["ibkit", r.id.split('-').next().unwrap_or("").to_lowercase()] },
    })
}

type SortKey = (String, usize, String, String, bool);

fn sort_key(f: &Finding) -> SortKey {
    let e = &f.evidence;
    (
        e.path.clone().unwrap_or_default(),
        e.line.unwrap_or(0),
        e.package.clone().unwrap_or_default(),
        f.message.clone(),
        f.waived.is_some(),
    )
}

/// Percent-encode a path for a URI reference: unreserved characters and `/`
/// stay, everything else (including `:`, so a first segment is never read
/// as a scheme) becomes `%XX` of its UTF-8 bytes.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The artifact location of evidence at `path`.
fn artifact_location(report: &Report, path: &str) -> Value {
    if report.manifest.as_deref() == Some(path) {
        // A host file: its own path (absolute as a file URI).
        let uri = if path.starts_with('/') {
            format!("file://{}", encode_path(path))
        } else {
            encode_path(path)
        };
        return json!({ "uri": uri });
    }
    let rel = path.trim_start_matches('/');
    let uri = if rel.is_empty() {
        ".".to_owned()
    } else {
        encode_path(rel)
    };
    json!({ "uri": uri, "uriBaseId": GUEST_ROOT })
}

fn location(report: &Report, e: &Evidence) -> Option<Value> {
    let mut loc = Map::new();
    if let Some(path) = &e.path {
        let mut phys = json!({ "artifactLocation": artifact_location(report, path) });
        if let Some(line) = e.line.filter(|&l| l >= 1) {
            phys["region"] = json!({ "startLine": line });
        }
        loc.insert("physicalLocation".into(), phys);
    }
    if let Some(pkg) = &e.package {
        let name = pkg.split_whitespace().next().unwrap_or(pkg);
        loc.insert(
            "logicalLocations".into(),
            json!([{ "name": name, "fullyQualifiedName": pkg, "kind": "package" }]),
        );
    }
    (!loc.is_empty()).then_some(Value::Object(loc))
}

fn result(report: &Report, r: &RuleResult, index: usize, f: &Finding) -> Value {
    let level = if f.level == Level::Fail && r.severity == Severity::Error {
        "error"
    } else {
        "warning"
    };
    let detail = f.evidence.detail.trim();
    let text = if detail.is_empty() || detail == f.message.trim() {
        f.message.clone()
    } else {
        format!("{} (seen: {detail})", f.message)
    };
    let e = &f.evidence;
    let where_ = match (&e.path, &e.package) {
        (Some(p), _) => p.clone(),
        (None, Some(pk)) => format!("package:{pk}"),
        (None, None) => String::new(),
    };
    let mut v = json!({
        "ruleId": r.id,
        "ruleIndex": index,
        "level": level,
        "message": { "text": text },
        "partialFingerprints": { "ibkit/v1": format!("{}|{}|{where_}|{}", r.id, f.kind, f.message) },
        "properties": { "kind": f.kind, "ruleStatus": r.status.as_str() },
    });
    if let Some(loc) = location(report, e) {
        v["locations"] = json!([loc]);
    }
    if let Some(reason) = &f.waived {
        v["suppressions"] =
            json!([{ "kind": "external", "status": "accepted", "justification": reason }]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pascal_case_names() {
        assert_eq!(
            pascal("No command history in the image"),
            "NoCommandHistoryInTheImage"
        );
        assert_eq!(pascal("SSH server (sshd) enabled"), "SSHServerSshdEnabled");
        assert_eq!(pascal(""), "");
    }

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(encode_path("root/.bash_history"), "root/.bash_history");
        assert_eq!(encode_path("home/a b/c:d#e%f"), "home/a%20b/c%3Ad%23e%25f");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}
