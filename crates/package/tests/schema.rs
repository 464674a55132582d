//! Schema and cross-file rules on small in-memory packages: a valid one is
//! clean, and each broken variant yields exactly its rule's finding.

mod common;

use ibkit_package::lint::{cross, schema};
use ibkit_package::{Diagnostic, PackageFiles, PkgRule, Severity};

const SERVICE: &str = "\
id: 72b70199-1823-40c8-aa7e-f43a23ddf380
revision: v. 1.0
name: Demo
short_description: A demo service
singleton: false
auto_bind: true
icon: icon.png
help: https://example.com/docs
bindable: true
plan_updateable: false
deactivatable: false
bindings_retrievable: true
instances_retrievable: true
plans:
- name: free
- name: pro
preview:
  parameters:
  - name: users
";

const FREE_PLAN: &str = "\
id: 0a6d2e8b-7c4f-4d21-8e3a-9b5c1f2e4d67
revision: v. 1.0
name: free
description: Free
free: true
billing:
  cost: 0
  refundable: true
  billing_cycle_flat: 1 mons 0 days
resource_usages:
  - storage
";

const FREE_DISPLAY: &str = "\
pages:
- name: Settings
  groups:
  - name: Server
    parameters:
    - name: flavor
    - name: storage
entities:
  - entity: vm
    description: VM
    count:
      const: 1
    flavor:
      param: flavor
";

const PRO_PLAN: &str = "\
id: 1b6d2e8b-7c4f-4d21-8e3a-9b5c1f2e4d68
revision: v. 1.0
name: pro
description: Pro
free: false
billing:
  cost: 1000
parameters_patch:
  users:
    schema.default: 10
";

const PRO_DISPLAY: &str = "\
pages:
- name: Settings
  groups:
  - name: Users
    parameters:
    - name: users
    - name: edition
    when:
      in:
        key:
          param: edition
        values:
          - const: enterprise
";

const FLAVOR: &str = "\
actions:
- create
- update
schema:
  description: VM type
  type: string
  datasource:
    type: flavor
    filter:
      vcpus:
        minimum: 2
";

const USERS: &str = "\
actions:
- create
schema:
  description: Users
  type: integer
  minimum: 1
  maximum: 100
  default: 5
billing:
  base: 5
  cost: 100
  unit:
    size: 5
    measurement: users
";

const EDITION: &str = "\
actions:
- create
schema:
  description: Edition
  type: string
  enum:
  - community
  - enterprise
  default: community
";

const STORAGE: &str = "\
actions:
- resource_usages
schema:
  description: Storage
  type: number
billing:
  cost: 1.5
  unit:
    size: 1
    measurement: GB
";

const NAME: &str = "\
actions:
- create
schema:
  description: Name
  type: string
  pattern: '^[a-z]+$'
  minLength: 1
  maxLength: 20
";

fn valid() -> PackageFiles {
    let files: [(&str, &str); 14] = [
        ("version.yaml", "version: 0.0.1\n"),
        ("service.yaml", SERVICE),
        ("full_description.md", "# Demo\n"),
        ("images/icon.png", "png"),
        ("plans/free/plan.yaml", FREE_PLAN),
        ("plans/free/display.yaml", FREE_DISPLAY),
        (
            "plans/free/deployment/settings.yaml",
            "preset: base_v3\nretry: no\n",
        ),
        ("plans/pro/plan.yaml", PRO_PLAN),
        ("plans/pro/display.yaml", PRO_DISPLAY),
        ("parameters/flavor.yaml", FLAVOR),
        ("parameters/users.yaml", USERS),
        ("parameters/edition.yaml", EDITION),
        ("parameters/storage.yaml", STORAGE),
        ("parameters/name.yaml", NAME),
    ];
    PackageFiles {
        files: files
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        zip_bytes: None,
    }
}

fn run(pkg: &PackageFiles) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    schema::check(pkg, &mut out);
    cross::check(pkg, &mut out);
    out
}

/// The valid package with `from` replaced by `to` in `file` (or the file
/// set to `to` when `from` is empty).
fn broken(file: &str, from: &str, to: &str) -> PackageFiles {
    let mut pkg = valid();
    let text = if from.is_empty() {
        to.to_string()
    } else {
        let old = String::from_utf8(pkg.files[file].clone()).expect("utf-8");
        assert!(old.contains(from), "{file} lacks {from:?}");
        old.replacen(from, to, 1)
    };
    pkg.files.insert(file.to_string(), text.into_bytes());
    pkg
}

#[track_caller]
fn expect_one(
    pkg: &PackageFiles,
    rule: PkgRule,
    sev: Severity,
    file: &str,
    line: Option<u32>,
    words: &str,
) {
    common::expect_single(run(pkg), rule, sev, file, line, words);
}

use PkgRule::*;
use Severity::{Error, Warning};

#[test]
fn valid_package_is_clean() {
    let d = run(&valid());
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn version() {
    let p = broken("version.yaml", "0.0.1", "9.9.9");
    expect_one(
        &p,
        Version,
        Error,
        "version.yaml",
        Some(1),
        "not a known version",
    );
}

#[test]
fn yaml_syntax_error_has_its_line() {
    let p = broken(
        "plans/free/deployment/settings.yaml",
        "",
        "preset: base_v3\nretry: [no\n",
    );
    let d = run(&p);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].rule, d[0].file.as_str()),
        (Settings, "plans/free/deployment/settings.yaml")
    );
    assert!(d[0].message.starts_with("invalid YAML"), "{:?}", d[0]);
    assert!(matches!(d[0].line, Some(2..=3)), "{:?}", d[0]);
}

#[test]
fn service_rules() {
    let f = "service.yaml";
    let long = "x".repeat(121);
    let cases: Vec<(PackageFiles, Severity, Option<u32>, &str)> = vec![
        (
            broken(f, "f43a23ddf380", "f43a23ddf38"),
            Error,
            Some(1),
            "not a UUID4",
        ),
        (broken(f, "-40c8-", "-10c8-"), Error, Some(1), "not a UUID4"),
        (
            broken(f, "A demo service", &long),
            Error,
            Some(4),
            "121 characters, at most 120",
        ),
        (
            broken(f, "singleton: false", "singleton: maybe"),
            Error,
            Some(5),
            "expected true or false",
        ),
        (
            broken(f, "icon.png", "logo.png"),
            Error,
            Some(7),
            "no file images/logo.png",
        ),
        (
            broken(f, "https://example.com/docs", "docs"),
            Error,
            Some(8),
            "not an http(s) URL",
        ),
        (
            broken(f, "bindable: true", "bindable: false"),
            Error,
            Some(9),
            "must be true",
        ),
        (
            broken(f, "plan_updateable: false", "plan_updateable: true"),
            Error,
            Some(10),
            "image-based",
        ),
        (
            broken(f, "help: https://example.com/docs\n", ""),
            Error,
            None,
            "missing required key help",
        ),
        (
            broken(f, "bindable: true", "bindable: true\ncolour: red"),
            Warning,
            Some(10),
            "unknown key colour",
        ),
        (
            broken(f, "- name: pro", "- name: pro\n- name: gold"),
            Error,
            Some(17),
            "no directory plans/gold/",
        ),
        (
            broken(f, "- name: pro\n", ""),
            Warning,
            Some(15),
            "plans/pro/ is not listed",
        ),
        (
            broken(f, "  - name: users", "  - name: seats"),
            Error,
            Some(19),
            "no option file parameters/seats.yaml",
        ),
        (
            broken(f, "  parameters:\n  - name: users\n", "  params: []\n"),
            Error,
            Some(17),
            "missing required key preview.parameters",
        ),
    ];
    for (p, sev, line, words) in cases {
        // The preview case also warns about `params`: check the error alone.
        if words.contains("preview.parameters") {
            let d = run(&p);
            assert!(
                d.iter()
                    .any(|d| d.severity == Error && d.line == line && d.message.contains(words)),
                "{d:#?}"
            );
            continue;
        }
        expect_one(&p, Service, sev, f, line, words);
    }
}

#[test]
fn plan_rules() {
    let f = "plans/free/plan.yaml";
    expect_one(
        &broken(f, "cost: 0", "cost: 5"),
        Plan,
        Error,
        f,
        Some(7),
        "must be 0 in a free plan",
    );
    expect_one(
        &broken(f, "1 mons 0 days", "monthly"),
        Plan,
        Error,
        f,
        Some(9),
        "billing_cycle_flat",
    );
    expect_one(
        &broken(f, "free: true", "free: 'yes'"),
        Plan,
        Error,
        f,
        Some(5),
        "expected true or false",
    );
    expect_one(
        &broken(f, "description: Free\n", ""),
        Plan,
        Error,
        f,
        None,
        "missing required key description",
    );
    expect_one(
        &broken(f, "  cost: 0\n", ""),
        Plan,
        Error,
        f,
        Some(6),
        "missing required key billing.cost",
    );
    // A bad name also differs from its directory (a warning).
    let d = run(&broken(f, "name: free", "name: free plan"));
    let got: Vec<_> = d.iter().map(|x| (x.rule, x.severity, x.line)).collect();
    assert_eq!(
        got,
        vec![(Plan, Error, Some(3)), (Plan, Warning, Some(3))],
        "{d:#?}"
    );
    assert!(d[0].message.contains("Latin letters"));
    let p = "plans/pro/plan.yaml";
    expect_one(
        &broken(
            p,
            "    schema.default: 10",
            "    schema.default: 10\n    schema: {default: 3}",
        ),
        Plan,
        Error,
        p,
        Some(10),
        "patched both whole and through",
    );
}

#[test]
fn parameter_rules() {
    let u = "parameters/users.yaml";
    expect_one(
        &broken(u, "default: 5", "default: 500"),
        Parameter,
        Error,
        u,
        Some(8),
        "outside minimum..maximum",
    );
    expect_one(
        &broken(u, "minimum: 1", "minimum: -1"),
        Parameter,
        Error,
        u,
        Some(6),
        "must be >= 0",
    );
    expect_one(
        &broken(u, "default: 5", "default: five"),
        Parameter,
        Error,
        u,
        Some(8),
        "expected a value of type integer",
    );
    expect_one(
        &broken(u, "- create", "- destroy"),
        Parameter,
        Error,
        u,
        Some(2),
        "\"destroy\" is not one of",
    );
    expect_one(
        &broken(u, "type: integer", "type: decimal"),
        Parameter,
        Error,
        u,
        Some(5),
        "is not one of",
    );
    expect_one(
        &broken(u, "    size: 5", "    size: 0"),
        Parameter,
        Error,
        u,
        Some(13),
        "must be > 0",
    );
    expect_one(
        &broken(u, "  description: Users\n", ""),
        Parameter,
        Error,
        u,
        Some(3),
        "missing required key schema.description",
    );
    let e = "parameters/edition.yaml";
    expect_one(
        &broken(e, "default: community", "default: home"),
        Parameter,
        Error,
        e,
        Some(9),
        "not one of the values in schema.enum",
    );
    expect_one(
        &broken(e, "  default: community\n", ""),
        Parameter,
        Error,
        e,
        Some(6),
        "required together with schema.enum",
    );
    let n = "parameters/name.yaml";
    expect_one(
        &broken(n, "'^[a-z]+$'", "'^[a-z+$'"),
        Parameter,
        Error,
        n,
        Some(6),
        "not a valid regex",
    );
    expect_one(
        &broken(n, "minLength: 1", "minLength: 0"),
        Parameter,
        Error,
        n,
        Some(7),
        "must be greater than 0",
    );
    let s = "parameters/storage.yaml";
    expect_one(
        &broken(s, "size: 1", "size: 10"),
        Parameter,
        Error,
        s,
        Some(9),
        "must be 1 for a postpaid option",
    );
    expect_one(
        &broken(s, "- resource_usages", "- resource_usages\n- create"),
        Parameter,
        Error,
        s,
        Some(2),
        "cannot be combined",
    );
    let fl = "parameters/flavor.yaml";
    expect_one(
        &broken(fl, "type: flavor", "type: planet"),
        Parameter,
        Error,
        fl,
        Some(8),
        "not one of",
    );
    expect_one(
        &broken(fl, "vcpus:", "disk_class:"),
        Parameter,
        Warning,
        fl,
        Some(10),
        "unknown key schema.datasource.filter.disk_class",
    );
}

#[test]
fn display_rules() {
    let f = "plans/free/display.yaml";
    expect_one(
        &broken(f, "entity: vm", "entity: robot"),
        Display,
        Error,
        f,
        Some(9),
        "not one of vm",
    );
    expect_one(
        &broken(f, "      const: 1", "      const: 1\n      param: flavor"),
        Display,
        Error,
        f,
        Some(12),
        "exactly one of param or const",
    );
    expect_one(
        &broken(
            f,
            "  - name: Server\n",
            "  - name: Server\n    colour: red\n",
        ),
        Display,
        Warning,
        f,
        Some(5),
        "unknown key pages[0].groups[0].colour",
    );
    let p = "plans/pro/display.yaml";
    expect_one(
        &broken(p, "      in:", "      maybe:"),
        Display,
        Warning,
        p,
        Some(9),
        "unknown key pages[0].groups[0].when.maybe",
    );
}

#[test]
fn settings_rules() {
    let f = "plans/free/deployment/settings.yaml";
    expect_one(
        &broken(f, "base_v3", "base_v9"),
        Settings,
        Error,
        f,
        Some(1),
        "not one of base_v2",
    );
    expect_one(
        &broken(f, "retry: no", "retry: 3"),
        Settings,
        Error,
        f,
        Some(2),
        "yes or no",
    );
}

#[test]
fn consistency_rules() {
    // An option patched in the plan but not shown.
    let p = "plans/pro/plan.yaml";
    let d = "plans/pro/display.yaml";
    expect_one(
        &broken(d, "    - name: users\n", ""),
        Consistency,
        Error,
        p,
        Some(9),
        "not shown in plans/pro/display.yaml",
    );
    // An option shown but without a file.
    expect_one(
        &broken(
            d,
            "    - name: edition\n",
            "    - name: edition\n    - name: colour\n",
        ),
        Consistency,
        Error,
        d,
        Some(8),
        "no file parameters/colour.yaml",
    );
    // A postpaid option in a paid plan.
    let pp = broken(p, "free: false", "free: false\nresource_usages: [storage]");
    let pp = {
        let mut pp = pp;
        pp.files.insert(
            d.into(),
            PRO_DISPLAY
                .replace(
                    "    - name: edition\n",
                    "    - name: edition\n    - name: storage\n",
                )
                .into_bytes(),
        );
        pp
    };
    let diags = run(&pp);
    assert!(
        diags.iter().any(|x| x.rule == Consistency
            && x.file == p
            && x.line == Some(6)
            && x.message.contains("only allowed in free plans")),
        "{diags:#?}"
    );
    assert!(
        diags
            .iter()
            .any(|x| x.rule == Consistency && x.message.contains("one billing type per plan")),
        "{diags:#?}"
    );
    // A postpaid option shown but not listed in resource_usages.
    let f = "plans/free/plan.yaml";
    let fd = "plans/free/display.yaml";
    let d2 = run(&broken(f, "resource_usages:\n  - storage\n", ""));
    assert_eq!(d2.len(), 1, "{d2:#?}");
    assert_eq!(
        (d2[0].rule, d2[0].file.as_str(), d2[0].line),
        (Consistency, fd, Some(7))
    );
    // resource_usages naming a prepaid option.
    let d3 = run(&broken(f, "  - storage", "  - storage\n  - flavor"));
    assert_eq!(d3.len(), 1, "{d3:#?}");
    assert_eq!((d3[0].rule, d3[0].line), (Consistency, Some(12)));
    assert!(d3[0].message.contains("not postpaid"));
    // A trial period: the unknown key warns (PKG-PLAN) and is an error here.
    let d4 = run(&broken(
        f,
        "  refundable: true",
        "  refundable: true\n  trial_days: 14",
    ));
    let mut got: Vec<_> = d4.iter().map(|x| (x.rule, x.severity, x.line)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![(Plan, Warning, Some(9)), (Consistency, Error, Some(9))],
        "{d4:#?}"
    );
}

/// The example package in the repository (written by hand to match VK's
/// docs) passes the schema and cross-file rules.
#[test]
fn grafana_example_is_clean() {
    let pkg = common::grafana();
    assert!(pkg.files.contains_key("service.yaml"));
    // Warnings too: the example is meant to be spotless.
    let d = run(&pkg);
    assert!(d.is_empty(), "{d:#?}");
}
