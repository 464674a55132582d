//! Lint output: text for people, JSON for scripts, SARIF 2.1.0 for code
//! scanning UIs.

use serde_json::{Value, json};

use crate::{Diagnostic, PkgRule, Severity};

fn counts(diags: &[Diagnostic]) -> (usize, usize) {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    (errors, diags.len() - errors)
}

/// One line per diagnostic, then `N errors, M warnings`.
pub fn text(diags: &[Diagnostic]) -> String {
    let mut s = String::new();
    for d in diags {
        s.push_str(&d.to_string());
        s.push('\n');
    }
    let (e, w) = counts(diags);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    s.push_str(&format!(
        "{}, {}\n",
        plural(e, "error"),
        plural(w, "warning")
    ));
    s
}

/// `{"errors": N, "warnings": M, "diagnostics": [...]}`.
pub fn json(diags: &[Diagnostic]) -> Value {
    let (e, w) = counts(diags);
    json!({ "errors": e, "warnings": w, "diagnostics": diags })
}

/// A SARIF 2.1.0 log with one run of `ibkit package lint`.
pub fn sarif(diags: &[Diagnostic]) -> Value {
    let rules: Vec<Value> = PkgRule::ALL
        .iter()
        .map(|r| json!({ "id": r.id(), "shortDescription": { "text": r.title() } }))
        .collect();
    let results: Vec<Value> = diags
        .iter()
        .map(|d| {
            let mut loc = json!({ "artifactLocation": { "uri": d.file } });
            if let Some(l) = d.line {
                loc["region"] = json!({ "startLine": l });
            }
            json!({
                "ruleId": d.rule.id(),
                "ruleIndex": PkgRule::ALL.iter().position(|r| *r == d.rule),
                "level": match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                },
                "message": { "text": d.message },
                "locations": [{ "physicalLocation": loc }],
            })
        })
        .collect();
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
