//! Lint output: text for people, JSON for scripts, SARIF 2.1.0 for code
//! scanning UIs. The package's own findings, and with `--image KEY=PATH`
//! what `ibkit check`'s image rules found on the package's VM images
//! ([`ImageCheck`]).

use serde::Serialize;
use serde_json::{Value, json};

use crate::{Diagnostic, PkgRule, Severity};

/// What the image rules found on one of the package's VM images. The
/// rules live in ibkit-rules, which this crate does not depend on: the
/// caller runs them and hands their findings here, to be reported with the
/// package's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageCheck {
    /// How the package's Terraform names the image (KEY).
    pub key: String,
    /// The disk image checked (PATH, as given).
    pub path: String,
    /// False when parts of the image could not be read (see `notes`).
    pub complete: bool,
    pub notes: Vec<String>,
    pub findings: Vec<ImageFinding>,
}

/// One failing or warning finding of an image rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageFinding {
    /// The image's KEY (each finding names it, for scripts that flatten).
    pub image: String,
    /// The image rule's ID (`IMG-NO-HISTORY`).
    pub rule: String,
    /// The rule's title, for SARIF's rule list.
    #[serde(skip)]
    pub rule_title: String,
    pub severity: Severity,
    /// Guest path, its line, or the package that shows the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub message: String,
    /// What was seen there (secrets already redacted by the rule).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl ImageFinding {
    /// `/etc/shadow:3`, `package openssh-server`, or nothing.
    fn location(&self) -> Option<String> {
        match (&self.path, self.line, &self.package) {
            (Some(p), Some(l), _) => Some(format!("{p}:{l}")),
            (Some(p), None, _) => Some(p.clone()),
            (None, _, Some(pkg)) => Some(format!("package {pkg}")),
            (None, _, None) => None,
        }
    }
}

impl std::fmt::Display for ImageFinding {
    /// `image KEY: LOCATION: error[RULE]: message`, like a package line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image {}: ", self.image)?;
        if let Some(loc) = self.location() {
            write!(f, "{loc}: ")?;
        }
        write!(
            f,
            "{}[{}]: {}",
            severity_name(self.severity),
            self.rule,
            self.message
        )
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn counts(diags: &[Diagnostic], images: &[ImageCheck]) -> (usize, usize) {
    let sevs = diags.iter().map(|d| d.severity).chain(
        images
            .iter()
            .flat_map(|i| i.findings.iter().map(|f| f.severity)),
    );
    let (mut e, mut w) = (0, 0);
    for s in sevs {
        match s {
            Severity::Error => e += 1,
            Severity::Warning => w += 1,
        }
    }
    (e, w)
}

/// Whether the report has an error: exit status 1.
pub fn has_errors(diags: &[Diagnostic], images: &[ImageCheck]) -> bool {
    counts(diags, images).0 > 0
}

/// One line per diagnostic, then `N errors, M warnings`.
pub fn text(diags: &[Diagnostic]) -> String {
    text_with_images(diags, &[])
}

/// [`text`], then one line per image finding (and per note on an image
/// that could not be read in full); the counts include both.
pub fn text_with_images(diags: &[Diagnostic], images: &[ImageCheck]) -> String {
    let mut s = String::new();
    for d in diags {
        s.push_str(&d.to_string());
        s.push('\n');
    }
    for i in images {
        for f in &i.findings {
            s.push_str(&f.to_string());
            s.push('\n');
        }
        for n in &i.notes {
            s.push_str(&format!("image {}: note: {n}\n", i.key));
        }
    }
    let (e, w) = counts(diags, images);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    s.push_str(&format!(
        "{}, {}\n",
        plural(e, "error"),
        plural(w, "warning")
    ));
    s
}

/// `{"errors": N, "warnings": M, "diagnostics": [...], "images": [...]}`.
pub fn json(diags: &[Diagnostic]) -> Value {
    json_with_images(diags, &[])
}

/// [`json`] with each image's findings under `images`; the counts include
/// them.
pub fn json_with_images(diags: &[Diagnostic], images: &[ImageCheck]) -> Value {
    let (e, w) = counts(diags, images);
    json!({ "errors": e, "warnings": w, "diagnostics": diags, "images": images })
}

/// A SARIF 2.1.0 log with one run of `ibkit package lint`.
pub fn sarif(diags: &[Diagnostic]) -> Value {
    sarif_with_images(diags, &[])
}

/// [`sarif`] with the image findings as results too: their rules follow
/// the package rules in the rule list; each result names the image by its
/// KEY (message, logical location, properties) and points at the disk
/// image file, the guest path going in the properties.
pub fn sarif_with_images(diags: &[Diagnostic], images: &[ImageCheck]) -> Value {
    let mut rules: Vec<Value> = PkgRule::ALL
        .iter()
        .map(|r| json!({ "id": r.id(), "shortDescription": { "text": r.title() } }))
        .collect();
    let mut image_rules: Vec<&str> = Vec::new();
    for f in images.iter().flat_map(|i| &i.findings) {
        if !image_rules.contains(&f.rule.as_str()) {
            image_rules.push(&f.rule);
            rules.push(json!({ "id": f.rule, "shortDescription": { "text": f.rule_title } }));
        }
    }
    let mut results: Vec<Value> = diags
        .iter()
        .map(|d| {
            let mut loc = json!({ "artifactLocation": { "uri": d.file } });
            if let Some(l) = d.line {
                loc["region"] = json!({ "startLine": l });
            }
            json!({
                "ruleId": d.rule.id(),
                "ruleIndex": PkgRule::ALL.iter().position(|r| *r == d.rule),
                "level": severity_name(d.severity),
                "message": { "text": d.message },
                "locations": [{ "physicalLocation": loc }],
            })
        })
        .collect();
    for i in images {
        for f in &i.findings {
            let index = image_rules.iter().position(|r| *r == f.rule);
            let mut props = json!({ "image": i.key });
            for (k, v) in [("guestPath", &f.path), ("package", &f.package)] {
                if let Some(v) = v {
                    props[k] = json!(v);
                }
            }
            if let Some(l) = f.line {
                props["guestLine"] = json!(l);
            }
            if !f.detail.is_empty() {
                props["detail"] = json!(f.detail);
            }
            let text = match f.location() {
                Some(loc) => format!("image {}: {loc}: {}", i.key, f.message),
                None => format!("image {}: {}", i.key, f.message),
            };
            results.push(json!({
                "ruleId": f.rule,
                "ruleIndex": index.map(|n| n + PkgRule::ALL.len()),
                "level": severity_name(f.severity),
                "message": { "text": text },
                "locations": [{
                    "physicalLocation": { "artifactLocation": { "uri": i.path } },
                    "logicalLocations": [{ "name": i.key, "kind": "module" }],
                }],
                "properties": props,
            }));
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "ibkit package lint",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<Diagnostic> {
        vec![
            Diagnostic::error(
                PkgRule::Plan,
                "plans/free/plan.yaml",
                Some(3),
                "billing missing",
            ),
            Diagnostic::warning(PkgRule::Structure, "parameters", None, "no options"),
        ]
    }

    #[test]
    fn text_lines_and_summary() {
        assert_eq!(
            text(&sample()),
            "plans/free/plan.yaml:3: error[PKG-PLAN]: billing missing\n\
             parameters: warning[PKG-STRUCTURE]: no options\n\
             1 error, 1 warning\n"
        );
        assert_eq!(text(&[]), "0 errors, 0 warnings\n");
    }

    #[test]
    fn json_has_counts_and_list() {
        let v = json(&sample());
        assert_eq!(v["errors"], 1);
        assert_eq!(v["warnings"], 1);
        assert_eq!(v["diagnostics"][0]["rule"], "PKG-PLAN");
        assert_eq!(v["diagnostics"][0]["severity"], "error");
        assert_eq!(v["diagnostics"][1]["line"], Value::Null);
    }

    fn image() -> Vec<ImageCheck> {
        let finding = |rule: &str, severity, path: Option<&str>, line| ImageFinding {
            image: "grafana".into(),
            rule: rule.into(),
            rule_title: format!("{rule} title"),
            severity,
            path: path.map(str::to_string),
            line,
            package: None,
            message: "history file of root".into(),
            detail: "2 lines".into(),
        };
        vec![ImageCheck {
            key: "grafana".into(),
            path: "disk.qcow2".into(),
            complete: false,
            notes: vec!["cannot read /var".into()],
            findings: vec![
                finding(
                    "IMG-NO-HISTORY",
                    Severity::Error,
                    Some("/root/.bash_history"),
                    None,
                ),
                finding(
                    "OS-SSHD",
                    Severity::Warning,
                    Some("/etc/ssh/sshd_config"),
                    Some(4),
                ),
            ],
        }]
    }

    #[test]
    fn image_findings_in_text() {
        assert_eq!(
            text_with_images(&sample(), &image()),
            "plans/free/plan.yaml:3: error[PKG-PLAN]: billing missing\n\
             parameters: warning[PKG-STRUCTURE]: no options\n\
             image grafana: /root/.bash_history: error[IMG-NO-HISTORY]: history file of root\n\
             image grafana: /etc/ssh/sshd_config:4: warning[OS-SSHD]: history file of root\n\
             image grafana: note: cannot read /var\n\
             2 errors, 2 warnings\n"
        );
        assert!(has_errors(&[], &image()));
        assert!(!has_errors(&[], &[]));
    }

    #[test]
    fn image_findings_in_json() {
        let v = json_with_images(&sample(), &image());
        assert_eq!(
            (v["errors"].as_u64(), v["warnings"].as_u64()),
            (Some(2), Some(2))
        );
        let f = &v["images"][0]["findings"][0];
        assert_eq!(f["image"], "grafana");
        assert_eq!(f["rule"], "IMG-NO-HISTORY");
        assert_eq!(f["severity"], "error");
        assert_eq!(f["path"], "/root/.bash_history");
        assert!(f.get("line").is_none() && f.get("rule_title").is_none());
        assert_eq!(v["images"][0]["complete"], false);
        assert_eq!(json(&[])["images"], json!([]));
    }

    #[test]
    fn image_findings_in_sarif() {
        let v = sarif_with_images(&sample(), &image());
        let run = &v["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), PkgRule::ALL.len() + 2);
        let r = &run["results"][2];
        assert_eq!(r["ruleId"], "IMG-NO-HISTORY");
        let i = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[i]["id"], "IMG-NO-HISTORY");
        assert_eq!(rules[i]["shortDescription"]["text"], "IMG-NO-HISTORY title");
        assert_eq!(r["level"], "error");
        assert_eq!(r["properties"]["image"], "grafana");
        assert_eq!(r["properties"]["guestPath"], "/root/.bash_history");
        assert_eq!(
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "disk.qcow2"
        );
        assert_eq!(r["locations"][0]["logicalLocations"][0]["name"], "grafana");
        assert!(
            r["message"]["text"]
                .as_str()
                .unwrap()
                .starts_with("image grafana: ")
        );
        assert_eq!(run["results"][3]["level"], "warning");
        assert_eq!(run["results"][3]["properties"]["guestLine"], 4);
    }

    #[test]
    fn sarif_shape() {
        let v = sarif(&sample());
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "ibkit package lint");
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), PkgRule::ALL.len());
        assert_eq!(rules[0]["id"], "PKG-STRUCTURE");
        let r0 = &run["results"][0];
        assert_eq!(r0["ruleId"], "PKG-PLAN");
        assert_eq!(r0["level"], "error");
        assert_eq!(r0["ruleIndex"], 3);
        let loc = &r0["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "plans/free/plan.yaml");
        assert_eq!(loc["region"]["startLine"], 3);
        let r1 = &run["results"][1];
        assert_eq!(r1["level"], "warning");
        assert!(
            r1["locations"][0]["physicalLocation"]
                .get("region")
                .is_none()
        );
    }
}
