//! `plans/<PLAN>/display.yaml` (docs: `ibservice_configure/ib_display`):
//! `pages` → `groups` → `parameters`, and `entities`.

use super::{Ctx, join};
use crate::yaml::{Node, Value};

const ENTITIES: [&str; 3] = ["vm", "load_balancing", "floating_ip"];

pub(super) fn check(c: &mut Ctx, root: &Node) {
    if root.value == Value::Null {
        return;
    }
    let Some(m) = c.map(root, "") else { return };
    c.keys(m, "", None, &["pages", "entities"], &[]);
    if let Some(e) = root.get("pages")
        && let Some(pages) = c.seq(&e.value, "pages")
    {
        for (i, page) in pages.iter().enumerate() {
            let path = format!("pages[{i}]");
            let Some(pm) = c.map(page, &path) else {
                continue;
            };
            c.keys(
                pm,
                &path,
                Some(page.line),
                &["name", "groups", "when"],
                &["name", "groups"],
            );
            if let Some(n) = page.get("name") {
                c.string(&n.value, &join(&path, "name"), Some(255));
            }
            if let Some(w) = page.get("when") {
                check_when(c, &w.value, &join(&path, "when"));
            }
            let Some(g) = page.get("groups") else {
                continue;
            };
            let gpath = join(&path, "groups");
            let Some(groups) = c.seq(&g.value, &gpath) else {
                continue;
            };
            for (j, group) in groups.iter().enumerate() {
                let path = format!("{gpath}[{j}]");
                let Some(gm) = c.map(group, &path) else {
                    continue;
                };
                c.keys(
                    gm,
                    &path,
                    Some(group.line),
                    &["name", "parameters", "when"],
                    &["name", "parameters"],
                );
                if let Some(n) = group.get("name") {
                    c.string(&n.value, &join(&path, "name"), Some(255));
                }
                if let Some(p) = group.get("parameters") {
                    c.name_list(&p.value, &join(&path, "parameters"));
                }
                if let Some(w) = group.get("when") {
                    check_when(c, &w.value, &join(&path, "when"));
                }
            }
        }
    }
    if let Some(e) = root.get("entities")
        && let Some(items) = c.seq(&e.value, "entities")
    {
        for (i, ent) in items.iter().enumerate() {
            check_entity(c, ent, &format!("entities[{i}]"));
        }
    }
}

fn check_entity(c: &mut Ctx, ent: &Node, path: &str) {
    let Some(m) = c.map(ent, path) else { return };
    let kind = ent
        .get("entity")
        .and_then(|e| c.one_of(&e.value, &join(path, "entity"), &ENTITIES));
    // An unknown entity was reported above: do not also flag its keys.
    let allowed: &[&str] = match kind.as_deref() {
        Some("vm") | None => &["entity", "description", "count", "flavor", "disks", "when"],
        _ => &["entity", "description", "count", "when"],
    };
    let required: &[&str] = match kind.as_deref() {
        Some("vm") => &["entity", "count", "flavor"],
        _ => &["entity", "count"],
    };
    c.keys(m, path, Some(ent.line), allowed, required);
    for k in m {
        let kpath = join(path, &k.key);
        match k.key.as_str() {
            "description" => {
                c.string(&k.value, &kpath, Some(255));
            }
            "count" | "flavor" => check_ref(c, &k.value, &kpath),
            "when" => check_when(c, &k.value, &kpath),
            "disks" => {
                let Some(disks) = c.seq(&k.value, &kpath) else {
                    continue;
                };
                for (i, d) in disks.iter().enumerate() {
                    let dpath = format!("{kpath}[{i}]");
                    let Some(dm) = c.map(d, &dpath) else { continue };
                    c.keys(
                        dm,
                        &dpath,
                        Some(d.line),
                        &["type", "size"],
                        &["type", "size"],
                    );
                    for x in dm {
                        if matches!(x.key.as_str(), "type" | "size") {
                            check_ref(c, &x.value, &join(&dpath, &x.key));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `{param: OPTION}` or `{const: VALUE}`.
fn check_ref(c: &mut Ctx, node: &Node, path: &str) {
    let Some(m) = c.map(node, path) else { return };
    c.keys(m, path, Some(node.line), &["param", "const"], &[]);
    let n = m
        .iter()
        .filter(|e| e.key == "param" || e.key == "const")
        .count();
    if n != 1 {
        c.error(
            Some(node.line),
            format!("{path}: needs exactly one of param or const"),
        );
    }
    if let Some(p) = node.get("param") {
        c.string(&p.value, &join(path, "param"), Some(255));
    }
}

/// `when: {in|not_in: {key: REF, values: [REF, ...]}}`.
fn check_when(c: &mut Ctx, node: &Node, path: &str) {
    let Some(m) = c.map(node, path) else { return };
    c.keys(m, path, Some(node.line), &["in", "not_in"], &[]);
    if m.len() != 1 {
        c.error(
            Some(node.line),
            format!("{path}: needs exactly one of in or not_in"),
        );
    }
    for cond in m {
        let cpath = join(path, &cond.key);
        let Some(cm) = c.map(&cond.value, &cpath) else {
            continue;
        };
        c.keys(
            cm,
            &cpath,
            Some(cond.key_line),
            &["key", "values"],
            &["key", "values"],
        );
        if let Some(k) = cond.value.get("key") {
            check_ref(c, &k.value, &join(&cpath, "key"));
        }
        if let Some(v) = cond.value.get("values") {
            let vpath = join(&cpath, "values");
            if let Some(items) = c.seq(&v.value, &vpath) {
                for (i, item) in items.iter().enumerate() {
                    check_ref(c, item, &format!("{vpath}[{i}]"));
                }
            }
        }
    }
}

/// Every option a display.yaml names (`parameters[].name`, `param:`),
/// with its line; for the cross-file rules.
pub fn shown_options(root: &Node) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    walk(root, None, &mut out);
    out
}

fn walk(node: &Node, key: Option<&str>, out: &mut Vec<(String, u32)>) {
    match &node.value {
        Value::Map(m) => {
            for e in m {
                let named = (e.key == "param" || (e.key == "name" && key == Some("parameters")))
                    .then(|| e.value.as_str())
                    .flatten();
                if let Some(s) = named {
                    out.push((s.to_string(), e.value.line));
                } else {
                    walk(&e.value, Some(&e.key), out);
                }
            }
        }
        // List items keep their parent's key: `parameters: [{name: x}]`.
        Value::Seq(items) => items.iter().for_each(|i| walk(i, key, out)),
        _ => {}
    }
}
