//! SARIF 2.1.0 output: shape, locations, suppressions, determinism.

mod common;

use ibkit_report::{Format, TextOptions, render, render_sarif, render_sarif_with};
use ibkit_rules::{Context, Level, Outcome, RuleDef, RuleId, Severity};
use serde_json::Value;

fn sarif(report: &ibkit_report::Report) -> Value {
    serde_json::from_str(&render_sarif_with(report, |_| None)).expect("valid JSON")
}

fn results_for<'a>(doc: &'a Value, id: &str) -> Vec<&'a Value> {
    doc["runs"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["ruleId"] == id)
        .collect()
}

#[test]
fn document_shape() {
    let report = common::sample();
    let doc = sarif(&report);
    assert!(
        doc["$schema"]
            .as_str()
            .expect("$schema")
            .contains("sarif-2.1.0")
    );
    assert_eq!(doc["version"], "2.1.0");
    assert_eq!(doc["runs"].as_array().map(Vec::len), Some(1));
    let run = &doc["runs"][0];
    let driver = &run["tool"]["driver"];
    assert_eq!(driver["name"], "ibkit");
    assert_eq!(driver["version"], "0.0.0-test");

    let rules = driver["rules"].as_array().expect("rules");
    assert_eq!(
        rules.len(),
        report.results.len(),
        "one descriptor per rule, unknown ones included"
    );
    for (rule, result) in rules.iter().zip(&report.results) {
        assert_eq!(rule["id"], result.id.as_str());
        assert!(
            rule["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && !n.contains(' '))
        );
        assert_eq!(rule["shortDescription"]["text"], result.title.as_str());
        assert_eq!(rule["fullDescription"]["text"], result.requirement.as_str());
        assert_eq!(rule["help"]["text"], result.remediation.as_str());
        assert!(
            rule["help"]["markdown"]
                .as_str()
                .is_some_and(|m| m.contains(&result.remediation))
        );
        let level = rule["defaultConfiguration"]["level"]
            .as_str()
            .expect("level");
        assert_eq!(
            level,
            if result.id == "IMG-NO-DEBUGGERS" {
                "warning"
            } else {
                "error"
            }
        );
    }
    assert_eq!(rules[1]["name"], "NoDefaultPasswords");
    assert!(rules.iter().any(|r| r["id"] == "APP-BILLING"));

    assert_eq!(
        run["originalUriBaseIds"]["GUEST_ROOT"]["description"]["text"],
        "root of the guest filesystem in images/app.qcow2"
    );
    let inv = &run["invocations"][0];
    assert_eq!(inv["executionSuccessful"], false);
    assert_eq!(
        inv["toolExecutionNotifications"][0]["message"]["text"],
        "p3: btrfs is not supported; its files were not checked"
    );
}

#[test]
fn one_result_per_fail_or_warn_finding() {
    let report = common::sample();
    let doc = sarif(&report);
    let results = doc["runs"][0]["results"].as_array().expect("results");
    let expected: usize = report
        .results
        .iter()
        .map(|r| r.findings.iter().filter(|f| f.level >= Level::Warn).count())
        .sum();
    assert_eq!(results.len(), expected);
    assert_eq!(results.len(), 7);
    assert!(
        results_for(&doc, "APP-BILLING").is_empty(),
        "unknown rules produce no result"
    );
    assert!(
        results_for(&doc, "IMG-CLOUDINIT").is_empty(),
        "info findings produce no result"
    );
    let rules = doc["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .expect("rules");
    for r in results {
        let idx = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
    }
}

#[test]
fn path_line_and_package_locations() {
    let doc = sarif(&common::sample());

    let nopass = results_for(&doc, "APP-NOPASS");
    assert_eq!(nopass.len(), 2);
    // sorted by path then line: /etc/shadow:1 before /etc/shadow:23
    assert_eq!(
        nopass[0]["locations"][0]["physicalLocation"]["region"]["startLine"],
        1
    );
    let r = nopass[1];
    assert_eq!(r["level"], "error");
    assert_eq!(
        r["message"]["text"],
        "account ubuntu has an empty password (seen: ubuntu: empty password field)"
    );
    let phys = &r["locations"][0]["physicalLocation"];
    assert_eq!(phys["artifactLocation"]["uri"], "etc/shadow");
    assert_eq!(phys["artifactLocation"]["uriBaseId"], "GUEST_ROOT");
    assert_eq!(phys["region"]["startLine"], 23);

    let history = results_for(&doc, "IMG-NO-HISTORY");
    assert_eq!(
        history
            .iter()
            .map(
                |r| r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    .as_str()
                    .expect("uri")
            )
            .collect::<Vec<_>>(),
        ["root/.bash_history", "var/lib/postgresql/.psql_history"],
        "sorted by path, no leading slash"
    );
    assert!(
        history[0]["locations"][0]["physicalLocation"]
            .get("region")
            .is_none(),
        "no line, no region"
    );

    // a fail finding of a rule whose profile severity is warning is a SARIF warning
    let dbg = results_for(&doc, "IMG-NO-DEBUGGERS");
    assert!(dbg.iter().all(|r| r["level"] == "warning"));
    let pkg = dbg
        .iter()
        .find(|r| r["locations"][0].get("logicalLocations").is_some())
        .expect("package result");
    let logical = &pkg["locations"][0]["logicalLocations"][0];
    assert_eq!(logical["kind"], "package");
    assert_eq!(logical["name"], "gdb");
    assert_eq!(
        logical["fullyQualifiedName"],
        "gdb 15.0.50.20240403-0ubuntu1"
    );
    assert!(pkg["locations"][0].get("physicalLocation").is_none());
}

#[test]
fn waived_findings_are_suppressed_results() {
    let doc = sarif(&common::sample());
    let secrets = results_for(&doc, "IMG-NO-SECRETS");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["suppressions"][0]["kind"], "external");
    assert_eq!(
        secrets[0]["suppressions"][0]["justification"],
        "regenerated by cloud-init at first boot (ssh_deletekeys: true)"
    );
    let unsuppressed = doc["runs"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r.get("suppressions").is_none())
        .count();
    assert_eq!(unsuppressed, 6);
}

#[test]
fn output_is_deterministic() {
    let report = common::sample();
    let mut shuffled = report.clone();
    for r in &mut shuffled.results {
        r.findings.reverse();
    }
    let a = render_sarif_with(&report, |_| None);
    assert_eq!(a, render_sarif_with(&report, |_| None));
    assert_eq!(
        a,
        render_sarif_with(&shuffled, |_| None),
        "finding order must not matter"
    );
}

#[test]
fn paths_are_encoded_as_uri_references() {
    let mut report = common::sample();
    report.results[2].findings[0].evidence.path = Some("/home/a b/c:d#1/.bash_history".into());
    let doc = sarif(&report);
    let uris: Vec<&str> = results_for(&doc, "IMG-NO-HISTORY")
        .iter()
        .map(|r| {
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .expect("uri")
        })
        .collect();
    assert!(
        uris.contains(&"home/a%20b/c%3Ad%231/.bash_history"),
        "{uris:?}"
    );
}

#[test]
fn manifest_evidence_is_a_host_file() {
    let mut report = common::sample();
    report.results[2].findings[0].evidence.path = Some("app.toml".into());
    let doc = sarif(&report);
    let loc = results_for(&doc, "IMG-NO-HISTORY")
        .iter()
        .map(|r| r["locations"][0]["physicalLocation"]["artifactLocation"].clone())
        .find(|l| l["uri"] == "app.toml")
        .expect("manifest location");
    assert!(loc.get("uriBaseId").is_none());
}

#[test]
fn matches_the_typed_sarif_model() {
    // serde-sarif drops keys it does not know: a round trip through its
    // typed model that loses nothing means every key is a SARIF 2.1.0 key
    // at the right place with the right type.
    let text = render_sarif_with(&common::sample(), |_| None);
    let typed: serde_sarif::sarif::Sarif =
        serde_json::from_str(&text).expect("parses as serde_sarif::Sarif");
    let back = serde_json::to_value(&typed).expect("serializes");
    let orig: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(back, orig);
}

fn no_check(_: &Context) -> Outcome {
    Outcome::default()
}

static DOCUMENTED: RuleDef = RuleDef {
    id: RuleId::IMG_NO_DEBUGGERS,
    title: "No debuggers in the image",
    requirement: "The image must contain no debuggers.",
    severity: Severity::Error,
    doc: "## What it checks\nPackages and executables of debuggers.\n",
    remediation: "Purge them.",
    check: no_check,
};

#[test]
fn catalogue_metadata_is_used_when_known() {
    let report = common::sample();
    let doc: Value = serde_json::from_str(&render_sarif_with(&report, |id| {
        (id == DOCUMENTED.id).then_some(&DOCUMENTED)
    }))
    .expect("json");
    let run = &doc["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    let idx = rules
        .iter()
        .position(|r| r["id"] == "IMG-NO-DEBUGGERS")
        .expect("rule");
    let rule = &rules[idx];
    assert_eq!(
        rule["shortDescription"]["text"],
        "No debuggers in the image"
    );
    assert_eq!(rule["name"], "NoDebuggersInTheImage");
    assert_eq!(
        rule["help"]["markdown"],
        "## What it checks\nPackages and executables of debuggers."
    );
    assert_eq!(rule["help"]["text"], "Purge them.");
    // catalogue default is error; the profile made it a warning
    assert_eq!(rule["defaultConfiguration"]["level"], "error");
    let ov = &run["invocations"][0]["ruleConfigurationOverrides"];
    assert_eq!(ov.as_array().map(Vec::len), Some(1));
    assert_eq!(ov[0]["descriptor"]["id"], "IMG-NO-DEBUGGERS");
    assert_eq!(ov[0]["descriptor"]["index"], idx);
    assert_eq!(ov[0]["configuration"]["level"], "warning");
}

#[test]
fn catalogue_variant_keeps_the_shape() {
    // Whatever the catalogue holds, the public entry point produces the
    // same rules and results (metadata may differ).
    let report = common::sample();
    let doc: Value = serde_json::from_str(&render_sarif(&report)).expect("json");
    let plain = sarif(&report);
    assert_eq!(doc["runs"][0]["results"], plain["runs"][0]["results"]);
    let ids = |d: &Value| -> Vec<String> {
        d["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids(&doc), ids(&plain));
    assert_eq!(
        render(&report, Format::Sarif, &TextOptions::default()),
        render_sarif(&report)
    );
}

#[test]
fn snapshot() {
    insta::assert_snapshot!(
        "sample.sarif",
        render_sarif_with(&common::sample(), |_| None)
    );
}
