//! `parameters/<OPTION>.yaml` (docs: `ibservice_configure/iboption`,
//! `ibopt_fill_in`).

use super::{Ctx, join};
use crate::yaml::{Entry, Node, Value};

const TYPES: [&str; 4] = ["integer", "number", "string", "boolean"];
const SCHEMA_KEYS: [&str; 13] = [
    "description",
    "hint",
    "type",
    "const",
    "enum",
    "default",
    "minimum",
    "maximum",
    "tag",
    "pattern",
    "minLength",
    "maxLength",
    "datasource",
];
const DATASOURCES: [&str; 5] = ["flavor", "az", "network", "subnet", "volume_type"];

/// Whether an option file's `actions` make it postpaid.
pub fn is_postpaid(root: &Node) -> bool {
    root.get("actions")
        .and_then(|e| e.value.as_seq())
        .is_some_and(|s| s.iter().any(|a| a.as_str() == Some("resource_usages")))
}

pub(super) fn check(c: &mut Ctx, root: &Node) {
    let Some(m) = c.map(root, "") else { return };
    c.keys(
        m,
        "",
        None,
        &["actions", "schema", "billing"],
        &["actions", "schema"],
    );
    let mut ty = None;
    if let Some(e) = root.get("schema") {
        ty = check_schema(c, e);
    }
    let mut postpaid = false;
    if let Some(e) = root.get("actions") {
        postpaid = check_actions(c, &e.value);
    }
    if let Some(e) = root.get("billing") {
        check_billing(c, e, ty.as_deref(), postpaid);
    }
}

/// Returns whether the option is postpaid.
fn check_actions(c: &mut Ctx, node: &Node) -> bool {
    let Some(items) = c.seq(node, "actions") else {
        return false;
    };
    if items.is_empty() {
        c.error(Some(node.line), "actions: must not be empty");
    }
    let mut seen = Vec::new();
    for (i, a) in items.iter().enumerate() {
        if let Some(s) = c.one_of(
            a,
            &format!("actions[{i}]"),
            &["create", "update", "resource_usages"],
        ) {
            seen.push(s);
        }
    }
    let postpaid = seen.iter().any(|s| s == "resource_usages");
    if postpaid && seen.len() > 1 {
        c.error(
            Some(node.line),
            "actions: resource_usages (postpaid) cannot be combined with create or update",
        );
    }
    postpaid
}

/// Returns the option's type when it is a known one.
fn check_schema(c: &mut Ctx, e: &Entry) -> Option<String> {
    let node = &e.value;
    let m = c.map(node, "schema")?;
    c.keys(
        m,
        "schema",
        Some(e.key_line),
        &SCHEMA_KEYS,
        &["description", "type"],
    );
    let ty = node
        .get("type")
        .and_then(|t| c.one_of(&t.value, "schema.type", &TYPES));
    for k in m {
        let v = &k.value;
        let path = join("schema", &k.key);
        match k.key.as_str() {
            "description" | "hint" => {
                c.string(v, &path, Some(255));
            }
            "tag" => {
                c.string(v, &path, None);
            }
            "const" | "default" => {
                if let Some(t) = &ty {
                    typed(c, v, &path, t);
                }
            }
            "minimum" | "maximum" => match ty.as_deref() {
                Some("integer") => {
                    c.integer(v, &path);
                }
                Some("number") => {
                    c.number(v, &path);
                }
                Some(t) => c.error(
                    Some(k.key_line),
                    format!("{path}: not allowed for a {t} option"),
                ),
                None => {}
            },
            "pattern" | "minLength" | "maxLength" if ty.as_deref() != Some("string") => {
                if let Some(t) = &ty {
                    c.error(
                        Some(k.key_line),
                        format!("{path}: not allowed for a {t} option"),
                    );
                }
            }
            "pattern" => {
                if let Some(p) = c.string(v, &path, None)
                    && let Err(err) = regex::Regex::new(&p)
                {
                    let first = err.to_string();
                    let first = first.lines().last().unwrap_or_default().trim().to_string();
                    c.error(Some(v.line), format!("{path}: not a valid regex: {first}"));
                }
            }
            "minLength" | "maxLength" => {
                if let Some(n) = c.integer(v, &path)
                    && n <= 0
                {
                    c.error(Some(v.line), format!("{path}: must be greater than 0"));
                }
            }
            "enum" => {
                if let Some(items) = c.seq(v, &path) {
                    if items.is_empty() {
                        c.error(Some(v.line), format!("{path}: must not be empty"));
                    }
                    if let Some(t) = &ty {
                        for (i, item) in items.iter().enumerate() {
                            typed(c, item, &format!("{path}[{i}]"), t);
                        }
                    }
                }
            }
            "datasource" => {
                if ty.as_deref().is_some_and(|t| t != "string") {
                    c.error(
                        Some(k.key_line),
                        "schema.datasource: the option's type must be string",
                    );
                }
                check_datasource(c, k, node.get("default"));
            }
            _ => {}
        }
    }
    check_ranges(c, node, ty.as_deref());
    ty
}

/// `value` has the option's type.
fn typed(c: &mut Ctx, node: &Node, path: &str, ty: &str) {
    let ok = matches!(
        (ty, &node.value),
        ("integer", Value::Int(_))
            | ("number", Value::Int(_) | Value::Float(_))
            | ("string", Value::Str(_))
            | ("boolean", Value::Bool(_))
    );
    if !ok {
        c.error(
            Some(node.line),
            format!(
                "{path}: expected a value of type {ty}, found {}",
                node.value.kind()
            ),
        );
    }
}

fn num(node: &Node) -> Option<f64> {
    match node.value {
        Value::Int(i) => Some(i as f64),
        Value::Float(f) => Some(f),
        _ => None,
    }
}

/// minimum ≤ maximum, default within them and in `enum`, enum ⇒ default.
fn check_ranges(c: &mut Ctx, schema: &Node, ty: Option<&str>) {
    let get = |k: &str| schema.get(k);
    let min = get("minimum").and_then(|e| num(&e.value));
    let max = get("maximum").and_then(|e| num(&e.value));
    if ty == Some("integer") {
        if let (Some(e), Some(v)) = (get("minimum"), min)
            && v < 0.0
        {
            c.error(Some(e.value.line), "schema.minimum: must be >= 0");
        }
        if let (Some(e), Some(v)) = (get("maximum"), max)
            && v <= 0.0
        {
            c.error(Some(e.value.line), "schema.maximum: must be > 0");
        }
    }
    if let (Some(lo), Some(hi), Some(e)) = (min, max, get("maximum"))
        && lo > hi
    {
        c.error(
            Some(e.value.line),
            format!("schema.maximum: {hi} is less than minimum {lo}"),
        );
    }
    if let (Some(lo), Some(hi), Some(e)) = (
        get("minLength").and_then(|e| num(&e.value)),
        get("maxLength").and_then(|e| num(&e.value)),
        get("maxLength"),
    ) && lo > hi
    {
        c.error(
            Some(e.value.line),
            format!("schema.maxLength: {hi} is less than minLength {lo}"),
        );
    }
    if let Some(d) = get("default") {
        if let Some(v) = num(&d.value)
            && (min.is_some_and(|lo| v < lo) || max.is_some_and(|hi| v > hi))
        {
            c.error(
                Some(d.value.line),
                format!("schema.default: {v} is outside minimum..maximum"),
            );
        }
        if let Some(items) = get("enum").and_then(|e| e.value.as_seq())
            && !items.iter().any(|i| i.value == d.value.value)
        {
            c.error(
                Some(d.value.line),
                "schema.default: not one of the values in schema.enum",
            );
        }
    } else if let Some(e) = get("enum")
        && ty != Some("boolean")
    {
        c.error(
            Some(e.key_line),
            "schema.default: required together with schema.enum",
        );
    }
    if get("const").is_some() {
        for other in ["enum", "default", "minimum", "maximum"] {
            if let Some(e) = get(other) {
                c.error(
                    Some(e.key_line),
                    format!("schema.{other}: not allowed together with schema.const"),
                );
            }
        }
    }
}

fn check_datasource(c: &mut Ctx, e: &Entry, default: Option<&Entry>) {
    let Some(m) = c.map(&e.value, "schema.datasource") else {
        return;
    };
    c.keys(
        m,
        "schema.datasource",
        Some(e.key_line),
        &["type", "filter"],
        &["type"],
    );
    let kind = e
        .value
        .get("type")
        .and_then(|t| c.one_of(&t.value, "schema.datasource.type", &DATASOURCES));
    let Some(kind) = kind else { return };
    if let Some(d) = default
        && !matches!(kind.as_str(), "az" | "volume_type")
    {
        c.error(
            Some(d.key_line),
            format!("schema.default: not allowed for a {kind} datasource"),
        );
    }
    if let Some(d) = default
        && kind == "volume_type"
        && let Some(s) = d.value.as_str()
        && !matches!(s, "ceph-ssd" | "ceph-hdd" | "high-iops")
    {
        c.error(
            Some(d.value.line),
            format!("schema.default: {s:?} is not one of ceph-ssd, ceph-hdd, high-iops"),
        );
    }
    let Some(f) = e.value.get("filter") else {
        return;
    };
    let path = "schema.datasource.filter";
    let allowed: &[&str] = match kind.as_str() {
        "flavor" => &["vcpus", "ram"],
        "network" => &["kind", "shared"],
        "volume_type" => &["disk_class", "name"],
        _ => {
            c.error(
                Some(f.key_line),
                format!("{path}: not allowed for a {kind} datasource"),
            );
            return;
        }
    };
    let Some(fm) = c.map(&f.value, path) else {
        return;
    };
    c.keys(fm, path, Some(f.key_line), allowed, &[]);
    for k in fm.iter().filter(|k| allowed.contains(&k.key.as_str())) {
        let kpath = join(path, &k.key);
        match k.key.as_str() {
            "vcpus" | "ram" => {
                if let Some(mm) = c.map(&k.value, &kpath) {
                    c.keys(mm, &kpath, Some(k.key_line), &["minimum", "maximum"], &[]);
                    for b in mm {
                        if let Some(n) = c.integer(&b.value, &join(&kpath, &b.key))
                            && n <= 0
                        {
                            c.error(
                                Some(b.value.line),
                                format!("{}: must be > 0", join(&kpath, &b.key)),
                            );
                        }
                    }
                }
            }
            "kind" => enum_list(c, &k.value, &kpath, &["external", "internal", "all"]),
            "shared" => {
                if let Some(items) = c.seq(&k.value, &kpath) {
                    for (i, item) in items.iter().enumerate() {
                        c.boolean(item, &format!("{kpath}[{i}]"));
                    }
                }
            }
            "disk_class" | "name" => {
                let values: &[&str] = if k.key == "name" {
                    &["ceph-ssd", "ceph-hdd", "high-iops"]
                } else {
                    &["ssd", "hdd", "high_iops_disk"]
                };
                if let Some(mm) = c.map(&k.value, &kpath) {
                    c.keys(mm, &kpath, Some(k.key_line), &["enum"], &["enum"]);
                    if let Some(en) = k.value.get("enum") {
                        enum_list(c, &en.value, &join(&kpath, "enum"), values);
                    }
                }
            }
            _ => {}
        }
    }
}

fn enum_list(c: &mut Ctx, node: &Node, path: &str, allowed: &[&str]) {
    if let Some(items) = c.seq(node, path) {
        for (i, item) in items.iter().enumerate() {
            c.one_of(item, &format!("{path}[{i}]"), allowed);
        }
    }
}

fn check_billing(c: &mut Ctx, e: &Entry, ty: Option<&str>, postpaid: bool) {
    let Some(m) = c.map(&e.value, "billing") else {
        return;
    };
    let (allowed, required): (&[&str], &[&str]) = match ty {
        Some("boolean") => (&["cost"], &["cost"]),
        _ if postpaid => (&["cost", "unit"], &["cost", "unit"]),
        _ => (&["base", "cost", "unit"], &["cost", "unit"]),
    };
    if matches!(ty, Some("string")) {
        c.error(
            Some(e.key_line),
            "billing: only integer, number and boolean options can be paid",
        );
    }
    if postpaid && matches!(ty, Some("boolean")) {
        c.error(
            Some(e.key_line),
            "billing: a boolean option cannot be postpaid",
        );
    }
    c.keys(m, "billing", Some(e.key_line), allowed, required);
    for k in m {
        let v = &k.value;
        let path = join("billing", &k.key);
        match k.key.as_str() {
            "base" => {
                c.integer(v, &path);
            }
            "cost" => {
                if let Some(cost) = c.number(v, &path)
                    && cost < 0.0
                {
                    c.error(Some(v.line), format!("{path}: must not be negative"));
                }
            }
            "unit" => {
                let Some(um) = c.map(v, &path) else { continue };
                c.keys(
                    um,
                    &path,
                    Some(k.key_line),
                    &["size", "measurement"],
                    &["size"],
                );
                if let Some(s) = v.get("size")
                    && let Some(n) = c.integer(&s.value, "billing.unit.size")
                {
                    if postpaid && n != 1 {
                        c.error(
                            Some(s.value.line),
                            "billing.unit.size: must be 1 for a postpaid option",
                        );
                    } else if n <= 0 {
                        c.error(Some(s.value.line), "billing.unit.size: must be > 0");
                    }
                }
                if let Some(s) = v.get("measurement") {
                    c.string(&s.value, "billing.unit.measurement", Some(255));
                }
            }
            _ => {}
        }
    }
}
