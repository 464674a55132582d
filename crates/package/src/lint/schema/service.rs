//! `service.yaml` (docs: `ibservice_configure/ibservice_param`).

use super::Ctx;
use crate::PackageFiles;
use crate::yaml::Node;

const ALLOWED: [&str; 15] = [
    "id",
    "revision",
    "name",
    "short_description",
    "singleton",
    "auto_bind",
    "icon",
    "help",
    "bindable",
    "plan_updateable",
    "deactivatable",
    "bindings_retrievable",
    "instances_retrievable",
    "plans",
    "preview",
];
const REQUIRED: [&str; 13] = [
    "id",
    "revision",
    "name",
    "short_description",
    "icon",
    "help",
    "bindable",
    "plan_updateable",
    "deactivatable",
    "bindings_retrievable",
    "instances_retrievable",
    "plans",
    "preview",
];

pub(super) fn check(c: &mut Ctx, root: &Node, pkg: &PackageFiles) {
    let Some(m) = c.map(root, "") else { return };
    c.keys(m, "", None, &ALLOWED, &REQUIRED);
    for e in m {
        let v = &e.value;
        let k = e.key.as_str();
        match k {
            "id" => c.uuid4(v, k),
            "revision" | "name" => {
                c.string(v, k, Some(255));
            }
            "short_description" => {
                c.string(v, k, Some(120));
            }
            "singleton"
            | "auto_bind"
            | "deactivatable"
            | "bindings_retrievable"
            | "instances_retrievable" => {
                c.boolean(v, k);
            }
            "icon" => {
                if let Some(icon) = c.string(v, k, Some(512))
                    && pkg.bytes(&format!("images/{icon}")).is_none()
                {
                    c.error(Some(v.line), format!("icon: no file images/{icon}"));
                }
            }
            "help" => {
                if let Some(url) = c.string(v, k, Some(512))
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    c.error(Some(v.line), format!("help: {url:?} is not an http(s) URL"));
                }
            }
            "bindable" if c.boolean(v, k) == Some(false) => {
                c.error(Some(v.line), "bindable: must be true");
            }
            "plan_updateable" if c.boolean(v, k) == Some(true) => {
                c.error(
                    Some(v.line),
                    "plan_updateable: must be false for an image-based application",
                );
            }
            "plans" => check_plans(c, v, pkg),
            "preview" => check_preview(c, e.key_line, v, pkg),
            _ => {}
        }
    }
}

fn check_plans(c: &mut Ctx, node: &Node, pkg: &PackageFiles) {
    let names = c.name_list(node, "plans");
    let dirs = pkg.plans();
    for (i, (name, line)) in names.iter().enumerate() {
        if names[..i].iter().any(|(n, _)| n == name) {
            c.error(Some(*line), format!("plans: {name:?} is listed twice"));
        } else if !dirs.contains(name) {
            c.error(Some(*line), format!("plans: no directory plans/{name}/"));
        }
    }
    for dir in dirs {
        if !names.iter().any(|(n, _)| *n == dir) {
            c.warning(
                Some(node.line),
                format!("plans: plans/{dir}/ is not listed, so users will not see it"),
            );
        }
    }
}

fn check_preview(c: &mut Ctx, key_line: u32, node: &Node, pkg: &PackageFiles) {
    let Some(m) = c.map(node, "preview") else {
        return;
    };
    c.keys(
        m,
        "preview",
        Some(key_line),
        &["parameters"],
        &["parameters"],
    );
    if let Some(e) = node.get("parameters") {
        // An empty list is allowed ("Массив может быть пустым").
        for (name, line) in c.name_list(&e.value, "preview.parameters") {
            if pkg.bytes(&format!("parameters/{name}.yaml")).is_none() {
                c.error(
                    Some(line),
                    format!("preview.parameters: no option file parameters/{name}.yaml"),
                );
            }
        }
    }
}
