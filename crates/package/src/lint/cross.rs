//! Rules that need several files (PKG-CONSISTENCY): every option a plan
//! uses is shown in its display.yaml and has an option file; postpaid
//! options only in free plans and listed in `resource_usages`; one billing
//! type per plan; no trial periods. Files that do not parse are skipped
//! here (the schema rules report them).

use std::collections::BTreeMap;

use super::schema::{display, option_files, option_name, parameter};
use crate::yaml::{self, Node, Value};
use crate::{Diagnostic, PackageFiles, PkgRule};

/// What the cross-file rules need of an option file.
struct OptionInfo {
    postpaid: bool,
    /// Prepaid with a price (`billing.cost` > 0).
    paid_prepaid: bool,
}

fn parsed(pkg: &PackageFiles, file: &str) -> Option<Node> {
    yaml::parse(pkg.text(file)?.ok()?).ok()
}

pub fn check(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    let mut options = BTreeMap::new();
    for file in option_files(pkg) {
        let (Some(name), Some(root)) = (option_name(&file), parsed(pkg, &file)) else {
            continue;
        };
        let postpaid = parameter::is_postpaid(&root);
        let cost = root
            .get("billing")
            .and_then(|b| b.value.get("cost"))
            .and_then(|c| match c.value.value {
                Value::Int(i) => Some(i as f64),
                Value::Float(f) => Some(f),
                _ => None,
            });
        options.insert(
            name.to_string(),
            OptionInfo {
                postpaid,
                paid_prepaid: !postpaid && cost.is_some_and(|c| c > 0.0),
            },
        );
    }
    for plan in pkg.plans() {
        check_plan(pkg, &plan, &options, out);
    }
}

fn check_plan(
    pkg: &PackageFiles,
    plan: &str,
    options: &BTreeMap<String, OptionInfo>,
    out: &mut Vec<Diagnostic>,
) {
    let plan_file = format!("plans/{plan}/plan.yaml");
    let display_file = format!("plans/{plan}/display.yaml");
    let Some(root) = parsed(pkg, &plan_file) else {
        return;
    };
    let err = |out: &mut Vec<Diagnostic>, file: &str, line: u32, msg: String| {
        out.push(Diagnostic::error(
            PkgRule::Consistency,
            file,
            Some(line),
            msg,
        ));
    };
    trials(&root, &plan_file, out);
    let free = root.get("free").and_then(|e| match e.value.value {
        Value::Bool(b) => Some(b),
        _ => None,
    });
    // Options the plan's own file names.
    let mut used: Vec<(String, u32)> = Vec::new();
    if let Some(m) = root.get("parameters_patch").and_then(|e| e.value.as_map()) {
        used.extend(m.iter().map(|e| (e.key.clone(), e.key_line)));
    }
    let usages: Vec<(String, u32)> = root
        .get("resource_usages")
        .and_then(|e| e.value.as_seq())
        .map(|s| {
            s.iter()
                .filter_map(|n| Some((n.as_str()?.to_string(), n.line)))
                .collect()
        })
        .unwrap_or_default();
    used.extend(usages.iter().cloned());

    let shown = match parsed(pkg, &display_file) {
        Some(d) => display::shown_options(&d),
        None if pkg.bytes(&display_file).is_some() => return, // broken: reported by schema
        None => Vec::new(),
    };
    for (name, line) in &used {
        if !options.contains_key(name) {
            err(
                out,
                &plan_file,
                *line,
                format!("option {name:?} has no file parameters/{name}.yaml"),
            );
        } else if !shown.iter().any(|(s, _)| s == name) {
            err(
                out,
                &plan_file,
                *line,
                format!("option {name:?} is not shown in {display_file}"),
            );
        }
    }
    for (name, line) in &shown {
        if !options.contains_key(name) {
            err(
                out,
                &display_file,
                *line,
                format!("option {name:?} has no file parameters/{name}.yaml"),
            );
        }
    }
    for (name, line) in &usages {
        if let Some(o) = options.get(name) {
            if !o.postpaid {
                err(
                    out,
                    &plan_file,
                    *line,
                    format!(
                        "resource_usages: option {name:?} is not postpaid (its actions lack resource_usages)"
                    ),
                );
            } else if free == Some(false) {
                err(
                    out,
                    &plan_file,
                    *line,
                    format!(
                        "postpaid option {name:?} in a paid plan: postpaid options are only allowed in free plans"
                    ),
                );
            }
        }
    }
    let mut postpaid_seen = None;
    let mut prepaid_seen = None;
    for (name, line) in &shown {
        let Some(o) = options.get(name) else { continue };
        if o.postpaid {
            postpaid_seen.get_or_insert((name, *line));
            if !usages.iter().any(|(u, _)| u == name) {
                err(
                    out,
                    &display_file,
                    *line,
                    format!(
                        "postpaid option {name:?} is shown but not listed in {plan_file} resource_usages"
                    ),
                );
            }
        } else if o.paid_prepaid {
            prepaid_seen.get_or_insert((name, *line));
        }
    }
    if let (Some((post, _)), Some((pre, line))) = (postpaid_seen, prepaid_seen) {
        err(
            out,
            &display_file,
            line,
            format!(
                "plan mixes postpaid option {post:?} and paid prepaid option {pre:?}: one billing type per plan"
            ),
        );
    }
}

/// Trial (free) periods are not allowed; VK's format has no field for
/// them, so any key naming one is a vendor's attempt at it.
fn trials(node: &Node, file: &str, out: &mut Vec<Diagnostic>) {
    match &node.value {
        Value::Map(m) => {
            for e in m {
                if e.key.to_ascii_lowercase().contains("trial") {
                    out.push(Diagnostic::error(
                        PkgRule::Consistency,
                        file,
                        Some(e.key_line),
                        format!(
                            "{}: trial periods are not allowed in marketplace plans",
                            e.key
                        ),
                    ));
                }
                trials(&e.value, file, out);
            }
        }
        Value::Seq(items) => items.iter().for_each(|i| trials(i, file, out)),
        _ => {}
    }
}
