//! Terraform rules on the grafana example and on broken variants of it,
//! each built in memory: every variant yields exactly its rule's finding.

mod common;

use ibkit_package::lint::{self, terraform};
use ibkit_package::{Diagnostic, PackageFiles, PkgRule, Severity};

const TF: &str = "plans/free/deployment/deploy.tf";
const PLAN: &str = "plans/free/plan.yaml";

fn run(pkg: &PackageFiles) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    terraform::check(pkg, &mut out);
    out
}

/// The example with `from` replaced by `to` in `file` (appended when
/// `from` is empty).
fn broken(file: &str, from: &str, to: &str) -> PackageFiles {
    let mut pkg = common::grafana();
    let old = String::from_utf8(pkg.files[file].clone()).expect("utf-8");
    let text = if from.is_empty() {
        format!("{old}\n{to}")
    } else {
        assert!(old.contains(from), "{file} lacks {from:?}");
        old.replacen(from, to, 1)
    };
    pkg.files.insert(file.to_string(), text.into_bytes());
    pkg
}

/// The 1-based line of the first line of `file` containing `needle`.
fn line_of(pkg: &PackageFiles, file: &str, needle: &str) -> Option<u32> {
    let text = String::from_utf8(pkg.files[file].clone()).expect("utf-8");
    let i = text.lines().position(|l| l.contains(needle))?;
    u32::try_from(i + 1).ok()
}

/// The line of the `n`th (from 0) line of `file` containing `needle`.
fn nth_line_of(pkg: &PackageFiles, file: &str, needle: &str, n: usize) -> Option<u32> {
    let text = String::from_utf8(pkg.files[file].clone()).expect("utf-8");
    let (i, _) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)?;
    u32::try_from(i + 1).ok()
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
fn grafana_example_is_clean() {
    let pkg = common::grafana();
    let all = lint::lint(&pkg);
    assert!(all.is_empty(), "{all:#?}");
    let tf = String::from_utf8(pkg.files[TF].clone()).expect("utf-8");
    assert!(tf.contains("ivkcs_agent_exec") && tf.contains("ivkcs_agent_check"));
}

#[test]
fn parse_error_has_its_line() {
    let pkg = broken(
        TF,
        "",
        "resource \"vkcs_networking_network\" \"x\" {\n  name = \n}\n",
    );
    let d = run(&pkg);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].rule, d[0].file.as_str()), (TfParse, TF));
    let total = String::from_utf8(pkg.files[TF].clone())
        .expect("utf-8")
        .lines()
        .count();
    let line = d[0].line.expect("a line") as usize;
    assert!(line + 3 >= total && line <= total, "line {line} of {total}");
}

#[test]
fn variable_rules() {
    let p = broken(
        TF,
        "variable \"flavor\" {\n  type = string\n}",
        "variable \"flavor\" {\n}",
    );
    expect_one(
        &p,
        TfVariable,
        Error,
        TF,
        line_of(&p, TF, "variable \"flavor\""),
        "no type",
    );

    let p = broken(
        TF,
        "variable \"instance_uuid\" {\n  type = string",
        "variable \"instance_uuid\" {\n  type = number",
    );
    expect_one(&p, TfVariable, Error, TF, Some(4), "must be string");

    // An option of the plan without a variable: reported at the option.
    let p = broken(PLAN, "", "parameters_patch:\n  users:\n    default: 3\n");
    expect_one(
        &p,
        TfVariable,
        Error,
        PLAN,
        line_of(&p, PLAN, "users:"),
        "\"users\"",
    );

    // An option's variable of a type an option cannot fill.
    let mut p = broken(PLAN, "", "resource_usages:\n  - flavor\n");
    let tf = String::from_utf8(p.files[TF].clone()).expect("utf-8");
    let tf = tf.replacen(
        "variable \"flavor\" {\n  type = string",
        "variable \"flavor\" {\n  type = list(string)",
        1,
    );
    p.files.insert(TF.into(), tf.into_bytes());
    expect_one(
        &p,
        TfVariable,
        Error,
        TF,
        line_of(&p, TF, "variable \"flavor\""),
        "list(string)",
    );
}

#[test]
fn resource_rules() {
    let p = broken(
        TF,
        "",
        "resource \"aws_instance\" \"x\" {\n  ami = \"a\"\n}\n",
    );
    expect_one(
        &p,
        TfResource,
        Error,
        TF,
        line_of(&p, TF, "aws_instance"),
        "\"aws_instance\"",
    );
    let p = broken(TF, "", "data \"ivkcs_agent_exec\" \"x\" {\n}\n");
    expect_one(
        &p,
        TfResource,
        Error,
        TF,
        line_of(&p, TF, "data \"ivkcs_agent_exec\""),
        "data source",
    );
    // Providers, random_*, time_* and documented types are fine.
    let p = broken(
        TF,
        "",
        "terraform {\n}\nprovider \"vkcs\" {\n}\nresource \"random_password\" \"p\" {\n  length = 16\n}\nresource \"time_sleep\" \"w\" {\n}\nresource \"ivkcs_ssh_keypair\" \"k\" {\n}\n",
    );
    assert!(run(&p).is_empty(), "{:#?}", run(&p));
}

#[test]
fn step_rules() {
    let exec = "resource \"ivkcs_agent_exec\" \"start\"";
    // Where the finding is: the resource's header (None) or step n's.
    let cases = [
        (
            "  name  = \"start_grafana\"\n",
            "",
            "name is required",
            None,
        ),
        (
            "index   = 2",
            "index   = 1",
            "duplicate step index 1",
            Some(1),
        ),
        ("index   = 2", "index   = 0", "must be 1 or more", Some(1)),
        (
            "type    = \"bash\"\n    content = \"curl",
            "type    = \"perl\"\n    content = \"curl",
            "not bash or python",
            Some(1),
        ),
        (
            "attempts      = 10",
            "attempts      = 0",
            "attempts: must be at least 1",
            Some(1),
        ),
        (
            "attempt_pause = \"15s\"",
            "attempt_pause = \"15 parsecs\"",
            "attempt_pause",
            Some(1),
        ),
        (
            "attempt_pause = \"15s\"",
            "retry_forever = true",
            "retry_forever",
            Some(1),
        ),
        (
            "timeout  = \"10m\"",
            "timeout  = \"0s\"",
            "timeout: must be longer than 0s",
            Some(0),
        ),
    ];
    for (from, to, words, step) in cases {
        let p = broken(TF, from, to);
        let line = match step {
            None => line_of(&p, TF, exec),
            Some(n) => nth_line_of(&p, TF, "  step {", n),
        };
        expect_one(&p, TfStep, Error, TF, line, words);
    }
    let p = broken(
        TF,
        "",
        "resource \"ivkcs_agent_exec\" \"empty\" {\n  hosts = []\n  name = \"n\"\n  uuid = var.instance_uuid\n}\n",
    );
    expect_one(
        &p,
        TfStep,
        Error,
        TF,
        line_of(&p, TF, "\"empty\""),
        "at least one step",
    );
    // Computed content and options are taken as they come.
    let p = broken(
        TF,
        "content = \"curl -fsS http://127.0.0.1:3000/api/health\"",
        "content = file(\"start.sh\")",
    );
    assert!(run(&p).is_empty(), "{:#?}", run(&p));
    let p = broken(TF, "attempts      = 10", "attempts      = var.tries");
    assert!(run(&p).is_empty(), "{:#?}", run(&p));
}

#[test]
fn health_rules() {
    let check = "resource \"ivkcs_agent_check\" \"health\"";
    // Findings about one check are at its block, the rest at the header.
    let http = "  http_health {";
    let cases = [
        ("    period     = \"1m\"\n", "", "period is required", http),
        (
            "protocol   = \"http\"",
            "protocol   = \"gopher\"",
            "gopher",
            http,
        ),
        (
            "method     = \"GET\"",
            "method     = \"FETCH\"",
            "FETCH",
            http,
        ),
        (
            "period     = \"1m\"",
            "period     = \"0s\"",
            "period: must be longer than 0s",
            http,
        ),
        ("http_codes = [200]", "http_codes = []", "http_codes", http),
        (
            "  uuid  = var.instance_uuid\n\n  http_health",
            "\n  http_health",
            "uuid is required",
            check,
        ),
    ];
    for (from, to, words, at) in cases {
        let p = broken(TF, from, to);
        expect_one(&p, TfHealth, Error, TF, line_of(&p, TF, at), words);
    }
    let p = broken(
        TF,
        "",
        "resource \"ivkcs_agent_check\" \"port\" {\n  hosts = []\n  uuid = var.instance_uuid\n  port_health {\n    host = \"127.0.0.1\"\n    port = 0\n    period = \"1m\"\n  }\n}\n",
    );
    expect_one(
        &p,
        TfHealth,
        Error,
        TF,
        nth_line_of(&p, TF, "port_health {", 0),
        "port: must not be 0",
    );
    let p = broken(
        TF,
        "",
        "resource \"ivkcs_agent_check\" \"s\" {\n  hosts = []\n  uuid = var.instance_uuid\n  script_health {\n    type = \"bash\"\n    script = \"true\"\n    options {\n      stop_signal = 99\n    }\n  }\n}\n",
    );
    expect_one(
        &p,
        TfHealth,
        Error,
        TF,
        line_of(&p, TF, "script_health {"),
        "stop_signal",
    );
    // VK's own example: no port, computed protocol.
    let p = broken(TF, "protocol   = \"http\"", "protocol   = var.proto");
    let p = {
        let mut p = p;
        let tf = String::from_utf8(p.files[TF].clone()).expect("utf-8");
        p.files.insert(
            TF.into(),
            tf.replacen("    port       = 3000\n", "", 1).into_bytes(),
        );
        p
    };
    assert!(run(&p).is_empty(), "{:#?}", run(&p));
}

#[test]
fn sensitive_rules() {
    let key = "output \"key\" {\n  value = ivkcs_ssh_keypair.k.private_key\n}\n";
    let p = broken(TF, "", key);
    expect_one(
        &p,
        TfSensitive,
        Error,
        TF,
        line_of(&p, TF, "output \"key\""),
        "private key",
    );
    let pw = "output \"pw\" {\n  value = random_password.admin.result\n}\n";
    let p = broken(TF, "", pw);
    expect_one(
        &p,
        TfSensitive,
        Warning,
        TF,
        line_of(&p, TF, "output \"pw\""),
        "sensitive = true",
    );
    let ok = "output \"pw\" {\n  value     = random_password.admin.result\n  sensitive = true\n}\n";
    assert!(run(&broken(TF, "", ok)).is_empty());
}

#[test]
fn new_rules_have_ids_and_titles() {
    for r in [
        TfParse,
        TfVariable,
        TfResource,
        TfStep,
        TfHealth,
        TfSensitive,
    ] {
        assert!(PkgRule::ALL.contains(&r));
        assert!(r.id().starts_with("PKG-TF-") && !r.title().is_empty());
        assert_eq!(serde_json::to_value(r).expect("json"), r.id());
    }
}
