//! `plans/<PLAN>/plan.yaml` (docs: `ibservice_configure/ibplan`).

use super::{Ctx, join};
use crate::yaml::{Node, Value};

const ALLOWED: [&str; 8] = [
    "id",
    "revision",
    "name",
    "description",
    "free",
    "billing",
    "parameters_patch",
    "resource_usages",
];
const REQUIRED: [&str; 6] = ["id", "revision", "name", "description", "free", "billing"];

pub(super) fn check(c: &mut Ctx, root: &Node, dir: &str) {
    let Some(m) = c.map(root, "") else { return };
    c.keys(m, "", None, &ALLOWED, &REQUIRED);
    let free = root.get("free").and_then(|e| match e.value.value {
        Value::Bool(b) => Some(b),
        _ => None,
    });
    for e in m {
        let v = &e.value;
        let k = e.key.as_str();
        match k {
            "id" => c.uuid4(v, k),
            "revision" | "description" => {
                c.string(v, k, Some(255));
            }
            "name" => {
                if let Some(name) = c.string(v, k, Some(255)) {
                    if !name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                    {
                        c.error(
                            Some(v.line),
                            format!("name: {name:?} must be Latin letters, digits and _"),
                        );
                    }
                    if name != dir {
                        c.warning(
                            Some(v.line),
                            format!("name: {name:?} differs from its directory plans/{dir}/"),
                        );
                    }
                }
            }
            "free" => {
                c.boolean(v, k);
            }
            "billing" => check_billing(c, e.key_line, v, free),
            "parameters_patch" => check_patch(c, v),
            "resource_usages" => {
                if let Some(items) = c.seq(v, k) {
                    for (i, item) in items.iter().enumerate() {
                        c.string(item, &format!("resource_usages[{i}]"), Some(255));
                    }
                }
            }
            _ => {}
        }
    }
}

fn check_billing(c: &mut Ctx, key_line: u32, node: &Node, free: Option<bool>) {
    let Some(m) = c.map(node, "billing") else {
        return;
    };
    c.keys(
        m,
        "billing",
        Some(key_line),
        &["cost", "refundable", "billing_cycle_flat"],
        &["cost"],
    );
    for e in m {
        let v = &e.value;
        match e.key.as_str() {
            "cost" => {
                if let Some(cost) = c.number(v, "billing.cost") {
                    if cost < 0.0 {
                        c.error(Some(v.line), "billing.cost: must not be negative");
                    } else if free == Some(true) && cost != 0.0 {
                        c.error(Some(v.line), "billing.cost: must be 0 in a free plan");
                    }
                }
            }
            "refundable" => {
                c.boolean(v, "billing.refundable");
            }
            "billing_cycle_flat" => {
                if let Some(s) = c.string(v, "billing.billing_cycle_flat", None)
                    && !is_cycle(&s)
                {
                    c.error(
                        Some(v.line),
                        format!(
                            "billing.billing_cycle_flat: {s:?} is not `<N> mons <N> days`, \
                             `<N> mons` or `<N> days`"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// `1 mons 15 days`, `30 days`, `1 mons`; not an empty period.
fn is_cycle(s: &str) -> bool {
    let words: Vec<&str> = s.split_whitespace().collect();
    let num = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    match words.as_slice() {
        [n, "mons", m, "days"] => num(n) && num(m),
        [n, "mons"] | [n, "days"] => num(n),
        _ => false,
    }
}

/// `parameters_patch: {OPTION: {schema.default: 5, billing: {...}}}`.
/// A section and one of its own keys must not both be patched.
fn check_patch(c: &mut Ctx, node: &Node) {
    let Some(options) = c.map(node, "parameters_patch") else {
        return;
    };
    for opt in options {
        let path = join("parameters_patch", &opt.key);
        let Some(keys) = c.map(&opt.value, &path) else {
            continue;
        };
        for k in keys {
            let top = k.key.split('.').next().unwrap_or_default();
            if !matches!(top, "schema" | "billing" | "actions") {
                c.warning(
                    Some(k.key_line),
                    format!("{path}: unknown option section in {:?}", k.key),
                );
            }
            let whole = keys.iter().find(|w| {
                w.key != k.key && k.key.starts_with(&w.key) && k.key[w.key.len()..].starts_with('.')
            });
            if let Some(w) = whole {
                c.error(
                    Some(k.key_line),
                    format!(
                        "{path}: {:?} is patched both whole and through {:?}",
                        w.key, k.key
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cycles() {
        assert!(super::is_cycle("1 mons 0 days"));
        assert!(super::is_cycle("30 days"));
        assert!(!super::is_cycle("monthly"));
        assert!(!super::is_cycle("1 mons 0"));
    }
}
